"""PADA's native runner (pyagingrt/backends/native_pada.py) against the torch backend, tiny config (3 steps).

Each rewrite is checked on its own (hoisted time and condition tables, folded GroupNorm, phase-decomposed
up-conv, SDPA attention) and end to end in every mode (random / inverted x_T, prompt / free text / reference,
K samples, instance statistics). The CUDA choices (channels_last, plain up-conv) and the low-precision code path
(bf16, which CPU can run) also run here; fp16 and CUDA-graph replay carry the ``gpu`` mark.

Weights: ``PADAAdapter.build`` (DiffAE's zero-initialised layers and PADA's gamma/beta/logvar heads
re-randomised), so every residual branch and the modulation are live and a wrong rewrite changes the output.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from pyagingrt._extension import has_native
from pyagingrt.api import Engine
from pyagingrt.backends.native import NativeEngine
from pyagingrt.backends.native_pada import (
    PADARunner,
    condition_scale,
    condition_weights,
    conditioned_resblocks,
    modulated_group_norm_act,
    modulation_tables,
    phase_weights,
    time_table,
    upsample_conv3x3,
)
from pyagingrt.errors import InputError
from pyagingrt.models.pada import PADAAdapter
from pyagingrt.training.layers.clip_encoder import ClipEncoder, clip_config
from pyagingrt.training.layers.ddim_schedule import DDIMSchedule
from pyagingrt.training.models.pada import PADA, PADAConfig
from tests.parity import assert_low_precision_parity, make_native_engine, make_torch_engine

ADAPTER = PADAAdapter()
TINY = PADAConfig.tiny()
S, Z, D = TINY.image_size, TINY.z_channels, TINY.clip_dim
AGES = [30.0, 70.0]
# Native fp32 vs torch fp32 (random x_T, 3 steps): one UNet evaluation differs by fp32 reordering (batched
# time GEMM, folded GN affine, SDPA, phase convs), measured <= 1.5e-6 (4e-6 channels_last) on eps of size ~2;
# the DDIM steps scale eps errors by at most B / A-ratios of ~1, and outputs in [0, 1] halve them: measured
# <= 1e-5 everywhere (4-9.5e-6), the task's 1e-5.
FP32_TOL = 1e-5
# The CUDA layout run on CPU: oneDNN's NHWC convolutions sum in yet another order (eps error 4e-6 instead of
# 1.5e-6 per evaluation), measured up to 1.01e-5 on the output.
FP32_NHWC_TOL = 3e-5
# x_T="invert" runs 3 inversion steps then 3 sampling steps; its last inversion step divides by
# B = sqrt(1/abar - 1) at abar_next = 0 and sampling multiplies by A = 1/sqrt(abar_668) ~ 10, so fp32 rounding
# grows ~100x: the torch backend's own batch-of-2 vs 2 batches of 1 differ by 1.8e-4 here, native vs torch 2e-4.
INVERT_TOL = 1e-3
# One UNet evaluation, native vs module in fp32: measured 1.5e-6 (NCHW) / 4e-6 (channels_last) on |eps| <= 2.
EPS_TOL = 1e-5
# Algebra checked in float64: rounding only, at ~1e-16 relative through a few hundred ops.
F64_TOL = 1e-12


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # The test machine has 2 shared cores: one intra-op thread is ~10x faster there than two under load.
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def make_module(seed: int = 0) -> PADA:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = ADAPTER.build(TINY)
    module.set_clip(ClipEncoder.random(clip_config("tiny")))  # fixed seed inside: the same weights every call
    return module.requires_grad_(False)


@pytest.fixture(scope="module")
def module() -> PADA:
    return make_module()


def torch_engine(module: PADA, device: str = "cpu", precision: str = "fp32") -> Engine:
    return make_torch_engine(ADAPTER, TINY, module, device, precision)


def native_engine(module: PADA, device: str = "cpu", precision: str = "fp32", **runner_kwargs) -> NativeEngine:
    return make_native_engine(ADAPTER, TINY, module, PADARunner, device, precision, **runner_kwargs)


def images(batch: int, seed: int = 1, device: str = "cpu") -> torch.Tensor:
    return torch.rand(batch, 3, S, S, generator=torch.Generator().manual_seed(seed)).to(device)


def run_runner(runner: PADARunner, x: torch.Tensor, ages, seed: int, **options) -> torch.Tensor:
    targets = ADAPTER.validate_ages(TINY, torch.tensor(ages, dtype=torch.float64))
    opts = ADAPTER.validate_options(TINY, x.shape[0], options)
    with torch.no_grad():
        inputs = runner.prepare(x, targets, torch.Generator().manual_seed(seed), opts)
        return runner.forward(inputs, opts)


# --- end to end ------------------------------------------------------------------------------------------------
def test_load_native_picks_the_pada_runner(module):
    runner = native_engine(module).runner
    assert isinstance(runner, PADARunner)
    assert not runner.channels_last  # CPU default
    assert runner.phase_up
    assert runner.ddim_impl == ("native" if has_native() else "torch")  # the compiled ddim_step when built
    assert len(runner.blocks) == len(conditioned_resblocks(module.diffae))
    assert len(runner.prompt_table) == 7 * 3  # every (group, gender) prompt embedded at build


@pytest.mark.parametrize(
    ("channels_last", "phase_up"), [(False, True), (False, False), (True, True), (True, False)], ids=str
)
def test_fp32_matches_torch_backend(module, channels_last, phase_up):
    native = native_engine(module, channels_last=channels_last, phase_up=phase_up)
    x = images(2)
    out = native.age(x, AGES, seed=7)
    ref = torch_engine(module).age(x, AGES, seed=7)
    assert out.shape == (2, 3, S, S)
    torch.testing.assert_close(out, ref, atol=FP32_NHWC_TOL if channels_last else FP32_TOL, rtol=0)


@pytest.mark.parametrize(
    "options",
    [
        {"num_samples": 3},
        {"num_samples": 2, "vary": "high", "gender": ["female", "male"]},
        {"text": ["a face", "an old face"], "s": 3.0},
        {"reference": "one", "s": 100.0},
        {"reference": "per-image", "num_samples": 2, "vary": "low"},
        {"stats": "instance", "gender": "male", "steps": 2},
    ],
    ids=["K3", "K2-high-genders", "text", "reference", "reference-per-image-K2-low", "instance-stats"],
)
def test_modes_match_torch_backend(module, options):
    if options.get("reference") == "one":
        options = {**options, "reference": torch.rand(3, S, S, generator=torch.Generator().manual_seed(5))}
    elif options.get("reference") == "per-image":
        options = {**options, "reference": images(2, seed=6)}
    x = images(2)
    out = native_engine(module).age(x, AGES, seed=11, **options)
    ref = torch_engine(module).age(x, AGES, seed=11, **options)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, atol=FP32_TOL, rtol=0)


def test_invert_mode_matches_torch_backend(module):
    x = images(2)
    options = {"x_T": "invert", "num_samples": 2, "invert_steps": 2}
    out = native_engine(module).age(x, AGES, seed=3, **options)
    ref = torch_engine(module).age(x, AGES, seed=3, **options)
    assert out.shape == (2, 2, 3, S, S)
    torch.testing.assert_close(out, ref, atol=INVERT_TOL, rtol=0)


def test_same_seed_same_output_and_different_seeds_differ(module):
    runner = native_engine(module).runner
    x = images(2)
    a = run_runner(runner, x, AGES, seed=7)
    b = run_runner(runner, x, AGES, seed=7)
    c = run_runner(runner, x, AGES, seed=8)
    assert torch.equal(a, b)  # docs/models/pada.md 9 item 4: bitwise on one device and backend
    assert float((a - c).abs().mean()) > 1e-2  # docs/models/pada.md 9 item 5


def test_vary_through_the_runner(module):
    runner = native_engine(module).runner
    x = images(1)
    high = run_runner(runner, x, [60.0], seed=2, num_samples=3, vary="high", s=0.0)  # x_T shared; s = 0 drops eta
    assert all(torch.equal(high[:, 0], high[:, k]) for k in (1, 2))
    both = run_runner(runner, x, [60.0], seed=2, num_samples=3, vary="both", s=0.0)
    assert float((both[:, 0] - both[:, 1]).abs().mean()) > 1e-2


def test_k_samples_share_one_encoding(module):
    runner = native_engine(module).runner
    batches = []
    handle = runner.module.encoder.register_forward_hook(lambda _m, inp, _out: batches.append(inp[0].shape[0]))
    try:
        out = run_runner(runner, images(2), AGES, seed=4, num_samples=3)
    finally:
        handle.remove()
    assert out.shape == (2, 3, 3, S, S)
    assert batches == [2]  # rewrite 7: the encoder runs once per image, not per sample


def test_sample_k_alone_equals_sample_k_in_a_batch(module, monkeypatch):
    runner = native_engine(module).runner
    monkeypatch.setattr(ADAPTER, "base_seed", lambda generator: 100)
    many = run_runner(runner, images(1), [60.0], seed=0, num_samples=3)  # [1, 3, 3, S, S]
    for k in range(3):
        monkeypatch.setattr(ADAPTER, "base_seed", lambda generator, k=k: 100 + k)
        alone = run_runner(runner, images(1), [60.0], seed=0)
        torch.testing.assert_close(many[:, k], alone, atol=FP32_TOL, rtol=0)  # docs/models/pada.md 9 item 6


def test_prompt_embeddings_come_from_the_build_time_cache(module):
    runner = native_engine(module).runner
    clip = runner.master.clip

    def refuse(_texts):
        raise AssertionError("a cached prompt was sent through CLIP again")

    original = clip.encode_text
    clip.encode_text = refuse
    try:
        targets = ADAPTER.validate_ages(TINY, torch.tensor(AGES, dtype=torch.float64))
        opts = ADAPTER.validate_options(TINY, 2, {"gender": ["neutral", "female"]})
        inputs = runner.prepare(images(2), targets, torch.Generator().manual_seed(0), opts)
    finally:
        clip.encode_text = original
    want = ADAPTER.text_targets(runner.master, targets, opts)  # [2, D], the torch backend's e_txt
    assert torch.equal(inputs["e_mean"], want)
    assert inputs["eta"].shape == (2, 1, D)
    assert inputs["x_T"].shape == (2, 1, 3, S, S)


def test_graph_key_holds_only_what_changes_the_device_work(module):
    runner = native_engine(module).runner

    def key(**options):
        return runner.graph_key(ADAPTER.validate_options(TINY, 2, options))

    base = key()
    assert key(text="a face", s=2.0, vary="low", gender="male") == base  # tensors from prepare()
    assert key(reference=torch.rand(3, S, S)) == base
    for changed in ({"steps": 2}, {"num_samples": 2}, {"x_T": "invert"}, {"stats": "instance"}):
        assert key(**changed) != base, changed
    assert key(x_T="invert", invert_steps=2) != key(x_T="invert")


def test_forward_needs_no_host_values():
    """Meta tensors hold no values, so any host read in forward() (.item(), bool(t), .tolist()) would raise:
    the property CUDA-graph capture needs. Also runs the paper-size shapes (42 blocks; 2 steps to stay fast)."""
    for config, steps in ((TINY, TINY.steps), (PADAConfig.paper(), 2)):
        with torch.device("meta"):
            module = PADA(config).eval().requires_grad_(False)
        runner = PADARunner(ADAPTER, module, config, torch.device("meta"), torch.float16, channels_last=True)
        runner.table(steps)  # prepare() builds a new steps' table; forward() only reads it
        size, k = config.image_size, 2
        for x_T in ("random", "invert"):
            options = ADAPTER.validate_options(config, 1, {"num_samples": k, "x_T": x_T, "steps": steps})
            inputs = {
                "images": torch.empty(1, 3, size, size, device="meta"),
                "e_mean": torch.empty(1, config.clip_dim, device="meta"),
                "e_scale": torch.empty(1, config.clip_dim, device="meta"),
                "eta": torch.empty(1, k, config.clip_dim, device="meta"),
                "x_T": torch.empty(1, k, 3, size, size, device="meta"),
            }
            out = runner.forward(inputs, options)
            assert out.shape == (1, k, 3, size, size)
            assert out.dtype == torch.float32
        width = sum(block.out_layers[0].num_channels for block in runner.blocks)  # sum C
        assert runner.tables[steps].gain.shape == (steps, width)
    assert len(runner.blocks) == 42  # paper
    assert width == 12_928  # docs/models/pada.md 10 item 2: sum C over the paper's 42 blocks


def test_prepare_rejects_wrong_crop_size(module):
    runner = native_engine(module).runner
    opts = ADAPTER.validate_options(TINY, 1, {})
    with pytest.raises(InputError, match=f"shape \\[B, 3, {S}, {S}\\]"):
        runner.prepare(torch.rand(1, 3, S + 2, S + 2), torch.tensor([0]), None, opts)
    with pytest.raises(InputError, match="one integer age group per image"):
        runner.prepare(images(1), torch.tensor([0.5]), None, opts)


def test_bf16_follows_the_low_precision_parity_rule(module):
    """The fp16 code path (fp32 GroupNorm, tables, x_t and DDIM arithmetic) in bf16, which CPU can run."""
    x = images(2)
    ref = torch_engine(module).age(x, AGES, seed=7)
    torch_bf16 = torch_engine(module, precision="bf16").age(x, AGES, seed=7)
    native = native_engine(module, precision="bf16")
    assert next(native.runner.module.parameters()).dtype == torch.bfloat16
    assert native.runner.tables[TINY.steps].gain.dtype == torch.float32
    assert_low_precision_parity(native.age(x, AGES, seed=7), torch_bf16, ref)


# --- rewrites 1-2: hoisted tables (docs/models/pada.md 9 item 9) ------------------------------------------------------
def test_time_table_rows_equal_per_step_computation(module):
    blocks = conditioned_resblocks(module.diffae)
    schedule = DDIMSchedule.diffae(TINY.steps)
    table = time_table(module.diffae, blocks, schedule)  # [T, sum C] each
    offset = 0
    for block in blocks:
        width = block.out_layers[0].num_channels
        norm = block.out_layers[0]
        for row, t in enumerate(schedule.timesteps):
            emb = module.diffae.time_embed(torch.full((2,), float(t)))  # [2, E], as DiffAE.forward per step
            scale_t, shift_t = block.emb_layers(emb).chunk(2, dim=1)  # [2, C]
            # GN_b affine then the time modulation, as ResBlock.forward applies them
            gain = norm.weight * (1 + scale_t[0])
            shift = norm.bias * (1 + scale_t[0]) + shift_t[0]
            # A [T, E] GEMM rounds like the per-step [2, E] one up to blocking: a few fp32 ulps of values ~2.
            torch.testing.assert_close(table.gain[row, offset : offset + width], gain, atol=1e-6, rtol=0)
            torch.testing.assert_close(table.shift[row, offset : offset + width], shift, atol=1e-6, rtol=0)
        offset += width
    assert table.gain.shape == (TINY.steps, offset)


def test_condition_gemm_equals_per_block_layers(module):
    blocks = conditioned_resblocks(module.diffae)
    z = torch.randn(3, Z, generator=torch.Generator().manual_seed(2))
    weight, bias = condition_weights(blocks)
    got = condition_scale(z, weight, bias)  # [3, sum C]
    want = torch.cat([1 + block.cond_emb_layers(z) for block in blocks], dim=1)  # [3, sum C]
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)  # one GEMM vs 10 smaller ones: fp32 reordering


def per_step_tables(module: PADA, blocks, t: int, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, b) [N, sum C] of one step from the blocks' own layers, without hoisting or batching over steps."""
    emb = module.diffae.time_embed(torch.full((z.shape[0],), float(t), dtype=torch.float32))  # [N, E]
    a, b = [], []
    for block in blocks:
        scale_t, shift_t = block.emb_layers(emb).chunk(2, dim=1)  # [N, C] each
        scale_c = block.cond_emb_layers(z)  # [N, C]
        norm = block.out_layers[0]
        a.append(norm.weight * (1 + scale_t) * (1 + scale_c))
        b.append((norm.bias * (1 + scale_t) + shift_t) * (1 + scale_c))
    return torch.cat(a, dim=1), torch.cat(b, dim=1)  # [N, sum C] each


