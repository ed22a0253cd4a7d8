"""Official CUSP snapshot (``network-snapshot-*.pkl``) -> state dict of ``training.models.cusp.CUSP``.

docs/models/cusp.md ("Reading a snapshot"). The snapshot is a StyleGAN2-ADA persistence pickle embedding source
code; it is read with :mod:`restricted_pickle` (nothing from the file is imported or run). Whatever ``G``, ``D``
and the training options hold (stub classes of the training code, torch 1.10 hook handles) only ``G_ema`` is
converted. Steps:

1. unpickle with the allow-list; ``G_ema`` must be a persistent record;
2. walk its ``_parameters`` / ``_buffers`` / ``_modules`` and collect tensors by dotted name (the DEX wrapper
   ``skip_grad_blur`` is skipped there: its weights are no part of G's state dict);
3. read ``_init_kwargs``: refuse any variant but the released one, naming the field; take img_resolution,
   attr_dim and n_downsample;
4. find the DEX VGG record (``conv1_1`` ... ``fc8_101``) under ``skip_grad_blur`` and its ``outclass``; record
   the class of its ReLU, the mask-kernel expression in the embedded source and each source's SHA-256;
5. check every ``resample_filter`` against f = [1,3,3,1]^2/64 and ``blur_list`` against the official bank
   (sigma_i = linspace(1e-20, S/25, 1024)[i], 2-D normalised Gaussian, to 1e-6); drop ``blur_list``;
6. return the G tensors under their official names plus ``dex.*``, with the config in mask mode ``official``
   (plain ReLU backward, the official code's full mask blur: what the released ``G_ema`` computes).

Weights are kept unscaled: the model applies the official runtime gains itself (W/sqrt(9 C_in) in the
encoders, W*0.01/sqrt(in) and b*0.01 in the mappings, A/sqrt(512) in the affines, s/sqrt(C_in) in toRGB), so
no tensor is rescaled here. DEX-only files (``dex=``) are read by :func:`load_dex_file`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from pyagingrt.checkpoint import check_state_dict, torch_load_weights_only
from pyagingrt.errors import CheckpointError
from pyagingrt.training.layers.stylegan2 import fir_filter
from pyagingrt.training.models.cusp import CUSP, CUSPConfig, skip_blur_kernel_size

from .restricted_pickle import (
    InertObject,
    PersistentRecord,
    PickleRefused,
    UnpicklingRefused,
    one_line,
    restricted_load,
)

BLUR_BANK_SIZE = 1024
DEX_WRAPPER = "skip_grad_blur"  # the G_ema attribute holding the mask wrapper -> DEXAgeClassifier -> VGG

# The released variant: (init kwarg, required value). Anything else is refused, naming the field.
RELEASED_VARIANT: tuple[tuple[str, Any], ...] = (
    ("skip_layers", [2]),
    ("skip_kind", "linear"),
    ("style_enc", True),
    ("bottleneck_class", False),
    ("learn_mask", None),
    ("blur_skip", True),
    ("skip_grad_blur", "gb"),
    ("bias", False),
    ("rgb_attention", False),
)


@dataclass
class ConvertedSnapshot:
    """The converter's result: model config, state dict (official G names + ``dex.*``) and a report."""

    config: CUSPConfig
    state_dict: dict[str, Tensor]
    report: dict[str, Any] = field(default_factory=dict)


def official_blur_bank(skip_size: int, kernel_size: int, count: int = BLUR_BANK_SIZE) -> Tensor:
    """The official ``blur_list``: [count, K, K] float64, kernel i = normalised exp(-(x^2+y^2)/(2 s_i^2)) with
    s_i = linspace(1e-20, S/25, count)[i] skip pixels (s_0 = 1e-20 gives the unit impulse)."""
    sigmas = torch.linspace(1e-20, skip_size / 25, count, dtype=torch.float64)  # [N]
    n = torch.arange(kernel_size, dtype=torch.float64) - (kernel_size - 1) / 2  # [K]
    r2 = n[:, None] ** 2 + n[None, :] ** 2  # [K, K]
    bank = torch.exp(-r2[None] / (2 * sigmas[:, None, None] ** 2))  # [N, K, K]
    return bank / bank.sum(dim=(1, 2), keepdim=True)


