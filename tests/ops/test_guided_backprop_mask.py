"""guided_relu_backward, guided_backprop_mask (CUSP Eq. (1)) and the explicit VGG backward, against the oracles.

Tolerances (docs/models/cusp.md section 8: 1e-10 in float64, rtol 1e-5 in float32):
  * guided_relu_backward selects values, it computes nothing: bit-exact in every dtype.
  * mask, float64: 1e-10. float32 (and half inputs, which the op reads into float32): M <= 1 is a ratio of a
    29-tap blur of the normalised map to twice its std, each a few float32 roundings (~1e-7 relative) of O(1)
    values; 2e-6 absolute bounds it with room.
  * the graph-safe entry guided_backprop_mask_with_taps runs the sigma entry's code path on the taps from
    guided_backprop_mask_taps: bit for bit, no tolerance. Its torch impl is structure_mask's maths in float32 (the
    kernel keeps float64 statistics): MASK_ATOL. The taps builder against the oracle's gaussian_kernel1d: each tap
    is one exp and one division by a K-term sum in another order, measured <= 1 ulp (2^-52); 4 ulps allowed.
  * sequential backward vs autograd, float64: 1e-10. float32: the explicit backward and autograd run the same
    convolutions, but the guided ReLUs make the gradient's support depend on the sign of values that are
    rounded differently along the two paths; M then moves by O(1e-6) where a sign flips near zero: 1e-4.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pyagingrt import InputError, NativeExtensionError, has_native
from pyagingrt.ops import (
    ChannelAffine,
    guided_backprop_mask,
    guided_backprop_mask_sequential,
    guided_backprop_mask_taps,
    guided_backprop_mask_with_taps,
    guided_relu_backward,
)
from pyagingrt.training.layers.guided_backprop_mask import GuidedReLU, structure_mask
from pyagingrt.training.layers.guided_backprop_mask import guided_backprop_mask as oracle_mask
from pyagingrt.training.layers.guided_backprop_mask import guided_relu_backward as oracle_relu
from pyagingrt.training.layers.masked_gaussian_blur import gaussian_kernel1d
from tests.devices import CPU_AND_CUDA

native = pytest.mark.skipif(not has_native(), reason="pyagingrt._C is not built")
ALL_DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
MASK_ATOL = {torch.float64: 1e-10, torch.float32: 2e-6, torch.float16: 2e-6, torch.bfloat16: 2e-6}
TAPS_ATOL = 4 * 2**-52
MASK_CASES = [
    ((1, 3, 16, 16), 5, 1.1),
    ((3, 3, 13, 17), 29, 4.85),  # CUSP's k_gb and sigma_gb at 224 on an odd image smaller than K
    ((2, 1, 9, 12), 1, 0.7),  # K = 1: no blur
    ((2, 4, 11, 10), 7, 0.0),  # sigma = 0: the unit impulse
    ((1, 2, 10, 10), 101, 3.0),  # K far larger than the image: taps beyond it never count
]


def random_gradient(shape, dtype=torch.float64, device="cpu"):
    """A gradient-like map: heavy-tailed, with a bright blob so the mask has structure to find."""
    g = torch.randn(shape, dtype=torch.float64) ** 3
    h, w = shape[-2:]
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    g += 5 * torch.exp(-((yy - h / 3) ** 2 + (xx - w / 2) ** 2) / 8.0)
    return g.to(device, dtype)


@native
class TestGuidedReluBackward:
    @pytest.mark.parametrize("device", CPU_AND_CUDA)
    @pytest.mark.parametrize("dtype", ALL_DTYPES)
    @pytest.mark.parametrize("shape", [(1, 3, 5, 7), (4, 6, 9, 11), (37,)])
    def test_bit_exact_against_oracle(self, device, dtype, shape):
        if device == "cuda" and dtype == torch.float64:
            pytest.skip("float64 is CPU-only")
        g = torch.randn(shape).to(device, dtype)
        a = torch.randn(shape).to(device, dtype)
        a.view(-1)[::5] = 0  # the boundary: act == 0 blocks the gradient
        g.view(-1)[::7] = 0
        got = guided_relu_backward(g, a, impl="native")
        assert got.dtype == dtype
        assert torch.equal(got, oracle_relu(g, a))

    @pytest.mark.parametrize("device", CPU_AND_CUDA)
    def test_non_contiguous_and_channels_last(self, device):
        g = torch.randn(2, 8, 6, 5, device=device)
        a = torch.randn(2, 8, 6, 5, device=device)
        got = guided_relu_backward(g.to(memory_format=torch.channels_last), a, impl="native")
        assert got.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(got, oracle_relu(g, a))
        gt, at = g.transpose(1, 3), a.transpose(1, 3)  # neither NCHW- nor NHWC-dense
        assert torch.equal(guided_relu_backward(gt, at, impl="native"), oracle_relu(gt, at))

    def test_nan_is_blocked_like_the_oracle(self):
        g = torch.tensor([float("nan"), 1.0, 2.0, -1.0])
        a = torch.tensor([1.0, float("nan"), 3.0, 2.0])
        got = guided_relu_backward(g, a, impl="native")
        assert torch.equal(got, oracle_relu(g, a))
        assert torch.equal(got, torch.tensor([0.0, 0.0, 2.0, 0.0]))

    def test_opcheck(self):
        g, a = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5)
        torch.library.opcheck(torch.ops.agingrt.guided_relu_backward.default, (g, a))

    @pytest.mark.parametrize(
        ("act", "message"),
        [
            (torch.zeros(2, 3), "act must have the same shape as grad_out"),
            (torch.zeros(2, 3, 4, dtype=torch.float64), "act must have grad_out's dtype"),
            (torch.zeros(2, 3, 4, device="meta"), "act must be on the same device as grad_out"),
        ],
    )
    def test_bad_input_raises_clear_error(self, act, message):
        with pytest.raises((ValueError, TypeError), match=message):
            guided_relu_backward(torch.zeros(2, 3, 4), act, impl="native")

    def test_integer_input_raises(self):
        with pytest.raises(ValueError, match="grad_out must be float32"):
            guided_relu_backward(torch.zeros(3, dtype=torch.int64), torch.zeros(3, dtype=torch.int64), impl="native")


@native
class TestGuidedBackpropMask:
    @pytest.mark.parametrize("device", CPU_AND_CUDA)
    @pytest.mark.parametrize("dtype", ALL_DTYPES)
    @pytest.mark.parametrize(("shape", "kernel_size", "sigma"), MASK_CASES)
    def test_matches_float64_oracle(self, device, dtype, shape, kernel_size, sigma):
        if device == "cuda" and dtype == torch.float64:
            pytest.skip("float64 is CPU-only")
        g = random_gradient(shape, dtype, device)
        got = guided_backprop_mask(g, kernel_size, sigma, impl="native")
        want = structure_mask(g.double().cpu(), kernel_size, sigma)
        assert (want < 1).any()  # not saturated: the comparison sees the blur and the statistics
        assert got.shape == (shape[0], 1, *shape[2:])
        assert got.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
        torch.testing.assert_close(got.cpu().double(), want, atol=MASK_ATOL[dtype], rtol=0)

    @pytest.mark.parametrize("device", CPU_AND_CUDA)
    def test_strided_gradients_need_no_copy(self, device):
        g = random_gradient((2, 3, 12, 14), torch.float32, device)
        want = guided_backprop_mask(g, 5, 1.5, impl="native")
        for view in (g.to(memory_format=torch.channels_last), g.transpose(2, 3).contiguous().transpose(2, 3)):
            torch.testing.assert_close(guided_backprop_mask(view, 5, 1.5, impl="native"), want, atol=1e-7, rtol=0)
        # an expanded (stride 0) channel axis is a valid input too
        one = g[:, :1].expand(2, 3, 12, 14)
        torch.testing.assert_close(
            guided_backprop_mask(one, 5, 1.5, impl="native"),
            guided_backprop_mask(one.contiguous(), 5, 1.5, impl="native"),
            atol=0,
            rtol=0,
        )

    @pytest.mark.parametrize("device", CPU_AND_CUDA)
    def test_mask_in_unit_interval_and_saturates(self, device):
        m = guided_backprop_mask(random_gradient((4, 3, 32, 32), torch.float32, device), 9, 2.0, impl="native")
        assert m.min() >= 0
        assert m.max() <= 1
        assert (m == 1).any()  # the blob exceeds 2 std: the clip is exercised
        assert (m < 0.5).any()

    @pytest.mark.parametrize("scale", [1e-6, 0.37, 250.0])
    def test_invariant_to_gradient_scale(self, scale):
        g = random_gradient((2, 3, 15, 15))
        want = guided_backprop_mask(g, 7, 1.7, impl="native")
        # float64: the 1e-15 guards are ~1e-15 relative to the normalised map, far below 1e-10
        torch.testing.assert_close(guided_backprop_mask(g * scale, 7, 1.7, impl="native"), want, atol=1e-10, rtol=0)

    @pytest.mark.parametrize("device", CPU_AND_CUDA)
    def test_zero_gradient_gives_zero_mask(self, device):
        m = guided_backprop_mask(torch.zeros(2, 3, 8, 8, device=device), 5, 1.0, impl="native")
        assert torch.equal(m, torch.zeros_like(m))

    @pytest.mark.parametrize("device", CPU_AND_CUDA)
    def test_batch_equals_single_images_bit_for_bit(self, device):
        g = random_gradient((4, 3, 14, 18), torch.float32, device)
        batched = guided_backprop_mask(g, 9, 2.2, impl="native")
        singles = torch.cat([guided_backprop_mask(g[i : i + 1], 9, 2.2, impl="native") for i in range(4)])
        assert torch.equal(batched, singles)

    @pytest.mark.parametrize("device", CPU_AND_CUDA)
    def test_repeat_is_bit_identical(self, device):
        g = random_gradient((3, 3, 40, 40), torch.float32, device)
        assert torch.equal(
            guided_backprop_mask(g, 29, 4.85, impl="native"), guided_backprop_mask(g, 29, 4.85, impl="native")
        )

    def test_torch_impl_matches_native(self):
        g = random_gradient((2, 3, 12, 12), torch.float16)
        got = guided_backprop_mask(g, 5, 1.0, impl="torch")
        assert got.dtype == torch.float32  # the same dtype rule on both paths
        torch.testing.assert_close(got, guided_backprop_mask(g, 5, 1.0, impl="native"), atol=2e-6, rtol=0)

    def test_opcheck(self):
        g = random_gradient((2, 3, 8, 9), torch.float32)
        torch.library.opcheck(torch.ops.agingrt.guided_backprop_mask.default, (g, 5, 1.2))

    @pytest.mark.parametrize(
        ("grad", "kernel_size", "sigma", "message"),
        [
            (torch.zeros(3, 8, 8), 5, 1.0, "grad must be 4-D"),
            (torch.zeros(1, 3, 1, 1), 5, 1.0, "at least 2 pixels"),
            (torch.zeros(1, 0, 4, 4), 5, 1.0, "at least one channel"),
            (torch.zeros(1, 3, 8, 8, dtype=torch.int32), 5, 1.0, "grad must be float32"),
            (torch.zeros(1, 3, 8, 8), 4, 1.0, "kernel_size must be a positive odd"),
            (torch.zeros(1, 3, 8, 8), 0, 1.0, "kernel_size must be a positive odd"),
            (torch.zeros(1, 3, 8, 8), -3, 1.0, "kernel_size must be a positive odd"),
            (torch.zeros(1, 3, 8, 8), 5, -0.5, "sigma must be finite and >= 0"),
            (torch.zeros(1, 3, 8, 8), 5, float("nan"), "sigma must be finite and >= 0"),
        ],
    )
    def test_bad_input_raises_clear_error(self, grad, kernel_size, sigma, message):
        with pytest.raises(ValueError, match=message):  # the op itself (for torch.ops users)
            torch.ops.agingrt.guided_backprop_mask(grad, kernel_size, sigma)
        if "kernel_size" in message or "sigma" in message:
            with pytest.raises(InputError, match=message):  # the wrapper checks first, for both impls
                guided_backprop_mask(grad, kernel_size, sigma, impl="torch")

    # --- the graph-safe entry: guided_backprop_mask_taps, then guided_backprop_mask_with_taps -----------------
    @pytest.mark.parametrize("device", CPU_AND_CUDA)
    @pytest.mark.parametrize("dtype", ALL_DTYPES)
    @pytest.mark.parametrize(("shape", "kernel_size", "sigma"), MASK_CASES)
    def test_with_taps_equals_sigma_entry_bit_for_bit(self, device, dtype, shape, kernel_size, sigma):
        if device == "cuda" and dtype == torch.float64:
            pytest.skip("float64 is CPU-only")
        g = random_gradient(shape, dtype, device)
        taps = guided_backprop_mask_taps(kernel_size, sigma, device=device, impl="native")
        assert taps.device == g.device
        got = guided_backprop_mask_with_taps(g, taps, impl="native")
        assert torch.equal(got, guided_backprop_mask(g, kernel_size, sigma, impl="native"))

    @pytest.mark.parametrize(("kernel_size", "sigma"), [(1, 0.7), (7, 0.0), (29, 4.85), (101, 3.0), (63, 0.01)])
    def test_taps_match_the_oracle(self, kernel_size, sigma):
        taps = guided_backprop_mask_taps(kernel_size, sigma, impl="native")
        assert taps.dtype == torch.float64
        assert taps.device.type == "cpu"
        torch.testing.assert_close(taps, gaussian_kernel1d(sigma, kernel_size), atol=TAPS_ATOL, rtol=0)
        assert torch.equal(
            guided_backprop_mask_taps(kernel_size, sigma, impl="torch"), gaussian_kernel1d(sigma, kernel_size)
        )
        meta = guided_backprop_mask_taps(kernel_size, sigma, device="meta", impl="native")
        assert (meta.shape, meta.dtype, meta.device.type) == ((kernel_size,), torch.float64, "meta")

    @pytest.mark.parametrize("device", CPU_AND_CUDA)
    @pytest.mark.parametrize("dtype", ALL_DTYPES)
    def test_with_taps_torch_impl_matches_native(self, device, dtype):
        if device == "cuda" and dtype == torch.float64:
            pytest.skip("float64 is CPU-only")
        g = random_gradient((3, 3, 13, 17), dtype, device)
        taps = guided_backprop_mask_taps(29, 4.85, device=device)
        got = guided_backprop_mask_with_taps(g, taps, impl="torch")
        assert got.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
        want = guided_backprop_mask_with_taps(g, taps, impl="native")
        torch.testing.assert_close(got, want, atol=MASK_ATOL[dtype], rtol=0)

    def test_with_taps_opcheck(self):
        g = random_gradient((2, 3, 8, 9), torch.float32)
        torch.library.opcheck(
            torch.ops.agingrt.guided_backprop_mask_with_taps.default, (g, guided_backprop_mask_taps(5, 1.2))
        )

    def test_taps_opcheck(self):
        torch.library.opcheck(torch.ops.agingrt.guided_backprop_mask_taps.default, (29, 4.85), {"device": None})

    def test_with_taps_meta_gives_the_shape(self):
        g = torch.empty(3, 2, 12, 10, device="meta", dtype=torch.float16)
        mask = torch.ops.agingrt.guided_backprop_mask_with_taps(g, torch.empty(7, device="meta", dtype=torch.float64))
        assert (mask.shape, mask.dtype, mask.device.type) == ((3, 1, 12, 10), torch.float32, "meta")

    @pytest.mark.parametrize(
        ("taps", "error", "message"),
        [
            (
                torch.rand(2, 5, dtype=torch.float64),
                ValueError,
                r"taps must be 1-D \[K\] with K odd.*got shape \[2, 5\]",
            ),
            (torch.rand(4, dtype=torch.float64), ValueError, r"taps must be 1-D \[K\] with K odd.*got shape \[4\]"),
            (torch.rand(5), TypeError, "taps must be float64 .*got Float"),
            (torch.rand(5, dtype=torch.float64, device="meta"), ValueError, "taps must be on the same device as grad"),
        ],
    )
    def test_with_taps_bad_taps_raise_clear_error(self, taps, error, message):
        with pytest.raises(error, match=f"guided_backprop_mask_with_taps: {message}"):
            torch.ops.agingrt.guided_backprop_mask_with_taps(torch.rand(2, 3, 6, 6), taps)

    @pytest.mark.parametrize(
        ("grad", "message"),
        [(torch.zeros(3, 8, 8), "grad must be 4-D"), (torch.zeros(1, 3, 1, 1), "grad must have at least 2 pixels")],
    )
    def test_with_taps_bad_grad_raises_clear_error(self, grad, message):
        with pytest.raises(ValueError, match=f"guided_backprop_mask_with_taps: {message}"):
            torch.ops.agingrt.guided_backprop_mask_with_taps(grad, guided_backprop_mask_taps(5, 1.0))

    @pytest.mark.parametrize(
        ("kernel_size", "sigma", "message"),
        [(4, 1.0, "kernel_size must be a positive odd"), (5, -1.0, "sigma must be finite and >= 0")],
    )
    def test_taps_bad_arguments_raise(self, kernel_size, sigma, message):
        with pytest.raises(ValueError, match=f"guided_backprop_mask_taps: {message}"):
            torch.ops.agingrt.guided_backprop_mask_taps(kernel_size, sigma)
        for impl in ("native", "torch"):
            with pytest.raises(InputError, match=message):  # the wrapper checks first, for both impls
                guided_backprop_mask_taps(kernel_size, sigma, impl=impl)

    @pytest.mark.gpu
    def test_with_taps_replays_in_a_cuda_graph(self):
        """Capture the op over static buffers, copy new gradients and taps in, replay: equals an eager run."""
        grad = random_gradient((3, 3, 40, 40), torch.float16, "cuda")
        static_grad, static_taps = grad.clone(), guided_backprop_mask_taps(29, 4.85, device="cuda")
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm up outside the capture, as torch.cuda.graphs recommends
            guided_backprop_mask_with_taps(static_grad, static_taps, impl="native")
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = guided_backprop_mask_with_taps(static_grad, static_taps, impl="native")
        for seed, sigma in enumerate((1.5, 0.0, 6.0)):
            new_grad = random_gradient((3, 3, 40, 40), torch.float16, "cuda") * (seed + 1)
            static_grad.copy_(new_grad.flip(-1))
            static_taps.copy_(guided_backprop_mask_taps(29, sigma, device="cuda"))
            graph.replay()
            assert torch.equal(out, guided_backprop_mask(new_grad.flip(-1), 29, sigma, impl="native"))


def vgg_like(dtype=torch.float64, inplace_relu=False):
    """A small random VGG: conv-relu x2, pool, conv-relu, pool, flatten, fc-relu, fc (for 16x12 inputs)."""
    relu = (lambda: nn.ReLU(inplace=True)) if inplace_relu else GuidedReLU
    layers = [
        nn.Conv2d(3, 6, 3, padding=1),
        relu(),
        nn.Conv2d(6, 6, 3, padding=1),
        relu(),
        nn.MaxPool2d(2, 2),
        nn.Conv2d(6, 8, 3, padding=1),
        relu(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(8 * 4 * 3, 16),
        relu(),
        nn.Linear(16, 7),
    ]
    return [layer.to(dtype) for layer in layers]


def dex_like_preprocess():
    """DEX's (x + 1) * 127.5 - mean as one per-channel affine map (docs/models/cusp.md section 3.6)."""
    mean = torch.tensor([123.680, 116.779, 103.939])
    return ChannelAffine(torch.full((3,), 127.5), 127.5 - mean)


