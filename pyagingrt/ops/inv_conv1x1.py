"""Typed wrapper for ``torch.ops.agingrt.inv_conv1x1`` (oracle: ``pyagingrt.training.layers.inv_conv1x1``)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..training.layers import inv_conv1x1 as _oracle
from ._dispatch import Impl, use_native


def inv_conv1x1(x: Tensor, weight: Tensor, bias: Tensor | None = None, *, impl: Impl = "auto") -> Tensor:
    """Glow's invertible 1x1 convolution, per pixel ``y = weight @ x + bias`` (ActNorm folded in at load time).

    The inverse direction is the same call with the folded inverse: ``inv_conv1x1(z, W'^-1, -loc)``
    (see :func:`pyagingrt.training.layers.inv_conv1x1.fold_actnorm_inv_conv1x1`).

    The native op has autograd (dx = W^T dy through the op itself, dW and db from ATen reductions), so
    ``impl="auto"`` uses it for training too.

    Args:
        x: Tensor[B, C, H, W], float32 / float16 / bfloat16 (float64 on CPU). channels_last and other layouts
            whose (H, W) flatten to one axis are read in place; y keeps x's memory format.
        weight: Tensor[C, C] in x's dtype, or float32 when x is float16 / bfloat16 (fp32 accumulation either way).
        bias: Tensor[C] in weight's dtype, or None.
        impl: "native" (compiled op, raises if not built), "torch" (oracle) or "auto".

    Returns:
        Tensor[B, C, H, W] in x's dtype.
    """
    if use_native(impl, x, weight, bias, differentiable=True):
        return torch.ops.agingrt.inv_conv1x1(x, weight, bias)
    # The oracle's conv2d needs one dtype; the native op's fp32 weight for half x is rounded here instead.
    return _oracle.inv_conv1x1(x, weight.to(x.dtype), None if bias is None else bias.to(x.dtype))