def _state_of(obj: Any) -> dict[str, Any] | None:
    if isinstance(obj, (PersistentRecord, InertObject)):
        return obj.state
    return None


def collect_tensors(obj: Any, prefix: str = "", skip: tuple[str, ...] = ()) -> dict[str, Tensor]:
    """Parameters and persistent buffers of a module record, by dotted name (``_modules`` recursion)."""
    state = _state_of(obj)
    out: dict[str, Tensor] = {}
    if state is None:
        return out
    non_persistent = set(state.get("_non_persistent_buffers_set") or ())
    for group in ("_parameters", "_buffers"):
        for name, value in (state.get(group) or {}).items():
            if value is None or (group == "_buffers" and name in non_persistent):
                continue
            if not isinstance(value, Tensor):
                raise CheckpointError(f"{prefix}{name} is a {type(value).__name__}, not a tensor")
            out[prefix + name] = value.detach()
    for name, child in (state.get("_modules") or {}).items():
        if child is None or name in skip:
            continue
        out.update(collect_tensors(child, f"{prefix}{name}."))
    return out


def _children(value: Any) -> list[Any]:
    state = _state_of(value)
    if state is not None:
        return list(state.values())
    if isinstance(value, Mapping):
        return list(value.values())
    if isinstance(value, (list, tuple)):
        return list(value)
    return []


def _find_records(root: Any, predicate, limit: int = 10) -> list[Any]:
    """Breadth-first search of records/dicts/lists below ``root`` for objects whose state satisfies predicate."""
    found, seen, frontier = [], set(), [root]
    for _ in range(limit):
        nxt = []
        for value in frontier:
            if id(value) in seen or isinstance(value, Tensor):
                continue
            seen.add(id(value))
            state = _state_of(value)
            if state is not None and predicate(state):
                found.append(value)
            nxt.extend(_children(value))
        frontier = nxt
    return found


def _is_vgg(state: dict[str, Any]) -> bool:
    modules = state.get("_modules") or {}
    return "conv1_1" in modules and "fc8_101" in modules


def _class_name(obj: Any) -> str:
    if isinstance(obj, PersistentRecord):
        return obj.class_name
    if isinstance(obj, InertObject):
        return obj.qualname
    return type(obj).__name__


def find_dex(g_ema: PersistentRecord) -> tuple[dict[str, Tensor] | None, dict[str, Any]]:
    """(DEX tensors keyed ``conv1_1.weight`` ... or None, info: outclass, relu class, classifier class)."""
    wrapper = g_ema.state.get(DEX_WRAPPER)
    if wrapper is None:
        wrapper = (g_ema.state.get("_modules") or {}).get(DEX_WRAPPER)
    info: dict[str, Any] = {}
    if wrapper is None:
        return None, info
    owners = _find_records(wrapper, lambda s: "outclass" in s)
    if owners:
        info["outclass"] = owners[0].state["outclass"]
        info["classifier_class"] = _class_name(owners[0])
    vggs = _find_records(wrapper, _is_vgg)
    if not vggs:
        return None, info
    vgg = vggs[0]
    relus = [_class_name(m) for n, m in (vgg.state.get("_modules") or {}).items() if "relu" in _class_name(m).lower()]
    info["relu_class"] = sorted(set(relus))
    return collect_tensors(vgg), info


def _kwarg(kwargs: Mapping[str, Any], name: str) -> tuple[bool, Any]:
    """Look a constructor argument up at the top level, then one level down (e.g. synthesis_kwargs)."""
    if name in kwargs:
        return True, kwargs[name]
    for value in kwargs.values():
        if isinstance(value, Mapping) and name in value:
            return True, value[name]
    return False, None


def _normalise(value: Any) -> Any:
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, tuple):
        value = list(value)
    return value


