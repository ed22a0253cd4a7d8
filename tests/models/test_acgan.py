"""AcGAN: model, adapter and official-checkpoint converter (docs/models/acgan.md section 8), tiny config on CPU.

The official layout is rebuilt here from docs/models/acgan.md's key patterns (section 5) and run through a functional
forward written from docs/models/acgan.md's architecture table (section 3), independent of training/models/acgan.py.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pyagingrt.checkpoint import load_state_dict_strict
from pyagingrt.checkpoints.acgan import convert_discriminator, convert_discriminator_file, convert_generator
from pyagingrt.errors import CheckpointError, InputError
from pyagingrt.models.acgan import AcGANAdapter, describe_age
from pyagingrt.models.registry import get_adapter
from pyagingrt.training.models.acgan import (
    AcGANConfig,
    Discriminator,
    Generator,
    init_weights,
    mask_blend,
    one_hot_groups,
    tile_condition,
)

TINY = AcGANConfig.tiny()
S = TINY.image_size
ADAPTER = AcGANAdapter()


# --- the official layout, from docs/models/acgan.md -------------------------------------------------------------------
def official_generator_shapes(d: int, c_dim: int, r: int) -> dict[str, tuple[int, ...]]:
    """docs/models/acgan.md section 5: G keys (without ``module.``) and shapes; ConvTranspose is [in, out, kH, kW]."""
    shapes: dict[str, tuple[int, ...]] = {
        "main.0.weight": (d, 3 + c_dim, 7, 7),
        "main.3.weight": (2 * d, d, 4, 4),
        "main.6.weight": (4 * d, 2 * d, 4, 4),
        f"main.{9 + r}.weight": (4 * d, 2 * d, 4, 4),
        f"main.{12 + r}.weight": (2 * d, d, 4, 4),
        "img_reg.0.weight": (3, d, 7, 7),
        "attention_reg.0.weight": (1, d, 7, 7),
    }
    for index, ch in ((1, d), (4, 2 * d), (7, 4 * d), (10 + r, 2 * d), (13 + r, d)):
        shapes[f"main.{index}.weight"] = shapes[f"main.{index}.bias"] = (ch,)
    for i in range(9, 9 + r):
        for j in (0, 3):
            shapes[f"main.{i}.main.{j}.weight"] = (4 * d, 4 * d, 3, 3)
        for j in (1, 4):
            shapes[f"main.{i}.main.{j}.weight"] = shapes[f"main.{i}.main.{j}.bias"] = (4 * d,)
    return shapes


def official_discriminator_shapes(d: int, c_dim: int, r: int, k: int = 1) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    in_ch = 3
    for i in range(r):
        shapes[f"main.{2 * i}.weight"] = (d * 2**i, in_ch, 4, 4)
        shapes[f"main.{2 * i}.bias"] = (d * 2**i,)
        in_ch = d * 2**i
    shapes["prob_layer.weight"] = (1, in_ch, 3, 3)
    shapes["cond_layer.weight"] = (c_dim, in_ch, k, k)
    return shapes


def random_state(shapes: dict[str, tuple[int, ...]], seed: int = 0, prefix: str = "module.") -> dict[str, torch.Tensor]:
    """Weights as after training: conv N(0, 0.05), norm gamma near 1, biases small (all non-trivial)."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in shapes.items():
        if len(shape) == 1:
            base = 1.0 if key.endswith("weight") else 0.0
            state[prefix + key] = base + 0.1 * torch.randn(shape, generator=gen)
        else:
            state[prefix + key] = 0.05 * torch.randn(shape, generator=gen)
    return state


