"""Official AgeFlow checkpoints (Hzzone/AgeFlow ``generator-{iter}``) -> the project's AgeFlow state dict.

docs/models/ageflow.md. The official release holds only the flow G, saved from ``nn.DataParallel`` so every
key starts with ``module.``. The README's two recipes give two layouts: config 0 (ActNorm, LU 1x1 conv,
additive coupling; the 256x256 CelebA flow) and config 1 (no ActNorm, a fixed shuffled channel permutation,
additive coupling; the 64x64 FFHQ-Aging flow, 4 levels x 32 steps). Steps:

1. ``torch.load(weights_only=True)`` (no code from the file runs); strip ``module.``.
2. Config 1 (``invconv.indices`` keys) is rewritten exactly into the config-0 layout
   (:func:`config1_to_config0`): the identity ActNorm becomes loc 0, scale 1; the permutation
   ``out[c] = in[indices[c]]`` becomes the 1x1 conv with W = P, P[c, indices[c]] = 1, stored as w_p = P with
   L = I, U = I (w_l = w_u = 0, w_s = 0, sign +1). Every value involved is 0 or 1, so the converted flow gives
   the official z and decode bit for bit (a product with 1 and sums with 0 are exact).
3. Infer the layout: levels L and steps K from the ``blocks.{l}.flows.{k}`` indices, width h from
   ``coupling.net.0.weight``.
4. Validate, naming the key: exact key set and shapes, finite float32 values, ``initialized`` = 1, ``w_p`` a
   permutation, ``u_mask``/``l_mask``/``l_eye`` canonical, ``s_sign`` in {-1, +1}.
5. Write ``flow.<official key>``; T (``ictm.``), the prior generator (``prior.``) and D (``disc.``) are not
   published, so they keep their init (drawn under a fixed seed, so a file always converts to the same tensors):
   T is exactly the identity and the prior table is zero, i.e. ageing with official weights alone reconstructs
   the input (mode ``direction`` would need the mean latents, which are not published either).

The image size is not stored (G is fully convolutional). A layout equal to a named config gets that config
(``paper`` is 256x256); any other gets image_size = 4 * 2^L (a 4x4 top latent, as in every named config)
and the paper's T, prior and D sizes.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from pyagingrt.checkpoint import check_state_dict, torch_load_weights_only
from pyagingrt.errors import CheckpointError
from pyagingrt.training.models.ageflow import ICTM, AgeFlowConfig, Glow, LatentDiscriminator, PriorGenerator

NAMED_CONFIGS = {"paper": AgeFlowConfig.paper, "tiny": AgeFlowConfig.tiny, "jacobian": AgeFlowConfig.jacobian}
_FLOW_KEY = re.compile(r"^blocks\.(\d+)\.flows\.(\d+)\.")


def strip_data_parallel(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Remove the ``module.`` prefix nn.DataParallel adds (all keys, or none, carry it)."""
    if state_dict and all(k.startswith("module.") for k in state_dict):
        return {k[len("module.") :]: v for k, v in state_dict.items()}
    return dict(state_dict)


def is_config1(state_dict: Mapping[str, Tensor]) -> bool:
    """Whether a flow state dict is the official config 1 (``Permute2d`` buffers, no ActNorm)."""
    return any(k.endswith("invconv.indices") for k in state_dict)


def _permutation(state_dict: Mapping[str, Tensor], prefix: str, source: str) -> Tensor:
    """``{prefix}indices``, checked: int64 [C], a permutation of 0..C-1, inverted by ``indices_inverse``."""
    key, inv_key = prefix + "indices", prefix + "indices_inverse"
    if inv_key not in state_dict or key not in state_dict:
        raise CheckpointError(f"{source}: a config-1 step needs both {key} and {inv_key}")
    indices, inverse = state_dict[key], state_dict[inv_key]
    for name, value in ((key, indices), (inv_key, inverse)):
        if value.dim() != 1 or value.dtype != torch.int64:
            raise CheckpointError(f"{source}: {name} must be an int64 vector, got {value.dtype} {tuple(value.shape)}")
    n = indices.numel()
    if not torch.equal(torch.sort(indices).values, torch.arange(n)):
        raise CheckpointError(f"{source}: {key} is not a permutation of 0..{n - 1}")
    if inverse.numel() != n or not torch.equal(inverse[indices], torch.arange(n)):
        raise CheckpointError(f"{source}: {inv_key} does not invert {key}")
    return indices


