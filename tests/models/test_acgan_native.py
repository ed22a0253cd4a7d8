"""AcGAN's native runner (pyagingrt/backends/native_acgan.py) against the torch backend, tiny config.

Each rewrite is checked on its own (split stem, merged heads and blend, folded InstanceNorm) and end to end.
The CUDA choices (8-channel stem, channels_last) and the low-precision code path (fp32 statistics, fp32 heads)
also run on CPU, the latter in bf16; fp16 and CUDA-graph replay carry the ``gpu`` mark.

Weights: the official init (conv N(0, std)) with std 0.05 and InstanceNorm gamma / beta moved off 1 / 0, as
after training, so the folded affine is exercised (gamma = 1, beta = 0 would hide a wrong fold).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pyagingrt.api import Engine
from pyagingrt.backends.native import NativeEngine
from pyagingrt.backends.native_acgan import (
    AcGANRunner,
    _NormParams,
    blend_heads,
    condition_responses,
    instance_norm_act,
    merged_head_weight,
    pack_head_weight,
    packed_head_conv,
)
from pyagingrt.errors import InputError
from pyagingrt.models.acgan import AcGANAdapter
from pyagingrt.training.models.acgan import AcGANConfig, Generator, init_weights, mask_blend, tile_condition
from tests.parity import assert_low_precision_parity, make_native_engine, make_torch_engine, max_abs_err

ADAPTER = AcGANAdapter()
TINY = AcGANConfig.tiny()
S = TINY.image_size
AGES = [15.0, 25.0, 35.0, 45.0, 60.0]  # one per group 0..4
# Native fp32 vs torch fp32: the same maths in another order (split stem sum, stacked head rows, IN as
# y * s + t instead of (y - mu) / sigma * gamma + beta), each a few fp32 ulps, carried through 9 InstanceNorms
# that rescale errors by 1 / sigma; measured <= 1.4e-6 on outputs in [0, 1], so 1e-5. The CPU default's Winograd
# block convs (winograd_conv3x3, ~5x a direct conv's rounding) measured 2.6e-6 here; at paper size (12 block convs
# at 256 channels, not tested) 2.1e-5 against 9.6e-6 with direct convs (trained-like random weights, batch 1 and 8).
FP32_TOL = 1e-5
# Linear identities on one conv layer (no normalisation after it): 392-term (stem) or 3136-term (heads) fp32
# sums in another order, outputs up to ~3 with these weights:
# docs/models/acgan.md 8 item 8's 1e-6, as atol + |ref| * 1e-6.
CONV_TOL = {"atol": 1e-6, "rtol": 1e-6}
STEM_CHOICES = [
    pytest.param(True, False, id="split-stem"),
    pytest.param(False, False, id="8ch-stem"),
    pytest.param(True, True, id="split-stem-nhwc"),
    pytest.param(False, True, id="8ch-stem-nhwc"),
]


def trained_like(config: AcGANConfig = TINY, seed: int = 0) -> Generator:
    gen = torch.Generator().manual_seed(seed)
    module = init_weights(Generator(config), std=0.05, generator=gen)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.InstanceNorm2d):
                m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=gen))
                m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=gen))
    return module.eval().requires_grad_(False)


def torch_engine(module: Generator, device: str = "cpu", precision: str = "fp32") -> Engine:
    return make_torch_engine(ADAPTER, TINY, module, device, precision)


def native_engine(module: Generator, device: str = "cpu", precision: str = "fp32", **runner_kwargs) -> NativeEngine:
    return make_native_engine(ADAPTER, TINY, module, AcGANRunner, device, precision, **runner_kwargs)


def images(batch: int, seed: int = 1, device: str = "cpu") -> torch.Tensor:
    return torch.rand(batch, 3, S, S, generator=torch.Generator().manual_seed(seed)).to(device)


# --- end to end ----------------------------------------------------------------------------------------------
def test_load_native_picks_the_acgan_runner():
    native = native_engine(trained_like())
    assert native.runner_name == "AcGANRunner"
    assert native.runner.split_stem  # CPU default
    assert native.runner.channels_last  # every device
    assert native.runner.packed_head  # CPU default (channels_last, S % 4 == 0)
    assert native.runner.winograd  # CPU fp32 default
    assert all(conv.winograd_u is not None for block in native.runner.blocks for conv in block)


@pytest.mark.parametrize(("split_stem", "channels_last"), STEM_CHOICES)
def test_fp32_matches_torch_backend(split_stem, channels_last):
    module = trained_like()
    native = native_engine(module, split_stem=split_stem, channels_last=channels_last)
    x = images(len(AGES))
    out = native.age(x, AGES)
    ref = torch_engine(module).age(x, AGES)
    assert out.shape == (len(AGES), 3, S, S)
    torch.testing.assert_close(out, ref, atol=FP32_TOL, rtol=0)


@pytest.mark.parametrize("option", ["packed_head", "winograd"])
def test_fp32_with_a_cuda_choice_matches_torch_backend(option):
    """A CUDA choice on CPU in fp32: the merged head as the 7x7 conv itself (packed_head=False), or the residual
    blocks' 3x3 convs as F.conv2d (winograd=False)."""
    module = trained_like()
    native = native_engine(module, **{option: False})
    assert not getattr(native.runner, option)
    x = images(len(AGES))
    torch.testing.assert_close(native.age(x, AGES), torch_engine(module).age(x, AGES), atol=FP32_TOL, rtol=0)


