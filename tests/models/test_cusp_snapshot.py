"""CUSP's released snapshots: the structures of the official pickle, the reader's refusals, the mask modes.

The snapshots here are written at the opcode level (tests/models/snapshot_opcodes.py) with what the official
training loop and torch 1.10 write; docs/models/cusp.md describes the reader and the two mask modes.
"""

from __future__ import annotations

import collections
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import pyagingrt
from pyagingrt.checkpoints.cusp import convert_snapshot_file, official_blur_bank, read_snapshot
from pyagingrt.errors import CheckpointError, InputError
from pyagingrt.models.cusp import CUSPAdapter
from pyagingrt.training.layers.dex import DEX
from pyagingrt.training.models.cusp import CUSP, CUSPConfig, skip_blur_kernel_size

from . import snapshot_opcodes as ops
from .test_cusp import (
    INIT_KWARGS,
    NETWORKS_SRC,
    EasyDict,
    Persistent,
    dex_records,
    fake_modules,  # noqa: F401 (fixture)
    module_record,
)

TINY = CUSPConfig.tiny()
ADAPTER = CUSPAdapter()


def tiny_source(config: CUSPConfig = TINY) -> CUSP:
    torch.manual_seed(3)
    return ADAPTER.build(config).eval()


def official_dex_records(model: CUSP, *, self_method: bool, hooks: bool, outclass: str = "max") -> Persistent:
    """skip_grad_blur -> DEXAgeClassifier -> VGG as the official code pickles them: the classifier's ``__dict__``
    starts with ``topclass``, a bound method of the classifier itself; the wrapper keeps torch 1.10 hook handles."""
    wrapper = dex_records(model.dex)
    classifier = wrapper.meta["state"]["model"]
    old = classifier.meta["state"]
    state = {"topclass": None} if self_method else {}
    state.update({**old, "outclass": outclass})
    if self_method:
        state["topclass"] = ops.bound_method(classifier, "top_one" if outclass == "max" else "top_all")
    classifier.meta["state"] = state
    if hooks:
        forward_hooks = collections.OrderedDict({7: ops.bound_method(wrapper, "save_activation")})
        backward_hooks = collections.OrderedDict({8: ops.bound_method(wrapper, "save_gradient")})
        wrapper.meta["state"]["hooks"] = [
            ops.torch110_hook_handle(forward_hooks, 7),
            ops.torch110_hook_handle(backward_hooks, 8),
        ]
    return wrapper


def discriminator_record(cmap_pre: bool) -> Persistent:
    """D with ``--disc_class True --cmap_kind number``: cmap_pre is an instance of a training-code class."""
    state = {
        "_parameters": collections.OrderedDict(weight=torch.randn(4, 3)),
        "_buffers": collections.OrderedDict(),
        "_modules": collections.OrderedDict(),
        "c_dim": 1,
    }
    if cmap_pre:
        state["cmap_pre"] = ops.new_object("training.training_loop", "AgeToNumber", {"max_age": 100.0})
    else:
        state["cmap_pre"] = ops.global_ref("training.tools", "identity_f")
    return Persistent("Discriminator", state, NETWORKS_SRC)


def write_official(
    path, model: CUSP, *, self_method=True, hooks=True, cmap_pre=True, outclass="max", extra=None
) -> os.PathLike:
    """A snapshot of the structure the official training loop writes at the README's FFHQ-RR flags."""
    attrs = {
        "_init_kwargs": EasyDict(INIT_KWARGS),
        "skip_bool_list": [False, True, False],
        "skip_grad_blur": official_dex_records(model, self_method=self_method, hooks=hooks, outclass=outclass),
    }
    record = module_record(model, extra=attrs)
    record.meta["class_name"] = "Image2Image"
    record.meta["state"]["_buffers"]["blur_list"] = official_blur_bank(14, 5).float()
    snapshot = {
        "training_set_kwargs": {"resolution": 56},
        "G": None,
        "D": discriminator_record(cmap_pre),
        "G_ema": record,
        "augment_pipe": None,
        **(extra or {}),
    }
    with open(path, "wb") as fh:
        fh.write(ops.dump(snapshot))
    return path