def official_g_forward(sd: dict[str, torch.Tensor], x: torch.Tensor, c: torch.Tensor, r: int):
    """The official Generator.forward, functionally (docs/models/acgan.md section 3); sd without ``module.``."""

    def norm(h, key, relu=True):
        h = F.instance_norm(h, weight=sd[f"{key}.weight"], bias=sd[f"{key}.bias"], eps=1e-5)
        return F.relu(h) if relu else h

    h = torch.cat([x, c[:, :, None, None].expand(-1, -1, *x.shape[2:])], dim=1)
    h = norm(F.conv2d(h, sd["main.0.weight"], padding=3), "main.1")
    h = norm(F.conv2d(h, sd["main.3.weight"], stride=2, padding=1), "main.4")
    h = norm(F.conv2d(h, sd["main.6.weight"], stride=2, padding=1), "main.7")
    for i in range(9, 9 + r):
        t = norm(F.conv2d(h, sd[f"main.{i}.main.0.weight"], padding=1), f"main.{i}.main.1")
        h = h + norm(F.conv2d(t, sd[f"main.{i}.main.3.weight"], padding=1), f"main.{i}.main.4", relu=False)
    h = norm(F.conv_transpose2d(h, sd[f"main.{9 + r}.weight"], stride=2, padding=1), f"main.{10 + r}")
    h = norm(F.conv_transpose2d(h, sd[f"main.{12 + r}.weight"], stride=2, padding=1), f"main.{13 + r}")
    return torch.tanh(F.conv2d(h, sd["img_reg.0.weight"], padding=3)), torch.sigmoid(
        F.conv2d(h, sd["attention_reg.0.weight"], padding=3)
    )


def strip(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k.removeprefix("module."): v for k, v in state.items()}


# --- fixtures ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_g() -> Generator:
    return init_weights(Generator(TINY), generator=torch.Generator().manual_seed(1)).eval()


@pytest.fixture
def images() -> torch.Tensor:
    return torch.rand(3, 3, S, S, generator=torch.Generator().manual_seed(2)) * 2 - 1  # [3, 3, S, S] in [-1, 1]


GROUPS = torch.tensor([0, 2, 4])


# --- sizes -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("config", "g_params", "d_params"),
    [(AcGANConfig.paper(), 8_433_664, 178_981_824), (TINY, 62_464, 176_504)],
)
def test_parameter_counts_and_official_key_sets(config, g_params, d_params):
    with torch.device("meta"):
        g, d = Generator(config), Discriminator(config)
    assert sum(p.numel() for p in g.parameters()) == g_params
    assert sum(p.numel() for p in d.parameters()) == d_params
    g_shapes = official_generator_shapes(config.g_conv_dim, config.c_dim, config.g_repeat_num)
    d_shapes = official_discriminator_shapes(config.d_conv_dim, config.c_dim, config.d_repeat_num)
    assert {k: tuple(v.shape) for k, v in g.state_dict().items()} == g_shapes
    assert {k: tuple(v.shape) for k, v in d.state_dict().items()} == d_shapes
    if config == AcGANConfig.paper():
        assert (len(g_shapes), len(d_shapes)) == (53, 16)
    # registration order is the official one (main, img_reg, attention_reg; D: main, prob_layer, cond_layer)
    assert [n.split(".")[0] for n, _ in g.named_parameters()][-2:] == ["img_reg", "attention_reg"]
    assert [n.split(".")[0] for n, _ in d.named_parameters()][-2:] == ["prob_layer", "cond_layer"]


def test_paper_flops_match_the_spec():
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        g, d = Generator(AcGANConfig.paper()), Discriminator(AcGANConfig.paper())
        x = torch.zeros(1, 3, 224, 224)
        with FlopCounterMode(display=False) as g_count:
            g(x, torch.eye(5)[:1])
        with FlopCounterMode(display=False) as d_count:
            d(x)
    # docs/models/acgan.md section 3: 61.32 and 4.24 GFLOP per image (2 x MAC), rounded to 0.01 GFLOP
    assert g_count.get_total_flops() / 1e9 == pytest.approx(61.32, abs=0.005)
    assert d_count.get_total_flops() / 1e9 == pytest.approx(4.24, abs=0.005)


def test_four_group_variant_builds():
    config = dataclasses.replace(AcGANConfig.paper(), c_dim=4)
    with torch.device("meta"):
        g, d = Generator(config), Discriminator(config)
    assert g.main[0].weight.shape == (64, 7, 7, 7)
    assert d.cond_layer.weight.shape == (4, 4096, 1, 1)


