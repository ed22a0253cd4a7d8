"""DEX: the VGG-16 age classifier of Rothe et al. (IMDB-WIKI), as CUSP and PADA use it (docs/models/cusp.md 3.6).

Thirteen 3x3 convs (padding 1, bias, ReLU) in five groups, each ending in a 2x2/2 max-pool; flatten in
(C, H, W) order; fc6 + ReLU, fc7 + ReLU, fc8_101 (logits for ages 0..100). No dropout (inference only).
Keys follow the Caffe names with '-' -> '_': ``conv1_1.weight`` ... ``fc8_101.bias``.

Preprocessing (``DEX.preprocess``) maps a [-1, 1] RGB image to the network input:
  1. u = bilinear resize of x[:, (2, 1, 0)] (BGR) to ``input_res`` (align_corners False, no antialias;
     skipped when the size already matches),
  2. u = (u + 1) * 127.5,
  3. u[:, c] -= MEAN[c] with MEAN = (123.680, 116.779, 103.939) on channels 0, 1, 2 of the BGR tensor; the R
     mean lands on the B channel, as in the official code (docs/models/cusp.md section 7 item 12).

Every ReLU is a module attribute (``relu1_1`` ... ``relu7``) so it can be swapped for ``GuidedReLU``
(``DEX.set_relu``) to run guided backpropagation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

DEX_MEAN = (123.680, 116.779, 103.939)  # subtracted from channels 0, 1, 2 of the BGR [0, 255] tensor


@dataclass(frozen=True)
class DEXConfig:
    """Widths of the five conv groups, the fc width, the input side and the number of classes."""

    conv_channels: tuple[tuple[int, ...], ...] = ((64, 64), (128, 128), (256, 256, 256), (512,) * 3, (512,) * 3)
    fc_width: int = 4096
    input_res: int = 224
    num_classes: int = 101

    @classmethod
    def paper(cls) -> DEXConfig:
        """The VGG-16 of the released DEX: 134,674,341 parameters."""
        return cls()

    @classmethod
    def tiny(cls) -> DEXConfig:
        """Same layout with 4..8 channels, fc 16, input 32 (five pools 32 -> 1), 101 classes."""
        return cls(conv_channels=((4, 4), (8, 8), (8, 8, 8), (8, 8, 8), (8, 8, 8)), fc_width=16, input_res=32)


class DEX(nn.Module):
    """VGG-16 age classifier. ``forward`` takes [-1, 1] RGB images; ``logits`` takes preprocessed input."""

    def __init__(self, config: DEXConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or DEXConfig.paper()
        self.conv_names: list[str] = []
        in_ch = 3
        for g, widths in enumerate(config.conv_channels, start=1):
            for j, out_ch in enumerate(widths, start=1):
                name = f"conv{g}_{j}"
                setattr(self, name, nn.Conv2d(in_ch, out_ch, 3, padding=1))
                setattr(self, f"relu{g}_{j}", nn.ReLU())
                self.conv_names.append(name)
                in_ch = out_ch
        side = config.input_res // 2 ** len(config.conv_channels)
        self.fc6 = nn.Linear(in_ch * side * side, config.fc_width)
        self.relu6 = nn.ReLU()
        self.fc7 = nn.Linear(config.fc_width, config.fc_width)
        self.relu7 = nn.ReLU()
        self.fc8_101 = nn.Linear(config.fc_width, config.num_classes)
        self.register_buffer("mean", torch.tensor(DEX_MEAN).view(1, 3, 1, 1), persistent=False)  # [1, 3, 1, 1]

    def relu_names(self) -> list[str]:
        return [n.replace("conv", "relu") for n in self.conv_names] + ["relu6", "relu7"]

    def set_relu(self, factory: Callable[[], nn.Module]) -> DEX:
        """Replace every ReLU by ``factory()`` (e.g. ``GuidedReLU``); returns self."""
        for name in self.relu_names():
            setattr(self, name, factory())
        return self

    def preprocess(self, x: Tensor) -> Tensor:
        """[-1, 1] RGB Tensor[B, 3, H, W] -> mean-subtracted BGR [0, 255] Tensor[B, 3, R, R], R = input_res."""
        u = x[:, (2, 1, 0)]  # [B, 3, H, W] BGR
        res = self.config.input_res
        if u.shape[-2:] != (res, res):
            u = F.interpolate(u, size=(res, res), mode="bilinear", align_corners=False, antialias=False)
        u = (u + 1) * 127.5  # [B, 3, R, R]
        return u - self.mean.to(u.dtype)  # [B, 3, R, R]

    def logits(self, u: Tensor) -> Tensor:
        """Preprocessed Tensor[B, 3, R, R] -> logits Tensor[B, num_classes]."""
        h = u
        index = 0
        for g, widths in enumerate(self.config.conv_channels, start=1):
            for j in range(1, len(widths) + 1):
                h = getattr(self, f"relu{g}_{j}")(getattr(self, self.conv_names[index])(h))  # [B, C, r, r]
                index += 1
            h = F.max_pool2d(h, 2)  # [B, C, r/2, r/2]
        h = h.flatten(1)  # [B, C*r*r] in (C, H, W) order
        h = self.relu6(self.fc6(h))  # [B, fc]
        h = self.relu7(self.fc7(h))  # [B, fc]
        return self.fc8_101(h)  # [B, num_classes]

    def forward(self, x: Tensor) -> Tensor:
        """[-1, 1] RGB Tensor[B, 3, H, W] -> logits Tensor[B, num_classes]."""
        return self.logits(self.preprocess(x))


__all__ = ["DEX", "DEX_MEAN", "DEXConfig"]
