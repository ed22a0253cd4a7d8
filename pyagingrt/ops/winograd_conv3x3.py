"""Typed wrapper for ``torch.ops.agingrt.winograd_conv3x3`` (oracle: ``pyagingrt.training.layers.winograd_conv3x3``)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import InputError
from ..training.layers import winograd_conv3x3 as _oracle
from ._dispatch import Impl, use_native

winograd_weight = _oracle.winograd_weight


def winograd_conv3x3(
    x: Tensor, weight: Tensor, u: Tensor, bias: Tensor | None = None, *, chunk_tiles: int = 0, impl: Impl = "auto"
) -> Tensor:
    """``F.conv2d(x, weight, bias, padding=1)`` for a 3x3 weight, computed by Winograd F(4x4, 3x3) from ``u =
    winograd_weight(weight)`` (precompute it once per weight).

    The native op is fp32 on the CPU only (on CUDA, cuDNN picks its own algorithm: call ``F.conv2d`` there) and
    inference-only: ``impl="auto"`` runs the oracle when an input needs a gradient. Its rounding error is larger
    than a direct convolution's (about 1e-5 of max |y| against 2e-6, measured on random data; docs/performance.md
    section 3.6).

    Args:
        x: float32 Tensor[N, C, H, W]; channels_last is read in place, other layouts are copied once.
        weight: float32 Tensor[O, C, 3, 3] (validated; the ONNX export convolves with it).
        u: float32 Tensor[36, C, O], ``winograd_weight(weight)``.
        bias: float32 Tensor[O] or None, added to every output pixel.
        chunk_tiles: 4x4 output tiles transformed per GEMM batch (0: from the cache budget); results may differ
            in the last bits between chunk sizes (the GEMMs' blocking changes), not between runs.
        impl: "native" (compiled op, raises if not built), "torch" (oracle) or "auto".

    Returns:
        float32 Tensor[N, O, H, W], channels_last.
    """
    if chunk_tiles < 0:
        raise InputError(f"winograd_conv3x3: chunk_tiles must be >= 0, got {chunk_tiles}")
    if use_native(impl, x, weight, u, bias):
        return torch.ops.agingrt.winograd_conv3x3(x, weight, u, bias, int(chunk_tiles))
    y = _oracle.winograd_conv3x3(x, u)  # [N, O, H, W]
    return y if bias is None else y + bias[:, None, None]