def test_shapes_and_ranges(tiny_g, images):
    with torch.no_grad():
        out, a, c = tiny_g.generate(images, GROUPS)
    assert out.shape == c.shape == (3, 3, S, S)
    assert a.shape == (3, 1, S, S)
    assert a.min() >= 0
    assert a.max() <= 1
    assert c.abs().max() <= 1
    assert out.abs().max() <= 1
    # out is a convex combination; 1e-6 covers the two roundings of a*x + (1-a)*c at unit scale (~3 ulp)
    assert (out >= torch.minimum(images, c) - 1e-6).all()
    assert (out <= torch.maximum(images, c) + 1e-6).all()


def test_discriminator_shapes_including_batch_one():
    d = init_weights(Discriminator(TINY), generator=torch.Generator().manual_seed(3))
    for batch in (1, 3):
        score, logits = d(torch.randn(batch, 3, S, S))
        assert score.shape == (batch,)
        assert logits.shape == (batch, TINY.c_dim)


def test_paper_config_rejects_other_sizes():
    with torch.device("meta"):
        g = Generator(AcGANConfig.paper())
        with pytest.raises(ValueError, match="224"):
            g(torch.zeros(1, 3, 48, 48), torch.eye(5)[:1])
    with pytest.raises(InputError, match="224"):
        ADAPTER.run(g, torch.rand(1, 3, 48, 48), torch.tensor([1]), None, {})


# --- the blend ---------------------------------------------------------------------------------------------------
class _Constant(nn.Module):
    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full_like(x, self.value)


@pytest.mark.parametrize("value", [1.0, 0.0])
def test_saturated_attention_gives_input_or_colour_map_exactly(tiny_g, images, value, monkeypatch):
    monkeypatch.setitem(tiny_g.attention_reg._modules, "1", _Constant(value))
    with torch.no_grad():
        out, a, c = tiny_g.generate(images, GROUPS)
    assert (a == value).all()
    assert torch.equal(out, images if value == 1.0 else c)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_blend_endpoints_are_bitwise(dtype):
    x = (torch.rand(2, 3, 5, 5) * 2 - 1).to(dtype)
    c = (torch.rand(2, 3, 5, 5) * 2 - 1).to(dtype)
    assert torch.equal(mask_blend(x, torch.ones(2, 1, 5, 5, dtype=dtype), c), x)
    assert torch.equal(mask_blend(x, torch.zeros(2, 1, 5, 5, dtype=dtype), c), c)


# --- conditioning ------------------------------------------------------------------------------------------------
def test_condition_is_tiled_after_the_image_channels(images):
    c = one_hot_groups(GROUPS, TINY.c_dim)
    h = tile_condition(images, c)
    assert h.shape == (3, 3 + TINY.c_dim, S, S)
    assert torch.equal(h[:, :3], images)
    assert torch.equal(h[:, 3:], c[:, :, None, None].expand(-1, -1, S, S))


def test_different_groups_give_different_outputs(tiny_g, images):
    with torch.no_grad():
        outs = [tiny_g.generate(images, torch.full((3,), g))[0] for g in range(TINY.c_dim)]
    for i in range(len(outs)):
        for j in range(i + 1, len(outs)):
            # random N(0, 0.02) weights move the output by ~0.1-0.2; 1e-3 is far above rounding
            assert (outs[i] - outs[j]).abs().max() > 1e-3, (i, j)


def test_condition_response_reproduces_the_eight_channel_stem(tiny_g, images):
    weight = tiny_g.main[0].weight
    with torch.no_grad():
        for group in range(TINY.c_dim):
            c = one_hot_groups(torch.full((3,), group), TINY.c_dim)
            full = F.conv2d(tile_condition(images, c), weight, padding=3)
            split = F.conv2d(images, weight[:, :3], padding=3) + tiny_g.condition_response(group)
            # docs/models/acgan.md section 8 item 8: 1e-6 in fp32 (the sums are reassociated, a few ulps at unit scale)
            torch.testing.assert_close(split, full, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "c",
    [torch.full((3, 5), 0.2), torch.eye(5)[:3] * 2, torch.zeros(3, 5), torch.eye(5)[:2], torch.eye(4)[:3]],
)
def test_condition_must_be_one_hot(tiny_g, images, c):
    with pytest.raises(ValueError, match="c must be"):
        tiny_g(images, c)


