"""ddim_step: the compiled op against the float64 oracle over the whole DiffAE schedule.

Tolerance (docs/models/pada.md section 9 item 1): |delta| <= 1e-6 * (1 + A) for unit-scale inputs, where
A = sqrt(1/abar_t) amplifies one float32 rounding of x_t (A is about 107 at t = 960). Inputs that force
clipping make the re-derived eps as large as (A|x_t| + 1)/B (about 200 on the first inversion step), so a
relative term of 1e-6 (a few float32 ulps) is added.
"""

from __future__ import annotations

import pytest
import torch

from pyagingrt import NativeExtensionError, has_native
from pyagingrt.ops import ddim_step
from pyagingrt.training.layers.ddim_schedule import DDIMSchedule
from pyagingrt.training.layers.ddim_step import ddim_coefficients, ddim_step_reference_float64
from tests.devices import CPU_AND_CUDA

native = pytest.mark.skipif(not has_native(), reason="pyagingrt._C is not built")
SCHEDULE = DDIMSchedule.diffae(25)
PAIRS = [(abar, prev) for _, abar, prev in SCHEDULE.sampling_pairs()] + [
    (abar, nxt) for _, abar, nxt in SCHEDULE.inversion_pairs()
]
# eps in half precision is rounded before the step; the oracle sees the same rounded values.
EPS_DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def make_inputs(shape, device, eps_dtype, scale=1.0):
    x = torch.randn(shape, device=device) * scale
    eps = torch.randn(shape, device=device).to(eps_dtype)
    return x, eps


@native
class TestDdimStep:
    @pytest.mark.parametrize("device", CPU_AND_CUDA)
    @pytest.mark.parametrize("eps_dtype", EPS_DTYPES)
    @pytest.mark.parametrize("clip", [True, False])
    def test_matches_float64_oracle_over_schedule(self, device, eps_dtype, clip):
        # scale 3 forces x0 outside [-1, 1] often, so the clip branch is exercised
        x, eps = make_inputs((2, 3, 17, 19), device, eps_dtype, scale=3.0)
        for abar, prev in PAIRS:
            got = ddim_step(x, eps, abar, prev, clip, impl="native")
            want = ddim_step_reference_float64(x, eps, abar, prev, clip)
            a = ddim_coefficients(abar, prev)[0]
            tol = 1e-6 * (1 + a) * max(1.0, x.abs().max().item() / 3)
            assert got.dtype == torch.float32
            torch.testing.assert_close(got.double(), want, atol=tol, rtol=1e-6)

    def test_float64_on_cpu_is_exact_to_rounding(self):
        x, eps = torch.randn(64, dtype=torch.float64), torch.randn(64, dtype=torch.float64)
        for abar, prev in PAIRS:
            got = ddim_step(x, eps, abar, prev, True, impl="native")
            torch.testing.assert_close(got, ddim_step_reference_float64(x, eps, abar, prev), atol=1e-12, rtol=0)

    def test_raw_eps_in_step_four_would_not_match(self):
        # DiffAE re-derives eps from the clipped x0; the naive form differs wherever clipping happened.
        x, eps = make_inputs((4096,), "cpu", torch.float32, scale=3.0)
        abar, prev = PAIRS[5]
        a, b, c, e = ddim_coefficients(abar, prev)
        naive = c * (a * x - b * eps).clamp(-1, 1) + e * eps
        got = ddim_step(x, eps, abar, prev, True, impl="native")
        assert (got - naive).abs().max() > 1e-2

    def test_last_step_returns_clipped_x0(self):
        x, eps = make_inputs((3, 8, 8), "cpu", torch.float32, scale=3.0)
        abar = SCHEDULE.alpha_bars[0]
        a, b, _, _ = ddim_coefficients(abar, 1.0)
        got = ddim_step(x, eps, abar, 1.0, True, impl="native")
        torch.testing.assert_close(got, (a * x - b * eps).clamp(-1, 1), atol=1e-6, rtol=0)
        assert got.abs().max() <= 1.0

    @pytest.mark.parametrize("device", CPU_AND_CUDA)
    def test_non_contiguous_and_batch_one(self, device):
        x, eps = make_inputs((1, 3, 16, 16), device, torch.float32)
        xt, et = x.transpose(2, 3), eps.transpose(2, 3)
        abar, prev = PAIRS[3]
        got = ddim_step(xt, et, abar, prev, impl="native")
        torch.testing.assert_close(got, ddim_step(xt.contiguous(), et.contiguous(), abar, prev, impl="native"))

    def test_does_not_modify_inputs(self):
        x, eps = make_inputs((2, 3, 4, 4), "cpu", torch.float32)
        x0, e0 = x.clone(), eps.clone()
        ddim_step(x, eps, *PAIRS[0], impl="native")
        assert torch.equal(x, x0)
        assert torch.equal(eps, e0)

    def test_opcheck(self):
        x, eps = make_inputs((2, 3, 4, 4), "cpu", torch.float32)
        torch.library.opcheck(torch.ops.agingrt.ddim_step.default, (x, eps, 0.5, 0.9, True))

    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({"eps": torch.zeros(2, 3)}, "eps must have the same shape as x_t"),
            ({"x_t": torch.zeros(2, 3, 4, dtype=torch.float16)}, "x_t must be float32"),
            ({"eps": torch.zeros(2, 3, 4, dtype=torch.float64)}, "eps must have x_t's dtype"),
            ({"eps": torch.zeros(2, 3, 4, dtype=torch.int32)}, "eps must be float32"),
            ({"alpha_bar_t": 1.0}, "alpha_bar_t must lie in"),
            ({"alpha_bar_t": -0.1}, "alpha_bar_t must lie in"),
            ({"alpha_bar_prev": 1.5}, "alpha_bar_prev must lie in"),
        ],
    )
    def test_bad_input_raises_clear_error(self, kwargs, message):
        args = {"x_t": torch.zeros(2, 3, 4), "eps": torch.zeros(2, 3, 4), "alpha_bar_t": 0.5, "alpha_bar_prev": 0.9}
        args.update(kwargs)
        with pytest.raises((ValueError, TypeError), match=message):
            ddim_step(**args, impl="native")


def test_torch_impl_is_the_oracle():
    x, eps = make_inputs((2, 3, 5, 5), "cpu", torch.float32)
    got = ddim_step(x, eps, 0.3, 0.6, True, impl="torch")
    torch.testing.assert_close(got.double(), ddim_step_reference_float64(x, eps, 0.3, 0.6), atol=1e-5, rtol=0)


def test_native_without_extension_raises(monkeypatch):
    import pyagingrt._extension as ext

    monkeypatch.setattr(ext, "_load", lambda: (None, "pyagingrt._C could not be imported (test)"))
    with pytest.raises(NativeExtensionError, match=r"pip install --no-build-isolation -e \."):
        ddim_step(torch.zeros(3), torch.zeros(3), 0.5, 0.9, impl="native")


def test_schedule_matches_diffae():
    assert SCHEDULE.timesteps == tuple(range(0, 1000, 40))
    assert SCHEDULE.alpha_bars[0] == pytest.approx(9.999000e-01, rel=1e-6)
    assert SCHEDULE.alpha_bars[-1] == pytest.approx(8.741305e-05, rel=1e-6)
    assert SCHEDULE.sampling_pairs()[-1][2] == 1.0
    assert SCHEDULE.inversion_pairs()[-1][2] == 0.0
