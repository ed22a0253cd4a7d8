"""Official DiffAE ``ffhq256_autoenc`` checkpoint -> PADA state dict (docs/models/pada.md).

Input: the PyTorch Lightning ``last.ckpt`` (``{"state_dict": {...}, "global_step": ...}``) whose state dict holds
``ema_model.*`` (the weights DiffAE infers with, the only ones kept), ``model.*`` (online weights, ignored),
``x_T`` (a fixed noise buffer, ignored) and maybe ``conds_mean`` / ``conds_std``; and optionally the z_sem
statistics file (torch-saved ``{conds [N,Z], conds_mean [Z] or [1,Z], conds_std [Z] or [1,Z]}``), named
``latent.pkl`` by DiffAE's code and ``latent.ckpt`` by its README; either is found beside the checkpoint.

Lightning 1.4-era checkpoints key their ``callbacks`` dict by the callback *class* (e.g.
``pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint``). Such Lightning globals are read as inert
stand-in classes (found by disassembling the pickle, never imported; nothing of Lightning is needed or run);
every other non-tensor global is still refused.

Output keys: ``diffae.*`` (the 706 DiffAE keys of the paper config), ``age_encoder.*`` and ``modulation.*`` at
PADA's identity init (D7; no PADA weights are public), ``stats.{mean,std}``; all float32. Files are read with
``torch.load(weights_only=True)``: no code from a checkpoint is ever run.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from pyagingrt.checkpoint import check_state_dict, torch_load_weights_only
from pyagingrt.errors import CheckpointError
from pyagingrt.training.models.pada import AgeEncoder, DiffAE, Modulation, PADAConfig

EMA_PREFIX = "ema_model."
PADA_INIT_SEED = 0  # the untrained PADA layers are drawn from this seed, so a conversion is reproducible
LATENT_NAMES = ("latent.pkl", "latent.ckpt")  # DiffAE's code writes the first, its README names the second
LIGHTNING_PREFIXES = ("pytorch_lightning.", "lightning.")


class LightningStandIn:
    """An inert stand-in for a Lightning class named in a checkpoint (a callbacks key): only its name."""

    qualname: str = ""

    def __repr__(self) -> str:
        return f"<stand-in for {self.qualname}>"


def _lightning_stand_ins(path: Path) -> list[tuple[type, str]]:
    """(stand-in class, "module.Name") for each Lightning global the checkpoint names (none if unreadable)."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception:  # noqa: BLE001 - not a zip checkpoint, or damaged: torch.load reports it below
        return []
    return [
        (type(name.rsplit(".", 1)[-1], (LightningStandIn,), {"qualname": name}), name)
        for name in names
        if name.startswith(LIGHTNING_PREFIXES)
    ]


def _load(path: Path, what: str) -> Any:
    """torch.load(weights_only=True), Lightning globals as stand-ins; another refused global is named."""
    try:
        with torch.serialization.safe_globals(_lightning_stand_ins(path)):
            return torch_load_weights_only(path)
    except CheckpointError as exc:
        blocked = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if blocked is None:
            raise
        raise CheckpointError(
            f"{what} {path} holds an object of type {blocked.group(1)}, which weights-only loading refuses because "
            "unpickling it could run code. pyagingrt never does that: if you trust the file, re-save only its "
            "tensors (torch.save({'state_dict': ckpt['state_dict']}, 'clean.ckpt')) and convert that."
        ) from exc


def _state_dict_of(ckpt: Any, path: Path) -> Mapping[str, Any]:
    if isinstance(ckpt, Mapping) and isinstance(ckpt.get("state_dict"), Mapping):
        return ckpt["state_dict"]
    if isinstance(ckpt, Mapping) and any(str(k).startswith(EMA_PREFIX) for k in ckpt):
        return ckpt  # a bare Lightning state dict
    raise CheckpointError(
        f"{path} is not a DiffAE Lightning checkpoint: expected a dict with a 'state_dict' holding "
        f"'{EMA_PREFIX}*' weights (the official ffhq256_autoenc/last.ckpt)"
    )


def _ema_weights(state_dict: Mapping[str, Any], path: Path) -> dict[str, Tensor]:
    ema = {}
    for key, value in state_dict.items():
        if not str(key).startswith(EMA_PREFIX):
            continue  # model.* (online weights), x_T, conds_*: not the weights DiffAE infers with
        if not isinstance(value, Tensor):
            raise CheckpointError(f"{path}: {key} is a {type(value).__name__}, not a tensor")
        ema[key[len(EMA_PREFIX) :]] = value
    if not ema:
        found = ", ".join(sorted({str(k).split(".")[0] for k in state_dict})[:6]) or "nothing"
        raise CheckpointError(
            f"{path} has no '{EMA_PREFIX}*' weights (found top-level names: {found}). Give the DiffAE "
            "ffhq256_autoenc last.ckpt, whose EMA weights PADA decodes with."
        )
    return ema