@pytest.mark.parametrize("groups", [torch.tensor([0, 1, 5]), torch.tensor([-1, 0, 0]), torch.tensor([0.0, 1.0, 2.0])])
def test_bad_group_indices_raise(tiny_g, images, groups):
    with pytest.raises(ValueError, match="groups must"):
        tiny_g.generate(images, groups)


# --- determinism -------------------------------------------------------------------------------------------------
def test_batch_of_n_equals_n_batches_of_one(tiny_g, images):
    with torch.no_grad():
        batched = tiny_g.generate(images, GROUPS)[0]
        single = torch.cat([tiny_g.generate(images[i : i + 1], GROUPS[i : i + 1])[0] for i in range(3)])
    # docs/models/acgan.md 8 item 6: fp32 max |delta| <= 1e-4 (TF32 off); only conv blocking differs per batch size
    torch.testing.assert_close(batched, single, atol=1e-4, rtol=0)


def test_train_and_eval_agree_and_calls_repeat_bitwise(tiny_g, images):
    with torch.no_grad():
        first = tiny_g.generate(images, GROUPS)[0]
        second = tiny_g.generate(images, GROUPS)[0]
        tiny_g.train()
        in_train = tiny_g.generate(images, GROUPS)[0]
        tiny_g.eval()
    assert list(tiny_g.buffers()) == []
    assert torch.equal(first, second)
    assert torch.equal(first, in_train)


# --- adapter -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("years", "group"),
    [(0, 0), (20, 0), (20.49, 0), (20.5, 1), (21, 1), (30, 1), (31, 2), (40, 2), (41, 3), (50, 3), (51, 4), (120, 4)],
)
def test_age_mapping(years, group):
    got = ADAPTER.validate_ages(TINY, torch.tensor([years], dtype=torch.float64))
    assert got.dtype == torch.int64
    assert got.tolist() == [group]


@pytest.mark.parametrize("years", [-1.0, 121.0, -0.01, 120.5, float("nan"), float("inf")])
def test_out_of_range_ages_raise(years):
    with pytest.raises(InputError, match=r"\[0, 120\]"):
        ADAPTER.validate_ages(TINY, torch.tensor([25.0, years], dtype=torch.float64))


def test_ages_beyond_the_data_are_flagged_and_four_groups_map():
    assert describe_age(TINY, 80).extrapolated
    assert describe_age(TINY, 80).group == 4
    assert describe_age(TINY, 10).extrapolated
    assert not describe_age(TINY, 77).extrapolated
    assert describe_age(TINY, 45).label == "41-50"
    four = dataclasses.replace(TINY, c_dim=4)
    assert ADAPTER.validate_ages(four, torch.tensor([30.0, 31.0, 50.0, 51.0], dtype=torch.float64)).tolist() == [
        0,
        1,
        2,
        3,
    ]
    groups = ADAPTER.age_groups(TINY)
    assert [g.label for g in groups] == ["<=20", "21-30", "31-40", "41-50", ">=51"]
    assert all(groups[i].high + 1 == groups[i + 1].low for i in range(4))


def test_adapter_run_shape_range_and_group_match(tiny_g, images):
    unit = (images + 1) / 2  # [3, 3, S, S] in [0, 1]
    got = ADAPTER.run(tiny_g, unit, GROUPS, torch.Generator().manual_seed(0), {})
    assert got.shape == (3, 3, S, S)
    assert got.dtype == torch.float32
    assert got.min() >= 0
    assert got.max() <= 1
    with torch.no_grad():
        want = (tiny_g.generate(unit * 2 - 1, GROUPS)[0] + 1) / 2
    assert torch.equal(got, want)


@pytest.mark.parametrize(
    ("dtype", "tol"),
    # fp16: docs/models/acgan.md 8 item 10 (relative L2 < 1e-2); bf16 has 8x fewer mantissa bits than fp16, so 2e-2
    [(torch.float16, 1e-2), (torch.bfloat16, 2e-2)],
)
def test_adapter_runs_half_precision_modules(images, dtype, tol):
    module = ADAPTER.build(TINY).eval()
    unit = (images + 1) / 2
    ref = ADAPTER.run(module, unit, GROUPS, None, {})
    got = ADAPTER.run(module.to(dtype), unit, GROUPS, None, {})
    assert got.dtype == torch.float32
    assert ((got - ref).norm() / ref.norm()).item() < tol