def config1_to_config0(state_dict: Mapping[str, Tensor], source: str) -> dict[str, Tensor]:
    """The exact config-0 form of a config-1 flow (module docstring, step 2)."""
    if any(".actnorm." in k for k in state_dict):
        key = next(k for k in state_dict if ".actnorm." in k)
        raise CheckpointError(f"{source} mixes config 1 (invconv.indices) with ActNorm keys ({key})")
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if key.endswith("invconv.indices_inverse"):
            continue
        if not key.endswith("invconv.indices"):
            out[key] = value
            continue
        step = key[: -len("invconv.indices")]
        indices = _permutation(state_dict, step + "invconv.", source)
        n = indices.numel()
        upper = torch.triu(torch.ones(n, n), 1)
        out.update(
            {
                step + "actnorm.loc": torch.zeros(1, n, 1, 1),
                step + "actnorm.scale": torch.ones(1, n, 1, 1),
                step + "actnorm.initialized": torch.tensor(1, dtype=torch.uint8),
                step + "invconv.w_p": torch.eye(n)[indices],  # [C, C], row c = e_{indices[c]}
                step + "invconv.u_mask": upper,
                step + "invconv.l_mask": upper.T.contiguous(),
                step + "invconv.l_eye": torch.eye(n),
                step + "invconv.s_sign": torch.ones(n),
                step + "invconv.w_l": torch.zeros(n, n),
                step + "invconv.w_u": torch.zeros(n, n),
                step + "invconv.w_s": torch.zeros(n),
            }
        )
    return out


def infer_layout(state_dict: Mapping[str, Tensor], source: str) -> tuple[int, int, int]:
    """(levels, steps, hidden) of an official flow state dict (``module.`` already stripped)."""
    indices = [tuple(map(int, m.groups())) for k in state_dict if (m := _FLOW_KEY.match(k))]
    if not indices:
        sample = ", ".join(sorted(state_dict)[:3]) or "none"
        raise CheckpointError(
            f"{source} has no 'blocks.<level>.flows.<step>.' keys (found: {sample}); it is not an AgeFlow "
            "generator state dict. Pass the official 'generator-<iter>' file, not 'y_classifier-' or 'optimizer-'."
        )
    levels = max(l for l, _ in indices) + 1
    steps = max(k for _, k in indices) + 1
    key = "blocks.0.flows.0.coupling.net.0.weight"
    if key not in state_dict or state_dict[key].dim() != 4:
        raise CheckpointError(f"{source} lacks {key} (a 4-d conv weight), needed to read the coupling width")
    return levels, steps, int(state_dict[key].shape[0])


def config_for_layout(levels: int, steps: int, hidden: int, config_name: str | None, source: str) -> AgeFlowConfig:
    """The named config (checked against the layout), or the first named config with this layout, or a new one."""
    if config_name is not None:
        config = NAMED_CONFIGS[config_name]()
        found = (levels, steps, hidden)
        want = (config.levels, config.steps, config.hidden)
        if found != want:
            raise CheckpointError(
                f"{source} holds a flow with (levels, steps, width) = {found}, but config {config_name!r} has "
                f"{want}. Load it without a config name, or with the config it was trained in."
            )
        return config
    for make in NAMED_CONFIGS.values():
        config = make()
        if (config.levels, config.steps, config.hidden) == (levels, steps, hidden):
            return config
    try:
        return dataclasses.replace(
            AgeFlowConfig.paper(), image_size=4 * 2**levels, levels=levels, steps=steps, hidden=hidden
        )
    except ValueError as exc:
        raise CheckpointError(f"{source} holds a flow no AgeFlow config can build: {exc}") from exc