# --- the three structures of the released files ---------------------------------------------------------------
@pytest.mark.parametrize(
    "features",
    [
        {"hooks": True, "self_method": False, "cmap_pre": False},
        {"hooks": False, "self_method": False, "cmap_pre": True},
        {"hooks": False, "self_method": True, "cmap_pre": False},
        {"hooks": True, "self_method": True, "cmap_pre": True},
    ],
    ids=["torch110-hook-handles", "training-class-in-D", "dex-self-bound-method", "all"],
)
def test_official_structures_load_with_dex_whole(tmp_path, fake_modules, features):  # noqa: F811
    source = tiny_source()
    path = write_official(tmp_path / "network-snapshot-000100.pkl", source, **features)
    converted = convert_snapshot_file(path, TINY)
    assert converted.report["dex_in_snapshot"], "the 32 DEX tensors must come back"
    assert converted.config == TINY.replace(dex_outclass="max", mask="official")
    assert all(torch.equal(converted.state_dict[f"dex.{k}"], v) for k, v in source.dex.state_dict().items())
    raw = read_snapshot(path)
    classifier = raw["G_ema"].state["skip_grad_blur"].state["model"]
    assert classifier.state["outclass"] == "max"
    assert classifier.state["vgg_path"] == "dex.pt"
    if features["self_method"]:
        assert classifier.state["topclass"].obj is classifier  # the state came back by reference, whole
    if features["hooks"]:
        handle = raw["G_ema"].state["skip_grad_blur"].state["hooks"][1]
        assert handle.state["__state__"][1] == 8
        assert handle.qualname == "torch.utils.hooks.RemovableHandle"
    if features["cmap_pre"]:
        assert raw["D"].state["cmap_pre"].state == {"max_age": 100.0}


def test_engine_from_official_snapshot_defaults_to_official_mask(tmp_path, fake_modules):  # noqa: F811
    path = write_official(tmp_path / "snap.pkl", tiny_source())
    engine = pyagingrt.load("cusp", checkpoint=path, config="tiny", device="cpu")
    assert engine.config.mask == "official"
    assert engine.config_name == "tiny"
    assert "official" in engine.adapter.behaviour(engine.config)
    paper = pyagingrt.load("cusp", checkpoint=path, config="tiny", device="cpu", mask="paper")
    assert paper.config.mask == "paper"
    assert paper.config.gb_kernel_size == 7
    with pytest.raises(InputError, match="mask must be one of"):
        pyagingrt.load("cusp", checkpoint=path, config="tiny", device="cpu", mask="guided")


def test_agingrt_info_says_which_mask_runs(tmp_path, fake_modules, capsys):  # noqa: F811
    from pyagingrt.cli.main import main

    engine = pyagingrt.load("cusp", checkpoint=write_official(tmp_path / "snap.pkl", tiny_source()), config="tiny")
    saved = engine.save(tmp_path / "cusp-official.safetensors")
    assert main(["info", str(saved)]) == 0
    assert (
        "behaviour   mask official: plain ReLU backward, 433-tap mask blur, DEX loss 'max'" in capsys.readouterr().out
    )
    assert main(["info", "cusp", "--config", "tiny"]) == 0
    assert "behaviour   mask paper: guided ReLU backward, 7-tap mask blur" in capsys.readouterr().out


# --- the reader: nothing outside its own objects changes, no claimed size is allocated ------------------------
def _storage_handle() -> ops.Raw:
    return ops.call("torch.storage", "_load_from_bytes", ops.legacy_storage_bytes(4, bytes(16)))


HOSTILE = {
    "build-on-torch-function": ops.build_on(
        ops.global_ref("torch._utils", "_rebuild_tensor_v2"), (None, {"__defaults__": (None,)})
    ),
    "build-on-reader-class": ops.build_on(ops.global_ref("dnnlib.util", "EasyDict"), {"update": None}),
    "build-on-stub-class": ops.build_on(ops.global_ref("training.networks", "VGG"), {"forward": None}),
    "setitems-on-reader-function": ops.Raw(
        lambda p: (
            ops.write_global(p, "collections", "OrderedDict"),
            p.write(b"("),
            p.save("key"),
            p.save(1),
            p.write(b"u"),
        )
    ),
    "tensor-claims-2^40-elements": ops.call(
        "torch._utils", "_rebuild_tensor_v2", _storage_handle(), 0, (2**40,), (1,), False, collections.OrderedDict()
    ),
    "storage-claims-2^40-elements": ops.call(
        "torch.storage", "_load_from_bytes", ops.legacy_storage_bytes(2**40, bytes(16))
    ),
}


def _object_array_claim(count: int, items: list) -> ops.Raw:
    def emit(p):
        ops.write_global(p, "numpy.core.multiarray", "_reconstruct")
        p.save((ops.global_ref("numpy", "ndarray"), (0,), b"b"))
        p.write(b"R")
        p.save((1, (count,), np.dtype(object), False, items))
        p.write(b"b")

    return ops.Raw(emit)


HOSTILE["object-array-claims-2^31-items"] = _object_array_claim(2**31, [1, 2, 3])


