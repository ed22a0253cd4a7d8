"""CUSP's native runner (pyagingrt/backends/native_cusp.py) against the torch backend, tiny config.

Each rewrite is checked on its own (age tables, stacked style affine, explicit guided backprop with its resize
adjoint and pool backward, the skip blur and the mask reduction through their graph-safe ops) and end to end,
with const / random / no noise, explicit per-sample sigmas and sigma_m = sigma_g = 0. The CUDA layout
(channels_last) and the low-precision code path (fp32 MLPs, s / d, blur, mask statistics, RGB accumulator;
per-sample gradient rescaling) also run on CPU, the latter in bf16; fp16 parity and CUDA-graph replay carry the
``gpu`` mark.

Weights: ``CUSPAdapter.build`` (the official init, noise strengths N(0, 0.1^2) so the noise modes differ).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from pyagingrt import has_native
from pyagingrt.api import Engine
from pyagingrt.backends import native_cusp
from pyagingrt.backends.native import NativeEngine
from pyagingrt.backends.native_cusp import (
    CUSPRunner,
    age_tables,
    demodulation,
    resize_matrix,
    stacked_style_affine,
)
from pyagingrt.errors import InputError
from pyagingrt.models.cusp import CUSPAdapter
from pyagingrt.ops import guided_backprop_mask
from pyagingrt.training.layers.modulated_conv2d import demodulation_coefficients
from pyagingrt.training.models.cusp import CUSP, CUSPConfig
from tests.parity import assert_low_precision_parity, make_native_engine, make_torch_engine, max_abs_err

native = pytest.mark.skipif(not has_native(), reason="pyagingrt._C is not built")
ADAPTER = CUSPAdapter()
TINY = CUSPConfig.tiny()  # 56x56, DEX input 32: the bilinear resize path is live
TINY_NO_RESIZE = TINY.replace(resolution=32)  # DEX input 32 = H: no resize
H = TINY.resolution
AGES = [20.0, 33.0, 47.0, 69.0]
# Native fp32 vs torch fp32: the same maths in another order (stacked GEMMs, tables computed on a batch of 101,
# s / m and W c pre-normalisation undone in the epilogue, separable FIRs, transposed-conv data gradients instead
# of autograd's), a few fp32 ulps per op over ~10 layers; measured <= 4.2e-7 on outputs in [0, 1], so 1e-5 (the
# project-wide FP32_TOL of tests/api/test_models_api.py).
FP32_TOL = 1e-5
# The structure mask in [0, 1] from the explicit backward vs autograd: measured <= 5e-7; same bound.
MASK_TOL = 1e-5
# A gradient through 16 layers summed in another order: relative to its largest entry (measured 2.5e-7).
GRAD_RTOL = 1e-5
# float64 identities (tables, stacked GEMM, resize weights): a
# few ulps of values of order 1 (docs/models/cusp.md 8: 1e-10).
F64 = {"atol": 1e-10, "rtol": 1e-10}
OPTION_CASES = [
    pytest.param({}, id="defaults-9-0-const"),
    pytest.param({"sigma_m": [0.0, 4.0, 9.0, 2.5], "sigma_g": [0.0, 2.0, 9.0, 0.0]}, id="per-sample-sigmas"),
    pytest.param({"sigma_m": 0.0, "sigma_g": 0.0}, id="sigmas-0-0"),
    pytest.param({"sigma_m": 0.0, "sigma_g": 3.0}, id="sigma-m-0-no-mask"),
    pytest.param({"noise": "random", "noise_seeds": [5, 6, 7, 8]}, id="random-noise"),
    pytest.param({"noise": "none", "sigma_m": 6.0, "sigma_g": 1.0}, id="no-noise"),
]


def tiny_module(config: CUSPConfig = TINY, seed: int = 1) -> CUSP:
    torch.manual_seed(seed)
    return ADAPTER.build(config).eval().requires_grad_(False)


def torch_engine(module: CUSP, device: str = "cpu", precision: str = "fp32") -> Engine:
    return make_torch_engine(ADAPTER, module.config, module, device, precision)


def native_engine(module: CUSP, device: str = "cpu", precision: str = "fp32", **runner_kwargs) -> NativeEngine:
    return make_native_engine(ADAPTER, module.config, module, CUSPRunner, device, precision, **runner_kwargs)


def images(batch: int, seed: int = 2, device: str = "cpu", size: int = H) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed)).to(device)


def prepared(runner: CUSPRunner, x: torch.Tensor, ages, **options) -> tuple[dict[str, torch.Tensor], dict]:
    targets = ADAPTER.validate_ages(runner.config, torch.tensor(ages, dtype=torch.float64))
    opts = ADAPTER.validate_options(runner.config, x.shape[0], options)
    return runner.prepare(x, targets, torch.Generator().manual_seed(0), opts), opts


# --- end to end ----------------------------------------------------------------------------------------------
def test_load_native_picks_the_cusp_runner():
    native = native_engine(tiny_module())
    assert native.runner_name == "CUSPRunner"
    assert native.runner.channels_last  # every device
    assert native.graphs is None
    assert native.runner.winograd  # CPU fp32 default
    # tiny: the decoder's conv1s with >= 16 channels each side use it; the DEX's 4-8 channel convs stay direct
    blocks = native.runner.blocks
    assert [b.conv1.winograd_u is not None for b in blocks] == [min(b.conv1.weight.shape[:2]) >= 16 for b in blocks]


@pytest.fixture
def winograd_everywhere(monkeypatch):
    """Every 3x3 'same' conv of runners built in the test runs by Winograd (the tiny DEX's convs have 4-8
    channels, below the runner's 16-channel floor, so the paper DEX's Winograd path is exercised here)."""
    monkeypatch.setattr(native_cusp, "WINOGRAD_MIN_CHANNELS", 1)


@pytest.mark.parametrize("options", OPTION_CASES)
def test_fp32_with_every_3x3_conv_by_winograd_matches_torch_backend(options, winograd_everywhere):
    module = tiny_module()
    native = native_engine(module)
    assert all(t[3] is not None and t[4] is not None for g in native.runner.dex_groups for t in g)
    x = images(len(AGES))
    out = native.age(x, AGES, seed=3, **options)
    torch.testing.assert_close(out, torch_engine(module).age(x, AGES, seed=3, **options), atol=FP32_TOL, rtol=0)


def test_fp32_with_direct_convs_matches_torch_backend():
    """F.conv2d for every conv (the CUDA and low-precision choice) on CPU in fp32."""
    module = tiny_module()
    native = native_engine(module, winograd=False)
    assert all(b.conv1.winograd_u is None for b in native.runner.blocks)
    x = images(len(AGES))
    out = native.age(x, AGES, seed=3, sigma_m=6.0, sigma_g=1.0)
    torch.testing.assert_close(out, torch_engine(module).age(x, AGES, seed=3, sigma_m=6.0, sigma_g=1.0),
                               atol=FP32_TOL, rtol=0)  # fmt: skip


def test_winograd_is_refused_outside_cpu_fp32():
    with pytest.raises(ValueError, match="winograd runs on the CPU in fp32 only"):
        CUSPRunner(ADAPTER, tiny_module(), TINY, torch.device("cpu"), torch.bfloat16, winograd=True)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("options", OPTION_CASES)
def test_fp32_matches_torch_backend(options, channels_last):
    module = tiny_module()
    x = images(len(AGES))
    out = native_engine(module, channels_last=channels_last).age(x, AGES, seed=3, **options)
    ref = torch_engine(module).age(x, AGES, seed=3, **options)
    assert out.shape == (len(AGES), 3, H, H)
    torch.testing.assert_close(out, ref, atol=FP32_TOL, rtol=0)


def test_options_change_the_output():
    """The parity above would pass vacuously if sigmas, ages or noise had no effect on this tiny model."""
    native = native_engine(tiny_module())
    x = images(1)
    base = native.age(x, 30, sigma_m=0.0, sigma_g=0.0)
    assert max_abs_err(native.age(x, 30, sigma_m=9.0, sigma_g=0.0), base) > 1e-4, "mask blur has no effect"
    assert max_abs_err(native.age(x, 30, sigma_m=0.0, sigma_g=9.0), base) > 1e-4, "global blur has no effect"
    assert max_abs_err(native.age(x, 60, sigma_m=0.0, sigma_g=0.0), base) > 1e-4, "age has no effect"
    assert max_abs_err(native.age(x, 30, sigma_m=0.0, sigma_g=0.0, noise="none"), base) > 1e-4, "noise unused"


def test_bf16_follows_the_low_precision_parity_rule():
    """The fp16 code path in bf16, which CPU can run: output by the 2x rule, mask no worse than 2x torch's."""
    module = tiny_module()
    x = images(len(AGES))
    ref = torch_engine(module).age(x, AGES)
    torch_bf16 = torch_engine(module, precision="bf16")
    native = native_engine(module, precision="bf16")
    assert_low_precision_parity(native.age(x, AGES), torch_bf16.age(x, AGES), ref)
    xs = x * 2 - 1
    mask_ref = module.structure_mask(xs)
    with torch.no_grad():
        mask_native = native.runner.mask(xs)
    mask_torch = torch_bf16.module.structure_mask(xs.to(torch.bfloat16)).float()
    native_err = float((mask_native - mask_ref).abs().mean())
    torch_err = float((mask_torch - mask_ref).abs().mean())
    assert native_err <= 2 * torch_err + 1e-3, f"bf16 mask error {native_err:.3g} vs torch's {torch_err:.3g}"