@pytest.mark.parametrize("phase_up", [True, False], ids=["phase-up", "plain-up"])
def test_hoisted_tables_are_exact_in_float64(module, phase_up):
    """The hoisting is algebra: in float64, hoisted and per-step tables give the same eps to rounding."""
    module64 = copy.deepcopy(module).double()
    runner = PADARunner(ADAPTER, module64, TINY, torch.device("cpu"), torch.float64, phase_up=phase_up)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, S, S, generator=gen, dtype=torch.float64)
    z = torch.randn(2, Z, generator=gen, dtype=torch.float64)
    table = runner.table(TINY.steps)
    a, b = modulation_tables(table, condition_scale(z, runner.cond_weight, runner.cond_bias))  # [N, T, sum C]
    for row, t in enumerate(table.schedule.timesteps):
        a_t, b_t = per_step_tables(module64, runner.master_blocks, t, z)
        torch.testing.assert_close(a[:, row], a_t, atol=F64_TOL, rtol=0)
        torch.testing.assert_close(b[:, row], b_t, atol=F64_TOL, rtol=0)
        torch.testing.assert_close(runner.eps(x, a[:, row], b[:, row]), runner.eps(x, a_t, b_t), atol=F64_TOL, rtol=0)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_unet_eps_matches_the_module_per_step(module, channels_last):
    """docs/models/pada.md 9 item 9 in fp32: the runner's UNet
    (hoisted tables and every rewrite) vs DiffAE.forward per step."""
    runner = PADARunner(ADAPTER, module, TINY, torch.device("cpu"), torch.float32, channels_last=channels_last)
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(3, 3, S, S, generator=gen)
    z = torch.randn(3, Z, generator=gen)
    table = runner.table(TINY.steps)
    a, b = modulation_tables(table, condition_scale(z, runner.cond_weight, runner.cond_bias))
    for row, t in enumerate(table.schedule.timesteps):
        want = module.diffae(x, torch.full((3,), float(t)), z)  # [3, 3, S, S]
        torch.testing.assert_close(runner.eps(x, a[:, row], b[:, row]), want, atol=EPS_TOL, rtol=0)