@pytest.mark.parametrize("name", [*HOSTILE, "bytes8-claims-2^40-bytes"])
def test_hostile_records_are_refused_in_one_line_and_a_genuine_load_still_works(
    tmp_path,
    fake_modules,  # noqa: F811
    name,
):
    defaults = torch._utils._rebuild_tensor_v2.__defaults__
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(
        ops.bytes8_claim(2**40, bytes(64)) if name == "bytes8-claims-2^40-bytes" else ops.dump(HOSTILE[name])
    )
    with pytest.raises(CheckpointError) as info:
        read_snapshot(bad)
    message = str(info.value)
    assert "\n" not in message, message
    assert "refused" in message, message
    assert torch._utils._rebuild_tensor_v2.__defaults__ == defaults
    source = tiny_source()
    good = write_official(tmp_path / "good.pkl", source)
    assert convert_snapshot_file(good, TINY).report["dex_in_snapshot"]


def test_numpy_dtype_build_changes_only_a_copy(tmp_path, fake_modules):  # noqa: F811
    swapped = ops.build_on(ops.call("numpy", "dtype", "f8", False, False), (3, ">", None, None, None, -1, -1, 0))
    path = tmp_path / "dtype.pkl"
    path.write_bytes(ops.dump({"dtype": swapped}))
    read_snapshot(path)
    assert np.dtype("f8").byteorder == "="
    assert np.dtype("f8").isnative


def test_genuine_object_array_and_tensor_views_load(tmp_path, fake_modules):  # noqa: F811
    payload = {
        "array": np.array([1, "a", None], dtype=object),
        "floats": np.arange(6.0).reshape(2, 3),
        "view": torch.arange(12.0).reshape(3, 4)[1:, ::2],
    }
    path = tmp_path / "data.pkl"
    path.write_bytes(ops.dump(payload))
    raw = read_snapshot(path)
    assert raw["array"].tolist() == [1, "a", None]
    assert raw["floats"].tolist() == payload["floats"].tolist()
    assert torch.equal(raw["view"], payload["view"])


# --- the two mask modes against an oracle of the official computation ------------------------------------------
def official_mask(dex: DEX, x: torch.Tensor, outclass: str, kernel: int) -> torch.Tensor:
    """The released G_ema's mask (docs/models/cusp.md "Mask modes"): plain-ReLU input gradient of the DEX logits
    (top logit per image for 'max'), |G| channel mean over its unbiased std, a separable Gaussian of ``kernel``
    taps with sigma = 0.3 (kernel/2 - 1) + 0.8 (columns, then rows), thresholded at twice the unbiased std.
    Returns 1 - B/tau clipped, as the official wrapper does (the weight of the unblurred skip)."""
    with torch.enable_grad():
        xg = x.detach().clone().requires_grad_(True)
        logits = dex(xg)
        objective = (logits.amax(dim=1, keepdim=True) if outclass == "max" else logits).sum()
        (grad,) = torch.autograd.grad(objective, xg)
    gb = grad.abs().mean(dim=1, keepdim=True)
    gb = gb / (gb.std(dim=(1, 2, 3), keepdim=True) + 1e-15)
    sigma = 0.3 * (kernel / 2 - 1) + 0.8
    n = np.arange(kernel) - (kernel - 1) / 2
    taps = np.exp(-(n**2) / (2 * sigma**2))
    column = torch.tensor(taps / taps.sum())[:, None].float()  # [K, 1]
    pad = (kernel - 1) // 2
    blurred = F.conv2d(gb, column[None, None], padding=(pad, 0))
    blurred = F.conv2d(blurred, column.T[None, None], padding=(0, pad))
    tau = blurred.flatten(1).std(dim=1).reshape(-1, 1, 1, 1) * 2 + 1e-15
    return 1 - blurred.clamp(max=tau) / tau


def official_forward(model: CUSP, x, onehot, i1, i2, outclass) -> torch.Tensor:
    """Image2Image.forward of the official code with pinned bank indices (i1 everywhere, i2 in the mask) and the
    decoder's stored noise; the encoders, mappings and decoder are the model's own (tested on their own)."""
    cfg = model.config
    feats = model.content_enc(x)
    ws = model.mapping(model.style_enc(x)[-1].mean(dim=(2, 3)), onehot)
    skip = feats[1]
    size = skip.shape[-1]
    kernel = skip_blur_kernel_size(size)
    bank = official_blur_bank(size, kernel).float()  # [1024, K, K]

    def bank_blur(act, index):  # the official per-sample 2-D kernel, zero padded, same size
        return torch.cat(
            [
                F.conv2d(act[b : b + 1].transpose(0, 1), bank[index[b]][None, None], padding=kernel // 2).transpose(
                    0, 1
                )
                for b in range(act.shape[0])
            ]
        )

    dex = DEX(cfg.dex)  # plain nn.ReLU, as G_ema's DEX
    dex.load_state_dict(model.dex.state_dict())
    c = bank_blur(skip, i1)
    keep = F.interpolate(official_mask(dex, x.float(), outclass, cfg.gb_kernel_size), size=(size, size), mode="area")
    merged = c * keep + bank_blur(c, i2) * (1 - keep)
    return model.image_dec(feats[-1], merged, ws, noise_mode="const")


