"""Typed wrappers over the custom operators ``torch.ops.agingrt.*``, each with ``impl="auto"|"native"|"torch"``."""

from __future__ import annotations

from .ddim_step import ddim_step
from .group_norm_act import group_norm_act
from .guided_backprop_mask import (
    ChannelAffine,
    guided_backprop_mask,
    guided_backprop_mask_sequential,
    guided_backprop_mask_taps,
    guided_backprop_mask_with_taps,
    guided_relu_backward,
)
from .inv_conv1x1 import inv_conv1x1
from .masked_gaussian_blur import masked_gaussian_blur, masked_gaussian_blur_tables, masked_gaussian_blur_with_taps
from .winograd_conv3x3 import winograd_conv3x3, winograd_weight

__all__ = [
    "ChannelAffine",
    "ddim_step",
    "group_norm_act",
    "guided_backprop_mask",
    "guided_backprop_mask_sequential",
    "guided_backprop_mask_taps",
    "guided_backprop_mask_with_taps",
    "guided_relu_backward",
    "inv_conv1x1",
    "masked_gaussian_blur",
    "masked_gaussian_blur_tables",
    "masked_gaussian_blur_with_taps",
    "winograd_conv3x3",
    "winograd_weight",
]