@pytest.mark.parametrize(("batch", "channels", "outputs", "height", "width"), [(2, 5, 4, 9, 12), (1, 16, 2, 8, 4)])
def test_packed_head_is_the_same_conv(batch, channels, outputs, height, width):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, channels, height, width, generator=gen, dtype=torch.float64)
    weight = torch.randn(outputs, channels, 7, 7, generator=gen, dtype=torch.float64)
    packed = pack_head_weight(weight)
    assert packed.shape == (4 * outputs, 4 * channels, 7, 3)
    out = packed_head_conv(x.contiguous(memory_format=torch.channels_last), packed)
    torch.testing.assert_close(out, F.conv2d(x, weight, padding=3), atol=1e-12, rtol=0)  # float64 rounding only


def test_winograd_is_refused_outside_cpu_fp32():
    with pytest.raises(ValueError, match="winograd runs on the CPU in fp32 only"):
        AcGANRunner(ADAPTER, trained_like(), TINY, torch.device("cpu"), torch.bfloat16, winograd=True)


def test_packed_head_needs_channels_last():
    with pytest.raises(ValueError, match="packed_head needs channels_last"):
        AcGANRunner(ADAPTER, trained_like(), TINY, torch.device("cpu"), torch.float32, channels_last=False,
                    packed_head=True)  # fmt: skip


@pytest.mark.parametrize("split_stem", [True, False], ids=["split-stem", "8ch-stem"])
def test_bf16_follows_the_low_precision_parity_rule(split_stem):
    """The fp16 code path (fp32 statistics, fp32 heads and blend) in bf16, which CPU can run."""
    module = trained_like()
    x = images(len(AGES))
    ref = torch_engine(module).age(x, AGES)
    torch_bf16 = torch_engine(module, precision="bf16").age(x, AGES)
    native = native_engine(module, precision="bf16", split_stem=split_stem).age(x, AGES)
    assert_low_precision_parity(native, torch_bf16, ref)


def test_batch_independence():
    runner = native_engine(trained_like()).runner
    groups = torch.tensor([0, 2, 4, 1])
    inputs = runner.prepare(images(4), groups, None, {})
    with torch.no_grad():
        batch = runner.forward(inputs, {})
        singles = [runner.forward({k: v[i : i + 1] for k, v in inputs.items()}, {}) for i in range(4)]
    # Each sample is normalised on its own; CPU convs pick other kernels per batch size (see FP32_TOL).
    torch.testing.assert_close(batch, torch.cat(singles), atol=FP32_TOL, rtol=0)


def test_groups_change_the_output():
    runner = native_engine(trained_like()).runner
    x = images(1).expand(TINY.c_dim, -1, -1, -1)
    with torch.no_grad():
        out = runner.forward(runner.prepare(x, torch.arange(TINY.c_dim), None, {}), {})
    for k in range(1, TINY.c_dim):
        assert max_abs_err(out[k], out[0]) > 1e-4, f"group {k} gives group 0's output: conditioning lost"


def test_forward_needs_no_host_values():
    """Meta tensors hold no values, so any host read in forward() (.item(), bool(t), .tolist()) would raise:
    the same property CUDA-graph capture needs. Also checks the paper-size shapes for free."""
    for config in (TINY, AcGANConfig.paper()):
        with torch.device("meta"):
            module = Generator(config).eval().requires_grad_(False)
        for split_stem in (True, False):
            runner = AcGANRunner(
                ADAPTER, module, config, torch.device("meta"), torch.float16, split_stem=split_stem, channels_last=True
            )
            size = config.image_size
            inputs = {
                "images": torch.empty(2, 3, size, size, device="meta"),
                "groups": torch.empty(2, dtype=torch.long, device="meta"),
            }
            out = runner.forward(inputs, {})
            assert out.shape == (2, 3, size, size)
            assert out.dtype == torch.float32


