"""PADA (docs/models/pada.md section 9) on the tiny config, CPU: sizes, seeds, modulation identity, CLIP, converter.

The DDIM schedule and the fused step are tested with the ddim_step op. Zero-initialised DiffAE layers are
re-randomised (``PADAAdapter.build``) so that every residual branch is live and the checks below can fail.
"""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
import torch.nn.functional as F

from pyagingrt.checkpoint import load_state_dict_strict
from pyagingrt.errors import CheckpointError, InputError
from pyagingrt.models.pada import PADAAdapter
from pyagingrt.training.layers.clip_encoder import CLIP_MEAN, CLIP_STD, ClipEncoder, clip_config
from pyagingrt.training.layers.diffae import ResBlock, timestep_embedding
from pyagingrt.training.models.pada import PADA, PADAConfig, pluralistic_noise

ADAPTER = PADAAdapter()
TINY = PADAConfig.tiny()
S = TINY.image_size
Z = TINY.z_channels
D = TINY.clip_dim


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # The test machine has 2 shared cores: one intra-op thread is ~10x faster there than two under load.
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def tiny_clip() -> ClipEncoder:
    return ClipEncoder.random(clip_config("tiny"))  # fixed seed inside: the same weights every call


def make_engine(seed: int = 0, identity: bool = False) -> PADA:
    """A tiny random-weight PADA with a random tiny CLIP. ``identity`` keeps PADA's D7 init (z_age = z_src)
    and re-randomises only DiffAE's zero-initialised layers."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if identity:
            module = PADA(TINY).eval()
            for layer in module.zero_init_layers():
                layer.reset_parameters()
        else:
            module = ADAPTER.build(TINY)
    module.set_clip(tiny_clip())
    return module


@pytest.fixture(scope="module")
def engine() -> PADA:
    return make_engine()


@pytest.fixture
def images() -> torch.Tensor:
    return torch.rand(3, 3, S, S)  # [B, 3, S, S] in [0, 1]


def age(module: PADA, images: torch.Tensor, ages, seed: int = 0, **options) -> torch.Tensor:
    targets = ADAPTER.validate_ages(TINY, torch.tensor(ages, dtype=torch.float64))
    opts = ADAPTER.validate_options(TINY, images.shape[0], options)
    return ADAPTER.run(module, images, targets, torch.Generator().manual_seed(seed), opts)


# --- sizes ---------------------------------------------------------------------------------------------------------
def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_paper_parameter_counts_on_meta():
    with torch.device("meta"):
        model = PADA(PADAConfig.paper())
    encoder = n_params(model.diffae.encoder)
    assert n_params(model.diffae) - encoder == 138_341_891  # UNet (docs/models/pada.md 3.5)
    assert encoder == 30_150_400
    assert n_params(model.diffae) == 168_492_291
    assert n_params(model.age_encoder) == 1_050_624
    assert n_params(model.modulation) == 1_575_936
    keys = model.diffae.state_dict()
    assert len(keys) == 706
    assert sum(k.startswith("encoder.") for k in keys) == 116
    assert sum(isinstance(m, ResBlock) and m.conditioned for m in model.diffae.modules()) == 42


def test_paper_clip_is_vit_b32_size():
    from transformers import CLIPModel

    with torch.device("meta"):
        clip = CLIPModel(clip_config("vit_b32"))
    assert n_params(clip) == 151_277_313  # docs/models/pada.md 3.5
    assert clip.config.projection_dim == PADAConfig.paper().clip_dim


def test_tiny_sizes():
    with torch.device("meta"):
        model = PADA(TINY)
    assert n_params(model.diffae) == 1_346_435  # docs/models/pada.md 5
    assert len(model.diffae.state_dict()) == 294


def test_paper_flops_on_meta():
    from torch.utils.flop_counter import FlopCounterMode

    paper = PADAConfig.paper()
    with torch.device("meta"):
        model = PADA(paper)
        x = torch.zeros(1, 3, 256, 256)
        with FlopCounterMode(display=False) as enc, torch.no_grad():
            z = model.encode(x)
        with FlopCounterMode(display=False) as unet, torch.no_grad():
            model.diffae(x, torch.zeros(1), z)
    # docs/models/pada.md 3.5 gives 554.4 and 70.8 GFLOP, rounded to 0.1
    assert unet.get_total_flops() / 1e9 == pytest.approx(554.4, abs=0.05)
    assert enc.get_total_flops() / 1e9 == pytest.approx(70.8, abs=0.05)
    want = enc.get_total_flops() + 25 * unet.get_total_flops()
    assert ADAPTER.flops_per_image(model, paper) == want


def test_timestep_embedding_is_cos_first():
    # dim 4: half = 2, f = (1, exp(-ln(1e4)/2) = 0.01)
    got = timestep_embedding(torch.tensor([2.0]), 4)
    want = torch.tensor([[math.cos(2.0), math.cos(0.02), math.sin(2.0), math.sin(0.02)]])
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


# --- running -------------------------------------------------------------------------------------------------------
def test_output_shapes_range_and_dtype(engine, images):
    out = age(engine, images, [3.0, 40.0, 90.0])
    assert out.shape == (3, 3, S, S)
    assert out.dtype == torch.float32
    assert out.min() >= 0.0
    assert out.max() <= 1.0
    many = age(engine, images[:2], [30.0, 60.0], num_samples=3)
    assert many.shape == (2, 3, 3, S, S)


def test_same_seed_is_bitwise_equal_and_different_seeds_differ(engine, images):
    a = age(engine, images, [20.0, 50.0, 80.0], seed=7)
    b = age(engine, images, [20.0, 50.0, 80.0], seed=7)
    c = age(engine, images, [20.0, 50.0, 80.0], seed=8)
    assert torch.equal(a, b)
    assert (a - c).abs().mean() > 1e-2  # docs/models/pada.md 9 item 5: x_T differs, and the zero-init layers are live


def test_target_age_changes_the_output(engine, images):
    young = age(engine, images, [2.0, 2.0, 2.0], seed=3)
    old = age(engine, images, [80.0, 80.0, 80.0], seed=3)
    # Same noise; only the prompt, so z_age, differs. With PADA's identity init (D7) the two would be bitwise
    # equal; build() perturbs gamma/beta, and the random UNet saturates most pixels at 0 or 1, so the mean
    # change is small (about 2e-4 here) but far above float32 noise.
    assert (young - old).abs().mean() > 1e-5


@pytest.mark.gpu
def test_cuda_matches_cpu(engine, images):
    # Noise is drawn on the CPU and moved (D10), so only float32 kernel rounding differs (TF32 is off in tests);
    # 3 tiny steps amplify it by at most A = 1/sqrt(abar) (about 10 here): 1e-3 leaves a wide margin.
    module = make_engine().to("cuda")
    cpu = age(engine, images, [20.0, 50.0, 80.0], seed=9)
    cuda = age(module, images.to("cuda"), [20.0, 50.0, 80.0], seed=9)
    assert cuda.device.type == "cuda"
    torch.testing.assert_close(cuda.cpu(), cpu, atol=1e-3, rtol=0)


def test_noise_follows_the_seed_rule_and_vary():
    seed, k = 11, 3
    x_T, eta = pluralistic_noise(seed, k, (3, S, S), D, "both")
    for i in range(k):  # D10: x_T from 2*s_k, eta from 2*s_k + 1, s_k = seed + k
        assert torch.equal(x_T[i], torch.randn(3, S, S, generator=torch.Generator().manual_seed(2 * (seed + i))))
        assert torch.equal(eta[i], torch.randn(D, generator=torch.Generator().manual_seed(2 * (seed + i) + 1)))
    x_hi, eta_hi = pluralistic_noise(seed, k, (3, S, S), D, "high")
    assert all(torch.equal(x_hi[i], x_T[0]) for i in range(k))
    assert torch.equal(eta_hi, eta)
    x_lo, eta_lo = pluralistic_noise(seed, k, (3, S, S), D, "low")
    assert all(torch.equal(eta_lo[i], eta[0]) for i in range(k))
    assert torch.equal(x_lo, x_T)


def test_run_equals_the_module_pipeline_over_25_steps(engine):
    # One paper-length (25-step) run: the adapter must be encode -> e_txt + eps*s*eta -> modulate -> decode,
    # with the D10 seeds and docs/models/pada.md's prompt for (female, 65).
    x = torch.rand(1, 3, S, S)
    got = age(engine, x, [65.0], seed=5, gender="female", steps=25, s=2.0)
    base = int(torch.randint(2**62, (1,), generator=torch.Generator().manual_seed(5)))
    x_T, eta = pluralistic_noise(base, 1, (3, S, S), D)
    with torch.no_grad():
        e_txt = engine.text_embedding(["woman's face in her sixties"])  # [1, D]
        z_age = engine.modulate(e_txt + TINY.text_noise * 2.0 * eta, engine.encode(x * 2 - 1))
        want = (engine.decode(x_T, z_age, steps=25) + 1) / 2
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)  # same ops; 1e-6 allows clamp/round at [0, 1]


def test_neutral_gender_is_the_renormalised_mean_and_text_overrides_age(engine):
    groups = ADAPTER.validate_ages(TINY, torch.tensor([30.0, 30.0], dtype=torch.float64))
    opts = ADAPTER.validate_options(TINY, 2, {"gender": ["neutral", "male"]})
    got = ADAPTER.text_targets(engine, groups, opts)
    e = engine.text_embedding(["woman's face in her thirties", "man's face in his thirties"])
    torch.testing.assert_close(got[0], F.normalize(e[0] + e[1], dim=0), atol=1e-6, rtol=0)
    torch.testing.assert_close(got[1], e[1], atol=1e-6, rtol=0)
    opts = ADAPTER.validate_options(TINY, 2, {"text": "a face"})
    torch.testing.assert_close(ADAPTER.text_targets(engine, groups, opts), engine.text_embedding(["a face"] * 2))


@pytest.mark.parametrize(("age_years", "group"), [(0, 0), (5, 0), (5.5, 1), (15, 1), (50, 4), (70, 5), (71, 6)])
def test_age_to_group(age_years, group):
    assert ADAPTER.validate_ages(TINY, torch.tensor([age_years], dtype=torch.float64)).item() == group


def test_batch_of_n_equals_n_batches_of_one(engine, images):
    ages = [10.0, 45.0, 75.0]
    batch = age(engine, images, ages, seed=2, gender=["female", "male", "neutral"])
    for i, (a, g) in enumerate(zip(ages, ["female", "male", "neutral"], strict=True)):
        alone = age(engine, images[i : i + 1], [a], seed=2, gender=g)
        # fp32; convolution algorithms may block differently by batch size: docs/models/pada.md 9 item 6 allows 1e-5
        torch.testing.assert_close(batch[i : i + 1], alone, atol=1e-5, rtol=0)


def test_sample_k_alone_equals_sample_k_in_a_batch(engine, images, monkeypatch):
    monkeypatch.setattr(ADAPTER, "base_seed", lambda generator: 100)
    many = age(engine, images[:1], [60.0], num_samples=3)  # [1, 3, 3, S, S]
    for k in range(3):
        monkeypatch.setattr(ADAPTER, "base_seed", lambda generator, k=k: 100 + k)
        alone = age(engine, images[:1], [60.0])
        torch.testing.assert_close(many[:, k], alone, atol=1e-5, rtol=0)  # docs/models/pada.md section 9 item 6


def test_vary_high_shares_x_T_and_vary_low_shares_eta(engine, images):
    x = images[:1]
    # s = 0 removes eta: samples then differ only through x_T
    high = age(engine, x, [60.0], num_samples=3, vary="high", s=0.0)
    assert all(torch.equal(high[:, 0], high[:, k]) for k in (1, 2))
    both = age(engine, x, [60.0], num_samples=3, vary="both", s=0.0)
    assert (both[:, 0] - both[:, 1]).abs().mean() > 1e-2
    # invert mode shares x_T: samples then differ only through eta (large s makes the reference spread visible)
    ref = torch.rand(3, S, S)
    low = age(engine, x, [0.0], num_samples=2, vary="low", x_T="invert", reference=ref, s=1000.0)
    assert torch.equal(low[:, 0], low[:, 1])
    spread = age(engine, x, [0.0], num_samples=2, vary="both", x_T="invert", reference=ref, s=1000.0)
    assert (spread[:, 0] - spread[:, 1]).abs().mean() > 1e-4


def test_invert_mode_uses_the_ddim_inversion(engine, images):
    x = images[:2]
    got = age(engine, x, [30.0, 30.0], seed=1, x_T="invert", s=0.0, gender="male")
    with torch.no_grad():
        z = engine.encode(x * 2 - 1)
        x_T = engine.invert(x * 2 - 1, z)
        z_age = engine.modulate(engine.text_embedding(["man's face in his thirties"] * 2), z)
        want = (engine.decode(x_T, z_age) + 1) / 2
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


def test_modulation_identity_at_init_decodes_like_diffae():
    module = make_engine(seed=1, identity=True)
    module.set_stats(torch.randn(Z), torch.rand(Z) + 0.5)  # D7 init with non-trivial statistics
    z_src = torch.randn(4, Z)
    e_age = F.normalize(torch.randn(4, D), dim=-1)
    with torch.no_grad():
        z_age = module.modulate(e_age, z_src)
        torch.testing.assert_close(z_age, z_src, atol=1e-6, rtol=0)  # docs/models/pada.md section 9 item 7
        x_T = torch.randn(4, 3, S, S)
        pada = module.decode(x_T, z_age)
        diffae = module.decode(x_T, z_src)
    # z_age differs from z_src by float32 rounding only; docs/models/pada.md 6 uses 1e-4 for the DiffAE fidelity check
    torch.testing.assert_close(pada, diffae, atol=1e-4, rtol=0)


def test_bfloat16_module_runs_and_returns_float32(images):
    module = make_engine().to(torch.bfloat16)
    fp32 = age(make_engine(), images[:1], [50.0], seed=4)
    out = age(module, images[:1], [50.0], seed=4)
    assert out.dtype == torch.float32
    assert out.shape == (1, 3, S, S)
    assert bool(torch.isfinite(out).all())
    # loose: bf16 (8-bit mantissa) UNet over 3 steps; a dtype bug (e.g. uncast input) is far larger
    assert (out - fp32).abs().mean() < 0.05


def test_random_clip_is_used_with_a_warning(images):
    with torch.random.fork_rng(devices=[]):
        module = ADAPTER.build(TINY)
    with pytest.warns(UserWarning, match="random CLIP"):
        out = age(module, images[:1], [30.0])
    assert out.shape == (1, 3, S, S)
    with pytest.warns(UserWarning, match="random CLIP"):
        ADAPTER.attach(module, TINY)
    assert module.clip.is_random


# --- CLIP directory ----------------------------------------------------------------------------------------------
def _bytes_to_unicode() -> list[str]:
    """GPT-2/CLIP byte-level alphabet: printable bytes map to themselves, the rest to 256 + n."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + n) for n in range(len(extra))]


