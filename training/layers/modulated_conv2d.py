"""Oracle for StyleGAN2's modulated convolution (Karras et al. 2020, Eqs. (1)-(3)), as CUSP uses it.

    w'_{b,o,i,k} = s_{b,i} * w_{o,i,k}                          Eq. (1), modulation
    d_{b,o}      = (sum_{i,k} w'_{b,o,i,k}^2 + eps)^(-1/2)      Eq. (3), demodulation
    y_b          = conv(x_b, d_b * w'_b)

Two forms compute the same thing (docs/models/cusp.md section 3.4; stylegan2-ada ``fused_modconv``):
  * ``grouped``: materialise per-sample weights, one grouped conv with groups = B;
  * ``scaled`` (activation scaling): y_b = d_b * conv(s_b * x_b, w), one shared-weight conv.
The demodulation coefficients come from one small GEMM: d = (s^2 Q^T + eps)^(-1/2), Q_{o,i} = sum_k w_{o,i,k}^2.

``up=2`` is CUSP's conv0: conv_transpose2d with stride 2, no padding and no spatial flip, with the weight's
in/out axes swapped (R/2 -> R+1); the FIR low-pass that follows is not part of this op (it commutes with the
per-channel ``d``).
"""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from torch import Tensor


def demodulation_coefficients(weight: Tensor, styles: Tensor, eps: float = 1e-8) -> Tensor:
    """d[b, o] = (sum_{i,k} (w[o,i,k] s[b,i])^2 + eps)^(-1/2), computed as one GEMM (s^2 @ Q^T)."""
    q = weight.square().sum(dim=(2, 3))  # [O, I]
    return (styles.square() @ q.t() + eps).rsqrt()  # [B, O]


def modulated_conv2d(
    x: Tensor,
    weight: Tensor,
    styles: Tensor,
    demodulate: bool = True,
    padding: int = 0,
    up: int = 1,
    eps: float = 1e-8,
    form: Literal["scaled", "grouped"] = "scaled",
) -> Tensor:
    """StyleGAN2 modulated convolution.

    Args:
        x: Tensor[B, I, H, W] input activations.
        weight: Tensor[O, I, kh, kw] shared weight.
        styles: Tensor[B, I] per-sample modulation s.
        demodulate: apply d (Eq. (3)); toRGB layers do not.
        padding: zero padding of the (up=1) correlation; must be 0 when up=2.
        up: 1 (correlation, stride 1) or 2 (stride-2 transposed conv, CUSP conv0).
        eps: added inside the demodulation rsqrt.
        form: "scaled" (activation scaling) or "grouped" (per-sample weights); they agree.

    Returns:
        Tensor[B, O, H', W']: H' = H + 2*padding - kh + 1 for up=1, (H - 1) * 2 + kh for up=2.
    """
    if up not in (1, 2):
        raise ValueError(f"up must be 1 or 2, got {up}")
    if up == 2 and padding != 0:
        raise ValueError(f"padding must be 0 when up=2, got {padding}")
    batch, in_ch = x.shape[:2]
    out_ch = weight.shape[0]
    d = demodulation_coefficients(weight, styles, eps) if demodulate else None  # [B, O]
    if form == "scaled":
        xs = x * styles[:, :, None, None]  # [B, I, H, W]
        if up == 1:
            y = F.conv2d(xs, weight, padding=padding)  # [B, O, H', W']
        else:
            y = F.conv_transpose2d(xs, weight.transpose(0, 1), stride=2)  # [B, O, 2H+1, 2W+1] for k=3
        return y if d is None else y * d[:, :, None, None]
    if form != "grouped":
        raise ValueError(f"form must be 'scaled' or 'grouped', got {form!r}")
    w = weight[None] * styles[:, None, :, None, None]  # [B, O, I, kh, kw]
    if d is not None:
        w = w * d[:, :, None, None, None]
    kh, kw = weight.shape[2:]
    xg = x.reshape(1, batch * in_ch, *x.shape[2:])  # [1, B*I, H, W]
    if up == 1:
        y = F.conv2d(xg, w.reshape(batch * out_ch, in_ch, kh, kw), padding=padding, groups=batch)
    else:
        wt = w.transpose(1, 2).reshape(batch * in_ch, out_ch, kh, kw)  # [B*I, O, kh, kw]
        y = F.conv_transpose2d(xg, wt, stride=2, groups=batch)
    return y.reshape(batch, out_ch, *y.shape[2:])  # [B, O, H', W']


__all__ = ["demodulation_coefficients", "modulated_conv2d"]