@pytest.mark.parametrize(
    ("targets", "match"),
    [
        (torch.tensor([0, 5]), "must lie in"),
        (torch.tensor([-1, 0]), "must lie in"),
        (torch.tensor([0.0, 1.0]), "integer age group"),
        (torch.tensor([0]), "one integer age group per image"),
    ],
)
def test_prepare_rejects_bad_targets(targets, match):
    runner = native_engine(trained_like()).runner
    with pytest.raises(InputError, match=match):
        runner.prepare(images(2), targets, None, {})


def test_prepare_rejects_wrong_crop_size():
    runner = native_engine(trained_like()).runner
    with pytest.raises(InputError, match=f"shape \\[B, 3, {S}, {S}\\]"):
        runner.prepare(torch.rand(1, 3, S + 2, S + 2), torch.tensor([0]), None, {})


# --- rewrite 1: split stem ---------------------------------------------------------------------------------
def test_condition_responses_equal_the_8_channel_stem():
    module = trained_like()
    weight = module.main[0].weight  # [d, 3 + c_dim, 7, 7]
    responses = condition_responses(module)  # [c_dim, d, S, S]
    x = images(2) * 2 - 1
    for k in range(TINY.c_dim):
        onehot = F.one_hot(torch.full((2,), k), TINY.c_dim).float()
        full = F.conv2d(tile_condition(x, onehot), weight, padding=3)
        split = F.conv2d(x, weight[:, :3], padding=3) + responses[k]
        torch.testing.assert_close(split, full, **CONV_TOL)