def _as_stat(value: Any, name: str, source: str, width: int) -> Tensor:
    if not isinstance(value, Tensor):
        raise CheckpointError(f"{source}: {name} is missing or not a tensor")
    if value.numel() != width:
        raise CheckpointError(
            f"{source}: {name} has shape {tuple(value.shape)}, expected {width} values (the z_sem width)"
        )
    value = value.detach().reshape(width).float()
    if not bool(torch.isfinite(value).all()):
        raise CheckpointError(f"{source}: {name} has NaN or Inf values")
    return value


def _stats(path: Path, state_dict: Mapping[str, Any], latent: Path | None, width: int) -> tuple[Tensor, Tensor, str]:
    """(mean [Z], std [Z], where they came from): the latent file given, else latent.pkl or latent.ckpt beside
    the checkpoint, else the checkpoint's conds_mean / conds_std, else mean 0 / std 1 with a warning."""
    if latent is None:
        latent = next((path.parent / n for n in LATENT_NAMES if (path.parent / n).is_file()), None)
    if latent is not None:
        data = _load(Path(latent), "latent file")
        if not isinstance(data, Mapping):
            raise CheckpointError(f"latent file {latent} is not a dict with conds_mean and conds_std")
        mean = _as_stat(data.get("conds_mean"), "conds_mean", str(latent), width)
        std = _as_stat(data.get("conds_std"), "conds_std", str(latent), width)
        where = str(latent)
    elif "conds_mean" in state_dict and "conds_std" in state_dict:
        mean = _as_stat(state_dict["conds_mean"], "conds_mean", str(path), width)
        std = _as_stat(state_dict["conds_std"], "conds_std", str(path), width)
        where = f"{path} (conds_mean, conds_std)"
    else:
        warnings.warn(
            f"no latent.pkl or latent.ckpt beside {path} and no conds_mean/conds_std in it: using z_sem "
            "statistics mean 0, std 1. "
            "PADA's modulation is defined relative to DiffAE's FFHQ statistics; pass latent=PATH to use them.",
            UserWarning,
            stacklevel=3,
        )
        return torch.zeros(width), torch.ones(width), "default (mean 0, std 1)"
    if not bool((std > 0).all()):
        raise CheckpointError(f"{where}: conds_std has values <= 0; a standard deviation must be positive")
    return mean, std, where


def convert_diffae_checkpoint(
    path: str | Path, config: PADAConfig | None = None, latent: str | Path | None = None
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Convert a DiffAE Lightning checkpoint into a PADA state dict.

    Args:
        path: ``last.ckpt`` of DiffAE ``ffhq256_autoenc``.
        config: the PADA config the weights must fit (default: paper).
        latent: the z_sem statistics file; default: ``latent.pkl`` or ``latent.ckpt`` beside ``path`` if present.

    Returns:
        (state_dict for ``PADA(config)``, info: ``global_step``, ``stats_source``).

    Raises:
        CheckpointError: unreadable file, a refused non-tensor global (named), no ``ema_model.*`` weights, any
            missing / unexpected / mis-shaped key (named), NaN or Inf, bad statistics.
    """
    path = Path(path)
    config = config or PADAConfig.paper()
    ckpt = _load(path, "checkpoint")
    state_dict = _state_dict_of(ckpt, path)
    ema = _ema_weights(state_dict, path)
    with torch.device("meta"):
        reference = DiffAE(config)  # shapes only
    check_state_dict(reference, ema, f"{path} ({EMA_PREFIX}* weights)")
    mean, std, stats_source = _stats(path, state_dict, Path(latent) if latent else None, config.z_channels)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(PADA_INIT_SEED)
        age_encoder = AgeEncoder(config.clip_dim, config.hidden, config.text_noise)
        modulation = Modulation(config.clip_dim, config.hidden, config.z_channels)
    modulation.reset_identity(mean, std)  # D7: z_age = z_src until PADA is trained

    out = {f"diffae.{k}": v.detach().float() if v.is_floating_point() else v.detach() for k, v in ema.items()}
    out.update({f"age_encoder.{k}": v.detach() for k, v in age_encoder.state_dict().items()})
    out.update({f"modulation.{k}": v.detach() for k, v in modulation.state_dict().items()})
    out["stats.mean"], out["stats.std"] = mean, std
    step = ckpt.get("global_step") if isinstance(ckpt, Mapping) else None
    info = {"global_step": int(step) if isinstance(step, int) else None, "stats_source": stats_source}
    return out, info


__all__ = ["convert_diffae_checkpoint"]