def write_tiny_clip(folder, projection_dim: int = 16):
    """A tiny random CLIP in Hugging Face layout (docs/models/pada.md 5): save_pretrained + a byte-level vocab.json with
    514 entries and a header-only merges.txt."""
    from transformers import CLIPModel

    config = clip_config("tiny")
    config.projection_dim = projection_dim
    torch.manual_seed(123)
    model = CLIPModel(config).eval()
    model.save_pretrained(str(folder))
    symbols = _bytes_to_unicode()
    vocab = {s: i for i, s in enumerate(symbols + [s + "</w>" for s in symbols])}
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = 512, 513
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return model


def test_clip_directory_loads_offline_and_matches_transformers(tmp_path, images):
    from transformers import CLIPTokenizer

    model = write_tiny_clip(tmp_path)
    module = make_engine()
    ADAPTER.attach(module, TINY, clip=str(tmp_path))
    assert not module.clip.is_random
    prompts = ["man's face in his sixties", "a toddler girl's face"]
    tok = CLIPTokenizer.from_pretrained(str(tmp_path), local_files_only=True)
    enc = tok(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    x = images[:2] * 2 - 1
    pixels = ((x + 1) / 2 - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        text = model.get_text_features(**enc)
        image = model.get_image_features(pixel_values=pixels)  # 32 px input = image_size: no resize
    text = text if isinstance(text, torch.Tensor) else text.pooler_output
    image = image if isinstance(image, torch.Tensor) else image.pooler_output
    # same model, same ops: only the final normalisation is ours
    torch.testing.assert_close(module.text_embedding(prompts), F.normalize(text, dim=-1), atol=1e-6, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(module.image_embedding(x), F.normalize(image, dim=-1), atol=1e-6, rtol=0)
    # both target modes run through the loaded CLIP
    text_out = age(module, images[:2], [65.0, 8.0], seed=1)
    ref_out = age(module, images[:2], [65.0, 8.0], seed=1, reference=images[2], s=1000.0)
    assert text_out.shape == ref_out.shape == (2, 3, S, S)
    assert (text_out - ref_out).abs().mean() > 1e-4


def test_clip_preprocessing_is_differentiable():
    clip = tiny_clip()
    x = (torch.rand(2, 3, 48, 48) * 2 - 1).requires_grad_()  # resized to 32 px inside
    clip.encode_image(x)[:, 0].sum().backward()
    assert x.grad is not None
    assert bool(torch.isfinite(x.grad).all())
    assert x.grad.abs().sum() > 0


def test_clip_directory_errors(tmp_path):
    module = make_engine()
    with pytest.raises(CheckpointError, match="does not exist"):
        ADAPTER.attach(module, TINY, clip=str(tmp_path / "nowhere"))
    write_tiny_clip(tmp_path)
    (tmp_path / "merges.txt").unlink()
    with pytest.raises(CheckpointError, match=r"merges\.txt"):
        ADAPTER.attach(module, TINY, clip=str(tmp_path))
    other = tmp_path / "d8"
    other.mkdir()
    write_tiny_clip(other, projection_dim=8)
    with pytest.raises(CheckpointError, match="projection_dim 8"):
        ADAPTER.attach(module, TINY, clip=str(other))
    with pytest.raises(InputError, match="dex"):
        ADAPTER.attach(module, TINY, dex="x")


# --- converter ---------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class _HyperParameters:  # a non-tensor object, as a Lightning checkpoint may hold
    lr: float = 1e-4


def fake_lightning(source: PADA, mutate=None) -> dict:
    """A DiffAE Lightning checkpoint in the official layout (docs/models/pada.md 6), with the tiny config's keys."""
    ema = source.diffae.state_dict()
    state = {f"ema_model.{k}": v.clone() for k, v in ema.items()}
    state.update({f"model.{k}": v + 1.0 if v.is_floating_point() else v for k, v in ema.items()})
    state["x_T"] = torch.randn(2, 3, S, S)
    if mutate is not None:
        mutate(state)
    return {"state_dict": state, "global_step": 1234, "epoch": 3}


def write_latent(path, mean, std):
    torch.save({"conds": torch.randn(5, Z), "conds_mean": mean[None], "conds_std": std[None]}, path)


def test_lightning_checkpoint_converts_and_loads_the_ema_weights(tmp_path, images):
    source = make_engine(seed=2, identity=True)
    mean, std = torch.randn(Z), torch.rand(Z) + 0.5
    torch.save(fake_lightning(source), tmp_path / "last.ckpt")
    write_latent(tmp_path / "latent.pkl", mean, std)  # found beside the checkpoint
    config, state = ADAPTER.convert_official(tmp_path / "last.ckpt", "tiny")
    assert config == TINY
    loaded = PADA(config).eval()
    load_state_dict_strict(loaded, state, "converted")
    for key, value in source.diffae.state_dict().items():
        assert torch.equal(loaded.diffae.state_dict()[key], value), key  # the EMA weights, bitwise
    assert not torch.equal(loaded.diffae.out[2].weight, source.diffae.out[2].weight + 1.0)  # not model.*
    assert torch.equal(loaded.stats.mean, mean)
    assert torch.equal(loaded.stats.std, std)
    loaded.set_clip(tiny_clip())
    source.set_stats(mean, std)  # identity init with the same statistics: z_age = z_src in both
    torch.testing.assert_close(
        age(loaded, images, [5.0, 30.0, 90.0], seed=3), age(source, images, [5.0, 30.0, 90.0], seed=3), atol=0, rtol=0
    )


def test_converter_without_statistics_warns_and_uses_mean_0_std_1(tmp_path):
    torch.save(fake_lightning(make_engine(identity=True)), tmp_path / "last.ckpt")
    with pytest.warns(UserWarning, match="mean 0, std 1"):
        _, state = ADAPTER.convert_official(tmp_path / "last.ckpt", "tiny")
    assert torch.equal(state["stats.mean"], torch.zeros(Z))
    assert torch.equal(state["stats.std"], torch.ones(Z))


def _drop(state):
    del state["ema_model.input_blocks.1.0.in_layers.2.weight"]


def _extra(state):
    state["ema_model.input_blocks.1.0.extra.weight"] = torch.zeros(1)


def _reshape(state):
    state["ema_model.middle_block.1.qkv.weight"] = torch.zeros(3, 3, 1)


def _nan(state):
    state["ema_model.out.2.bias"] = torch.full((3,), float("nan"))


def _no_ema(state):
    for key in [k for k in state if k.startswith("ema_model.")]:
        del state[key]


def _blocked(state):
    state["hyper"] = _HyperParameters()


@pytest.mark.parametrize(
    ("mutate", "named"),
    [
        (_drop, "input_blocks.1.0.in_layers.2.weight"),
        (_extra, "input_blocks.1.0.extra.weight"),
        (_reshape, "middle_block.1.qkv.weight"),
        (_nan, "out.2.bias"),
        (_no_ema, "ema_model"),
        (_blocked, "_HyperParameters"),
    ],
    ids=["missing", "unexpected", "mis-shaped", "nan", "no-ema", "blocked-global"],
)
def test_converter_refusals_name_the_key(tmp_path, mutate, named):
    torch.save(fake_lightning(make_engine(identity=True), mutate), tmp_path / "last.ckpt")
    with pytest.raises(CheckpointError, match=named.replace(".", r"\.")):
        ADAPTER.convert_official(tmp_path / "last.ckpt", "tiny")


def test_converter_refuses_bad_statistics(tmp_path):
    torch.save(fake_lightning(make_engine(identity=True)), tmp_path / "last.ckpt")
    write_latent(tmp_path / "latent.pkl", torch.zeros(Z), torch.zeros(Z))
    with pytest.raises(CheckpointError, match="conds_std"):
        ADAPTER.convert_official(tmp_path / "last.ckpt", "tiny")
    write_latent(tmp_path / "other.pkl", torch.zeros(Z + 1), torch.ones(Z + 1))
    with pytest.raises(CheckpointError, match="conds_mean"):
        ADAPTER.convert_official(tmp_path / "last.ckpt", "tiny", latent=tmp_path / "other.pkl")


# --- user mistakes -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [-1.0, 121.0, float("nan")])
def test_out_of_range_ages_raise(bad):
    with pytest.raises(InputError, match="target ages"):
        ADAPTER.validate_ages(TINY, torch.tensor([30.0, bad], dtype=torch.float64))


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"sigma_m": 1.0}, "sigma_m"),
        ({"gender": "other"}, "gender"),
        ({"gender": ["male"]}, "gender"),
        ({"text": ""}, "text"),
        ({"num_samples": 0}, "num_samples"),
        ({"steps": 1001}, "steps"),
        ({"vary": "mid"}, "vary"),
        ({"x_T": "zeros"}, "x_T"),
        ({"s": -1.0}, "s"),
        ({"stats": "batch"}, "stats"),
        ({"reference": torch.rand(1, S, S)}, "reference"),
        ({"reference": torch.rand(3, S, S) + 1.0}, "reference"),
        ({"reference": torch.rand(2, 3, S, S)}, "reference"),
    ],
)
def test_bad_options_raise(options, named):
    with pytest.raises(InputError, match=named):
        ADAPTER.validate_options(TINY, 3, options)