def test_condition_response_is_a_constant_plus_a_frame_not_a_bias():
    responses = condition_responses(trained_like())  # [c_dim, d, S, S]
    inside = responses[:, :, 3:-3, 3:-3]
    centre = responses[:, :, S // 2 : S // 2 + 1, S // 2 : S // 2 + 1]
    torch.testing.assert_close(inside, centre.expand_as(inside), **CONV_TOL)
    frame_gap = (responses[:, :, 0, 0] - centre[:, :, 0, 0]).abs()  # the corner sees 16 of 49 taps
    assert bool((frame_gap > 1e-3).all()), "the frame must differ from the interior constant"


def test_split_and_8_channel_stems_agree_in_the_runner():
    module = trained_like()
    split = AcGANRunner(ADAPTER, module, TINY, torch.device("cpu"), torch.float32, split_stem=True)
    full = AcGANRunner(ADAPTER, module, TINY, torch.device("cpu"), torch.float32, split_stem=False)
    x, groups = images(3) * 2 - 1, torch.tensor([4, 0, 2])
    torch.testing.assert_close(split._stem(x, groups), full._stem(x, groups), **CONV_TOL)


# --- rewrite 2: fused InstanceNorm (+ ReLU) through agingrt::group_norm_act -------------------------------------
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("relu", [False, True], ids=["in", "in-relu"])
def test_folded_instance_norm_matches_torch_fp32(relu, channels_last):
    gen = torch.Generator().manual_seed(3)
    h = 10 + 2 * torch.randn(2, 6, 9, 9, generator=gen)  # mean >> 0: the statistics and the apply must not cancel
    norm = _NormParams(1 + 0.2 * torch.randn(1, 6, 1, 1, generator=gen), torch.randn(1, 6, 1, 1, generator=gen), 1e-5)
    ref = F.instance_norm(h, weight=norm.gamma.flatten(), bias=norm.beta.flatten(), eps=norm.eps)
    ref = ref.relu() if relu else ref
    if channels_last:
        h = h.contiguous(memory_format=torch.channels_last)
    h0 = h.clone()
    out = instance_norm_act(h, norm, relu=relu)
    assert torch.equal(h, h0)  # a new tensor, in h's layout
    assert out.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    # fp32 statistics and (y - mu) * (gamma * rstd) + beta: a few fp32 ulps on outputs of size ~1 (|mu| / sigma = 5
    # would cost ~5 ulps more if the affine were applied as y * s + t).
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


def test_folded_instance_norm_keeps_fp32_statistics_for_bf16():
    """With mean 10 and std 1, bf16 statistics would be off by up to half a bf16 ulp of 10 (0.03, i.e. 0.03
    after normalising); fp32 statistics leave only the output's own bf16 rounding (half an ulp, 2^-9 relative)."""
    gen = torch.Generator().manual_seed(4)
    h = (10 + torch.randn(2, 4, 16, 16, generator=gen)).to(torch.bfloat16)
    norm = _NormParams(torch.ones(1, 4, 1, 1), torch.zeros(1, 4, 1, 1), 1e-5)
    ref = F.instance_norm(h.float(), eps=norm.eps)  # fp32 maths on the same bf16 values
    out = instance_norm_act(h, norm, relu=False)
    assert out.dtype == torch.bfloat16
    bound = ref.abs() * 2.0**-8 + 1e-6  # one bf16 ulp of each reference value: rounding of the result only
    assert bool(((out.float() - ref).abs() <= bound).all())


# --- rewrite 3: merged heads and the exact blend ----------------------------------------------------------------
def test_merged_heads_equal_the_two_heads():
    module = trained_like()
    features = torch.relu(torch.randn(2, TINY.g_conv_dim, S, S, generator=torch.Generator().manual_seed(5)))
    heads = F.conv2d(features, merged_head_weight(module), padding=3)  # [2, 4, S, S]
    torch.testing.assert_close(torch.tanh(heads[:, :3]), module.img_reg(features), **CONV_TOL)
    torch.testing.assert_close(torch.sigmoid(heads[:, 3:]), module.attention_reg(features), **CONV_TOL)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_blend_endpoints_are_exact(dtype):
    gen = torch.Generator().manual_seed(6)
    x = torch.rand(2, 3, 8, 8, generator=gen) * 2 - 1
    heads = torch.randn(2, 4, 8, 8, generator=gen).to(dtype)
    keep = heads.clone()
    keep[:, 3] = 100  # sigmoid(100) rounds to 1.0 in fp32: A == 1
    assert torch.equal(blend_heads(x, keep), x)
    take = heads.clone()
    take[:, 3] = -200  # sigmoid(-200) underflows to 0.0 in fp32: A == 0
    assert torch.equal(blend_heads(x, take), torch.tanh(heads[:, :3].float()))


def test_blend_equals_the_model_blend_and_stays_between_x_and_c():
    gen = torch.Generator().manual_seed(7)
    x = torch.rand(2, 3, 8, 8, generator=gen) * 2 - 1
    heads = 3 * torch.randn(2, 4, 8, 8, generator=gen)
    color, attention = torch.tanh(heads[:, :3]), torch.sigmoid(heads[:, 3:])
    out = blend_heads(x, heads.contiguous(memory_format=torch.channels_last))
    assert torch.equal(out, mask_blend(x, attention, color))  # same fp32 ops, same order
    lo, hi = torch.minimum(x, color), torch.maximum(x, color)
    slack = 1e-6  # a * x + (1 - a) * c may round one ulp outside [min, max]
    assert bool((out >= lo - slack).all())
    assert bool((out <= hi + slack).all())


# --- GPU: fp16 parity and CUDA-graph replay --------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_low_precision_parity_on_cuda(precision):
    module = trained_like()
    x = images(len(AGES), device="cuda")
    ref = torch_engine(module, "cuda").age(x, AGES)
    torch_low = torch_engine(module, "cuda", precision).age(x, AGES)
    native = native_engine(module, "cuda", precision)
    assert native.graphs is not None
    assert native.runner.channels_last
    assert not native.runner.split_stem
    out = native.age(x, AGES)
    assert_low_precision_parity(out, torch_low, ref)
    # docs/models/acgan.md section 8 item 10: relative L2 error below 1e-2 on out = A * x + (1 - A) * C in [-1, 1].
    out_pm, ref_pm = 2 * out - 1, 2 * ref - 1
    assert float((out_pm - ref_pm).norm() / ref_pm.norm()) < 1e-2


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_graph_replay_equals_eager_on_cuda(precision):
    native = native_engine(trained_like(), "cuda", precision)
    runner = native.runner
    for batch in (4, 3):  # bucket 4 exactly, and 3 padded into bucket 4
        x = images(batch, seed=batch, device="cuda")
        groups = torch.arange(batch, device="cuda") % TINY.c_dim
        inputs = runner.prepare(x, groups, None, {})
        with torch.no_grad():
            eager = runner.forward(inputs, {})
        replayed = native.graphs.run(lambda static: runner.forward(static, {}), inputs, runner.graph_key({}))
        if batch == 4:
            # Same kernels on the same shapes: replay reproduces the eager run.
            torch.testing.assert_close(replayed, eager, atol=0, rtol=0)
        else:
            # Padded rows change the batch size, so cuDNN may pick other algorithms: fp32 reordering as in
            # FP32_TOL; fp16 outputs in [0, 1] rounded once more differ by at most ~2 fp16 ulps of 1 (2^-10).
            tol = FP32_TOL if precision == "fp32" else 2e-3
            torch.testing.assert_close(replayed, eager, atol=tol, rtol=0)
    assert len(native.graphs) == 2  # bucket 1 from load(), bucket 4 replayed by the batch-3 call