def test_adapter_input_and_option_errors(tiny_g):
    with pytest.raises(InputError, match="shape"):
        ADAPTER.run(tiny_g, torch.rand(1, 3, S, S + 2), torch.tensor([0]), None, {})
    with pytest.raises(InputError, match="one target per image"):
        ADAPTER.run(tiny_g, torch.rand(2, 3, S, S), torch.tensor([0]), None, {})
    with pytest.raises(InputError, match="does not take"):
        ADAPTER.validate_options(TINY, 1, {"sigma_m": 1.0})
    with pytest.raises(InputError, match="no config"):
        ADAPTER.make_config("huge")
    with pytest.raises(InputError, match="unknown field"):
        ADAPTER.config_from_dict({**ADAPTER.config_to_dict(TINY), "depth": 3})


def test_registry_and_config_json_round_trip():
    assert isinstance(get_adapter("AcGAN"), AcGANAdapter)
    for name in ADAPTER.config_names:
        config = ADAPTER.make_config(name)
        assert ADAPTER.config_from_dict(json.loads(json.dumps(ADAPTER.config_to_dict(config)))) == config
        assert ADAPTER.input_size(config) == config.image_size


# --- converter ---------------------------------------------------------------------------------------------------
def tiny_official_g(c_dim: int = 5, seed: int = 0) -> dict[str, torch.Tensor]:
    return random_state(official_generator_shapes(TINY.g_conv_dim, c_dim, TINY.g_repeat_num), seed)


@pytest.mark.parametrize("legacy", [True, False])
def test_official_generator_round_trip(tmp_path, legacy):
    state = tiny_official_g()
    path = tmp_path / "00100_netG.pth"
    torch.save(state, path, _use_new_zipfile_serialization=not legacy)
    config, converted = ADAPTER.convert_official(path, "tiny")
    assert config == TINY
    assert list(converted) == list(Generator(TINY).state_dict())  # official registration order
    module = ADAPTER.build(config).eval()
    load_state_dict_strict(module, converted, str(path))
    x = torch.rand(2, 3, S, S) * 2 - 1
    c = one_hot_groups(torch.tensor([1, 3]), 5)
    with torch.no_grad():
        got = module(x, c)
        want = official_g_forward(strip(state), x, c, TINY.g_repeat_num)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, atol=1e-4, rtol=0)  # docs/models/acgan.md 5 rule 8: max |delta| < 1e-4 (fp32)
    for key, value in strip(state).items():
        assert torch.equal(converted[key], value)


def test_converter_infers_sizes_without_a_config(tmp_path):
    state = random_state(official_generator_shapes(4, 4, 1))
    path = tmp_path / "g.pth"
    torch.save(state, path)
    config, converted = ADAPTER.convert_official(path)
    assert (config.g_conv_dim, config.c_dim, config.g_repeat_num, config.image_size) == (4, 4, 1, 224)
    assert len(converted) == len(state)


def test_converter_drops_norm_statistics_with_a_warning(tmp_path):
    state = tiny_official_g()
    state["module.main.1.running_mean"] = torch.zeros(TINY.g_conv_dim)
    state["module.main.1.num_batches_tracked"] = torch.tensor(3)
    path = tmp_path / "g.pth"
    torch.save(state, path)
    with pytest.warns(UserWarning, match="running-statistics"):
        _, converted = ADAPTER.convert_official(path, "tiny")
    assert "main.1.running_mean" not in converted


def _edit(state, key, value=None):
    state = dict(state)
    if value is None:
        del state[key]
    else:
        state[key] = value
    return state


def _nan_at(state, key):
    t = state[key].clone()
    t.view(-1)[0] = float("nan")
    return _edit(state, key, t)