def test_config_round_trip_and_unknown_name():
    for name in ADAPTER.config_names:
        config = ADAPTER.make_config(name)
        data = json.loads(json.dumps(ADAPTER.config_to_dict(config)))
        assert ADAPTER.config_from_dict(data) == config
    with pytest.raises(InputError, match="huge"):
        ADAPTER.make_config("huge")
    assert ADAPTER.input_size(TINY) == S
    assert [g.label for g in ADAPTER.age_groups(TINY)] == ["0-5", "6-15", "16-25", "26-35", "36-50", "51-70", "70+"]


class _Evil:  # a non-Lightning class in a callbacks key: still refused
    pass


@pytest.fixture
def lightning_callback(monkeypatch) -> type:
    """A class picklable as Lightning 1.4's ``pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint``
    (no Lightning is installed or imported)."""
    import sys
    import types

    names = ("pytorch_lightning", "pytorch_lightning.callbacks", "pytorch_lightning.callbacks.model_checkpoint")
    for name in names:
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    callback = type("ModelCheckpoint", (), {"__module__": names[-1]})
    sys.modules[names[-1]].ModelCheckpoint = callback
    return callback


def test_lightning14_callbacks_keyed_by_class_and_latent_ckpt_name(tmp_path, lightning_callback):
    source = make_engine(seed=4, identity=True)
    ckpt = fake_lightning(source)
    ckpt["pytorch-lightning_version"] = "1.4.2"
    ckpt["callbacks"] = {lightning_callback: {"best_model_score": torch.tensor(0.5), "dirpath": "checkpoints"}}
    torch.save(ckpt, tmp_path / "last.ckpt")
    mean, std = torch.randn(Z), torch.rand(Z) + 0.5
    write_latent(tmp_path / "latent.ckpt", mean, std)  # the statistics under the name DiffAE's README uses
    _, state = ADAPTER.convert_official(tmp_path / "last.ckpt", "tiny")
    assert torch.equal(state["stats.mean"], mean)
    assert torch.equal(state["stats.std"], std)
    for key, value in source.diffae.state_dict().items():
        assert torch.equal(state[f"diffae.{key}"], value), key
    ckpt["callbacks"] = {_Evil: {}}
    torch.save(ckpt, tmp_path / "evil.ckpt")
    with pytest.raises(CheckpointError, match="_Evil"):
        ADAPTER.convert_official(tmp_path / "evil.ckpt", "tiny")