def check_variant(kwargs: Mapping[str, Any], config: CUSPConfig, source: str) -> list[str]:
    """Refuse any variant but the released one (naming the field); return the fields that were absent."""
    absent = []
    for name, want in (("n_downsample", config.n_downsample), *RELEASED_VARIANT):
        present, value = _kwarg(kwargs, name)
        if not present:
            absent.append(name)
            continue
        if _normalise(value) != want:
            raise CheckpointError(
                f"{source}: G_ema init kwarg {name} = {value!r}, but pyagingrt supports only the released CUSP "
                f"variant ({name} = {want!r}); this snapshot is another architecture"
            )
    return absent


def _config_for(kwargs: Mapping[str, Any], config: CUSPConfig | None, source: str) -> CUSPConfig:
    present, resolution = _kwarg(kwargs, "img_resolution")
    if not present:
        raise CheckpointError(f"{source}: G_ema init kwargs have no img_resolution; is this a CUSP snapshot?")
    resolution = int(resolution)
    if config is None:
        presets = {224: CUSPConfig.paper224, 256: CUSPConfig.paper256}
        if resolution not in presets:
            raise CheckpointError(f"{source}: img_resolution {resolution} is neither 224 nor 256 (the released models)")
        config = presets[resolution]()
    if resolution != config.resolution:
        raise CheckpointError(
            f"{source}: img_resolution {resolution} does not match the requested config ({config.resolution})"
        )
    present, attr_dim = _kwarg(kwargs, "attr_dim")
    if present:
        if int(attr_dim) not in (10, 101):
            raise CheckpointError(f"{source}: attr_dim {attr_dim} is not 101 (ages) or 10 (FFHQ-LS clusters)")
        config = config.replace(attr_dim=int(attr_dim))
    return config


def _check_filters(tensors: Mapping[str, Tensor], config: CUSPConfig, source: str) -> None:
    f = fir_filter().double()
    for name, value in tensors.items():
        if name.endswith("resample_filter") and (
            value.shape != f.shape or not torch.allclose(value.double(), f, atol=1e-6, rtol=0)
        ):
            raise CheckpointError(f"{source}: {name} is not the FIR filter [1,3,3,1]^2/64 this model uses")
    if "blur_list" in tensors:
        bank = tensors["blur_list"]
        size = config.skip_resolution
        kernel = skip_blur_kernel_size(size)
        if tuple(bank.shape) != (BLUR_BANK_SIZE, kernel, kernel):
            raise CheckpointError(
                f"{source}: blur_list has shape {tuple(bank.shape)}, expected {(BLUR_BANK_SIZE, kernel, kernel)}"
            )
        if not torch.allclose(bank.double(), official_blur_bank(size, kernel), atol=1e-6, rtol=0):
            raise CheckpointError(
                f"{source}: blur_list differs from the official Gaussian bank (docs/models/cusp.md section 3.5)"
            )


def _mask_kernel_expression(sources: Mapping[str, str]) -> str | None:
    for src in sources.values():
        match = re.search(r"[^\n]*\b29\b[^\n]*", src)
        if match:
            return match.group(0).strip()
    return None


