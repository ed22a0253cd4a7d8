"""Typed wrapper for ``torch.ops.agingrt.group_norm_act`` (oracle: ``pyagingrt.training.layers.group_norm_act``)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from ..errors import InputError
from ..training.layers import group_norm_act as _oracle
from ._dispatch import Impl, use_native

Activation = Literal["none", "relu", "silu"]


def group_norm_act(
    x: Tensor,
    groups: int,
    scale: Tensor,
    shift: Tensor,
    eps: float = 1e-5,
    act: Activation = "none",
    *,
    impl: Impl = "auto",
) -> Tensor:
    """GroupNorm statistics, a per-(sample, channel) affine and an activation in one pass over the output:
    ``y = act((x - mu[n, g]) * rstd[n, g] * scale[n, c] + shift[n, c])``.

    Statistics are per (sample, group) over (C/G) x H x W with the biased variance, in fp32 for fp32 / fp16 /
    bf16 x (float64 for float64 x) and deterministic. InstanceNorm is ``groups = C``. Callers fold everything
    affine into scale and shift: a GroupNorm's own (gamma, beta) as [C], or PADA's time and condition modulation
    as [B, C] (docs/models/pada.md section 10 item 3).

    The native op is inference-only (no autograd): ``impl="auto"`` runs the differentiable oracle when an input
    needs a gradient, and ``impl="native"`` then raises NotImplementedError instead of returning a tensor whose
    backward would be wrong.

    Args:
        x: Tensor[B, C, H, W], float32 / float16 / bfloat16 (float64 on CPU), NCHW or channels_last.
        groups: G, a divisor of C.
        scale: Tensor[C] or Tensor[B, C], float32 (float64 with float64 x).
        shift: Tensor[C] or Tensor[B, C], like scale.
        eps: >= 0, added to the variance.
        act: "none", "relu" or "silu".
        impl: "native" (compiled op, raises if not built), "torch" (oracle) or "auto".

    Returns:
        Tensor[B, C, H, W] in x's dtype and memory format.
    """
    if act not in _oracle.ACTIVATIONS:
        raise InputError(f"group_norm_act: act must be one of {_oracle.ACTIVATIONS}, got {act!r}")
    if use_native(impl, x, scale, shift):
        return torch.ops.agingrt.group_norm_act(x, int(groups), scale, shift, float(eps), act)
    return _oracle.group_norm_act(x, groups, scale, shift, eps, act)