def _check_flow_values(state_dict: Mapping[str, Tensor], source: str) -> None:
    """Dtypes, ``initialized``, the permutation and the fixed LU masks (each failure names its key)."""
    for key, value in state_dict.items():
        if key.endswith("actnorm.initialized"):
            if value.dtype != torch.uint8 or int(value) != 1:
                raise CheckpointError(
                    f"{source}: {key} is {value.item()} ({value.dtype}); an official flow has uint8 1 here. "
                    "An uninitialised ActNorm means the checkpoint was saved before the first training step."
                )
            continue
        if value.dtype != torch.float32:
            raise CheckpointError(f"{source}: {key} has dtype {value.dtype}; official flow tensors are float32")
        name = key.rsplit(".", 1)[-1]
        if ".invconv." not in key:
            continue
        if name == "w_p":
            is_binary = bool(((value == 0) | (value == 1)).all())
            ones = torch.ones(value.shape[0], dtype=value.dtype)
            if not (is_binary and torch.equal(value.sum(0), ones) and torch.equal(value.sum(1), ones)):
                raise CheckpointError(f"{source}: {key} is not a permutation matrix (0/1 with one 1 per row/column)")
        elif name in ("u_mask", "l_mask", "l_eye"):
            n = value.shape[0]
            upper = torch.triu(torch.ones(n, n), 1)
            canonical = {"u_mask": upper, "l_mask": upper.T, "l_eye": torch.eye(n)}[name]
            if not torch.equal(value, canonical):
                raise CheckpointError(
                    f"{source}: {key} is not the canonical {name} (strict upper / strict lower / identity)"
                )
        elif name == "s_sign" and not bool((value.abs() == 1).all()):
            raise CheckpointError(f"{source}: {key} must hold only -1 and +1")


def convert_flow_state_dict(
    raw: object, source: str, config_name: str | None = None
) -> tuple[AgeFlowConfig, dict[str, Tensor]]:
    """An official generator state dict (as loaded) -> (config, state dict of ``AgeFlow(config)``)."""
    if not isinstance(raw, Mapping) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in raw.items()):
        raise CheckpointError(
            f"{source} is not a state dict (a mapping of names to tensors); pass the official 'generator-<iter>' file"
        )
    flow_sd = strip_data_parallel(raw)
    if is_config1(flow_sd):
        flow_sd = config1_to_config0(flow_sd, source)
    levels, steps, hidden = infer_layout(flow_sd, source)
    config = config_for_layout(levels, steps, hidden, config_name, source)
    with torch.device("meta"):  # shapes only: no random init of a 177M-parameter flow
        reference = Glow(config)
    check_state_dict(reference, flow_sd, source)
    _check_flow_values(flow_sd, source)
    state_dict = {f"flow.{k}": v.contiguous() for k, v in flow_sd.items()}
    c, s = config.top_channels, config.top_size
    with torch.random.fork_rng(devices=[]):  # the same file always converts to the same tensors
        torch.manual_seed(0)
        unpublished = {
            "ictm": ICTM(c, config.ictm_flows, config.ictm_hidden, config.ictm_attention),
            "prior": PriorGenerator(config.groups, c, s),
            "disc": LatentDiscriminator(c * s * s, config.disc_hidden, config.groups),
        }
    for prefix, module in unpublished.items():
        state_dict.update({f"{prefix}.{k}": v for k, v in module.state_dict().items()})
    return config, state_dict


def convert_official_ageflow(
    path: str | Path, config_name: str | None = None
) -> tuple[AgeFlowConfig, dict[str, Tensor]]:
    """Read an official ``generator-*`` file with ``weights_only=True`` and convert it (see module docstring)."""
    if config_name is not None and config_name not in NAMED_CONFIGS:
        raise CheckpointError(f"unknown AgeFlow config {config_name!r}; choose one of {', '.join(NAMED_CONFIGS)}")
    raw = torch_load_weights_only(path)
    return convert_flow_state_dict(raw, str(path), config_name)


__all__ = [
    "NAMED_CONFIGS",
    "config1_to_config0",
    "config_for_layout",
    "convert_flow_state_dict",
    "convert_official_ageflow",
    "infer_layout",
    "is_config1",
    "strip_data_parallel",
]