G_REFUSALS = {
    "missing": (lambda s: _edit(s, "module.main.4.weight"), "main.4.weight"),
    "wrong shape": (lambda s: _edit(s, "module.img_reg.0.weight", torch.zeros(3, 8, 5, 5)), "img_reg.0.weight"),
    "unexpected": (lambda s: _edit(s, "module.extra.weight", torch.zeros(2)), "extra.weight"),
    "conv bias": (lambda s: _edit(s, "module.main.0.bias", torch.zeros(8)), "main.0.bias"),
    "nan": (lambda s: _nan_at(s, "module.main.7.weight"), "main.7.weight"),
    "inf": (lambda s: _edit(s, "module.main.10.main.4.bias", torch.full((32,), float("inf"))), "main.10.main.4.bias"),
    "prefix mix": (lambda s: {k.removeprefix("module.") if "img_reg" in k else k: v for k, v in s.items()}, "module."),
    "integer": (lambda s: _edit(s, "module.main.1.bias", torch.zeros(8, dtype=torch.int64)), "main.1.bias"),
    "residual gap": (lambda s: {k: v for k, v in s.items() if ".main.10." not in k}, r"main\.\["),
    "discriminator": (lambda s: random_state(official_discriminator_shapes(8, 5, 5)), "discriminator"),
    "optimizer": (lambda s: {"state": {}, "param_groups": []}, "optimizer"),
    "not a dict": (lambda s: torch.zeros(3), "not a state dict"),
    "wrong config": (lambda s: tiny_official_g(c_dim=4), "c_dim=4"),
}


@pytest.mark.parametrize("case", list(G_REFUSALS))
def test_converter_refusals(tmp_path, case):
    edit, message = G_REFUSALS[case]
    path = tmp_path / "bad_netG.pth"
    torch.save(edit(tiny_official_g()), path)
    with pytest.raises(CheckpointError, match=message):
        ADAPTER.convert_official(path, "tiny")


def test_converter_refuses_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        ADAPTER.convert_official(tmp_path / "nope.pth")


def official_d_forward(sd, x, r):
    h = x
    for i in range(r):
        h = F.leaky_relu(F.conv2d(h, sd[f"main.{2 * i}.weight"], sd[f"main.{2 * i}.bias"], stride=2, padding=1), 0.01)
    return F.conv2d(h, sd["prob_layer.weight"], padding=1).flatten(), F.conv2d(h, sd["cond_layer.weight"]).flatten(1)


def test_official_discriminator_round_trip():
    state = random_state(official_discriminator_shapes(TINY.d_conv_dim, 5, TINY.d_repeat_num))
    config, converted = convert_discriminator(state, "netD", TINY)
    d = Discriminator(config)
    load_state_dict_strict(d, converted, "netD")
    x = torch.randn(2, 3, S, S)
    with torch.no_grad():
        for got, want in zip(d(x), official_d_forward(strip(state), x, TINY.d_repeat_num), strict=True):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=0)  # same ops; 1e-5 allows reassociation


def test_four_output_discriminator_needs_an_explicit_group_count(tmp_path):
    four = dataclasses.replace(TINY, c_dim=4)
    state = random_state(official_discriminator_shapes(TINY.d_conv_dim, 4, TINY.d_repeat_num))
    with pytest.raises(CheckpointError, match=r"cond_layer\.weight has 4 outputs"):
        convert_discriminator(state, "netD", four)
    with pytest.raises(CheckpointError, match="ordinal"):
        convert_discriminator(state, "netD", TINY, c_dim=5)
    assert convert_discriminator(state, "netD", four, c_dim=4)[0].c_dim == 4
    # the matching generator decides
    d_path, g_path = tmp_path / "00100_netD.pth", tmp_path / "00100_netG.pth"
    torch.save(state, d_path, _use_new_zipfile_serialization=False)
    torch.save(tiny_official_g(c_dim=4), g_path, _use_new_zipfile_serialization=False)
    config, converted = convert_discriminator_file(d_path, four, generator=g_path)
    assert config.c_dim == 4
    assert converted["cond_layer.weight"].shape == (4, 32 * 4, 1, 1)


def test_generator_converter_refuses_discriminator_keys_and_vice_versa():
    with pytest.raises(CheckpointError, match="generator"):
        convert_discriminator(tiny_official_g(), "netG", TINY)
    d_state = random_state(official_discriminator_shapes(TINY.d_conv_dim, 5, TINY.d_repeat_num))
    with pytest.raises(CheckpointError, match=r"prob_layer\.weight"):
        convert_discriminator(_edit(d_state, "module.prob_layer.weight"), "netD", TINY)
    with pytest.raises(CheckpointError, match="discriminator"):
        convert_generator(d_state, "netD", TINY)
