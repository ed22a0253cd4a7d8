"""Run-folder checkpoints: inference weights (pyagingrt ``.safetensors``) plus a training-state file, atomically.

Layout of RUN_DIR::

    config.json                       the resolved config (and model, stage, preset)
    checkpoints/step-00001000.safetensors   weights pyagingrt.load reads directly
    checkpoints/step-00001000.state.pt      modules, optimisers, schedulers, fp16 scalers, step, RNG states
    latest.json                       {"step", "weights", "state"} of the last complete checkpoint
    final.safetensors                 the weights at the end of training

Every file is written to a temporary name and renamed; ``latest.json`` is replaced only after both files of
a checkpoint are complete, and older periodic checkpoints are pruned only after that, so a run killed at any
moment leaves the previous checkpoint intact and pointed to. The loop writes the inference file through the
project's checkpoint module (``pyagingrt.checkpoint``), the one format every backend loads.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from .errors import TrainingError
from .recipe import InferenceCheckpoint

LATEST = "latest.json"


def atomic_write_bytes(path: Path, write: Any) -> None:
    """Call ``write(tmp_path)`` then rename the temporary file onto ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_json(path: Path, data: Any) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w") as fh:
            json.dump(data, fh, indent=2, sort_keys=True)
            fh.write("\n")

    atomic_write_bytes(path, write)


def save_inference(path: Path, ckpt: InferenceCheckpoint, source: dict[str, Any]) -> Path:
    """Write ``ckpt`` as a pyagingrt checkpoint (header: model, config, age groups, ``source``)."""
    from pyagingrt.checkpoint import CheckpointHeader, save_checkpoint
    from pyagingrt.models.registry import get_adapter

    adapter = get_adapter(ckpt.model)
    config = adapter.config_from_dict(ckpt.config)
    header = CheckpointHeader(
        model=adapter.name,
        config=adapter.config_to_dict(config),
        age_groups=[g.to_dict() for g in adapter.age_groups(config)],
        source=source,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_checkpoint(path, header, ckpt.state_dict)


def save_state(path: Path, state: dict[str, Any]) -> None:
    atomic_write_bytes(path, lambda tmp: torch.save(state, tmp))


def load_state(path: Path) -> dict[str, Any]:
    """The training state written by :func:`save_state` (our own file: full unpickling of plain containers)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises many kinds for a damaged file
        raise TrainingError(f"cannot read training state {path}: {exc}") from exc


def read_latest(run_dir: Path) -> dict[str, Any] | None:
    """The ``latest.json`` record of ``run_dir`` with absolute paths, or None when there is no checkpoint yet."""
    path = run_dir / LATEST
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        record["weights"] = run_dir / record["weights"]
        record["state"] = run_dir / record["state"]
        record["step"] = int(record["step"])
    except (ValueError, KeyError, TypeError) as exc:
        raise TrainingError(f"{path} is damaged ({exc}); remove it to restart from scratch") from exc
    if not record["state"].is_file():
        raise TrainingError(f"{path} points to {record['state']}, which is missing")
    return record


def write_latest(run_dir: Path, step: int, weights: Path, state: Path) -> None:
    atomic_write_json(
        run_dir / LATEST,
        {"step": step, "weights": str(weights.relative_to(run_dir)), "state": str(state.relative_to(run_dir))},
    )


def prune_periodic(run_dir: Path, keep: int) -> None:
    """Remove all but the ``keep`` newest periodic checkpoints (never the one ``latest.json`` names)."""
    latest = read_latest(run_dir)
    folder = run_dir / "checkpoints"
    steps = sorted(p.name[: -len(".state.pt")] for p in folder.glob("step-*.state.pt"))
    for stem in steps[: max(len(steps) - max(keep, 1), 0)]:
        if latest is not None and latest["state"].name == f"{stem}.state.pt":
            continue
        for suffix in (".safetensors", ".state.pt"):
            (folder / f"{stem}{suffix}").unlink(missing_ok=True)