@pytest.mark.parametrize("outclass", ["max", "all"])
def test_official_mask_mode_matches_the_official_computation_on_every_backend(
    tmp_path,
    fake_modules,  # noqa: F811
    outclass,
):
    source = tiny_source(TINY.replace(mask="official", dex_outclass=outclass))
    path = write_official(tmp_path / "snap.pkl", source, outclass=outclass)
    torch.manual_seed(11)
    images = torch.rand(2, 3, 56, 56)
    ages = [23, 61]
    i1, i2 = [0, 300], [1023, 700]  # bank indices; sigma = i H / (25 * 1023) input pixels
    sigma_g = [i * 56 / (25 * 1023) for i in i1]
    sigma_m = [i * 56 / (25 * 1023) for i in i2]
    x = images * 2 - 1
    onehot = F.one_hot(torch.tensor(ages), 101).float()
    with torch.no_grad():
        want = (official_forward(source, x, onehot, i1, i2, outclass).clamp(-1, 1) + 1) / 2
    results = {}
    for backend in ("torch", "native"):
        engine = pyagingrt.load("cusp", checkpoint=path, config="tiny", device="cpu", backend=backend)
        assert engine.config.mask == "official"
        assert engine.config.dex_outclass == outclass
        results[backend] = engine.age(images, ages, sigma_m=sigma_m, sigma_g=sigma_g)
        diff = (results[backend] - want).abs().max().item()
        assert diff < 1e-4, f"{backend}: max abs diff {diff:.3g} against the official computation"
    paper = pyagingrt.load("cusp", checkpoint=path, config="tiny", device="cpu", backend="native", mask="paper")
    assert not torch.allclose(paper.age(images, ages, sigma_m=sigma_m, sigma_g=sigma_g), want, atol=1e-4)


def test_paper_and_official_masks_differ_and_paper_is_unchanged():
    model = tiny_source()
    official = CUSP(TINY.replace(mask="official")).eval()
    official.load_state_dict(model.state_dict())
    x = torch.rand(2, 3, 56, 56) * 2 - 1
    paper_mask, official_mask_ = model.structure_mask(x), official.structure_mask(x)
    assert official.config.gb_kernel_size == 433
    assert model.config.gb_kernel_size == 7
    assert (paper_mask - official_mask_).abs().max() > 0.05
    assert math.isclose(CUSPConfig.paper224().replace(mask="official").gb_sigma, 0.3 * (1731 / 2 - 1) + 0.8)


@pytest.mark.slow
def test_official_mask_at_paper224_on_both_backends():
    from pyagingrt.backends.native_cusp import CUSPRunner

    torch.manual_seed(0)
    config = CUSPConfig.paper224().replace(mask="official", dex_outclass="max")
    model = CUSP(config).eval()  # random weights: the mask path is all that is compared
    dex = DEX(config.dex)
    dex.load_state_dict(model.dex.state_dict())
    x = torch.rand(1, 3, 224, 224) * 2 - 1
    want = 1 - official_mask(dex, x, "max", 1731)  # M, the weight of the extra blur
    runner = CUSPRunner(ADAPTER, model, config, torch.device("cpu"), torch.float32)
    for name, got in (("torch", model.structure_mask(x)), ("native", runner.mask(x))):
        diff = (got - want).abs().max().item()
        assert diff < 1e-4, f"{name}: max abs diff {diff:.3g} against the official mask at 224"


def test_config_dicts_saved_before_the_mask_field_still_load():
    import dataclasses

    old = {k: v for k, v in dataclasses.asdict(TINY).items() if k != "mask"} | {"gb_kernel": "intended"}
    assert ADAPTER.config_from_dict(old) == TINY
    with pytest.raises(InputError, match="mask='official'"):
        ADAPTER.config_from_dict(old | {"gb_kernel": "as_written"})
    with pytest.raises(InputError, match="mask must be one of"):
        ADAPTER.config_from_dict(dataclasses.asdict(TINY) | {"mask": "guided"})