def convert_snapshot(obj: Any, config: CUSPConfig | None = None, source: str = "snapshot") -> ConvertedSnapshot:
    """Convert an unpickled snapshot dict (from :func:`read_snapshot`)."""
    if not isinstance(obj, Mapping) or not isinstance(obj.get("G_ema"), PersistentRecord):
        raise CheckpointError(f"{source} has no persistent G_ema record; is it a CUSP network-snapshot-*.pkl?")
    g_ema: PersistentRecord = obj["G_ema"]
    kwargs = g_ema.state.get("_init_kwargs") or {}
    if not isinstance(kwargs, Mapping):
        raise CheckpointError(f"{source}: G_ema._init_kwargs is a {type(kwargs).__name__}, not a dict")
    config = _config_for(kwargs, config, source).replace(mask="official")
    absent = check_variant(kwargs, config, source)

    tensors = collect_tensors(g_ema, skip=(DEX_WRAPPER,))
    _check_filters(tensors, config, source)
    state = {k: v.float() for k, v in tensors.items() if k != "blur_list"}
    dex, dex_info = find_dex(g_ema)
    if "outclass" in dex_info:
        outclass = str(dex_info["outclass"])
        if outclass not in ("all", "max"):
            raise CheckpointError(f"{source}: DEX outclass {outclass!r} is neither 'all' nor 'max'")
        config = config.replace(dex_outclass=outclass)
    if dex is not None:
        state.update({f"dex.{k}": v.float() for k, v in dex.items()})

    sources: dict[str, str] = {}
    for record in _find_records(obj, lambda s: True, limit=12):
        if isinstance(record, PersistentRecord) and record.module_src:
            sources.setdefault(record.class_name, record.module_src)
    report = {
        "init_kwargs_absent": absent,
        "dex_in_snapshot": dex is not None,
        **{f"dex_{k}": v for k, v in dex_info.items()},
        "mask_kernel_expression": _mask_kernel_expression(sources),
        "source_sha256": {k: hashlib.sha256(v.encode()).hexdigest() for k, v in sorted(sources.items())},
        "num_fp16_res": _kwarg(kwargs, "num_fp16_res")[1],
        "conv_clamp": _kwarg(kwargs, "conv_clamp")[1],
    }
    with torch.device("meta"):
        reference = CUSP(config)  # names and shapes only
    if dex is None:  # the DEX weights come later (load_dex_file); check G alone
        reference.dex = None
    check_state_dict(reference, state, source)
    return ConvertedSnapshot(config, state, report)


def read_snapshot(path: str | Path) -> Any:
    """Unpickle ``path`` with the restricted unpickler; CheckpointError for refused globals or damage."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist or is not a file")
    try:
        with path.open("rb") as fh:
            obj, _ = restricted_load(fh)
    except UnpicklingRefused as exc:
        raise CheckpointError(
            f"{path} names the global {exc.qualname}, which a CUSP snapshot does not need; refusing to load it "
            "(nothing from the file was run). Is this a genuine network-snapshot-*.pkl?"
        ) from exc
    except PickleRefused as exc:
        raise CheckpointError(f"{path} was refused by the snapshot reader (nothing from it was run): {exc}") from exc
    except Exception as exc:  # pickle raises many kinds (UnpicklingError, EOFError, TypeError, ...)
        raise CheckpointError(f"cannot read {path} as a CUSP snapshot pickle: {one_line(exc)}") from exc
    return obj


def convert_snapshot_file(path: str | Path, config: CUSPConfig | None = None) -> ConvertedSnapshot:
    """Read and convert an official ``network-snapshot-*.pkl``."""
    return convert_snapshot(read_snapshot(path), config, source=str(path))


def load_dex_file(path: str | Path) -> dict[str, Tensor]:
    """DEX weights from a safetensors or torch file keyed ``conv1_1.weight`` ... ``fc8_101.bias`` (Caffe '-'
    become '_'; a ``dex.`` or ``module.`` prefix and a ``state_dict`` wrapper are accepted)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"DEX weights {path} do not exist or are not a file")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            raw: Any = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"cannot read DEX weights {path}: {exc}") from exc
    else:
        raw = torch_load_weights_only(path)
        if isinstance(raw, Mapping) and isinstance(raw.get("state_dict"), Mapping):
            raw = raw["state_dict"]
    if not isinstance(raw, Mapping):
        raise CheckpointError(f"DEX weights {path} hold a {type(raw).__name__}, not a dict of tensors")
    out = {}
    for key, value in raw.items():
        name = str(key).replace("-", "_")
        for prefix in ("module.", "dex."):
            name = name.removeprefix(prefix)
        if not isinstance(value, Tensor):
            raise CheckpointError(f"DEX weights {path}: {key} is a {type(value).__name__}, not a tensor")
        out[name] = value.float()
    return out


__all__ = [
    "RELEASED_VARIANT",
    "ConvertedSnapshot",
    "check_variant",
    "collect_tensors",
    "convert_snapshot",
    "convert_snapshot_file",
    "find_dex",
    "load_dex_file",
    "official_blur_bank",
    "read_snapshot",
]
