"""Typed wrappers over the custom operators ``torch.ops.agingrt.*``, each with ``impl="auto"|"native"|"torch"``."""

from __future__ import annotations

from .ddim_step import ddim_step
from .guided_backprop_mask import (
    ChannelAffine,
    guided_backprop_mask,
    guided_backprop_mask_sequential,
    guided_relu_backward,
)
from .modulated_conv2d import modulated_conv2d

__all__ = [
    "ChannelAffine",
    "ddim_step",
    "guided_backprop_mask",
    "guided_backprop_mask_sequential",
    "guided_relu_backward",
    "modulated_conv2d",
]
