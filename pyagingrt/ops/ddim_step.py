"""Typed wrapper for ``torch.ops.agingrt.ddim_step`` (oracle: ``pyagingrt.training.layers.ddim_step``)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..training.layers import ddim_step as _oracle
from ._dispatch import Impl, use_native


def ddim_step(
    x_t: Tensor,
    eps: Tensor,
    alpha_bar_t: float,
    alpha_bar_prev: float,
    clip: bool = True,
    *,
    impl: Impl = "auto",
) -> Tensor:
    """One fused deterministic DDIM update (eta = 0), x_t -> x_{t-1}.

    Args:
        x_t: Tensor[...], float32 (float64 on CPU): the current sample.
        eps: Tensor[...] of x_t's shape: predicted noise, x_t's dtype or float16/bfloat16.
        alpha_bar_t: abar at the current step, in (0, 1).
        alpha_bar_prev: abar at the next step of the loop, in [0, 1]; 1 on the last step (returns clip(x0)),
            abar_next for DDIM inversion.
        clip: clamp x0 to [-1, 1] and re-derive eps from it (DiffAE's clip_denoised).
        impl: "native" (compiled op, raises if not built), "torch" (oracle) or "auto".

    Returns:
        Tensor[...] of x_t's shape and dtype, contiguous.
    """
    if use_native(impl, x_t, eps):
        return torch.ops.agingrt.ddim_step(x_t, eps, float(alpha_bar_t), float(alpha_bar_prev), bool(clip))
    return _oracle.ddim_step(x_t, eps, alpha_bar_t, alpha_bar_prev, clip)
