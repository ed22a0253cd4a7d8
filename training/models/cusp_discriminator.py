"""The CUSP discriminator (training only): a conditional StyleGAN2 'resnet' D with a projection head.

Layout (StyleGAN2-ADA ``Discriminator`` as CUSP configures it; docs/training.md, "CUSP"):

* blocks b{H}, b{H/2}, ... down to 2 x the epilogue side (224 -> 7: b224 ... b14), block b{R} with
  C(R) = min(channel_base // R, channel_max) channels: fromrgb 1x1 (first block only), conv0 3x3, conv1 3x3
  stride-2 (FIR first), and a bias-free 1x1 stride-2 skip; both branches scaled by sqrt(0.5);
* no minibatch-std; epilogue at the last side r: conv 3x3, fc (C r^2 -> C), out (C -> cmap_dim);
* conditioning by projection: cmap = MLP(age number) (embed FC 1 -> cmap_dim, 2nd-moment normalisation, then
  ``map_layers`` FC+lrelu layers at lr multiplier 0.01); score = sum(out * cmap) / sqrt(cmap_dim).

Weights are stored unscaled with the equalised-learning-rate gains applied in forward, as in the generator.
Every conv output is clamped to +-conv_clamp (after the activation gain), as StyleGAN2-ADA's fp16 blocks do.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers.stylegan2 import FullyConnectedLayer, fir_filter, lrelu_act, normalize_2nd_moment, upfirdn2d
from .cusp import CUSPConfig


class DConv(nn.Module):
    """Equalised-lr conv: optional stride-2 (FIR then strided conv), optional bias and lrelu*sqrt(2), gain, clamp."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        down: bool = False,
        bias: bool = True,
        activation: bool = True,
        conv_clamp: float | None = None,
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.register_buffer("resample_filter", fir_filter())  # [4, 4]
        self.down, self.activation, self.conv_clamp = down, activation, conv_clamp
        self.kernel_size = kernel_size
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel_size * kernel_size)

    def forward(self, x: Tensor, gain: float = 1.0) -> Tensor:
        w = (self.weight * self.weight_gain).to(x.dtype)
        if self.down and self.kernel_size == 1:  # FIR-downsample, then the 1x1 conv
            x = upfirdn2d(x, self.resample_filter, down=2, padding=(1, 1, 1, 1))  # [B, I, H/2, W/2]
            x = F.conv2d(x, w)
        elif self.down:  # FIR with padding 2, then a stride-2 conv
            x = upfirdn2d(x, self.resample_filter, padding=(2, 2, 2, 2))  # [B, I, H+1, W+1]
            x = F.conv2d(x, w, stride=2)  # [B, O, H/2, W/2]
        else:
            x = F.conv2d(x, w, padding=self.kernel_size // 2)  # [B, O, H, W]
        if self.bias is not None:
            x = x + self.bias.to(x.dtype)[None, :, None, None]
        if self.activation:
            x = lrelu_act(x, gain=math.sqrt(2) * gain)
        elif gain != 1:
            x = x * gain
        if self.conv_clamp is not None:
            clamp = self.conv_clamp * gain
            x = x.clamp(-clamp, clamp)
        return x


class DiscriminatorBlock(nn.Module):
    def __init__(self, in_channels: int, tmp_channels: int, out_channels: int, conv_clamp: float | None) -> None:
        super().__init__()
        self.fromrgb = DConv(3, tmp_channels, 1, conv_clamp=conv_clamp) if in_channels == 0 else None
        self.conv0 = DConv(tmp_channels, tmp_channels, 3, conv_clamp=conv_clamp)
        self.conv1 = DConv(tmp_channels, out_channels, 3, down=True, conv_clamp=conv_clamp)
        self.skip = DConv(tmp_channels, out_channels, 1, down=True, bias=False, activation=False)

    def forward(self, x: Tensor | None, img: Tensor) -> Tensor:
        if self.fromrgb is not None:
            y = self.fromrgb(img)
            x = y if x is None else x + y
        y = self.skip(x, gain=math.sqrt(0.5))  # [B, O, R/2, R/2]
        x = self.conv1(self.conv0(x), gain=math.sqrt(0.5))  # [B, O, R/2, R/2]
        return y + x


class CUSPDiscriminator(nn.Module):
    """D(img [B, 3, H, H] in [-1, 1], age number [B]) -> score [B]."""

    def __init__(self, config: CUSPConfig, epilogue_resolution: int | None = None, map_layers: int = 8) -> None:
        super().__init__()
        res = config.resolution
        last = epilogue_resolution or config.base_resolution
        if res % last or (res // last) & (res // last - 1):
            raise ValueError(f"CUSP D: resolution {res} must be the epilogue side {last} times a power of two")

        def channels(r: int) -> int:
            return min(config.channel_base // r, config.channel_max)

        self.block_resolutions = []
        r = res
        while r > last:
            self.block_resolutions.append(r)
            setattr(
                self,
                f"b{r}",
                DiscriminatorBlock(0 if r == res else channels(r), channels(r), channels(r // 2), config.conv_clamp),
            )
            r //= 2
        c = channels(last)
        self.cmap_dim = c
        self.embed = FullyConnectedLayer(1, c)
        self.map_layers = map_layers
        for i in range(map_layers):
            setattr(self, f"map{i}", FullyConnectedLayer(c, c, lr_multiplier=0.01, activation="lrelu"))
        self.conv = DConv(c, c, 3, conv_clamp=config.conv_clamp)
        self.fc = FullyConnectedLayer(c * last * last, c, activation="lrelu")
        self.out = FullyConnectedLayer(c, c)

    def cmap(self, age: Tensor) -> Tensor:
        """Age numbers Tensor[B] -> the projection vector Tensor[B, cmap_dim]."""
        h = normalize_2nd_moment(self.embed(age.float()[:, None]))
        for i in range(self.map_layers):
            h = getattr(self, f"map{i}")(h)
        return h

    def forward(self, img: Tensor, age: Tensor) -> Tensor:
        x = None
        for r in self.block_resolutions:
            x = getattr(self, f"b{r}")(x, img)
        x = self.conv(x)  # [B, C, r, r]
        x = self.out(self.fc(x.flatten(1)))  # [B, cmap_dim]
        cmap = self.cmap(age).to(x.dtype)
        return (x * cmap).sum(dim=1) / math.sqrt(self.cmap_dim)  # [B]
