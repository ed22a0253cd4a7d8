"""inv_conv1x1: the compiled op against the float64 oracle, its autograd, and the folded ActNorm round trip.

Tolerances, per dtype of x (the reference is the oracle in float64 on the same, already rounded, inputs):
- float64: 1e-12. The kernel and conv2d both sum C <= 48 products of unit-scale values, a few hundred ulps at most.
- float32: rtol = atol = 1e-5, the float32 bound of docs/models/ageflow.md section 8 item 7; fp32 accumulation over
  C terms of N(0, 1/C)-scaled weights errs by about sqrt(C) * 6e-8 (4e-7 at C = 48), well inside it.
- float16 / bfloat16: fp32 accumulation, then one rounding of the output: 2^-11 (fp16) or 2^-8 (bf16) relative;
  rtol is twice that (the flash-attention rule of 2x the dtype's own error), atol 1e-5 covers fp32 sums near 0.
"""

from __future__ import annotations

import pytest
import torch
from torch.autograd.functional import jacobian

from pyagingrt import NativeExtensionError, has_native
from pyagingrt.ops import inv_conv1x1
from pyagingrt.training.layers import inv_conv1x1 as oracle
from tests.devices import CPU_AND_CUDA

native = pytest.mark.skipif(not has_native(), reason="pyagingrt._C is not built")

TOL = {
    torch.float64: {"rtol": 1e-12, "atol": 1e-12},
    torch.float32: {"rtol": 1e-5, "atol": 1e-5},
    torch.float16: {"rtol": 2 * 2**-11, "atol": 1e-5},
    torch.bfloat16: {"rtol": 2 * 2**-8, "atol": 1e-5},
}
# (B, C, H, W): batch 1 and N, Glow's smallest C, an odd C that pads every tile, and C = 48 (level 2).
SHAPES = [(1, 12, 5, 7), (3, 13, 4, 9), (2, 48, 3, 5)]
LAYOUTS = ["contiguous", "channels_last", "channel_slice", "transposed"]


def well_conditioned_weight(c: int, dtype=torch.float64, device="cpu") -> torch.Tensor:
    """Q from the QR of a Gaussian (Glow's init) times a mild diagonal scale: cond(W) <= exp(0.6)."""
    q, _ = torch.linalg.qr(torch.randn(c, c, dtype=torch.float64))
    s = torch.exp(0.1 * torch.randn(c, dtype=torch.float64).clamp(-3, 3))
    return (q * s).to(dtype=dtype, device=device)


def make_x(shape, dtype, device, layout):
    """x in the requested memory layout; "channel_slice" is the first C channels of a 2C tensor (Glow's split)."""
    b, c, h, w = shape
    if layout == "channel_slice":
        return torch.randn(b, 2 * c, h, w, device=device).to(dtype)[:, :c]
    if layout == "transposed":  # (H, W) does not flatten: the adapter copies
        return torch.randn(b, c, w, h, device=device).to(dtype).transpose(2, 3)
    x = torch.randn(shape, device=device).to(dtype)
    return x.to(memory_format=torch.channels_last) if layout == "channels_last" else x


def weight_dtype(x_dtype):
    """Half inputs take fp32 weights (production keeps the folded 1x1 in fp32)."""
    return torch.float32 if x_dtype in (torch.float16, torch.bfloat16) else x_dtype


def reference(x, weight, bias):
    return oracle.inv_conv1x1(x.double(), weight.double(), None if bias is None else bias.double())