def test_batch_independence():
    """docs/models/cusp.md 8 item 6: with explicit sigmas and seeded
    noise, sample b of a batch of 4 equals its batch-1 run."""
    runner = native_engine(tiny_module()).runner
    options = {"sigma_m": [9.0, 0.0, 3.0, 6.0], "sigma_g": [0.0, 2.0, 9.0, 1.0], "noise": "random"}
    options["noise_seeds"] = [11, 12, 13, 14]
    inputs, opts = prepared(runner, images(4), AGES, **options)
    with torch.no_grad():
        batch = runner.forward(inputs, opts)
        singles = [runner.forward({k: v[i : i + 1] for k, v in inputs.items()}, opts) for i in range(4)]
    # CPU convolutions pick other kernels per batch size: fp32 reordering as in FP32_TOL.
    torch.testing.assert_close(batch, torch.cat(singles), atol=FP32_TOL, rtol=0)


def test_forward_needs_no_host_values():
    """Meta tensors hold no values, so any host read in forward() (.item(), bool(t), .tolist()) would raise: the
    property CUDA-graph capture needs. Also checks the paper-size shapes (224 without, 256 with the DEX resize)."""
    for config in (TINY, CUSPConfig.paper224(), CUSPConfig.paper256()):
        with torch.device("meta"):
            module = CUSP(config).eval().requires_grad_(False)
        runner = CUSPRunner(ADAPTER, module, config, torch.device("meta"), torch.float16, channels_last=True)
        size, kernel = config.resolution, 2 * (config.skip_resolution // 6) + 1
        inputs = {
            "images": torch.empty(2, 3, size, size, device="meta"),
            "ages": torch.empty(2, dtype=torch.long, device="meta"),
        }
        for name in ("blur_g", "blur_m"):
            inputs[f"{name}.taps"] = torch.empty(2, 2, kernel, device="meta")
            inputs[f"{name}.flags"] = torch.empty(2, dtype=torch.int32, device="meta")
        for res in config.block_resolutions:
            for j in (0, 1):
                inputs[f"noise.b{res}.conv{j}"] = torch.empty(2, 1, res, res, device="meta")
        for options in ({"sigma_m": (1.0, 0.0), "noise": "random"}, {"sigma_m": (0.0, 0.0), "noise": "const"}):
            out = runner.forward(inputs, options)
            assert out.shape == (2, 3, size, size)
            assert out.dtype == torch.float32


def test_forward_needs_no_host_values_without_extension(monkeypatch):
    """A build without _C runs the graph-safe ops' torch impls (impl="auto"): they must read no host value either."""
    import pyagingrt._extension as ext

    monkeypatch.setattr(ext, "_load", lambda: (None, "pyagingrt._C could not be imported (test)"))
    test_forward_needs_no_host_values()


def test_graph_key_holds_only_what_changes_the_captured_work():
    runner = native_engine(tiny_module()).runner
    a = runner.graph_key({"sigma_m": (9.0, 1.0), "sigma_g": (0.0, 2.0), "noise": "random", "noise_seeds": (1, 2)})
    b = runner.graph_key({"sigma_m": (3.0, 0.0), "sigma_g": (5.0, 0.0), "noise": "random", "noise_seeds": (7, 8)})
    assert a == b  # sigma values and seeds are input tensors
    assert runner.graph_key({"sigma_m": (0.0, 0.0), "noise": "random"}) != a  # no DEX pass at all
    assert runner.graph_key({"sigma_m": (9.0, 1.0), "noise": "const"}) != a


@pytest.mark.parametrize(
    ("targets", "options", "match"),
    [
        (torch.tensor([0, 101]), {}, "must lie in"),
        (torch.tensor([-1, 30]), {}, "must lie in"),
        (torch.tensor([20.0, 30.0]), {}, "integer age class"),
        (torch.tensor([30]), {}, "one integer age class per image"),
        (torch.tensor([20, 30]), {"sigma_m": (1.0,), "sigma_g": (1.0, 1.0)}, "one value per image"),
        (torch.tensor([20, 30]), {"sigma_m": (1.0, 1.0), "sigma_g": (1.0, 1.0), "noise": "loud"}, "noise must be"),
    ],
)
def test_prepare_rejects_bad_input(targets, options, match):
    runner = native_engine(tiny_module()).runner
    opts = {"sigma_m": (1.0, 1.0), "sigma_g": (0.0, 0.0), "noise": "const", **options}
    with pytest.raises(InputError, match=match):
        runner.prepare(images(2), targets, None, opts)


def test_prepare_rejects_wrong_crop_size_and_unseeded_random_noise():
    runner = native_engine(tiny_module()).runner
    opts = {"sigma_m": (1.0,), "sigma_g": (0.0,), "noise": "const"}
    with pytest.raises(InputError, match=f"shape \\[B, 3, {H}, {H}\\]"):
        runner.prepare(torch.rand(1, 3, H + 4, H + 4), torch.tensor([30]), None, opts)
    with pytest.raises(InputError, match="needs a seed"):
        runner.prepare(images(1), torch.tensor([30]), None, {**opts, "noise": "random", "noise_seeds": None})


# --- rewrites 1 and 2: age tables and the stacked style affine ------------------------------------------------
def test_age_tables_equal_per_call_styles():
    """float64: w_a, conv0 styles and demodulation per class equal the model's per-call computation."""
    module = tiny_module().double()
    w_a, styles, demods = age_tables(module)
    classes = torch.tensor([0, 20, 57, 100])
    onehot = F.one_hot(classes, TINY.attr_dim).double()
    ws = module.mapping(torch.randn(len(classes), TINY.enc_channels[-1], dtype=torch.float64), onehot)
    for i, res in enumerate(TINY.block_resolutions):
        conv0 = getattr(module.image_dec, f"b{res}").conv0
        per_call = conv0.affine(ws[:, 3 * i])  # block i reads ws[:, 3i] for conv0 (docs/models/cusp.md 3.3)
        torch.testing.assert_close(w_a[classes], ws[:, 3 * i], **F64)
        torch.testing.assert_close(styles[i][classes], per_call, **F64)
        torch.testing.assert_close(demods[i][classes], demodulation_coefficients(conv0.weight, per_call), **F64)


def test_runner_tables_equal_per_call_fp32_styles():
    """The runner's fp32 tables against the fp32 model's per-call styles for a batch of 4 classes."""
    module = tiny_module()
    runner = native_engine(module).runner
    classes = torch.tensor([0, 20, 57, 100])
    ws = module.mapping(torch.randn(len(classes), TINY.enc_channels[-1]), F.one_hot(classes, TINY.attr_dim).float())
    for i, res in enumerate(TINY.block_resolutions):
        conv0 = getattr(module.image_dec, f"b{res}").conv0
        styles = conv0.affine(ws[:, 3 * i])  # [4, I]
        demods = demodulation_coefficients(conv0.weight, styles)  # [4, O]
        # fp32 MLPs on a batch of 101 vs 4 (other GEMM blocking): measured 1.2e-6 on styles of size ~1, so an
        # absolute bound of 1e-5 of the largest entry.
        for table, ref in ((runner.s0_tables[i], styles), (runner.d0_tables[i], demods)):
            assert table.dtype == torch.float32
            torch.testing.assert_close(table[classes], ref, atol=1e-5 * float(ref.abs().max()), rtol=0)


def test_stacked_style_affine_equals_the_ten_affines():
    module = tiny_module().double()
    weight, bias, sizes = stacked_style_affine(module)
    w_s = torch.randn(3, TINY.w_dim, dtype=torch.float64)
    parts = F.linear(w_s, weight, bias).split(sizes, dim=1)
    assert len(parts) == 2 * len(TINY.block_resolutions)
    for i, res in enumerate(TINY.block_resolutions):
        block = getattr(module.image_dec, f"b{res}")
        torch.testing.assert_close(parts[2 * i], block.conv1.affine(w_s), **F64)
        # the toRGB gain moved inside the sum: float64 reordering only
        torch.testing.assert_close(parts[2 * i + 1], block.torgb.affine(w_s) * block.torgb.weight_gain, **F64)


def test_demodulation_is_the_oracle():
    gen = torch.Generator().manual_seed(4)
    weight = torch.randn(5, 7, 3, 3, generator=gen, dtype=torch.float64)
    styles = torch.randn(2, 7, generator=gen, dtype=torch.float64)
    q = weight.square().sum(dim=(2, 3))
    torch.testing.assert_close(demodulation(styles, q), demodulation_coefficients(weight, styles), **F64)


# --- rewrite 6: the guided-backprop mask without autograd -----------------------------------------------------
@pytest.mark.parametrize("config", [TINY, TINY_NO_RESIZE], ids=["resize-56-to-32", "no-resize"])
@pytest.mark.parametrize("reduce", ["all", "max"])
@pytest.mark.parametrize("dex_convs", ["default", "winograd"])
def test_explicit_mask_equals_the_autograd_mask(config, reduce, dex_convs, monkeypatch):
    if dex_convs == "winograd":  # every DEX conv, forward and backward, as winograd_conv3x3
        monkeypatch.setattr(native_cusp, "WINOGRAD_MIN_CHANNELS", 1)
    config = config.replace(dex_outclass=reduce)
    module = tiny_module(config, seed=2)  # seed 1 kills every ReLU of the 32x32 DEX (zero gradient)
    runner = CUSPRunner(ADAPTER, module, config, torch.device("cpu"), torch.float32)
    by_winograd = [t[3] is not None for g in runner.dex_groups for t in g]
    assert all(by_winograd) if dex_convs == "winograd" else not any(by_winograd)
    x = images(3, size=config.resolution) * 2 - 1
    with torch.enable_grad():
        xg = x.clone().requires_grad_(True)
        logits = module.dex(xg)
        objective = logits.sum() if reduce == "all" else logits.max(dim=1).values.sum()
        (grad_ref,) = torch.autograd.grad(objective, xg)
    with torch.no_grad():
        grad = runner.dex_input_gradient(x)
        mask = runner.mask(x)
    scale = float(grad_ref.abs().max())
    assert scale > 0, "guided backprop gave a zero gradient: the test would be vacuous"
    torch.testing.assert_close(grad, grad_ref, atol=GRAD_RTOL * scale, rtol=0)
    mask_ref = module.structure_mask(x)
    torch.testing.assert_close(mask, mask_ref, atol=MASK_TOL, rtol=0)
    assert float(mask_ref.std()) > 0.05, "a flat mask would make the comparison vacuous"


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_dead_gradient_gives_a_zero_mask_not_nan(precision):
    """fc8 = 0 makes G = 0: M must be 0 (docs/models/cusp.md 3.6 step 6),
    also through the low-precision per-sample rescale."""
    module = tiny_module()
    module.dex.fc8_101.weight.zero_()
    native = native_engine(module, precision=precision)
    with torch.no_grad():
        mask = native.runner.mask(images(2) * 2 - 1)
    assert torch.equal(mask, torch.zeros(2, 1, H, H))
    out = native.age(images(2), [25, 50], sigma_m=9.0)
    assert bool(torch.isfinite(out).all())


def test_low_precision_rescale_is_a_positive_per_sample_scale():
    runner = native_engine(tiny_module(), precision="bf16").runner
    g = torch.randn(3, 4, 5, 5, generator=torch.Generator().manual_seed(9)).to(torch.bfloat16)
    g[1] = 0
    g[2] *= 1e-30  # far below fp16's range; bf16 keeps it, and the fp32 factor brings it back to O(1)
    out = runner._rescale(g.clone())
    peaks = out.float().abs().flatten(1).amax(dim=1)
    torch.testing.assert_close(peaks, torch.tensor([1.0, 0.0, 1.0]), atol=2**-7, rtol=0)  # one bf16 ulp of 1
    assert torch.equal(out.float() > 0, g.float() > 0)  # signs kept: the guided ReLU masks are unchanged


@native
def test_mask_reduction_is_the_compiled_op():
    """runner.mask = the Eq. (1) op on the explicit gradient, bit for bit: the load-time taps are the op's own."""
    runner = native_engine(tiny_module(seed=2)).runner
    x = images(2) * 2 - 1
    with torch.no_grad():
        grad = runner.dex_input_gradient(x)
        want = guided_backprop_mask(grad, TINY.gb_kernel_size, TINY.gb_sigma, impl="native")
        assert torch.equal(runner.mask(x), want)
    assert runner.mask_taps.dtype == torch.float64


@pytest.mark.parametrize(("size_in", "size_out"), [(56, 32), (256, 224), (32, 56)])
def test_resize_matrix_and_its_adjoint(size_in, size_out):
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(2, 3, size_in, size_in, generator=gen, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, 3, size_out, size_out, generator=gen, dtype=torch.float64)
    r = resize_matrix(size_in, size_out)  # [out, in]
    u = F.interpolate(x, size=(size_out, size_out), mode="bilinear", align_corners=False)
    torch.testing.assert_close(r @ x.detach() @ r.t(), u.detach(), **F64)
    (adjoint,) = torch.autograd.grad(u, x, g)
    torch.testing.assert_close(r.t() @ g @ r, adjoint, **F64)


def test_pool_backward_routes_ties_like_autograd():
    """Integer-valued activations tie often; the scatter uses max_pool2d's own argmax, as autograd does."""
    gen = torch.Generator().manual_seed(7)
    h = torch.randint(0, 3, (2, 4, 8, 8), generator=gen).double().requires_grad_(True)
    pooled, index = F.max_pool2d(h, 2, return_indices=True)
    g = torch.randn(pooled.shape, generator=gen, dtype=torch.float64)
    (ref,) = torch.autograd.grad(pooled, h, g)
    assert torch.equal(CUSPRunner._unpool(g, index, h), ref)


# --- rewrite 7: the skip blur through the graph-safe op ---------------------------------------------------------
@pytest.mark.parametrize(
    ("sigma_m", "sigma_g"),
    [([9.0, 0.0, 3.0], [0.0, 2.0, 9.0]), ([0.0, 0.0, 0.0], [1.0, 0.0, 4.0]), ([5.0, 5.0, 2.5], [5.0, 0.0, 2.5])],
    ids=["mixed", "no-mask", "equal-sigmas"],
)
def test_skip_blur_equals_the_model(sigma_m, sigma_g):
    """The runner's two table-driven blur calls against CUSP.skip_blur (two oracle masked_gaussian_blur calls)
    with the same mask. fp32 both sides, the same taps rounded once to fp32: they differ in summation order
    only, a few fp32 ulps of |F| <= ~10 (1e-5, FP32_TOL)."""
    module = tiny_module(seed=2)
    runner = native_engine(module).runner
    x = images(3)
    inputs, opts = prepared(runner, x, AGES[:3], sigma_m=sigma_m, sigma_g=sigma_g)
    xs = inputs["images"] * 2 - 1
    with torch.no_grad():
        skip = runner.encoders(xs)[0].float()  # [B, C2, S, S]
        needs_mask = runner._needs_mask(opts)
        got = runner.skip_blur(skip, xs, inputs, needs_mask)
        size = skip.shape[-1]
        mask = F.avg_pool2d(runner.mask(xs), H // size) if needs_mask else skip.new_zeros(3, 1, size, size)
        sm, sg = (torch.tensor(opts[k], dtype=torch.float64) for k in ("sigma_m", "sigma_g"))
        want = module.skip_blur(skip, mask, sm, sg)
    torch.testing.assert_close(got, want, atol=FP32_TOL, rtol=0)
    for b in range(3):
        if sigma_m[b] == 0 and sigma_g[b] == 0:
            assert torch.equal(got[b], skip[b])  # both sigmas 0: the exact identity, as the model


class _OpCounter(TorchDispatchMode):
    """Counts the operators that reach the dispatcher (custom ops included) while active."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func.overloadpacket)
        self.calls[name] = self.calls.get(name, 0) + 1
        return func(*args, **(kwargs or {}))


@native
@pytest.mark.parametrize(
    ("options", "blurs", "masks"),
    [({"sigma_m": 9.0, "sigma_g": 2.0}, 2, 1), ({"sigma_m": 0.0, "sigma_g": 3.0}, 1, 0)],
    ids=["with-mask", "no-mask"],
)
def test_forward_runs_the_compiled_graph_safe_ops(options, blurs, masks):
    """With _C built, forward() must run the skip blur and the mask through the compiled with-taps ops (and no
    host-side tables or sigma ops), so the rewrite cannot slip back to a torch workaround unnoticed."""
    runner = native_engine(tiny_module()).runner
    inputs, opts = prepared(runner, images(2), AGES[:2], **options)
    with torch.no_grad(), _OpCounter() as counter:
        runner.forward(inputs, opts)
    calls = counter.calls
    assert calls.get("agingrt.masked_gaussian_blur_with_taps", 0) == blurs
    assert calls.get("agingrt.guided_backprop_mask_with_taps", 0) == masks
    relus = len(runner.dex_fcs) + sum(len(group) for group in runner.dex_groups)  # one per DEX ReLU
    assert calls.get("agingrt.guided_relu_backward", 0) == (relus if masks else 0)
    for host_op in ("masked_gaussian_blur", "masked_gaussian_blur_tables", "guided_backprop_mask"):
        assert f"agingrt.{host_op}" not in calls


# --- GPU: fp16 parity and CUDA-graph replay --------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_low_precision_parity_on_cuda(precision):
    module = tiny_module()
    x = images(len(AGES), device="cuda")
    ref_engine = torch_engine(module, "cuda")
    ref = ref_engine.age(x, AGES)
    torch_low = torch_engine(module, "cuda", precision).age(x, AGES)
    native = native_engine(module, "cuda", precision)
    assert native.graphs is not None
    assert native.runner.channels_last
    assert_low_precision_parity(native.age(x, AGES), torch_low, ref)
    # docs/models/cusp.md 8: mean absolute mask difference < 1e-2 against the fp32 reference
    xs = x * 2 - 1
    with torch.no_grad():
        mask = native.runner.mask(xs)
    assert float((mask - ref_engine.module.structure_mask(xs)).abs().mean()) < 1e-2


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("noise", ["const", "random"])
def test_graph_replay_equals_eager_on_cuda(precision, noise):
    native = native_engine(tiny_module(), "cuda", precision)
    runner = native.runner
    for batch in (4, 3):  # bucket 4 exactly, and 3 padded into bucket 4
        options = {"sigma_m": [9.0, 0.0, 4.0, 2.0][:batch], "sigma_g": [0.0, 3.0, 1.0, 9.0][:batch], "noise": noise}
        if noise == "random":
            options["noise_seeds"] = list(range(batch))
        inputs, opts = prepared(runner, images(batch, seed=batch, device="cuda"), AGES[:batch], **options)
        with torch.no_grad():
            eager = runner.forward(inputs, opts)
        replayed = native.graphs.run(lambda static, o=opts: runner.forward(static, o), inputs, runner.graph_key(opts))
        if batch == 4:
            # Same kernels on the same shapes: replay reproduces the eager run (deterministic kernels only:
            # the scatter writes distinct indices, the resize adjoint is a GEMM).
            torch.testing.assert_close(replayed, eager, atol=0, rtol=0)
        else:
            # Padded rows change the batch size, so cuDNN may pick other algorithms: fp32 reordering as in
            # FP32_TOL; fp16 outputs in [0, 1] differ by a few fp16 ulps of 1 (2^-10 each).
            tol = FP32_TOL if precision == "fp32" else 4e-3
            torch.testing.assert_close(replayed, eager, atol=tol, rtol=0)
    # (bucket 1, const + mask) from load(), plus (bucket 4, this key), shared by both calls
    assert len(native.graphs) == (2 if noise == "const" else 3)
