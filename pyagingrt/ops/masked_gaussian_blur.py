"""Typed wrapper for ``torch.ops.agingrt.masked_gaussian_blur`` (oracle: ``training.layers.masked_gaussian_blur``)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import InputError
from ..training.layers import masked_gaussian_blur as _oracle
from ._dispatch import Impl, use_native


def _sigma_vector(sigma: Tensor | float, batch: int, name: str) -> Tensor:
    """A scalar or [B] sigma as the op's float64 [B] tensor (kept on its device)."""
    values = torch.as_tensor(sigma)
    if values.dtype not in (torch.float32, torch.float64):
        values = values.to(torch.float64)
    values = values.reshape(-1)
    if values.numel() == 1:
        values = values.expand(batch)
    if values.numel() != batch:
        raise InputError(
            f"{name} must be a scalar or have one value per sample ({batch}), got {values.numel()} values; "
            f"pass a float or a Tensor[{batch}]"
        )
    return values


def masked_gaussian_blur(
    features: Tensor,
    mask: Tensor,
    sigma_m: Tensor | float,
    sigma_g: Tensor | float,
    kernel_size: int,
    *,
    impl: Impl = "auto",
) -> Tensor:
    """CUSP Eq. (2): ``M * (F conv k_m) + (1 - M) * (F conv k_g)`` with separable, zero-padded Gaussians.

    sigma 0 is the identity, bitwise; where sigma_m == sigma_g the blend is skipped, so the output is exactly the
    single blur and does not depend on M. Taps are built per sample in float64 and rounded once (to float32, or
    kept float64 for float64 features); accumulation is fp32 for float32 / float16 / bfloat16 features.

    The native op has no autograd (CUSP training differentiates through the oracle): ``impl="auto"`` picks the
    oracle when an input needs a gradient.

    Args:
        features: F, Tensor[B, C, H, W], float32 / float16 / bfloat16 (float64 on CPU).
        mask: M, Tensor[B, 1, H, W] in [0, 1], features' dtype or float32.
        sigma_m: blur inside the mask, a float or Tensor[B] (CPU or features' device; a GPU one is copied to the
            host), >= 0.
        sigma_g: blur outside the mask, like sigma_m.
        kernel_size: K, odd (at most 63 on CUDA).
        impl: "native" (compiled op, raises if not built), "torch" (oracle) or "auto".

    Returns:
        Tensor[B, C, H, W] in features' dtype, contiguous.
    """
    if use_native(impl, features, mask):
        batch = features.shape[0] if features.dim() > 0 else 0
        sm = _sigma_vector(sigma_m, batch, "sigma_m")
        sg = _sigma_vector(sigma_g, batch, "sigma_g")
        return torch.ops.agingrt.masked_gaussian_blur(features, mask, sm, sg, int(kernel_size))
    return _oracle.masked_gaussian_blur(features, mask, sigma_m, sigma_g, kernel_size)
