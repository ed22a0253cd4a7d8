"""Oracle for Glow's invertible 1x1 convolution with ActNorm folded in (AgeFlow; Kingma & Dhariwal 2018).

Per pixel, ``y = W x + b`` (Glow section 3.2, Table 1: "Invertible 1x1 convolution", log-determinant
``h * w * log|det W|``). AgeFlow's flow step is ActNorm, ``y = s * (x + loc)`` (docs/models/ageflow.md section 3.1),
followed by the 1x1 conv ``z = W y``. Folded at load time, in float64 (docs/models/ageflow.md section 9):

    forward   z = W' x + b'        W' = W diag(s),   b' = W (s * loc)
    inverse   x = W'^-1 z - loc    (the same op with weight W'^-1 and bias -loc)
    logdet    h * w * (sum log|s| + log|det W|)

so one kernel serves both directions and no matrix is inverted at run time.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


def inv_conv1x1(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """y[b, o, h, w] = sum_c weight[o, c] * x[b, c, h, w] + bias[o].

    Args:
        x: Tensor[B, C, H, W].
        weight: Tensor[C, C].
        bias: Tensor[C] or None.

    Returns:
        Tensor[B, C, H, W] in x's dtype.
    """
    return F.conv2d(x, weight[:, :, None, None], bias)  # [B, C, H, W]


def inv_conv1x1_logdet(weight: Tensor, height: int, width: int) -> Tensor:
    """log|det dy/dx| of the 1x1 conv over an H x W map: h * w * log|det W| (float64 scalar)."""
    return height * width * torch.linalg.slogdet(weight.double())[1]


@dataclass(frozen=True)
class FoldedInvConv1x1:
    """ActNorm + invertible 1x1 conv folded into one affine per direction (computed in float64)."""

    weight: Tensor  # [C, C]  W' = W diag(s)
    bias: Tensor  # [C]     b' = W (s * loc)
    weight_inv: Tensor  # [C, C]  W'^-1
    bias_inv: Tensor  # [C]     -loc
    logdet_per_pixel: float  # sum log|s| + log|det W|

    def forward(self, x: Tensor) -> Tensor:
        return inv_conv1x1(x, self.weight.to(x.dtype), self.bias.to(x.dtype))

    def inverse(self, z: Tensor) -> Tensor:
        return inv_conv1x1(z, self.weight_inv.to(z.dtype), self.bias_inv.to(z.dtype))


def fold_actnorm_inv_conv1x1(
    loc: Tensor, scale: Tensor, weight: Tensor, dtype: torch.dtype = torch.float32
) -> FoldedInvConv1x1:
    """Fold ActNorm (loc, scale: [C] or [1, C, 1, 1]) into the 1x1 conv weight W [C, C].

    Everything is computed in float64 and rounded to ``dtype`` once; W'^-1 is computed here, once.
    """
    loc64 = loc.detach().reshape(-1).double()
    s64 = scale.detach().reshape(-1).double()
    w64 = weight.detach().double()
    w_folded = w64 * s64[None, :]  # W diag(s)
    b_folded = w64 @ (s64 * loc64)  # W (s * loc)
    w_inv = torch.linalg.inv(w_folded)
    logdet = float(torch.log(s64.abs()).sum() + torch.linalg.slogdet(w64)[1])
    return FoldedInvConv1x1(
        weight=w_folded.to(dtype),
        bias=b_folded.to(dtype),
        weight_inv=w_inv.to(dtype),
        bias_inv=(-loc64).to(dtype),
        logdet_per_pixel=logdet,
    )


__all__ = ["FoldedInvConv1x1", "fold_actnorm_inv_conv1x1", "inv_conv1x1", "inv_conv1x1_logdet"]
