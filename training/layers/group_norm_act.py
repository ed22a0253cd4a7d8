"""Oracle for the fused GroupNorm + per-(sample, channel) affine + activation (``agingrt::group_norm_act``).

Notation (GroupNorm: Wu & He, ECCV 2018, eqs. (1)-(3); S_i = the (C/G) x H x W values of sample n, group g):

=============  ===========================================  ======================================
symbol         here                                         where it comes from
=============  ===========================================  ======================================
mu_i           ``mean`` [B, G]                              eq. (2), (1/m) sum_{k in S_i} x_k
sigma_i^2      ``var`` [B, G], biased (1/m)                 eq. (2); nn.GroupNorm, nn.InstanceNorm2d
x_hat          ``(x - mu) * rsqrt(var + eps)``              eq. (1)
a, b           ``scale``, ``shift`` [B, C] (or [C])         eq. (3)'s gamma, beta, per sample here
y              ``act(x_hat * a + b)``                       act in {"none", "relu", "silu"}
=============  ===========================================  ======================================

Per sample scale and shift let callers fold more than the GN affine into one pair: PADA's conditioned ResBlock
(docs/models/pada.md section 10 item 3) has ``a = g (1 + s_t)(1 + s_c)``, ``b = (beta (1 + s_t) + b_t)(1 + s_c)``
and SiLU; AcGAN's InstanceNorm is G = C with a = gamma, b = beta and ReLU (docs/models/acgan.md section 9). The
statistics and the affine are computed in fp32 for fp32/fp16/bf16 x (float64 for float64 x) and the result is
rounded once to x's dtype, in x's memory format.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

ACTIVATIONS = ("none", "relu", "silu")


def _per_sample(t: Tensor, batch: int, channels: int, name: str) -> Tensor:
    """[C], [1, C] or [B, C] -> Tensor[B or 1, C, 1, 1] to broadcast over [B, C, H, W]."""
    if t.shape not in ((channels,), (1, channels), (batch, channels)):
        raise ValueError(
            f"group_norm_act: {name} must be [C] or [B, C] with B = {batch}, C = {channels}, got shape {list(t.shape)}"
        )
    return t.reshape(-1, channels, 1, 1)


def group_norm_act(
    x: Tensor, groups: int, scale: Tensor, shift: Tensor, eps: float = 1e-5, act: str = "none"
) -> Tensor:
    """y = act((x - mu) / sqrt(var + eps) * scale + shift), statistics per (sample, group); differentiable.

    Args:
        x: Tensor[B, C, H, W], float32 / float16 / bfloat16 / float64, any memory format.
        groups: G, divides C (G = C is InstanceNorm).
        scale: Tensor[C] or Tensor[B, C], the folded multiplier a.
        shift: Tensor[C] or Tensor[B, C], the folded offset b.
        eps: added to the biased variance.
        act: "none", "relu" or "silu".

    Returns:
        Tensor[B, C, H, W] in x's dtype and memory format.
    """
    if act not in ACTIVATIONS:
        raise ValueError(f"group_norm_act: act must be one of {ACTIVATIONS}, got {act!r}")
    if x.dim() != 4:
        raise ValueError(f"group_norm_act: x must be 4-D [B, C, H, W], got shape {list(x.shape)}")
    b, c, h, w = x.shape
    if groups <= 0 or c % groups != 0:
        raise ValueError(f"group_norm_act: groups must be positive and divide C = {c}, got {groups}")
    acc = torch.promote_types(x.dtype, torch.float32)  # fp32 statistics for half inputs (PADA D24, AcGAN 8.9)
    xg = x.to(acc).reshape(b, groups, -1)  # [B, G, (C/G) H W]
    var, mean = torch.var_mean(xg, dim=2, keepdim=True, correction=0)  # [B, G, 1] each, eq. (2)
    x_hat = ((xg - mean) * torch.rsqrt(var + eps)).reshape(b, c, h, w)  # [B, C, H, W], eq. (1)
    y = x_hat * _per_sample(scale.to(acc), b, c, "scale") + _per_sample(shift.to(acc), b, c, "shift")  # eq. (3)
    if act == "relu":
        y = F.relu(y)  # [B, C, H, W]
    elif act == "silu":
        y = F.silu(y)  # [B, C, H, W]
    return y.to(dtype=x.dtype, memory_format=memory_format(x))  # [B, C, H, W]


def memory_format(x: Tensor) -> torch.memory_format:
    """channels_last for a channels_last x (unless it is also plain contiguous), else contiguous_format."""
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


__all__ = ["ACTIVATIONS", "group_norm_act", "memory_format"]