def oracle_net(layers, preprocess, dtype):
    guided = [GuidedReLU() if isinstance(layer, nn.ReLU) else layer for layer in layers]
    return nn.Sequential(preprocess, *guided).to(dtype)


class TestGuidedBackpropSequential:
    @pytest.mark.parametrize("impl", [pytest.param("native", marks=native), "torch"])
    @pytest.mark.parametrize("reduce", ["all", "max"])
    @pytest.mark.parametrize("batch", [1, 3])
    def test_matches_autograd_oracle_float64(self, impl, reduce, batch):
        layers, pre = vgg_like(), dex_like_preprocess()
        x = torch.rand(batch, 3, 16, 12, dtype=torch.float64) * 2 - 1
        want = oracle_mask(oracle_net(layers, pre, torch.float64), x, 5, 1.3, reduce)
        got = guided_backprop_mask_sequential(layers, x, 5, 1.3, reduce, preprocess=pre.double(), impl=impl)
        assert got.dtype == torch.float64
        torch.testing.assert_close(got, want, atol=1e-10, rtol=0)

    @native
    def test_matches_autograd_oracle_float32(self):
        layers, pre = vgg_like(torch.float32), dex_like_preprocess()
        x = torch.rand(3, 3, 16, 12) * 2 - 1
        want = oracle_mask(oracle_net(layers, pre, torch.float32), x, 5, 1.3, "all")
        got = guided_backprop_mask_sequential(layers, x, 5, 1.3, "all", preprocess=pre, impl="native")
        torch.testing.assert_close(got, want, atol=2e-6, rtol=0)

    @native
    def test_plain_inplace_relu_is_treated_as_guided(self):
        x = torch.rand(2, 3, 16, 12, dtype=torch.float64)
        guided = vgg_like()
        plain = vgg_like(inplace_relu=True)
        for a, b in zip(guided, plain, strict=True):
            b.load_state_dict(a.state_dict())
        want = guided_backprop_mask_sequential(guided, x, 5, 1.0, impl="native")
        torch.testing.assert_close(guided_backprop_mask_sequential(plain, x, 5, 1.0, impl="native"), want)

    def test_batch_equals_single_images(self):
        layers = vgg_like()
        x = torch.rand(3, 3, 16, 12, dtype=torch.float64)
        batched = guided_backprop_mask_sequential(layers, x, 5, 1.3, "max", impl="torch")
        singles = torch.cat([guided_backprop_mask_sequential(layers, x[i : i + 1], 5, 1.3, "max") for i in range(3)])
        torch.testing.assert_close(batched, singles, atol=1e-12, rtol=0)

    @pytest.mark.parametrize(
        ("layers", "message"),
        [
            ([nn.Conv2d(3, 4, 3), nn.Sigmoid(), nn.Flatten(), nn.Linear(4, 2)], "cannot run the backward of Sigmoid"),
            ([nn.MaxPool2d(3, 2), nn.Flatten(), nn.Linear(3, 2)], "non-overlapping max-pools only"),
            ([nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect")], "explicit zero padding"),
            ([nn.Conv2d(3, 4, 3, padding=1)], r"must end in logits \[B, classes\]"),
        ],
    )
    def test_unsupported_networks_raise(self, layers, message):
        with pytest.raises(InputError, match=message):
            guided_backprop_mask_sequential(layers, torch.rand(1, 3, 4, 4), 3, 1.0, impl="torch")

    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({"reduce": "mean"}, "reduce must be 'all' or 'max'"),
            ({"kernel_size": 6}, "kernel_size must be a positive odd"),
            ({"sigma": -1.0}, "sigma must be finite"),
            ({"x": torch.rand(3, 16, 12)}, "x must be 4-D"),
        ],
    )
    def test_bad_arguments_raise(self, kwargs, message):
        args = {"layers": vgg_like(torch.float32), "x": torch.rand(1, 3, 16, 12), "kernel_size": 5, "sigma": 1.0}
        args.update(kwargs)
        with pytest.raises(InputError, match=message):
            guided_backprop_mask_sequential(**args, impl="torch")


def test_graph_safe_entry_without_extension(monkeypatch):
    """Without _C: impl="native" raises; impl="auto" uses the oracle's taps and structure_mask's maths, which
    equal the oracle itself bit for bit in float64 (the same ops on the same taps)."""
    import pyagingrt._extension as ext

    monkeypatch.setattr(ext, "_load", lambda: (None, "pyagingrt._C could not be imported (test)"))
    with pytest.raises(NativeExtensionError, match=r"pip install --no-build-isolation -e \."):
        guided_backprop_mask_taps(29, 4.85, impl="native")
    taps = guided_backprop_mask_taps(29, 4.85)
    g = random_gradient((2, 3, 20, 20))
    with pytest.raises(NativeExtensionError, match=r"pip install --no-build-isolation -e \."):
        guided_backprop_mask_with_taps(g, taps, impl="native")
    torch.testing.assert_close(guided_backprop_mask_with_taps(g, taps), structure_mask(g, 29, 4.85), atol=0, rtol=0)