# --- rewrite 3: folded GroupNorm --------------------------------------------------------------------------------
def test_modulated_group_norm_equals_the_unfolded_sequence(module):
    """docs/models/pada.md 9 item 10: GN_b -> (1 + s_t), b_t ->
    (1 + s_c) -> SiLU vs one normalisation with a folded a, b."""
    block = conditioned_resblocks(module.diffae)[-1]
    norm = block.out_layers[0]
    gen = torch.Generator().manual_seed(5)
    h = 3 + 2 * torch.randn(2, norm.num_channels, 8, 8, generator=gen)  # mean > 0: the fold must keep it
    s_t, b_t, s_c = (0.5 * torch.randn(2, norm.num_channels, generator=gen) for _ in range(3))
    want = F.silu((norm(h) * (1 + s_t[..., None, None]) + b_t[..., None, None]) * (1 + s_c[..., None, None]))
    a = norm.weight * (1 + s_t) * (1 + s_c)
    b = (norm.bias * (1 + s_t) + b_t) * (1 + s_c)
    got = modulated_group_norm_act(h, norm, a, b, torch.float32)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)  # docs/models/pada.md 9 item 10: fp32 1e-5
    # Low precision: statistics stay fp32, only the stored result is rounded (one bf16 ulp, 2^-8 relative).
    low = modulated_group_norm_act(h.to(torch.bfloat16), norm, a, b, torch.bfloat16)
    ref = modulated_group_norm_act(h.to(torch.bfloat16).float(), norm, a, b, torch.float32)
    assert low.dtype == torch.bfloat16
    assert bool(((low.float() - ref).abs() <= ref.abs() * 2.0**-8 + 1e-6).all())


