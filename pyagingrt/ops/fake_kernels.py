"""Python fake (shape-only) kernels of the custom ops, for tracing with a symbolic batch axis.

Every op keeps its C++ Meta kernel (``csrc/ops/*.cpp``), which FakeTensor uses when shapes are concrete. Those
kernels read sizes as plain integers, so tracing with a dynamic batch (``torch.export`` with ``Dim``,
``torch.compile(dynamic=True)``) would specialise the batch to the example's. The kernels here compute the same
output shapes, dtypes and memory formats from symbolic sizes; they are registered over the Meta kernels'
fake role only while a graph is traced for export (:func:`symbolic_fake_kernels`), and never run real
arithmetic.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor


def _like(x: Tensor) -> Tensor:
    fmt = torch.channels_last if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) else None
    return torch.empty_like(x, memory_format=fmt or torch.contiguous_format)


def _mask_like(grad: Tensor) -> Tensor:
    dtype = torch.float64 if grad.dtype == torch.float64 else torch.float32
    return grad.new_empty((grad.shape[0], 1, grad.shape[2], grad.shape[3]), dtype=dtype)


def _group_norm_act(x, groups, scale, shift, eps=1e-5, act="none"):
    return _like(x)


def _inv_conv1x1(x, weight, bias=None):
    return _like(x)


def _ddim_step(x_t, eps, alpha_bar_t, alpha_bar_prev, clip=True):
    return torch.empty_like(x_t, memory_format=torch.contiguous_format)


def _guided_relu_backward(grad_out, act):
    return torch.empty_like(grad_out)


def _guided_backprop_mask(grad, kernel_size, sigma):
    return _mask_like(grad)


def _guided_backprop_mask_with_taps(grad, taps):
    return _mask_like(grad)


def _masked_gaussian_blur_with_taps(features, mask, taps, flags):
    return torch.empty_like(features, memory_format=torch.contiguous_format)


def _masked_gaussian_blur(features, mask, sigma_m, sigma_g, kernel_size):
    return torch.empty_like(features, memory_format=torch.contiguous_format)


def _winograd_conv3x3(x, weight, u, bias=None, chunk_tiles=0):
    out = x.new_empty((x.shape[0], weight.shape[0], x.shape[2], x.shape[3]))
    return out.contiguous(memory_format=torch.channels_last)


KERNELS = {
    "group_norm_act": _group_norm_act,
    "inv_conv1x1": _inv_conv1x1,
    "ddim_step": _ddim_step,
    "guided_relu_backward": _guided_relu_backward,
    "guided_backprop_mask": _guided_backprop_mask,
    "guided_backprop_mask_with_taps": _guided_backprop_mask_with_taps,
    "masked_gaussian_blur_with_taps": _masked_gaussian_blur_with_taps,
    "masked_gaussian_blur": _masked_gaussian_blur,
    "winograd_conv3x3": _winograd_conv3x3,
}


@contextlib.contextmanager
def symbolic_fake_kernels() -> Iterator[None]:
    """While the block runs, the ops the loaded extension defines trace through these kernels; afterwards their
    C++ Meta kernels (which also validate arguments) are back in place."""
    from .._extension import has_native

    if not has_native():  # loading the extension defines the ops; without it the graphs call no custom op
        yield
        return
    library = torch.library.Library("agingrt", "FRAGMENT")
    try:
        for name, kernel in KERNELS.items():
            if hasattr(torch.ops.agingrt, name):
                torch.library.register_fake(f"agingrt::{name}", kernel, lib=library, allow_override=True)
        yield
    finally:
        library._destroy()
