"""DiffAE building blocks (phizaz/diffae ``model/blocks.py``, ``model/nn.py``; docs/models/pada.md section 3.1-3.2).

The modules keep DiffAE's parameter names (``in_layers.{0,2}``, ``emb_layers.1``, ``cond_emb_layers.1``,
``out_layers.{0,3}``, ``skip_connection``, ``norm``/``qkv``/``proj_out``, ``time_embed.{0,2}``) so an official
``ema_model.*`` state dict loads without renaming. Zero-initialised layers (ResBlock ``out_layers.3``, attention
``proj_out``) are zero here as in DiffAE; :func:`zero_init_layers` lists them so a random-weight build can
re-randomise them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class GroupNorm32(nn.GroupNorm):
    """GroupNorm(min(32, C), C, eps 1e-5) with statistics and affine in float32, output in the input dtype."""

    def __init__(self, channels: int) -> None:
        super().__init__(min(32, channels), channels, eps=1e-5)

    def forward(self, x: Tensor) -> Tensor:  # [B, C, *] -> [B, C, *]
        w = self.weight.float() if self.weight is not None else None
        b = self.bias.float() if self.bias is not None else None
        return F.group_norm(x.float(), self.num_groups, w, b, self.eps).to(x.dtype)  # [B, C, *]


def zero_module(module: nn.Module) -> nn.Module:
    """Zero every parameter of ``module`` (DiffAE ``zero_module``) and return it."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of the original timesteps, **cos first** (DiffAE ``nn.timestep_embedding``).

    f_k = exp(-ln(max_period) * k / half), a_k = t * f_k for k < half = dim // 2; out = [cos a | sin a].

    Args:
        t: Tensor[B] timesteps (0..999, any dtype; computed in float32).
        dim: embedding width (DiffAE uses model_channels).

    Returns:
        Tensor[B, dim] float32 (a zero column is appended when dim is odd).
    """
    half = dim // 2
    k = torch.arange(half, dtype=torch.float32, device=t.device)  # [half]
    freqs = torch.exp(-math.log(max_period) * k / half)  # [half]
    args = t.float()[:, None] * freqs[None]  # [B, half]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # [B, 2*half]
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)  # [B, dim]
    return emb


class TimeEmbedding(nn.Module):
    """emb = Linear(E->E)(SiLU(Linear(C->E)(sin_emb))): DiffAE ``TimeStyleSeperateEmbed.time_embed``.

    The condition path of that class is the identity (style = Identity), so it has no module here.
    """

    def __init__(self, time_channels: int, embed_channels: int) -> None:
        super().__init__()
        self.time_channels = time_channels
        self.time_embed = nn.Sequential(
            nn.Linear(time_channels, embed_channels), nn.SiLU(), nn.Linear(embed_channels, embed_channels)
        )

    def forward(self, t: Tensor) -> Tensor:  # [B] -> [B, E]
        sin_emb = timestep_embedding(t, self.time_channels)  # [B, C] float32
        dtype = self.time_embed[0].weight.dtype
        return self.time_embed(sin_emb.to(dtype))  # [B, E]


def _resample(x: Tensor, up: bool, down: bool) -> Tensor:
    """Nearest x2 upsampling or 2x2 average pooling (DiffAE Upsample/Downsample with use_conv=False)."""
    if up:
        return F.interpolate(x, scale_factor=2.0, mode="nearest")  # [B, C, 2H, 2W]
    if down:
        return F.avg_pool2d(x, kernel_size=2, stride=2)  # [B, C, H/2, W/2]
    return x


class ResBlock(nn.Module):
    """DiffAE ResBlock, conditioned (UNet) or plain (semantic encoder), with optional up/down resampling.

    Conditioned (``emb_channels`` given)::

        h = conv_a(SiLU(GN_a(x)))                 resample h after SiLU and x before skip when up/down
        s_t, b_t = split(Linear_t(SiLU(emb)))     scale first
        s_c = Linear_c(SiLU(cond))
        h = conv_b(Dropout(SiLU(GN_b(h) * (1 + s_t) + b_t) * (1 + s_c)))   conv_b zero-initialised
        out = skip(x) + h

    Plain: out = skip(x) + conv_a(SiLU(GN_a(x))). skip is the identity, or conv1x1 when channels change.
    """

    def __init__(
        self,
        channels: int,
        out_channels: int | None = None,
        emb_channels: int | None = None,
        cond_channels: int | None = None,
        dropout: float = 0.0,
        up: bool = False,
        down: bool = False,
    ) -> None:
        super().__init__()
        out_channels = out_channels or channels
        self.up, self.down = up, down
        self.conditioned = emb_channels is not None
        self.in_layers = nn.Sequential(
            GroupNorm32(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1)
        )
        if self.conditioned:
            self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels))
            self.cond_emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(cond_channels or emb_channels, out_channels))
            self.out_layers = nn.Sequential(
                GroupNorm32(out_channels),
                nn.SiLU(),
                nn.Dropout(p=dropout),
                zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1)),
            )
        self.skip_connection = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: Tensor, emb: Tensor | None = None, cond: Tensor | None = None) -> Tensor:
        """x: [B, C, H, W]; emb: [B, E] time embedding; cond: [B, Z] condition. Returns [B, C', H', W']."""
        norm, act, conv = self.in_layers
        h = act(norm(x))  # [B, C, H, W]
        h = conv(_resample(h, self.up, self.down))  # [B, C', H', W']
        x = _resample(x, self.up, self.down)  # [B, C, H', W']
        if self.conditioned:
            if emb is None or cond is None:
                raise ValueError("a conditioned ResBlock needs both emb and cond")
            emb_out = self.emb_layers(emb).to(h.dtype)[:, :, None, None]  # [B, 2C', 1, 1]
            scale_t, shift_t = emb_out.chunk(2, dim=1)  # [B, C', 1, 1] each
            scale_c = self.cond_emb_layers(cond).to(h.dtype)[:, :, None, None]  # [B, C', 1, 1]
            out_norm, out_act, out_drop, out_conv = self.out_layers
            h = out_norm(h) * (1 + scale_t) + shift_t  # [B, C', H', W']
            h = h * (1 + scale_c)  # [B, C', H', W']
            h = out_conv(out_drop(out_act(h)))  # [B, C', H', W']
        return self.skip_connection(x) + h  # [B, C', H', W']


class AttentionBlock(nn.Module):
    """Single-head self-attention over H*W tokens (DiffAE AttentionBlock + QKVAttentionLegacy, one head).

    out = x + proj_out(v softmax_fp32((q C^-1/4)^T (k C^-1/4))^T); q, k, v are the channel slices of
    qkv(GN(x)); proj_out is zero-initialised.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = GroupNorm32(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = zero_module(nn.Conv1d(channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:  # [B, C, H, W] -> [B, C, H, W]
        b, c, hh, ww = x.shape
        flat = x.reshape(b, c, hh * ww)  # [B, C, T]
        q, k, v = self.qkv(self.norm(flat)).split(c, dim=1)  # [B, C, T] each
        scale = 1.0 / math.sqrt(math.sqrt(c))
        weight = torch.einsum("bct,bcs->bts", q * scale, k * scale)  # [B, T, T]
        weight = torch.softmax(weight.float(), dim=-1).to(weight.dtype)  # [B, T, T], softmax over keys
        h = torch.einsum("bts,bcs->bct", weight, v)  # [B, C, T]
        return (flat + self.proj_out(h)).reshape(b, c, hh, ww)  # [B, C, H, W]


class EmbedSequential(nn.Sequential):
    """DiffAE TimestepEmbedSequential: passes (emb, cond) to the ResBlocks it holds and x alone to the rest."""

    def forward(self, x: Tensor, emb: Tensor | None = None, cond: Tensor | None = None) -> Tensor:
        for layer in self:
            x = layer(x, emb, cond) if isinstance(layer, ResBlock) else layer(x)  # [B, C, H, W]
        return x


class EncoderHead(nn.Sequential):
    """Semantic encoder head (DiffAE pool "adaptivenonzero"): GN -> SiLU -> global avg pool -> conv1x1 -> flatten.

    Keys ``0`` (GN) and ``3`` (conv), as ``encoder.out.{0,3}``. [B, C, h, w] -> [B, Z].
    """

    def __init__(self, channels: int, out_channels: int) -> None:
        super().__init__(
            GroupNorm32(channels),
            nn.SiLU(),
            nn.AdaptiveAvgPool2d((1, 1)),
            nn.Conv2d(channels, out_channels, 1),
            nn.Flatten(),
        )


def zero_init_layers(module: nn.Module) -> list[nn.Module]:
    """The layers of ``module`` that DiffAE zero-initialises: ResBlock ``out_layers[3]``, attention ``proj_out``.

    (The UNet's final ``out[2]`` conv is zero too; the model that owns it adds it.)
    """
    found: list[nn.Module] = []
    for m in module.modules():
        if isinstance(m, ResBlock) and m.conditioned:
            found.append(m.out_layers[3])
        elif isinstance(m, AttentionBlock):
            found.append(m.proj_out)
    return found


__all__ = [
    "AttentionBlock",
    "EmbedSequential",
    "EncoderHead",
    "GroupNorm32",
    "ResBlock",
    "TimeEmbedding",
    "timestep_embedding",
    "zero_init_layers",
    "zero_module",
]
