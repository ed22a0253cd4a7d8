"""The project's checkpoint format, and strict state-dict loading with useful errors.

Format: one ``.safetensors`` file. Its metadata holds ``format = "pyagingrt"``, ``format_version``, ``model``,
``config`` (JSON), ``age_groups`` (JSON) and optional ``source`` (JSON: where it was converted from).
Loading it executes no code. Writes go to a temporary file that is renamed at the end.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .errors import CheckpointError, OutputError

FORMAT_NAME = "pyagingrt"
FORMAT_VERSION = 1
_SAFETENSORS_MAGIC_LIMIT = 100_000_000  # a header larger than this is not a safetensors file


@dataclass(frozen=True)
class CheckpointHeader:
    model: str
    config: dict[str, Any]
    age_groups: list[dict[str, Any]]
    format_version: int = FORMAT_VERSION
    source: dict[str, Any] | None = None


def is_project_checkpoint(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a safetensors file written by :func:`save_checkpoint`."""
    try:
        return read_header(path) is not None
    except CheckpointError:
        return False


def read_header(path: str | os.PathLike[str]) -> CheckpointHeader | None:
    """The pyagingrt header of a safetensors file, None for a file that is not safetensors or not ours."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            prefix = fh.read(8)
            if len(prefix) < 8:
                return None
            size = int.from_bytes(prefix, "little")
            if size <= 1 or size > _SAFETENSORS_MAGIC_LIMIT:
                return None
            raw = fh.read(size)
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc.strerror or exc}") from exc
    if len(raw) < size or not raw.lstrip().startswith(b"{"):
        return None
    try:
        meta = json.loads(raw).get("__metadata__", {})
    except (ValueError, AttributeError):
        return None
    if meta.get("format") != FORMAT_NAME:
        return None
    try:
        version = int(meta["format_version"])
        if version > FORMAT_VERSION:
            raise CheckpointError(
                f"{path} has pyagingrt format version {version}; this pyagingrt reads up to {FORMAT_VERSION}. "
                "Upgrade pyagingrt."
            )
        return CheckpointHeader(
            model=meta["model"],
            config=json.loads(meta["config"]),
            age_groups=json.loads(meta.get("age_groups", "[]")),
            format_version=version,
            source=json.loads(meta["source"]) if "source" in meta else None,
        )
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"{path} has a damaged pyagingrt header ({exc})") from exc


def save_checkpoint(
    path: str | os.PathLike[str],
    header: CheckpointHeader,
    state_dict: Mapping[str, Tensor],
) -> Path:
    """Write ``state_dict`` (tensors are made contiguous and moved to CPU) with ``header``, atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    meta = {
        "format": FORMAT_NAME,
        "format_version": str(header.format_version),
        "model": header.model,
        "config": json.dumps(header.config, sort_keys=True),
        "age_groups": json.dumps(header.age_groups),
    }
    if header.source is not None:
        meta["source"] = json.dumps(header.source, sort_keys=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    folder = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from exc
    os.close(fd)
    try:
        save_file(_dedupe_shared(tensors), tmp, metadata=meta)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the user's usual permissions
        os.replace(tmp, path)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from exc
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _dedupe_shared(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """safetensors refuses tensors sharing storage; clone the later ones."""
    seen: set[tuple[int, int]] = set()
    out = {}
    for name, t in tensors.items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset())
        out[name] = t.clone() if key in seen and t.numel() else t
        seen.add(key)
    return out


def load_checkpoint(path: str | os.PathLike[str]) -> tuple[CheckpointHeader, dict[str, Tensor]]:
    """Read a project checkpoint: (header, state_dict on CPU)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    header = read_header(path)
    if header is None:
        raise CheckpointError(f"{path} is not a pyagingrt checkpoint (a .safetensors file written by Engine.save)")
    try:
        return header, load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is damaged or truncated: {exc}") from exc


def _listing(names: list[str], limit: int = 4) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else f" ({len(names)})")


def check_state_dict(module: nn.Module, state_dict: Mapping[str, Tensor], source: str) -> None:
    """Raise CheckpointError naming missing, unexpected and mis-shaped keys, and non-finite values."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    misshaped = sorted(
        f"{k} {tuple(state_dict[k].shape)} != {tuple(expected[k].shape)}"
        for k in set(expected) & set(state_dict)
        if tuple(state_dict[k].shape) != tuple(expected[k].shape)
    )
    problems = []
    if missing:
        problems.append("missing keys: " + _listing(missing))
    if unexpected:
        problems.append("unexpected keys: " + _listing(unexpected))
    if misshaped:
        problems.append("mis-shaped keys (checkpoint != model): " + _listing(misshaped))
    if problems:
        raise CheckpointError(
            f"{source} does not fit this model's architecture: "
            + "; ".join(problems)
            + ". Is it a checkpoint for this model and config?"
        )
    bad = sorted(k for k, v in state_dict.items() if v.is_floating_point() and not bool(torch.isfinite(v).all()))
    if bad:
        raise CheckpointError(f"{source} has NaN or Inf values in: {_listing(bad)}")


def load_state_dict_strict(module: nn.Module, state_dict: Mapping[str, Tensor], source: str) -> None:
    """check_state_dict, then copy the values into ``module`` (dtype converted to the module's)."""
    check_state_dict(module, state_dict, source)
    module.load_state_dict(dict(state_dict), strict=True)


def torch_load_weights_only(path: str | os.PathLike[str]) -> Any:
    """``torch.load(weights_only=True)`` on CPU with a CheckpointError for anything that goes wrong."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist or is not a file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds (UnpicklingError, RuntimeError, EOFError, ...)
        raise CheckpointError(f"cannot read checkpoint {path}: {torch_load_reason(exc)}") from exc


def torch_load_reason(exc: BaseException) -> str:
    """One short line for why ``torch.load(weights_only=True)`` failed. Torch's own message runs to several
    sentences of advice (pass ``weights_only=False``, which would run the file's code; file an issue) that do
    not apply to a user who was given a damaged file."""
    text = " ".join(str(exc).split())
    blocked = re.search(r"GLOBAL ([\w.]+)", text)
    if blocked:  # a pickle of objects that are not tensors
        return (
            f"it holds an object of type {blocked.group(1)} (GLOBAL {blocked.group(1)}), which weights-only "
            "loading refuses because unpickling it could run code"
        )
    unpickler = re.search(r"WeightsUnpickler error: (.*?)(?:\. | Check the documentation|$)", text)
    if unpickler:  # garbage bytes
        return f"not a PyTorch weights file, or corrupt ({unpickler.group(1).rstrip('. ')})"
    if "PytorchStreamReader" in text or "zip archive" in text:
        detail = re.search(r"zip archive: (.*?)\.", text)
        return f"truncated or corrupt ({detail.group(1) if detail else 'damaged zip archive'})"
    first = re.split(r"(?<=[.!?]) ", text, maxsplit=1)[0] or type(exc).__name__
    return (
        f"truncated or corrupt ({first.rstrip('.')})" if isinstance(exc, EOFError | pickle.UnpicklingError) else first
    )
