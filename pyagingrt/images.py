"""Turning what users pass as images into the float [B, 3, S, S] tensors models take, and back.

Accepted: a float tensor [B, 3, H, W] or [3, H, W] in [0, 1]; a uint8 tensor of those shapes; a uint8 numpy
array [H, W, 3] or [B, H, W, 3] (RGB); a list of such arrays. Results come back in the same kind: tensors
(float [0, 1], on the input's device) for tensors, uint8 HWC arrays for arrays.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .errors import InputError

ImageInput = Tensor | np.ndarray | Sequence[np.ndarray]


@dataclass(frozen=True)
class ImageBatch:
    """A validated batch: ``pixels`` float32 [B, 3, H, W] in [0, 1] and how to give results back."""

    pixels: Tensor
    kind: str  # "tensor" or "numpy"
    was_single: bool  # a single image was given (no batch axis)
    device: torch.device

    def restore(self, out: Tensor) -> Any:
        """Results [B, ..., 3, H, W] in [0, 1] in the caller's kind."""
        if self.kind == "tensor":
            out = out.to(self.device)
            return out[0] if self.was_single else out
        arr = (out.clamp(0, 1) * 255).round().to(torch.uint8).movedim(-3, -1).cpu().numpy()  # [B, ..., H, W, 3]
        return arr[0] if self.was_single else arr


def _from_numpy(images: np.ndarray | Sequence[np.ndarray]) -> tuple[Tensor, bool]:
    if isinstance(images, np.ndarray):
        arrays, single = ([images], True) if images.ndim == 3 else (list(images), False)
        if images.ndim not in (3, 4):
            raise InputError(f"image arrays must be [H, W, 3] or [B, H, W, 3], got shape {images.shape}")
    else:
        arrays, single = list(images), False
    if not arrays:
        raise InputError("no images given")
    tensors = []
    for i, a in enumerate(arrays):
        if not isinstance(a, np.ndarray) or a.ndim != 3 or a.shape[2] != 3:
            shape = getattr(a, "shape", type(a).__name__)
            raise InputError(f"image {i} must be an RGB array [H, W, 3], got {shape}")
        if not a.flags.writeable:  # e.g. np.asarray(PIL image): from_numpy would warn; we only read it
            a = np.array(a)
        if a.dtype == np.uint8:
            t = torch.from_numpy(np.ascontiguousarray(a)).float() / 255.0
        elif np.issubdtype(a.dtype, np.floating):
            t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
        else:
            raise InputError(f"image {i} must be uint8 (0..255) or float (0..1), got dtype {a.dtype}")
        tensors.append(t.permute(2, 0, 1))  # [3, H, W]
    if len({tuple(t.shape) for t in tensors}) > 1:
        raise InputError(f"all images in a batch must have the same size, got {[tuple(t.shape[1:]) for t in tensors]}")
    return torch.stack(tensors), single


def as_image_batch(images: ImageInput, size: int) -> ImageBatch:
    """Validate ``images`` for a model that takes ``size`` x ``size`` aligned RGB crops."""
    if isinstance(images, Tensor):
        single = images.dim() == 3
        x = images[None] if single else images
        if x.dim() != 4 or x.shape[1] != 3:
            raise InputError(f"image tensors must be [B, 3, H, W] or [3, H, W] (RGB), got shape {list(images.shape)}")
        if x.dtype == torch.uint8:
            x = x.float() / 255.0
        elif not x.is_floating_point():
            raise InputError(f"image tensors must be float in [0, 1] or uint8, got dtype {x.dtype}")
        kind, device = "tensor", images.device
        x = x.float()
    elif isinstance(images, np.ndarray | list | tuple):
        x, single = _from_numpy(images)
        kind, device = "numpy", torch.device("cpu")
    else:
        raise InputError(f"images must be a torch tensor or numpy uint8 arrays, got {type(images).__name__}")
    if x.shape[0] == 0:
        raise InputError("no images given (batch size 0)")
    if tuple(x.shape[2:]) != (size, size):
        raise InputError(
            f"this model takes aligned {size}x{size} face crops, got {x.shape[3]}x{x.shape[2]}; "
            "for photos use the face pipeline (`agingrt age PHOTO` or pyagingrt.pipeline)"
        )
    if not bool(torch.isfinite(x).all()):
        raise InputError("images contain NaN or Inf")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0.0 or hi > 1.0:
        raise InputError(
            f"float images must lie in [0, 1], got values in [{lo:.3g}, {hi:.3g}] (for 0..255 values pass uint8)"
        )
    return ImageBatch(x, kind, single, device)