@native
class TestInvConv1x1:
    @pytest.mark.parametrize("device", CPU_AND_CUDA)
    @pytest.mark.parametrize("dtype", list(TOL))
    @pytest.mark.parametrize("shape", SHAPES)
    @pytest.mark.parametrize("layout", LAYOUTS)
    @pytest.mark.parametrize("with_bias", [True, False])
    def test_matches_float64_oracle(self, device, dtype, shape, layout, with_bias):
        if device == "cuda" and dtype == torch.float64:
            pytest.skip("float64 runs on the CPU only (test_float64_on_cuda_raises)")
        x = make_x(shape, dtype, device, layout)
        w = well_conditioned_weight(shape[1], weight_dtype(dtype), device)
        b = torch.randn(shape[1], device=device).to(weight_dtype(dtype)) if with_bias else None
        y = inv_conv1x1(x, w, b, impl="native")
        assert y.dtype == dtype
        assert y.shape == x.shape
        if layout == "channels_last":
            assert y.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(y.double(), reference(x, w, b), **TOL[dtype])

    @pytest.mark.gpu
    @pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
    @pytest.mark.parametrize("shape", [(2, 192, 8, 8), (3, 384, 4, 4), (1, 1152, 4, 4)])
    @pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
    def test_large_channels_on_cuda(self, dtype, shape, layout):
        # fp32 NCHW takes the cuBLAS path from C = 128 up; the other cases take the tiled kernel.
        x = make_x(shape, dtype, "cuda", layout)
        w = well_conditioned_weight(shape[1], weight_dtype(dtype), "cuda")
        b = torch.randn(shape[1], device="cuda")
        y = inv_conv1x1(x, w, b, impl="native")
        # fp32 sums over up to 1152 terms: sqrt(1152) * 6e-8 ~ 2e-6, inside 1e-5.
        torch.testing.assert_close(y.double(), reference(x, w, b), **TOL[dtype])

    @pytest.mark.gpu
    def test_float64_on_cuda_raises(self):
        x = torch.zeros(1, 4, 2, 2, dtype=torch.float64, device="cuda")
        with pytest.raises(ValueError, match="float64 runs on the CPU only"):
            inv_conv1x1(x, torch.eye(4, dtype=torch.float64, device="cuda"), impl="native")

    @pytest.mark.parametrize("with_bias", [True, False])
    @pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
    def test_gradcheck(self, with_bias, layout):
        x = make_x((2, 3, 3, 4), torch.float64, "cpu", layout).requires_grad_()
        w = well_conditioned_weight(3).requires_grad_()
        b = torch.randn(3, dtype=torch.float64, requires_grad=True) if with_bias else None
        assert torch.autograd.gradcheck(lambda *a: inv_conv1x1(*a, impl="native"), (x, w, b))

    def test_gradgradcheck(self):
        x = torch.randn(2, 3, 2, 3, dtype=torch.float64, requires_grad=True)
        w = well_conditioned_weight(3).requires_grad_()
        b = torch.randn(3, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradgradcheck(lambda *a: inv_conv1x1(*a, impl="native"), (x, w, b))

    @pytest.mark.parametrize("device", CPU_AND_CUDA)
    def test_float32_gradients_match_oracle(self, device):
        x = torch.randn(2, 12, 5, 6, device=device, requires_grad=True)
        w = well_conditioned_weight(12, torch.float32, device).requires_grad_()
        b = torch.randn(12, device=device, requires_grad=True)
        dy = torch.randn(2, 12, 5, 6, device=device)
        got = torch.autograd.grad(inv_conv1x1(x, w, b, impl="native"), (x, w, b), dy)
        want = torch.autograd.grad(oracle.inv_conv1x1(x, w, b), (x, w, b), dy)
        # dW and db sum 60 pixels x 2 samples of unit-scale products in fp32: same 1e-5 budget, scaled by the sum.
        for g, r in zip(got, want, strict=True):
            torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-5 * r.abs().max().item())

    def test_auto_uses_native_autograd(self):
        x = torch.randn(1, 4, 2, 2, requires_grad=True)
        y = inv_conv1x1(x, well_conditioned_weight(4, torch.float32))
        assert "InvConv1x1" in y.grad_fn.name()

    @pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, 1e-12), (torch.float32, 1e-5)])
    @pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
    def test_folded_inverse_round_trip(self, dtype, tol, layout):
        # docs/models/ageflow.md section 8 items 2, 3 and 7: the same op with (W'^-1, -loc) inverts (W', b').
        c = 12
        loc, log_scale = 0.1 * torch.randn(c, dtype=torch.float64), 0.1 * torch.randn(c, dtype=torch.float64)
        folded = oracle.fold_actnorm_inv_conv1x1(loc, log_scale.exp(), well_conditioned_weight(c), dtype)
        x = make_x((2, c, 6, 5), dtype, "cpu", layout)
        z = inv_conv1x1(x, folded.weight, folded.bias, impl="native")
        x_back = inv_conv1x1(z, folded.weight_inv, folded.bias_inv, impl="native")
        assert (x_back - x).abs().max().item() <= tol

    @pytest.mark.parametrize(("dtype", "rtol"), [(torch.float64, 1e-12), (torch.float32, 1e-5)])
    def test_fold_matches_actnorm_then_conv(self, dtype, rtol):
        # docs/models/ageflow.md section 8 item 7: z = W (s * (x + loc)) == W' x + b'.
        c = 12
        loc, scale = 0.1 * torch.randn(c, dtype=torch.float64), (0.1 * torch.randn(c, dtype=torch.float64)).exp()
        w = well_conditioned_weight(c)
        x = torch.randn(2, c, 4, 5, dtype=torch.float64)
        want = oracle.inv_conv1x1(scale[None, :, None, None] * (x + loc[None, :, None, None]), w)
        folded = oracle.fold_actnorm_inv_conv1x1(loc, scale, w, dtype)
        got = inv_conv1x1(x.to(dtype), folded.weight, folded.bias, impl="native")
        torch.testing.assert_close(got.double(), want, rtol=rtol, atol=rtol * want.abs().max().item())

    def test_logdet_equals_slogdet_of_the_jacobian(self):
        # The op is linear in x; its Jacobian over the whole [C, H, W] map has log|det| = H * W * log|det W|.
        c, h, w_ = 4, 2, 3
        loc, scale = 0.1 * torch.randn(c, dtype=torch.float64), (0.3 * torch.randn(c, dtype=torch.float64)).exp()
        w = well_conditioned_weight(c)
        folded = oracle.fold_actnorm_inv_conv1x1(loc, scale, w, torch.float64)
        x = torch.randn(1, c, h, w_, dtype=torch.float64)
        for weight, bias, want in [
            (w, None, oracle.inv_conv1x1_logdet(w, h, w_)),
            (folded.weight, folded.bias, h * w_ * folded.logdet_per_pixel),
        ]:
            jac = jacobian(lambda v, a=weight, b=bias: inv_conv1x1(v, a, b, impl="native"), x)
            logdet = torch.linalg.slogdet(jac.reshape(c * h * w_, c * h * w_))[1]
            torch.testing.assert_close(logdet, torch.as_tensor(want, dtype=torch.float64), rtol=1e-10, atol=1e-10)

    def test_does_not_modify_inputs(self):
        x = torch.randn(2, 5, 3, 3, requires_grad=True)
        w = well_conditioned_weight(5, torch.float32).requires_grad_()
        b = torch.randn(5, requires_grad=True)
        before = [t.detach().clone() for t in (x, w, b)]
        inv_conv1x1(x, w, b, impl="native").sum().backward()
        for t, t0 in zip((x, w, b), before, strict=True):
            assert torch.equal(t.detach(), t0)

    def test_batch_of_n_equals_n_batches_of_one(self):
        x = torch.randn(4, 13, 3, 5)
        w, b = well_conditioned_weight(13, torch.float32), torch.randn(13)
        whole = inv_conv1x1(x, w, b, impl="native")
        parts = torch.cat([inv_conv1x1(x[i : i + 1], w, b, impl="native") for i in range(4)])
        assert torch.equal(whole, parts)

    @pytest.mark.parametrize("with_bias", [True, False])
    @pytest.mark.parametrize("requires_grad", [True, False])
    def test_opcheck(self, with_bias, requires_grad):
        x = torch.randn(2, 5, 3, 4, requires_grad=requires_grad)
        w = well_conditioned_weight(5, torch.float32).requires_grad_(requires_grad)
        b = torch.randn(5, requires_grad=requires_grad) if with_bias else None
        torch.library.opcheck(torch.ops.agingrt.inv_conv1x1.default, (x, w, b))

    def test_opcheck_channels_last_half(self):
        x = torch.randn(2, 5, 3, 4).half().to(memory_format=torch.channels_last)
        torch.library.opcheck(torch.ops.agingrt.inv_conv1x1.default, (x, torch.randn(5, 5), torch.randn(5)))

    @pytest.mark.parametrize(
        ("kwargs", "error", "message"),
        [
            ({"x": torch.zeros(4, 3, 3)}, ValueError, r"x must be 4-D \[B, C, H, W\], got shape \[4, 3, 3\]"),
            ({"weight": torch.zeros(4, 5)}, ValueError, r"weight must be \[C, C\] with C = x.size\(1\) = 4"),
            ({"weight": torch.zeros(3, 3)}, ValueError, r"weight must be \[C, C\].*got shape \[3, 3\]"),
            ({"bias": torch.zeros(5)}, ValueError, r"bias must be \[C\] with C = x.size\(1\) = 4, got shape \[5\]"),
            ({"x": torch.zeros(1, 4, 2, 2, dtype=torch.int32)}, TypeError, "x must be float32, float64, float16"),
            ({"weight": torch.eye(4, dtype=torch.float64)}, TypeError, r"weight must have x's dtype \(Float\)"),
            ({"weight": torch.eye(4).half()}, TypeError, "weight must have x's dtype"),
            ({"bias": torch.zeros(4, dtype=torch.float64)}, TypeError, r"bias must have weight's dtype \(Float\)"),
            ({"weight": torch.eye(4, device="meta")}, ValueError, "weight must be on the same device as x"),
        ],
    )
    def test_bad_input_raises_clear_error(self, kwargs, error, message):
        args = {"x": torch.zeros(1, 4, 2, 2), "weight": torch.eye(4), "bias": torch.zeros(4)}
        args.update(kwargs)
        with pytest.raises(error, match=message):
            inv_conv1x1(**args, impl="native")


def test_torch_impl_is_the_oracle():
    x, w, b = torch.randn(2, 6, 3, 3), well_conditioned_weight(6, torch.float32), torch.randn(6)
    assert torch.equal(inv_conv1x1(x, w, b, impl="torch"), oracle.inv_conv1x1(x, w, b))


def test_native_without_extension_raises(monkeypatch):
    import pyagingrt._extension as ext

    monkeypatch.setattr(ext, "_load", lambda: (None, "pyagingrt._C could not be imported (test)"))
    with pytest.raises(NativeExtensionError, match=r"pip install --no-build-isolation -e \."):
        inv_conv1x1(torch.zeros(1, 2, 2, 2), torch.eye(2), impl="native")
