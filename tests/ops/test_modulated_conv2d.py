"""modulated_conv2d: the compiled op against the float64 oracle, its autograd, and docs/models/cusp.md's invariants.

Tolerances (docs/models/cusp.md section 8: 1e-10 in float64, rtol 1e-5 in float32):
  * float64: 1e-10 absolute on O(1) outputs (the op and the oracle run the same ATen conv; only the order of
    the x*s and y*d roundings differs).
  * float32: docs/models/cusp.md's rtol 1e-5 is loose here (measured error <= 3e-7 * rms(reference)); we use rtol 2e-6
    plus atol 2e-6 * rms: the conv sums I*k*k = 5..45 products, so near-zero outputs carry a few float32 ulps
    (1.2e-7) of the output scale, not of their own.
  * float16 / bfloat16: the op's error against the float64 reference may be at most 2x the oracle's own error
    in that dtype plus one ulp of the output scale (flash-attention's "2x the PyTorch low-precision error").
"""

from __future__ import annotations

import pytest
import torch

from pyagingrt import NativeExtensionError, has_native
from pyagingrt.ops import modulated_conv2d
from pyagingrt.training.layers.modulated_conv2d import demodulation_coefficients
from pyagingrt.training.layers.modulated_conv2d import modulated_conv2d as oracle
from tests.devices import CPU_AND_CUDA

native = pytest.mark.skipif(not has_native(), reason="pyagingrt._C is not built")

# (up, padding, kernel): conv1-style 3x3 same, a valid 3x3, CUSP's conv0 (up 2), a 1x1 toRGB-style layer.
GEOMETRIES = [(1, 1, 3), (1, 0, 3), (2, 0, 3), (1, 0, 1)]
HALF_EPS = {torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}


def make_inputs(batch, in_ch, out_ch, size, k, dtype=torch.float64, device="cpu"):
    """x ~ N(0,1), W ~ N(0,1), s ~ 1 + 0.5 N(0,1) (s is an affine output with bias 1 in StyleGAN2)."""
    x = torch.randn(batch, in_ch, *size, dtype=torch.float64)
    w = torch.randn(out_ch, in_ch, k, k, dtype=torch.float64)
    s = 1 + 0.5 * torch.randn(batch, in_ch, dtype=torch.float64)
    style_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    return x.to(device, dtype), w.to(device, dtype), s.to(device, style_dtype)


def reference(x, w, s, demodulate, padding, up):
    """The float64 oracle on the (already rounded) inputs, on the CPU."""
    return oracle(x.double().cpu(), w.double().cpu(), s.double().cpu(), demodulate, padding, up)


def output_size(size, padding, up, k):
    return tuple((n + 2 * padding - k + 1) if up == 1 else (n - 1) * 2 + k for n in size)


