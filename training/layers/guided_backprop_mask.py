"""Oracle for CUSP's structure mask from guided backpropagation (CUSP ECCV 2022, Eq. (1)).

Guided backprop (Springenberg et al. 2014): at every ReLU the gradient passes only where both the forward
input and the incoming gradient are positive, g_in = g_out * [a > 0] * [g_out > 0]. CUSP runs it through the
frozen DEX VGG-16 from L = sum of the logits (``all``) or their max (``max``) to the input image, then
(docs/models/cusp.md section 3.6):

    A   = mean_c |G|                         abs first, then the channel mean (the official order)
    A   = A / (std(A) + 1e-15)               cosmetic: M does not depend on A's scale
    B~  = A conv k_gb                        zero-padded same-size Gaussian, K = kernel_size, sigma
    tau = 2 * std_unbiased(B~) + 1e-15       per image
    M   = min(B~ / tau, 1)  in [0, 1]        1 marks an age-relevant pixel; G = 0 gives M = 0
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from .masked_gaussian_blur import gaussian_blur


def guided_relu_backward(grad_out: Tensor, act: Tensor) -> Tensor:
    """g_in = g_out * [act > 0] * [g_out > 0], where act is the ReLU's forward input (or output)."""
    keep = (act > 0) & (grad_out > 0)
    return torch.where(keep, grad_out, torch.zeros_like(grad_out))


class _GuidedReLUFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return x.clamp_min(0)

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        return guided_relu_backward(grad_out, x)


def guided_relu(x: Tensor) -> Tensor:
    """ReLU whose backward is guided (forward identical to ReLU)."""
    return _GuidedReLUFunction.apply(x)


class GuidedReLU(nn.Module):
    """Drop-in ReLU module with the guided backward."""

    def forward(self, x: Tensor) -> Tensor:
        return guided_relu(x)


def structure_mask(grad: Tensor, kernel_size: int, sigma: float) -> Tensor:
    """Eq. (1): reduce the input gradient G [B, C, H, W] to the mask M [B, 1, H, W] in [0, 1]."""
    if grad.dtype in (torch.float16, torch.bfloat16):
        grad = grad.float()  # the statistics need fp32: in fp16 the 1e-15 terms round to 0 and M can turn NaN
    a = grad.abs().mean(dim=1, keepdim=True)  # [B, 1, H, W]
    a = a / (a.flatten(1).std(dim=1)[:, None, None, None] + 1e-15)  # [B, 1, H, W]
    blurred = gaussian_blur(a, sigma, kernel_size)  # [B, 1, H, W]
    tau = 2 * blurred.flatten(1).std(dim=1, unbiased=True)[:, None, None, None] + 1e-15  # [B, 1, 1, 1]
    return (blurred / tau).clamp(max=1.0)  # [B, 1, H, W]


def guided_backprop_mask(
    net: nn.Module,
    x: Tensor,
    kernel_size: int,
    sigma: float,
    reduce: Literal["all", "max"] = "all",
) -> Tensor:
    """Structure mask of ``net`` (whose activations are GuidedReLU) for images x [B, 3, H, W].

    The gradient is taken with respect to x itself, so any preprocessing inside ``net`` is differentiated
    through. The result is detached.
    """
    with torch.enable_grad():
        leaf = x.detach().requires_grad_(True)
        xg = leaf.clone()  # differentiate at a non-leaf copy: FlopCounterMode cannot take grads at a leaf
        logits = net(xg)  # [B, classes]
        if reduce == "all":
            objective = logits.sum()
        elif reduce == "max":
            objective = logits.max(dim=1).values.sum()
        else:
            raise ValueError(f"reduce must be 'all' or 'max', got {reduce!r}")
        (grad,) = torch.autograd.grad(objective, xg)
    return structure_mask(grad, kernel_size, sigma).detach()


__all__ = [
    "GuidedReLU",
    "guided_backprop_mask",
    "guided_relu",
    "guided_relu_backward",
    "structure_mask",
]
