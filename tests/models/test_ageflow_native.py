"""AgeFlow's native runner (pyagingrt/backends/native_ageflow.py) against the torch backend, tiny config.

Each rewrite is checked on its own in float64, where the folds must be exact algebra (folded ActNorm + 1x1 in
both directions, zero conv with its gain folded and the 1-padding as a border bias map, a whole folded flow
step of G and of T), then end to end against the torch backend in fp32, and for the encode -> decode round
trip (docs/models/ageflow.md section 8 items 3, 7, 8). The CUDA choices (channels_last) and the low-precision path
(coupling nets in a half type, fp32 or opt-in float64 stream) also run on CPU, the latter in bf16; fp16,
CUDA-graph replay and the no-sync check carry the ``gpu`` mark.

Weights: ``AgeFlowAdapter.build`` perturbs the zero-initialised layers (docs/models/ageflow.md 8 preamble); on top of
that the zero convs get a bias and a gain exp(3 scale) != 1 and T's LU convs move off the reversal permutation, so a
wrong fold of any of them changes the output (a zero bias, unit gain or permutation would hide it).

Tolerances are max-abs, in model space (pixels in [-0.5, 0.5]) or on outputs in [0, 1] (model space x 256/255):
- float64 folds: 1e-12, a few hundred ulps of unit-scale sums (docs/models/ageflow.md 8 items 2 and 7); float64 engine
  vs float64 module and round trips: 1e-10, docs/models/ageflow.md's
  tiny float64 round-trip bound (item 3), ~30 sequential ops.
- fp32 native vs torch: 1e-5 (docs/models/ageflow.md section 8 item 3's tiny fp32 bound); the same maths in another
  order (folded affine, summed-tap border map added after the conv, gather instead of a one-hot matmul). Measured 0.7e-6
  to 0.9e-6 over five seeds, the size of each side's own distance to the float64 module (torch 7.2e-7, native 6.9e-7).
- fp32 round trip: 1e-5 (docs/models/ageflow.md section 8 item 3; measured 5.7e-7). bf16 coupling nets round trip: 1e-3,
  the native-engine bound of item 3
  (measured 7.7e-5 on tiny; see test_native_round_trip for why half nets cost anything).
- bf16 / fp16 parity: tests/parity.py's rule, at most twice torch's own low-precision error against fp32.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import pyagingrt
from pyagingrt import RandomWeightsWarning
from pyagingrt.api import Engine
from pyagingrt.backends.native import NativeEngine
from pyagingrt.backends.native_ageflow import (
    AgeFlowRunner,
    border_bias_map,
    fold_flow_step,
    fold_zero_conv,
    step_forward,
    step_reverse,
    unsqueeze2d_into,
)
from pyagingrt.errors import InputError
from pyagingrt.models.ageflow import AgeFlowAdapter
from pyagingrt.ops import inv_conv1x1
from pyagingrt.training.layers.glow import FlowStep, InvConv2dLU, ZeroConv2d, squeeze2d, unsqueeze2d
from pyagingrt.training.models.ageflow import AgeFlow, AgeFlowConfig, postprocess_output, quantize_input
from tests.parity import assert_low_precision_parity, make_native_engine, make_torch_engine, max_abs_err

ADAPTER = AgeFlowAdapter()
TINY = AgeFlowConfig.tiny()
S = TINY.image_size
AGES = [20.0, 35.0, 45.0, 70.0]  # one per group 0..3
FOLD_TOL_F64 = 1e-12
ENGINE_TOL_F64 = 1e-10
FP32_TOL = 1e-5
HALF_ROUND_TRIP_TOL = 1e-3


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The tiny convolutions are dominated by thread hand-off on the shared 2-core machine."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def perturb_zero_convs(module: torch.nn.Module, gen: torch.Generator) -> torch.nn.Module:
    """Zero-conv biases and gains moved off their init (zero bias, gain exp(3 * 0) = 1)."""
    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, ZeroConv2d):
                layer.conv.bias.copy_(0.01 * torch.randn(layer.conv.bias.shape, generator=gen))
                layer.scale.copy_(0.1 * torch.randn(layer.scale.shape, generator=gen))
    return module


def perturb_lu(module: torch.nn.Module, gen: torch.Generator) -> torch.nn.Module:
    """LU factors moved off their init (T's start as the channel reversal)."""
    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, InvConv2dLU):
                lu_std = 0.3 / math.sqrt(layer.w_s.numel())  # triangular noise of spectral norm ~0.6: cond(W) ~ 4
                layer.w_l.add_(lu_std * torch.randn(layer.w_l.shape, generator=gen))
                layer.w_u.add_(lu_std * torch.randn(layer.w_u.shape, generator=gen))
                layer.w_s.add_(0.1 * torch.randn(layer.w_s.shape, generator=gen))
    return module