@native
class TestModulatedConv2d:
    @pytest.mark.parametrize("device", CPU_AND_CUDA)
    @pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
    @pytest.mark.parametrize(("up", "padding", "k"), GEOMETRIES)
    @pytest.mark.parametrize("demodulate", [True, False])
    @pytest.mark.parametrize("batch", [1, 3])
    def test_matches_float64_oracle(self, device, dtype, up, padding, k, demodulate, batch):
        if device == "cuda" and dtype == torch.float64:
            pytest.skip("float64 is CPU-only")
        x, w, s = make_inputs(batch, 5, 6, (7, 9), k, dtype, device)  # odd sizes: 7x9 -> 15x19 for up 2
        got = modulated_conv2d(x, w, s, demodulate, padding, up, impl="native")
        want = reference(x, w, s, demodulate, padding, up)
        assert got.shape == (batch, 6, *output_size((7, 9), padding, up, k))
        assert got.dtype == dtype
        if dtype == torch.float64:
            torch.testing.assert_close(got.cpu(), want, atol=1e-10, rtol=0)
        else:
            rms = want.square().mean().sqrt().item()
            torch.testing.assert_close(got.cpu().double(), want, atol=2e-6 * rms, rtol=2e-6)

    @pytest.mark.parametrize("device", CPU_AND_CUDA)
    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
    @pytest.mark.parametrize(("up", "padding", "k"), GEOMETRIES[:3])
    def test_half_precision_within_twice_the_oracle_error(self, device, dtype, up, padding, k):
        x, w, s = make_inputs(3, 16, 8, (7, 7), k, dtype, device)
        want = reference(x, w, s, True, padding, up)
        got = modulated_conv2d(x, w, s, True, padding, up, impl="native").cpu().double()
        base = oracle(x, w, s.to(dtype), True, padding, up).cpu().double()  # the oracle run in dtype
        ulp = HALF_EPS[dtype] * want.abs().max().item()
        assert (got - want).abs().max() <= 2 * (base - want).abs().max() + ulp

    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
    def test_torch_impl_takes_the_same_mixed_dtypes(self, dtype):
        # half x with float32 styles is the native contract; the oracle path must accept it too
        x, w, s = make_inputs(2, 8, 4, (6, 6), 3, dtype)
        got = modulated_conv2d(x, w, s, True, 1, 1, impl="torch")
        assert got.dtype == dtype
        want = reference(x, w, s, True, 1, 1)
        # one rounding of x*s, the half conv's own error, one rounding of y*d: a few ulps of the output scale
        torch.testing.assert_close(got.double(), want, atol=4 * HALF_EPS[dtype] * want.abs().max().item(), rtol=0)

    @pytest.mark.parametrize("device", CPU_AND_CUDA)
    @pytest.mark.parametrize(("up", "padding", "k"), GEOMETRIES[:3])
    def test_channels_last_and_non_contiguous(self, device, up, padding, k):
        x, w, s = make_inputs(3, 8, 4, (7, 7), k, torch.float32, device)
        want = modulated_conv2d(x, w, s, True, padding, up, impl="native")
        got_cl = modulated_conv2d(x.to(memory_format=torch.channels_last), w, s, True, padding, up, impl="native")
        assert got_cl.is_contiguous(memory_format=torch.channels_last)
        # A transposed view is neither NCHW- nor NHWC-dense: the adapter must copy it first.
        xt = x.transpose(2, 3).contiguous().transpose(2, 3)
        assert not xt.is_contiguous()
        s_nc = s.t().contiguous().t()  # non-contiguous styles too
        got_nc = modulated_conv2d(xt, w, s_nc, True, padding, up, impl="native")
        # channels_last changes the conv's summation order in float32: compare at the float32 tolerance
        torch.testing.assert_close(got_cl, want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got_nc, want, atol=1e-5, rtol=1e-5)

    @pytest.mark.parametrize(("up", "padding", "k"), GEOMETRIES)
    @pytest.mark.parametrize("demodulate", [True, False])
    @pytest.mark.parametrize("batch", [1, 3])
    def test_oracle_forms_agree(self, up, padding, k, demodulate, batch):
        # docs/models/cusp.md section 8 item 1: activation scaling == grouped per-sample weights.
        x, w, s = make_inputs(batch, 5, 6, (7, 7), k)
        scaled = oracle(x, w, s, demodulate, padding, up, form="scaled")
        grouped = oracle(x, w, s, demodulate, padding, up, form="grouped")
        torch.testing.assert_close(scaled, grouped, atol=1e-10, rtol=0)

    def test_precomputed_q_equals_weight_q(self):
        x, w, s = make_inputs(2, 5, 6, (7, 7), 3)
        q = w.square().sum(dim=(2, 3))  # [O, I]
        got = modulated_conv2d(x, w, s, True, 1, 1, q=q, impl="native")
        torch.testing.assert_close(got, modulated_conv2d(x, w, s, True, 1, 1, impl="native"), atol=1e-12, rtol=0)
        torch.testing.assert_close(modulated_conv2d(x, w, s, True, 1, 1, q=q, impl="torch"), got, atol=1e-10, rtol=0)

    def test_demodulated_weights_have_unit_norm(self):
        # sum_{i,k} (W s d)^2 = v / (v + eps) = 1 - O(eps / v) per (b, o). The op's effective weights are read
        # back with impulses: input b*I + i is a 1x1 image that is 1 in channel i only, and padding k-1
        # makes the output the (flipped) kernel W'[b, :, i] = W[:, i] * s[b, i] * d[b, :].
        batch, in_ch, out_ch, k = 2, 6, 5, 3
        _, w, s = make_inputs(batch, in_ch, out_ch, (1, 1), k)
        x = torch.eye(in_ch, dtype=torch.float64).repeat(batch, 1)[:, :, None, None]  # [B*I, I, 1, 1]
        y = modulated_conv2d(x, w, s.repeat_interleave(in_ch, dim=0), True, k - 1, 1, impl="native")  # [B*I, O, k, k]
        norms = y.reshape(batch, in_ch, out_ch, k * k).square().sum(dim=(1, 3))  # [B, O]
        d = demodulation_coefficients(w, s)  # [B, O]
        torch.testing.assert_close(norms, 1 - 1e-8 * d.square(), atol=1e-13, rtol=0)
        assert ((1 - norms).abs() < 1e-6).all()

    def test_output_variance_is_one_for_unit_gaussian_input(self):
        # docs/models/cusp.md section 8 item 1: x iid N(0,1) at 64x64, I >= 64 -> Var(y) = sum (W s d)^2 = 1 at interior
        # pixels, per (b, o). 8 independent inputs per style pool 8*62*62 pixels, so the estimate's standard
        # error (about 0.035 / sqrt(8) with neighbour correlation) is well inside the 0.05 band.
        batch, draws, in_ch, out_ch = 2, 8, 64, 4
        _, w, s = make_inputs(batch, in_ch, out_ch, (1, 1), 3, torch.float32)
        x = torch.randn(batch * draws, in_ch, 64, 64)
        y = modulated_conv2d(x, w, s.repeat_interleave(draws, dim=0), True, 1, 1, impl="native")  # [B*D, O, 64, 64]
        interior = y[:, :, 1:-1, 1:-1].reshape(batch, draws, out_ch, -1)  # [B, D, O, 62*62]
        var = interior.transpose(1, 2).reshape(batch, out_ch, -1).double().var(dim=2)  # [B, O]
        assert ((var - 1).abs() < 0.05).all(), var

    @pytest.mark.parametrize(("up", "padding", "k"), GEOMETRIES[:3])
    @pytest.mark.parametrize("demodulate", [True, False])
    def test_gradcheck(self, up, padding, k, demodulate):
        x, w, s = make_inputs(2, 3, 4, (4, 5), k)
        args = [t.requires_grad_() for t in (x, w, s)]

        def fn(x, w, s):
            return modulated_conv2d(x, w, s, demodulate, padding, up, impl="native")

        # fast mode checks random projections v^T J u against finite differences: any wrong term shows up,
        # at a fraction of the cost of the full Jacobian
        assert torch.autograd.gradcheck(fn, args, fast_mode=True)

    def test_gradcheck_with_precomputed_q(self):
        x, w, s = make_inputs(2, 3, 4, (4, 4), 3)
        q = w.square().sum(dim=(2, 3)) + 0.1  # any positive Q: the gradient reaches q, not the weight's Q
        args = [t.requires_grad_() for t in (x, w, s, q)]
        assert torch.autograd.gradcheck(
            lambda x, w, s, q: modulated_conv2d(x, w, s, q=q, impl="native"), args, fast_mode=True
        )

    @pytest.mark.parametrize("device", CPU_AND_CUDA)
    @pytest.mark.parametrize(("up", "padding", "k"), GEOMETRIES[:3])
    def test_gradients_match_oracle_autograd(self, device, up, padding, k):
        dtype = torch.float64 if device == "cpu" else torch.float32
        x, w, s = make_inputs(3, 4, 5, (6, 7), k, dtype, device)
        gy = torch.randn(3, 5, *output_size((6, 7), padding, up, k), dtype=dtype, device=device)
        grads = []
        for impl in ("native", "torch"):
            leaves = [t.detach().clone().requires_grad_() for t in (x, w, s)]
            out = modulated_conv2d(*leaves, True, padding, up, impl=impl)
            grads.append(torch.autograd.grad(out, leaves, gy))
        tol = 1e-10 if dtype == torch.float64 else 1e-4  # float32: sums over up to 5*6*7*9 products
        for got, want in zip(*grads, strict=True):
            torch.testing.assert_close(got, want, atol=tol, rtol=tol)

    def test_opcheck(self):
        x, w, s = make_inputs(2, 3, 4, (5, 5), 3, torch.float32)
        for args in [(x, w, s, True, 1, 1, 1e-8, None), (x, w, s, False, 0, 2, 1e-8, None)]:
            torch.library.opcheck(torch.ops.agingrt.modulated_conv2d.default, args)
        q = w.square().sum(dim=(2, 3))
        leaves = tuple(t.clone().requires_grad_() for t in (x, w, s, q))
        torch.library.opcheck(torch.ops.agingrt.modulated_conv2d.default, (*leaves[:3], True, 1, 1, 1e-8, leaves[3]))

    def test_does_not_modify_inputs(self):
        x, w, s = make_inputs(2, 3, 4, (5, 5), 3, torch.float32)
        copies = [t.clone() for t in (x, w, s)]
        modulated_conv2d(x, w, s, True, 1, 1, impl="native")
        for t, c in zip((x, w, s), copies, strict=True):
            assert torch.equal(t, c)

    @pytest.mark.parametrize(
        ("change", "message"),
        [
            ({"x": torch.zeros(2, 3, 5)}, "x must be 4-D"),
            ({"weight": torch.zeros(4, 3, 3)}, "weight must be 4-D"),
            ({"styles": torch.zeros(2, 3, 1)}, "styles must be 2-D"),
            ({"styles": torch.zeros(3, 3)}, r"styles must have shape \[B, I\] = \[2, 3\]"),
            ({"styles": torch.zeros(2, 4)}, r"styles must have shape \[B, I\] = \[2, 3\]"),
            ({"weight": torch.zeros(4, 5, 3, 3)}, "weight's input channels"),
            ({"up": 3}, "up must be 1"),
            ({"up": 2, "padding": 1}, "padding must be 0 when up=2"),
            ({"padding": -1}, "padding must be >= 0"),
            ({"eps": 0.0}, "eps must be > 0"),
            ({"x": torch.zeros(2, 3, 1, 1)}, "must be at least the kernel size"),
            ({"weight": torch.zeros(4, 3, 3, 3, dtype=torch.float64)}, "weight must have x's dtype"),
            ({"styles": torch.zeros(2, 3, dtype=torch.float16)}, "styles must be float32 for Float x"),
            ({"x": torch.zeros(2, 3, 5, 5, dtype=torch.int32)}, "x must be float32"),
            ({"q": torch.zeros(4, 4)}, r"q must have shape \[O, I\] = \[4, 3\]"),
            ({"weight": torch.zeros(4, 3, 3, 3, device="meta")}, "weight must be on the same device as x"),
        ],
    )
    def test_bad_input_raises_clear_error(self, change, message):
        args = {"x": torch.zeros(2, 3, 5, 5), "weight": torch.zeros(4, 3, 3, 3), "styles": torch.ones(2, 3)}
        args.update(change)
        with pytest.raises((ValueError, TypeError, RuntimeError), match=message):
            modulated_conv2d(**args, impl="native")

    @pytest.mark.gpu
    def test_device_mismatch_on_cuda(self):
        x, w, s = make_inputs(2, 3, 4, (5, 5), 3, torch.float32, "cuda")
        with pytest.raises(ValueError, match="styles must be on the same device as x"):
            modulated_conv2d(x, w, s.cpu(), impl="native")


def test_native_without_extension_raises(monkeypatch):
    import pyagingrt._extension as ext

    monkeypatch.setattr(ext, "_load", lambda: (None, "pyagingrt._C could not be imported (test)"))
    x, w, s = make_inputs(1, 2, 2, (3, 3), 1, torch.float32)
    with pytest.raises(NativeExtensionError, match=r"pip install --no-build-isolation -e \."):
        modulated_conv2d(x, w, s, impl="native")