# --- rewrite 4: phase-decomposed up-conv ---------------------------------------------------------------------------
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_phase_up_conv_equals_nearest_then_conv3x3(channels_last):
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(2, 5, 6, 7, generator=gen, dtype=torch.float64)  # odd, non-square: catches swapped axes
    weight = torch.randn(4, 5, 3, 3, generator=gen, dtype=torch.float64)
    bias = torch.randn(4, generator=gen, dtype=torch.float64)
    want = F.conv2d(F.interpolate(x, scale_factor=2.0, mode="nearest"), weight, bias, padding=1)  # [2, 4, 12, 14]
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    got = upsample_conv3x3(x, phase_weights(weight), bias)
    assert got.shape == want.shape
    assert got.is_contiguous(memory_format=torch.channels_last) == channels_last
    torch.testing.assert_close(got, want, atol=F64_TOL, rtol=0)  # docs/models/pada.md 9 item 10: exact up to rounding


def test_phase_weights_sum_the_taps():
    weight = torch.randn(3, 2, 3, 3, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    phases = phase_weights(weight)  # [2, 2, 3, 2, 2, 2]
    assert phases.shape == (2, 2, 3, 2, 2, 2)
    # every phase sees each 3x3 tap exactly once
    torch.testing.assert_close(phases.sum(dim=(-1, -2)), weight.sum(dim=(-1, -2)).expand(2, 2, 3, 2))
    torch.testing.assert_close(phases[0, 0, ..., 0, 0], weight[..., 0, 0])  # row i-1, column j-1: one tap
    torch.testing.assert_close(phases[1, 1, ..., 1, 1], weight[..., 2, 2])


# --- rewrite 5: attention through SDPA -----------------------------------------------------------------------------
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_sdpa_attention_equals_the_module(module, channels_last):
    from pyagingrt.training.layers.diffae import AttentionBlock

    runner = PADARunner(ADAPTER, module, TINY, torch.device("cpu"), torch.float32, channels_last=channels_last)
    block = next(m for m in runner.module.modules() if isinstance(m, AttentionBlock))
    c = block.norm.num_channels
    x = torch.randn(2, c, 4, 5, generator=torch.Generator().manual_seed(8))
    want = block(x)
    got = runner._attention(block, runner._layout(x))
    # softmax over 20 keys and two 1x1 projections in another order: fp32 rounding on outputs of size ~3
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


# --- GPU: graph replay and fp16 parity -----------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_low_precision_parity_on_cuda(module, precision):
    x = images(2, device="cuda")
    ref = torch_engine(module, "cuda").age(x, AGES, seed=7)
    torch_low = torch_engine(module, "cuda", precision).age(x, AGES, seed=7)
    native = native_engine(module, "cuda", precision)
    assert native.graphs is not None
    assert native.runner.channels_last
    assert_low_precision_parity(native.age(x, AGES, seed=7), torch_low, ref)


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("x_T", ["random", "invert"])
def test_graph_replay_equals_eager_on_cuda(module, precision, x_T):
    """docs/models/pada.md 9 item 3: the whole call
    (encoder, inversion, every step) in one CUDA graph vs the eager loop."""
    native = native_engine(module, "cuda", precision)
    runner = native.runner
    # Same kernels in the same order; cuDNN may pick other algorithms at capture: docs/models/pada.md 9 item 3's bounds.
    tol = 1e-5 if precision == "fp32" else 1e-3
    for batch in (4, 3):  # bucket 4 exactly, and 3 padded into bucket 4
        x = images(batch, seed=batch, device="cuda")
        targets = ADAPTER.validate_ages(TINY, torch.full((batch,), 40.0, dtype=torch.float64)).cuda()
        options = ADAPTER.validate_options(TINY, batch, {"num_samples": 2, "x_T": x_T})
        with torch.no_grad():
            inputs = runner.prepare(x, targets, torch.Generator().manual_seed(batch), options)
            eager = runner.forward(inputs, options)
            replayed = native.graphs.run(
                lambda static, options=options: runner.forward(static, options), inputs, runner.graph_key(options)
            )
        assert replayed.shape == (batch, 2, 3, S, S)
        torch.testing.assert_close(replayed, eager, atol=tol, rtol=0)
    # a new prompt, seed or reference needs no new graph: they reach forward() as tensors
    native.age(images(4, device="cuda"), 20.0, seed=1, num_samples=2, x_T=x_T, text="a face", s=2.0)
    assert len(native.graphs) == 2  # bucket 1 from load(), bucket 4 for this key


@pytest.mark.gpu
def test_native_fp32_on_cuda_matches_torch_backend(module):
    x = images(2, device="cuda")
    out = native_engine(module, "cuda").age(x, AGES, seed=7)
    ref = torch_engine(module, "cuda").age(x, AGES, seed=7)
    # TF32 is off in tests (conftest); the native engine runs channels_last on CUDA, whose cuDNN algorithms reorder
    # sums like oneDNN's NHWC ones on CPU: FP32_NHWC_TOL.
    torch.testing.assert_close(out, ref, atol=FP32_NHWC_TOL, rtol=0)