def trained_like(config: AgeFlowConfig = TINY, seed: int = 0) -> AgeFlow:
    """The adapter's random weights, plus zero-conv biases and gains everywhere and T's LU convs perturbed.

    G's LU convs keep their random-rotation init: perturbing them as well compounds cond(W) ~ 4 over every
    step, an ill-conditioned flow whose fp32 round trip alone errs by 5e-4 at 4 levels x 4 steps.
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = perturb_zero_convs(ADAPTER.build(config), gen)  # build: zero-conv weights, ActNorm, prior table
    perturb_lu(model.ictm, gen)
    return model.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def model() -> AgeFlow:
    return trained_like()


def torch_engine(module: AgeFlow, device: str = "cpu", precision: str = "fp32") -> Engine:
    return make_torch_engine(ADAPTER, TINY, module, device, precision)


def native_engine(module: AgeFlow, device: str = "cpu", precision: str = "fp32", **runner_kwargs) -> NativeEngine:
    return make_native_engine(ADAPTER, TINY, module, AgeFlowRunner, device, precision, **runner_kwargs)


def runner(module: AgeFlow, dtype: torch.dtype, **kwargs) -> AgeFlowRunner:
    return AgeFlowRunner(ADAPTER, module, TINY, torch.device("cpu"), dtype, **kwargs)


def images(batch: int, seed: int = 1, device: str = "cpu", size: int = S) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed)).to(device)


def run(r: AgeFlowRunner, pixels: torch.Tensor, ages: list[float], **options) -> torch.Tensor:
    opts = ADAPTER.validate_options(TINY, pixels.shape[0], options)
    targets = ADAPTER.validate_ages(TINY, torch.tensor(ages, dtype=torch.float64))
    with torch.no_grad():
        return r.forward(r.prepare(pixels, targets, None, opts), opts)


# --- each fold on its own, float64 ---------------------------------------------------------------------------
@pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, FOLD_TOL_F64), (torch.float32, 1e-6)])
@pytest.mark.parametrize(("height", "width"), [(5, 7), (2, 2), (1, 1)])  # 1x1: every neighbour tap is padding
def test_border_bias_equals_one_padded_zero_conv(dtype, tol, height, width):
    # fp32: 9 * 6 = 54-term sums of values ~0.1 against the float64 layer, a few fp32 ulps; 1e-6 as the brief says
    gen = torch.Generator().manual_seed(3)
    layer = perturb_zero_convs(ZeroConv2d(6, 5), gen).double()
    with torch.no_grad():
        layer.conv.weight.copy_(0.1 * torch.randn(layer.conv.weight.shape, generator=gen))
        x = torch.randn(3, 6, height, width, dtype=torch.float64, generator=gen)
        want = layer(x)  # [3, 5, H, W], pads with 1.0
        weight, bias_map = fold_zero_conv(layer, height, width)  # float64
        got = F.conv2d(x.to(dtype), weight.to(dtype), padding=1) + bias_map.to(dtype)  # zero padding
    assert max_abs_err(got, want) <= tol
    # the frame term is what a zero-padded conv with a bias misses: non-zero, and only on the border ring
    frame = border_bias_map(weight, torch.zeros(5, dtype=torch.float64), height, width)  # [1, 5, H, W]
    assert frame.abs().max() > 1e-3
    assert torch.count_nonzero(frame[..., 1:-1, 1:-1]) == 0  # empty for H or W <= 2


@pytest.mark.parametrize("kind", ["G", "T"])
def test_folded_step_equals_flow_step_float64(kind):
    # G: ActNorm -> LU 1x1 -> coupling with the 1-padded zero conv; T: LU 1x1 -> coupling with attention
    gen = torch.Generator().manual_seed(4)
    torch.manual_seed(4)
    if kind == "G":
        flow = FlowStep(12, 16)
    else:
        flow = FlowStep(12, 16, actnorm=False, invconv_init="reverse", attention=4)
    with torch.no_grad():
        if flow.actnorm is not None:
            flow.actnorm.loc.copy_(0.1 * torch.randn(flow.actnorm.loc.shape, generator=gen))
            flow.actnorm.scale.copy_(torch.exp(0.1 * torch.randn(flow.actnorm.scale.shape, generator=gen)))
            flow.actnorm.initialized.fill_(1)
        zero_weight = flow.coupling.zero_conv.conv.weight
        zero_weight.copy_(0.05 * torch.randn(zero_weight.shape, generator=gen))
    flow = perturb_lu(perturb_zero_convs(flow, gen), gen).double().eval()
    step = fold_flow_step(flow, 5, net_dtype=torch.float64, stream_dtype=torch.float64, channels_last=False)
    x = torch.randn(3, 12, 5, 5, dtype=torch.float64, generator=gen)
    with torch.no_grad():
        # the folded affine alone, both directions, against ActNorm and the LU conv module by module
        affine_in = flow.actnorm(x)[0] if flow.actnorm is not None else x
        want_affine = flow.invconv(affine_in)[0]  # [3, 12, 5, 5]
        assert max_abs_err(inv_conv1x1(x, step.affine.weight, step.affine.bias), want_affine) <= FOLD_TOL_F64
        back = inv_conv1x1(want_affine, step.affine.weight_inv, step.affine.bias_inv)
        per_module = flow.invconv.reverse(want_affine)
        per_module = flow.actnorm.reverse(per_module) if flow.actnorm is not None else per_module
        assert max_abs_err(back, per_module) <= FOLD_TOL_F64
        # the whole step, forward and reverse
        want = flow(x)[0]
        assert max_abs_err(want, x) > 1e-2  # perturbed: not the identity
        got = step_forward(step, x)
        assert max_abs_err(got, want) <= FOLD_TOL_F64
        assert max_abs_err(step_reverse(step, want.clone()), flow.reverse(want)) <= FOLD_TOL_F64


@pytest.mark.parametrize("channels_last", [False, True])
def test_unsqueeze_into_a_channel_half_is_exact(channels_last):
    h = torch.randn(2, 24, 3, 4)  # [B, 4c, H, W], c = 6
    buf = torch.empty(2, 12, 6, 8)  # [B, 2c, 2H, 2W]
    if channels_last:
        buf = buf.contiguous(memory_format=torch.channels_last)
    z = torch.randn(2, 6, 6, 8)
    unsqueeze2d_into(h, buf[:, :6])
    buf[:, 6:].copy_(z)
    assert torch.equal(buf, torch.cat([unsqueeze2d(h), z], dim=1))
    assert torch.equal(squeeze2d(buf[:, :6]), h)


# --- end to end ------------------------------------------------------------------------------------------------
OPTIONS = [
    pytest.param({}, id="default"),
    pytest.param({"lower_latents": "eps"}, id="eps"),
    pytest.param({"bin_centre": False}, id="lower-edge"),
    pytest.param({"target_group": [3, 2, 1, 0]}, id="target-group"),
]


@pytest.mark.parametrize("options", OPTIONS)
def test_native_fp32_matches_torch_backend(model, options):
    x = images(4)
    want = torch_engine(model).age(x, AGES, **options)
    got = native_engine(model).age(x, AGES, **options)
    assert max_abs_err(got, want) <= FP32_TOL


def test_channels_last_coupling_nets_on_cpu(model):
    # the CUDA layout choice, run on CPU: other conv kernels, same maths
    x = images(2)
    want = torch_engine(model).age(x, AGES[1:3])
    got = native_engine(model, channels_last=True).age(x, AGES[1:3])
    assert max_abs_err(got, want) <= FP32_TOL


@pytest.mark.parametrize("standardize", [False, True])
def test_float64_engine_is_the_float64_module(model, standardize):
    # every rewrite is exact algebra: in float64 the runner and the module agree to rounding, stage by stage
    module = copy.deepcopy(model).double()
    r = runner(module, torch.float64)
    x = quantize_input(images(3)).double()  # [3, 3, S, S]
    groups = torch.tensor([0, 2, 3])
    with torch.no_grad():
        want = module.flow.encode(x, standardize=standardize)
        lower, top = r.encode(x, standardize)
        for got_z, want_z in zip([*lower, top], [*want.lower, want.top], strict=True):
            assert max_abs_err(got_z, want_z) <= ENGINE_TOL_F64
        want_t = module.translate(want.top, groups)
        got_t = r.translate(top, groups)
        assert max_abs_err(want_t[0], want.top) > 1e-2  # T moves the latent
        for got_u, want_u in zip(got_t, want_t, strict=True):
            assert max_abs_err(got_u, want_u) <= ENGINE_TOL_F64
        want_y = module.flow.decode(want.lower, want_t[0], standardized=standardize)
        got_y = r.decode(lower, got_t[0], standardize)
    assert max_abs_err(got_y, want_y) <= ENGINE_TOL_F64


ROUND_TRIPS = [  # (network dtype, G's stream dtype, bound)
    pytest.param(torch.float64, torch.float64, ENGINE_TOL_F64, id="f64"),
    pytest.param(torch.float32, torch.float32, FP32_TOL, id="f32"),
    pytest.param(torch.bfloat16, torch.float32, HALF_ROUND_TRIP_TOL, id="bf16-nets"),
    # a float64 stream keeps the bf16 networks' inputs bit-identical in decode: float64 rounding only
    pytest.param(torch.bfloat16, torch.float64, ENGINE_TOL_F64, id="bf16-nets-f64-stream"),
]


@pytest.mark.parametrize(("dtype", "stream", "tol"), ROUND_TRIPS)
@pytest.mark.parametrize("standardize", [False, True])
def test_native_round_trip(model, dtype, stream, tol, standardize):
    # docs/models/ageflow.md 8 item 3: encode -> decode reconstructs x. The coupling inverts exactly for any network
    # output, but a half-precision network is a step function of its input: where decode's x_a differs from encode's by
    # the stream's rounding, some of its bf16-rounded activations flip by one ulp, so with an fp32 stream the error
    # grows like the half type's ulp times the flow's amplification, not like fp32's
    r = runner(copy.deepcopy(model).to(torch.float64 if dtype == torch.float64 else torch.float32), dtype,
               stream_dtype=stream)  # fmt: skip
    assert r.levels[0].steps[0].affine.weight.dtype == r.levels[0].steps[0].net.bias_map.dtype == stream
    x = quantize_input(images(2)).to(stream)
    with torch.no_grad():
        lower, top = r.encode(x, standardize)
        back = r.decode(lower, top, standardize)
    assert back.dtype == stream
    assert max_abs_err(back, x) <= tol
    # after 5-bit requantisation the round trip is exact (bin centres leave a 1/64 margin)
    assert torch.equal(postprocess_output(back.float(), quantize=True), postprocess_output(x.float(), quantize=True))


@pytest.mark.parametrize("stream", [torch.float32, torch.float64])
def test_bf16_coupling_nets_meet_the_parity_rule_on_cpu(model, stream):
    # the low-precision path on CPU: G's coupling nets in bf16; stream and 1x1 affines fp32 (or float64); T fp32
    engine = native_engine(model, precision="bf16", stream_dtype=stream)
    first = engine.runner.levels[0].steps[0]
    assert first.net.w1.dtype == torch.bfloat16
    assert first.affine.weight.dtype == first.net.bias_map.dtype == stream
    assert engine.runner.ictm[0].net.w1.dtype == engine.runner.prior_table.dtype == torch.float32
    x = images(3)
    ref = torch_engine(model).age(x, AGES[:3])
    torch_bf16 = torch_engine(model, precision="bf16").age(x, AGES[:3])
    native = engine.age(x, AGES[:3])
    assert native.dtype == torch.float32
    assert_low_precision_parity(native, torch_bf16, ref)


def test_stream_dtype_must_be_fp32_or_fp64(model):
    with pytest.raises(InputError, match="stream_dtype"):
        runner(model, torch.bfloat16, stream_dtype=torch.bfloat16)


def test_no_matrix_inversion_at_run_time(model, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("a matrix was inverted")

    engine = native_engine(model)
    x = images(1)
    want = engine.age(x, 40.0)
    with monkeypatch.context() as patch:  # shows the patch catches an inversion: the build does invert, once
        patch.setattr(torch.linalg, "inv", forbidden)
        with pytest.raises(AssertionError, match="inverted"):
            runner(model, torch.float32)
    monkeypatch.setattr(torch.linalg, "inv", forbidden)
    monkeypatch.setattr(torch, "inverse", forbidden)
    for _ in range(2):
        assert torch.equal(engine.age(x, 40.0), want)


class _RecordOps(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.add(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("options", OPTIONS)
def test_forward_has_no_host_sync_or_inversion(model, options):
    # what a CUDA graph cannot hold, checked on CPU: .item() / bool(t) / .tolist() all dispatch
    # _local_scalar_dense, data-dependent shapes need nonzero, and no matrix may be inverted
    r = runner(model, torch.float32)
    opts = ADAPTER.validate_options(TINY, 4, options)
    inputs = r.prepare(images(4), torch.tensor([1, 2, 0, 3]), None, opts)
    with torch.no_grad(), _RecordOps() as record:
        r.forward(inputs, opts)
    assert "convolution" in record.ops  # the mode sees the ops
    forbidden = {"_local_scalar_dense", "nonzero", "masked_select", "linalg_inv_ex", "linalg_solve_ex", "item"}
    assert not record.ops & forbidden


def test_inputs_untouched_deterministic_and_batch_independent(model):
    r = runner(model, torch.float32)
    x = images(3)
    keep = x.clone()
    first = run(r, x, AGES[:3])
    assert torch.equal(x, keep)
    assert torch.equal(run(r, x, AGES[:3]), first)  # docs/models/ageflow.md 8 item 10: bit-identical on the same device
    # graph buckets pad batches: one image's output must not depend on the rest (other batch sizes pick
    # other CPU conv kernels, so the same fp32 sums in another order: measured 4.8e-7, hence FP32_TOL)
    for i in range(3):
        assert max_abs_err(run(r, x[i : i + 1], AGES[i : i + 1]), first[i : i + 1]) <= FP32_TOL
    # decode leaves its latents alone
    xq = quantize_input(x)
    with torch.no_grad():
        lower, top = r.encode(xq)
        saved = [t.clone() for t in (*lower, top)]
        r.decode(lower, top)
    assert all(torch.equal(a, b) for a, b in zip(saved, (*lower, top), strict=True))


def test_graph_key_ignores_target_group(model):
    r = runner(model, torch.float32)
    a = ADAPTER.validate_options(TINY, 2, {"target_group": [0, 1]})
    b = ADAPTER.validate_options(TINY, 2, {"target_group": [3, 3]})
    c = ADAPTER.validate_options(TINY, 2, {"lower_latents": "eps"})
    assert r.graph_key(a) == r.graph_key(b) != r.graph_key(c)
    assert r.graph_safe(a)
    assert r.graph_safe(c)


@pytest.mark.parametrize(
    ("pixels", "targets", "options", "match"),
    [
        (images(1, size=64), torch.tensor([0]), {}, "32x32"),
        (images(2), torch.tensor([0]), {}, "one integer age group per image"),
        (images(1), torch.tensor([4]), {}, r"0\.\.3"),
        (images(1), torch.tensor([0.0]), {}, "integer"),
    ],
)
def test_prepare_rejects_bad_input(model, pixels, targets, options, match):
    with pytest.raises(InputError, match=match):
        runner(model, torch.float32).prepare(pixels, targets, None, options)


def test_runner_needs_the_ageflow_module():
    with pytest.raises(TypeError, match="AgeFlow module"):
        AgeFlowRunner(ADAPTER, torch.nn.Linear(2, 2), TINY, torch.device("cpu"), torch.float32)


def test_load_native_uses_the_ageflow_runner():
    with pytest.warns(RandomWeightsWarning):
        engine = pyagingrt.load("ageflow", config="tiny", device="cpu", backend="native")
    assert engine.runner_name == "AgeFlowRunner"
    assert engine.age(images(1), 50.0).shape == (1, 3, S, S)


# --- GPU -------------------------------------------------------------------------------------------------------
@pytest.mark.gpu
def test_fp32_native_matches_torch_on_gpu_and_restores_tf32_flags(model):
    x = images(3, device="cuda")
    want = torch_engine(model, "cuda").age(x, AGES[:3])
    torch.backends.cudnn.allow_tf32 = True  # the runner turns TF32 off inside forward() only
    engine = native_engine(model, "cuda")
    got = engine.age(x, AGES[:3])
    assert torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    assert max_abs_err(got, want) <= FP32_TOL


@pytest.mark.gpu
def test_fp16_parity_rule_on_gpu(model):
    x = images(4, device="cuda")
    ref = torch_engine(model, "cuda").age(x, AGES)
    torch_fp16 = torch_engine(model, "cuda", "fp16").age(x, AGES)
    native = native_engine(model, "cuda", "fp16").age(x, AGES)
    assert_low_precision_parity(native, torch_fp16, ref)


@pytest.mark.gpu
@pytest.mark.parametrize(("precision", "tol"), [("fp32", FP32_TOL), ("fp16", HALF_ROUND_TRIP_TOL)])
def test_graph_replay_equals_eager_on_gpu(model, precision, tol):
    # The graph replays the kernels eager mode launches, but captured on a side stream, where cuBLAS may pick
    # another workspace/algorithm; so equality up to the engine's own rounding (fp32 1e-5; fp16 1e-3,
    # docs/models/ageflow.md's native bound), far below what stale
    # static buffers or a wrong bucket copy would give (O(0.1)).
    engine = native_engine(model, "cuda", precision)
    assert engine.graphs is not None
    for batch in (4, 3):  # a full bucket, then new images padded into it (a replay of the same graph)
        x = images(batch, seed=batch, device="cuda")
        targets = ADAPTER.validate_ages(TINY, torch.tensor(AGES[:batch], dtype=torch.float64))
        opts = ADAPTER.validate_options(TINY, batch, {})
        eager = engine._run_eager(x, targets, None, opts)
        replay = engine._run(x, targets, None, opts)
        assert replay.shape == eager.shape == (batch, 3, S, S)
        assert max_abs_err(replay, eager) <= tol
    assert len(engine.graphs) == 2  # bucket 1 (captured while loading) and bucket 4


@pytest.mark.gpu
def test_forward_does_not_sync_on_gpu(model):
    r = AgeFlowRunner(ADAPTER, copy.deepcopy(model).cuda(), TINY, torch.device("cuda"), torch.float16)
    opts = ADAPTER.validate_options(TINY, 2, {"lower_latents": "eps"})
    inputs = r.prepare(images(2, device="cuda"), torch.tensor([0, 3]), None, opts)
    with torch.no_grad():
        r.forward(inputs, opts)  # lazy library initialisation happens outside the checked call
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.no_grad():
            r.forward(inputs, opts)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.gpu
def test_fp16_paper_round_trip_on_gpu():
    # docs/models/ageflow.md 8 item 3: native engine (fp16 coupling nets) within 1e-3 at paper size, and bit-exact after
    # 5-bit requantisation; docs/models/ageflow.md's random weights (section 8 preamble, AgeFlowAdapter.build). The CPU
    # analogue (64x64, 4 levels x 32 steps, width 512) measured 9.2e-3 with docs/models/ageflow.md's fp32 stream and
    # 2.7e-13 with a float64 stream, which is why fp16/bf16 engines
    # default to the float64 stream (the runner's docstring).
    config = AgeFlowConfig.paper()
    torch.manual_seed(0)
    model = ADAPTER.build(config).eval().requires_grad_(False).cuda()
    r = AgeFlowRunner(ADAPTER, model, config, torch.device("cuda"), torch.float16)
    stream = r.stream_dtype
    assert stream == torch.float64
    x = quantize_input(images(2, device="cuda", size=config.image_size))  # [2, 3, 256, 256]
    with torch.no_grad():
        lower, top = r.encode(x.to(stream))
        back = r.decode(lower, top).float()
    assert max_abs_err(back, x) <= HALF_ROUND_TRIP_TOL
    assert torch.equal(postprocess_output(back, quantize=True), postprocess_output(x, quantize=True))
