"""Typed wrappers over the custom operators ``torch.ops.agingrt.*``, each with ``impl="auto"|"native"|"torch"``."""

from __future__ import annotations

from .ddim_step import ddim_step
from .inv_conv1x1 import inv_conv1x1
from .masked_gaussian_blur import masked_gaussian_blur

__all__ = ["ddim_step", "inv_conv1x1", "masked_gaussian_blur"]
