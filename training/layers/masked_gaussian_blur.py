"""Oracle for CUSP's masked dual Gaussian blur of the skip features (CUSP ECCV 2022, Eq. (2)).

    F~ = M * (F conv k_m) + (1 - M) * (F conv k_g)

k_sigma is the separable Gaussian g_sigma (x) g_sigma with K taps, g[n] = exp(-(n - (K-1)/2)^2 / (2 sigma^2))
normalised to sum 1, applied per channel with zero padding (K-1)/2 (same-size output); sigma = 0 is the
identity, exactly; where sigma_m == sigma_g the blend is skipped, so the result does not depend on M at all
(sigma_m = sigma_g = 0 returns F bit for bit). sigma_m and sigma_g are per sample. docs/models/cusp.md
section 3.5 explains how the CUSP model composes two calls of this op into the trained double blur.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def gaussian_kernel1d(sigma: float, kernel_size: int) -> Tensor:
    """K normalised Gaussian taps in float64; sigma = 0 gives the unit impulse."""
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd number, got {kernel_size}")
    if sigma < 0 or not math.isfinite(sigma):
        raise ValueError(f"sigma must be finite and >= 0, got {sigma}")
    center = (kernel_size - 1) / 2
    if sigma == 0:
        taps = torch.zeros(kernel_size, dtype=torch.float64)
        taps[int(center)] = 1.0
        return taps
    n = torch.arange(kernel_size, dtype=torch.float64)
    taps = torch.exp(-((n - center) ** 2) / (2.0 * sigma * sigma))
    return taps / taps.sum()


def gaussian_blur(x: Tensor, sigma: float, kernel_size: int) -> Tensor:
    """Separable zero-padded same-size Gaussian blur of every channel of x [B, C, H, W]; sigma 0 returns x."""
    if sigma == 0:
        return x
    channels = x.shape[1]
    taps = gaussian_kernel1d(sigma, kernel_size).to(x.dtype).to(x.device)
    pad = (kernel_size - 1) // 2
    kx = taps.view(1, 1, 1, kernel_size).expand(channels, 1, 1, kernel_size)  # [C, 1, 1, K]
    ky = taps.view(1, 1, kernel_size, 1).expand(channels, 1, kernel_size, 1)  # [C, 1, K, 1]
    y = F.conv2d(x, kx, padding=(0, pad), groups=channels)  # [B, C, H, W] rows
    return F.conv2d(y, ky, padding=(pad, 0), groups=channels)  # [B, C, H, W] columns


def _per_sample(sigma: Tensor | float, batch: int, name: str) -> list[float]:
    values = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1)
    if values.numel() == 1:
        values = values.expand(batch)
    if values.numel() != batch:
        raise ValueError(f"{name} must be a scalar or have one value per sample ({batch}), got {values.numel()}")
    if (values < 0).any() or not torch.isfinite(values).all():
        raise ValueError(f"{name} must be finite and >= 0, got {values.tolist()}")
    return values.tolist()


def masked_gaussian_blur(
    features: Tensor, mask: Tensor, sigma_m: Tensor | float, sigma_g: Tensor | float, kernel_size: int
) -> Tensor:
    """CUSP Eq. (2): M * (F conv k_m) + (1 - M) * (F conv k_g), per-sample sigmas.

    Args:
        features: F, Tensor[B, C, H, W].
        mask: M, Tensor[B, 1, H, W] in [0, 1] (broadcast over channels).
        sigma_m: blur inside the mask, a float or Tensor[B], >= 0 (0 = identity).
        sigma_g: blur outside the mask, a float or Tensor[B], >= 0.
        kernel_size: K, odd.

    Returns:
        Tensor[B, C, H, W].
    """
    batch = features.shape[0]
    sm = _per_sample(sigma_m, batch, "sigma_m")
    sg = _per_sample(sigma_g, batch, "sigma_g")
    out = []
    for b in range(batch):
        f = features[b : b + 1]  # [1, C, H, W]
        m = mask[b : b + 1]  # [1, 1, H, W]
        blurred_g = gaussian_blur(f, sg[b], kernel_size)
        if sm[b] == sg[b]:
            # M*a + (1-M)*a is a only up to rounding; return a itself so that sigma 0 is the exact identity
            out.append(blurred_g)
            continue
        blurred_m = gaussian_blur(f, sm[b], kernel_size)
        out.append(m * blurred_m + (1 - m) * blurred_g)
    return torch.cat(out, dim=0)


__all__ = ["gaussian_blur", "gaussian_kernel1d", "masked_gaussian_blur"]
