"""CUSP's guided-backprop structure mask (Eq. (1)): typed wrappers and the explicit VGG backward.

* :func:`guided_relu_backward` wraps ``torch.ops.agingrt.guided_relu_backward`` (oracle:
  ``training.layers.guided_backprop_mask.guided_relu_backward``);
* :func:`guided_backprop_mask` wraps ``torch.ops.agingrt.guided_backprop_mask``, the Eq. (1) reduction of an
  input gradient to the mask (oracle: ``structure_mask``);
* :func:`guided_backprop_mask_taps` builds that reduction's blur taps on the host, and
  :func:`guided_backprop_mask_with_taps` runs the reduction with them: the **CUDA-graph-safe** entry (no host
  reads, no host-device copies), which :func:`guided_backprop_mask` calls after building its taps, so both give
  the same bits;
* :func:`guided_backprop_mask_sequential` runs a VGG-style network forward, keeps what the backward needs,
  and runs the guided backward explicitly (no autograd), as the native engine does for the DEX
  (docs/models/cusp.md section 3.6; docs/performance.md section 3.5, option A).

None of these has autograd: the mask is detached.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InputError
from ..training.layers.guided_backprop_mask import GuidedReLU, structure_mask
from ..training.layers.guided_backprop_mask import guided_relu_backward as _relu_oracle
from ..training.layers.masked_gaussian_blur import gaussian_kernel1d
from ._dispatch import Impl, use_native


def guided_relu_backward(grad_out: Tensor, act: Tensor, *, impl: Impl = "auto") -> Tensor:
    """Guided ReLU backward, g_in = g_out * [act > 0] * [g_out > 0] (Springenberg et al. 2014).

    Args:
        grad_out: Tensor[...], float32 / float16 / bfloat16 (float64 on CPU): gradient at the ReLU's output.
        act: Tensor[...] of grad_out's shape and dtype: the ReLU's forward input (or output: same sign test).
        impl: "native" (compiled op, raises if not built), "torch" (oracle) or "auto".

    Returns:
        Tensor[...] of grad_out's shape, dtype and layout. No autograd.
    """
    if use_native(impl, grad_out, act):
        return torch.ops.agingrt.guided_relu_backward(grad_out, act)
    return _relu_oracle(grad_out, act)


def _check_mask_args(kernel_size: int, sigma: float) -> None:
    if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
        raise InputError(
            f"kernel_size must be a positive odd integer (CUSP: 2*floor(29*H/448)+1, 29 at 224), got {kernel_size!r}"
        )
    if not math.isfinite(sigma) or sigma < 0:
        raise InputError(f"sigma must be finite and >= 0 (CUSP: 0.3*(k/2 - 1) + 0.8), got {sigma!r}")


def guided_backprop_mask(grad: Tensor, kernel_size: int, sigma: float, *, impl: Impl = "auto") -> Tensor:
    """CUSP Eq. (1): reduce an input gradient G to the structure mask M in [0, 1].

    A = mean_c |G|; A /= std(A) + 1e-15; B~ = zero-padded same-size separable Gaussian blur of A (K taps,
    sigma); tau = 2 * unbiased std(B~) + 1e-15 per image; M = min(B~ / tau, 1). G = 0 gives M = 0.

    Not CUDA-graph safe (the native op copies its taps to the device on every call): inside a captured graph use
    :func:`guided_backprop_mask_with_taps` with taps from :func:`guided_backprop_mask_taps`.

    Args:
        grad: Tensor[B, C, H, W] (H*W >= 2), float32 / float16 / bfloat16 (float64 on CPU), any strides.
        kernel_size: K, positive odd.
        sigma: Gaussian standard deviation in pixels, >= 0 (0 = no blur).
        impl: "native" (compiled op, raises if not built), "torch" (oracle) or "auto".

    Returns:
        Tensor[B, 1, H, W]: float64 for float64 grad, else float32 (the mask statistics stay in full
        precision). Deterministic: the same input gives the same bits. No autograd.
    """
    _check_mask_args(kernel_size, sigma)
    if use_native(impl, grad):
        return torch.ops.agingrt.guided_backprop_mask(grad, int(kernel_size), float(sigma))
    work = grad if grad.dtype == torch.float64 else grad.float()
    return structure_mask(work, kernel_size, sigma).detach()


def guided_backprop_mask_taps(
    kernel_size: int, sigma: float, *, device: torch.device | str | None = None, impl: Impl = "auto"
) -> Tensor:
    """The 1-D Gaussian taps of the Eq. (1) blur, built on the host (host work, once per (K, sigma); not capturable).

    g[n] = exp(-(n - (K-1)/2)^2 / (2 sigma^2)) / sum in float64; sigma 0 gives the unit impulse.

    Args:
        kernel_size: K, positive odd.
        sigma: Gaussian standard deviation in pixels, >= 0.
        device: where to put them (one host-to-device copy); None keeps them on the CPU.
        impl: "native" (the compiled builder that :func:`guided_backprop_mask` uses, raises if not built),
            "torch" (the oracle's ``gaussian_kernel1d``) or "auto".

    Returns:
        float64 Tensor[K] on ``device``; a constant for :func:`guided_backprop_mask_with_taps`.
    """
    _check_mask_args(kernel_size, sigma)
    if use_native(impl):
        return torch.ops.agingrt.guided_backprop_mask_taps(int(kernel_size), float(sigma), device=device)
    taps = gaussian_kernel1d(float(sigma), kernel_size)  # [K] float64
    return taps if device is None else taps.to(device)


def _structure_mask_from_taps(grad: Tensor, taps: Tensor) -> Tensor:
    """``structure_mask`` with the blur taps given: the same ops in the same order, no host reads."""
    a = grad.abs().mean(dim=1, keepdim=True)  # [B, 1, H, W]
    a = a / (a.flatten(1).std(dim=1)[:, None, None, None] + 1e-15)  # [B, 1, H, W]
    pad = (taps.numel() - 1) // 2
    k = taps.to(a.dtype)  # [K]
    blurred = F.conv2d(a, k.view(1, 1, 1, -1), padding=(0, pad))  # [B, 1, H, W] rows
    blurred = F.conv2d(blurred, k.view(1, 1, -1, 1), padding=(pad, 0))  # [B, 1, H, W] columns
    tau = 2 * blurred.flatten(1).std(dim=1, unbiased=True)[:, None, None, None] + 1e-15  # [B, 1, 1, 1]
    return (blurred / tau).clamp(max=1.0)  # [B, 1, H, W]


def guided_backprop_mask_with_taps(grad: Tensor, taps: Tensor, *, impl: Impl = "auto") -> Tensor:
    """CUSP Eq. (1) with precomputed blur taps: the CUDA-graph-safe entry of the mask reduction.

    The native op checks only shapes, dtypes and devices (never a value, no device-to-host copy), allocates its
    output and workspace with ATen and launches on the current stream, so it can be captured in a CUDA graph. For
    taps from :func:`guided_backprop_mask_taps` it equals :func:`guided_backprop_mask` bit for bit (native). The
    torch impl runs the oracle's maths (``structure_mask``) with these taps, in float32 (float64 for float64
    grad), also without host reads.

    Args:
        grad: Tensor[B, C, H, W] (H*W >= 2), float32 / float16 / bfloat16 (float64 on CPU), any strides.
        taps: float64 Tensor[K] on grad's device, K odd (their values are not checked).
        impl: "native" (compiled op, raises if not built), "torch" or "auto".

    Returns:
        Tensor[B, 1, H, W] in [0, 1]: float64 for float64 grad, else float32. No autograd.
    """
    if use_native(impl, grad):
        return torch.ops.agingrt.guided_backprop_mask_with_taps(grad, taps)
    work = grad if grad.dtype == torch.float64 else grad.float()
    return _structure_mask_from_taps(work, taps).detach()


class ChannelAffine(nn.Module):
    """y = x * scale[c] + shift[c] per channel: preprocessing whose Jacobian is diagonal (backward g * scale).

    DEX's (x + 1) * 127.5 - mean is one (its BGR swap is a permutation: fold it into conv1_1's input channels).

    Args:
        scale: Tensor[C] (or a float for every channel).
        shift: Tensor[C] (or a float).
    """

    def __init__(self, scale: Tensor | float, shift: Tensor | float) -> None:
        super().__init__()
        self.register_buffer("scale", torch.as_tensor(scale, dtype=torch.float32).reshape(-1))
        self.register_buffer("shift", torch.as_tensor(shift, dtype=torch.float32).reshape(-1))

    def forward(self, x: Tensor) -> Tensor:
        """x: Tensor[B, C, H, W] -> Tensor[B, C, H, W]."""
        scale = self.scale.to(x.dtype)[None, :, None, None]  # [1, C, 1, 1]
        shift = self.shift.to(x.dtype)[None, :, None, None]  # [1, C, 1, 1]
        return x * scale + shift  # [B, C, H, W]


def _pool_window(pool: nn.MaxPool2d) -> tuple[int, int]:
    """The (kh, kw) of a non-overlapping max-pool, whose backward is exactly max_unpool2d; else InputError."""

    def pair(v: int | tuple[int, ...]) -> tuple[int, int]:
        return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))

    kernel = pair(pool.kernel_size)
    stride = pair(pool.stride if pool.stride is not None else pool.kernel_size)
    if kernel != stride or pair(pool.padding) != (0, 0) or pair(pool.dilation) != (1, 1) or pool.ceil_mode:
        raise InputError(
            "guided_backprop_mask_sequential supports non-overlapping max-pools only (kernel == stride, no padding, "
            f"dilation 1, ceil_mode False, as in VGG's MaxPool2d(2, 2)); got {pool}"
        )
    return kernel


def guided_backprop_mask_sequential(
    layers: Sequence[nn.Module],
    x: Tensor,
    kernel_size: int,
    sigma: float,
    reduce: Literal["all", "max"] = "all",
    *,
    preprocess: ChannelAffine | None = None,
    impl: Impl = "auto",
) -> Tensor:
    """Structure mask of a VGG-style network, with the guided backward run explicitly (no autograd).

    Equals ``training.layers.guided_backprop_mask.guided_backprop_mask(nn.Sequential(preprocess, *layers),
    x, ...)`` with every ReLU a GuidedReLU. Forward: keep each ReLU's input, each max-pool's argmax
    indices and each flatten's shape. Backward from the seed (``all``: ones; ``max``: one-hot at the argmax
    logit): linear g @ W, ReLU guided (op ``guided_relu_backward``), max-pool g routed to the window's
    argmax (first in row-major order on ties), conv the data gradient (transposed conv, same weight),
    preprocess g * scale. Then Eq. (1) (op ``guided_backprop_mask``).

    Args:
        layers: nn.Conv2d (zero padding), nn.ReLU / GuidedReLU, nn.MaxPool2d (kernel == stride), nn.Flatten,
            nn.Linear, ChannelAffine, in order; biases are used in the forward only.
        x: Tensor[B, C, H, W] images.
        kernel_size: K of the mask blur, positive odd.
        sigma: the mask blur's standard deviation, >= 0.
        reduce: seed the backward with the sum of the logits ("all") or the top logit per image ("max").
        preprocess: optional leading per-channel affine map (run first, its backward is g * scale).
        impl: "native", "torch" or "auto", for the two ops.

    Returns:
        Tensor[B, 1, H, W] in [0, 1], float64 for float64 x, else float32.
    """
    _check_mask_args(kernel_size, sigma)
    if reduce not in ("all", "max"):
        raise InputError(f"reduce must be 'all' or 'max', got {reduce!r}")
    if x.dim() != 4:
        raise InputError(f"x must be 4-D [B, C, H, W], got shape {list(x.shape)}")
    modules = ([preprocess] if preprocess is not None else []) + list(layers)
    with torch.no_grad():
        tape: list[tuple[str, object]] = []
        h = x  # [B, C, H, W], later [B, F]
        for layer in modules:
            if isinstance(layer, ChannelAffine):
                tape.append(("affine", layer.scale.to(h.dtype)))
                h = layer(h)
            elif isinstance(layer, nn.Conv2d):
                if layer.padding_mode != "zeros" or isinstance(layer.padding, str):
                    raise InputError(
                        "only convs with explicit zero padding are supported, got "
                        f"padding={layer.padding!r}, padding_mode={layer.padding_mode!r}"
                    )
                tape.append(("conv", (layer, h.shape)))
                h = layer(h)  # [B, O, H', W']
            elif isinstance(layer, (nn.ReLU, GuidedReLU)):
                tape.append(("relu", h))  # the ReLU's input: its sign is all the backward needs
                h = torch.relu(h)  # not in place, so the kept input survives
            elif isinstance(layer, nn.MaxPool2d):
                window = _pool_window(layer)
                pooled, indices = F.max_pool2d(h, window, window, return_indices=True)  # [B, C, H/k, W/k]
                tape.append(("pool", (indices, window, h.shape[-2:])))
                h = pooled
            elif isinstance(layer, nn.Flatten):
                tape.append(("flatten", h.shape))
                h = layer(h)  # [B, C*H*W]
            elif isinstance(layer, nn.Linear):
                tape.append(("linear", layer.weight))
                h = layer(h)  # [B, out]
            else:
                raise InputError(
                    f"guided_backprop_mask_sequential cannot run the backward of {type(layer).__name__}; supported: "
                    "Conv2d, ReLU/GuidedReLU, MaxPool2d, Flatten, Linear, ChannelAffine"
                )
        if h.dim() != 2:
            raise InputError(f"the network must end in logits [B, classes], got shape {list(h.shape)}")
        if reduce == "all":
            g = torch.ones_like(h)  # [B, classes]
        else:
            top = h.max(dim=1).indices  # the index autograd of max(dim=1) routes to
            g = torch.zeros_like(h).scatter_(1, top[:, None], 1.0)  # [B, classes]
        for kind, saved in reversed(tape):
            if kind == "linear":
                g = g @ saved  # [B, in] = [B, out] @ [out, in]
            elif kind == "flatten":
                g = g.reshape(saved)  # [B, C, H, W]
            elif kind == "pool":
                indices, window, size = saved
                g = F.max_unpool2d(g, indices, window, window, output_size=size)  # [B, C, H, W]
            elif kind == "relu":
                g = guided_relu_backward(g, saved, impl=impl)
            elif kind == "conv":
                conv, shape = saved
                g = torch.nn.grad.conv2d_input(
                    shape, conv.weight, g, conv.stride, conv.padding, conv.dilation, conv.groups
                )  # [B, I, H, W]
            else:  # affine
                g = g * saved[None, :, None, None]  # [B, C, H, W]
        return guided_backprop_mask(g, kernel_size, sigma, impl=impl)  # [B, 1, H, W]


__all__ = [
    "ChannelAffine",
    "guided_backprop_mask",
    "guided_backprop_mask_sequential",
    "guided_backprop_mask_taps",
    "guided_backprop_mask_with_taps",
    "guided_relu_backward",
]
