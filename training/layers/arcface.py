"""ArcFace IR-SE50, the identity network of PADA's L_id, in the pSp/SAM layout (``model_ir_se50.pth``).

Keys: ``input_layer.{0,1,2}`` (conv3x3 3->64 no bias, BN, PReLU), ``body.{i}`` bottleneck_IR_SE units,
``output_layer.{0,3,4}`` (BN2d, Linear(C * 7 * 7 -> 512), BN1d; index 1 is Dropout and 2 Flatten). A unit:
``res_layer`` = BN -> conv3x3 (stride 1) -> PReLU -> conv3x3 (the unit's stride) -> BN -> SE (``fc1``, ``fc2``
1x1 convs without bias); ``shortcut_layer`` = MaxPool2d(1, stride) when the width is unchanged, else
conv1x1 (stride) + BN. The first unit of each of the four stages has stride 2.

Preprocessing as pSp's IDLoss for 256x256 inputs in [-1, 1]: crop rows 35:223, columns 32:220 (scaled by
side / 256 for other sides), adaptive average pool to ``input_size`` (112); the output is L2-normalised.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

CROP_256 = (35, 223, 32, 220)  # rows y0:y1, columns x0:x1 of a 256x256 aligned face


@dataclass(frozen=True)
class ArcFaceConfig:
    """(in width, out width, units) per stage, the input side after pooling, the embedding width, SE ratio."""

    stages: tuple[tuple[int, int, int], ...] = ((64, 64, 3), (64, 128, 4), (128, 256, 14), (256, 512, 3))
    input_size: int = 112
    embedding: int = 512
    se_reduction: int = 16

    @classmethod
    def ir_se50(cls) -> ArcFaceConfig:
        return cls()

    @classmethod
    def tiny(cls) -> ArcFaceConfig:
        """Four one-unit stages of 8..32 channels on a 16x16 input (final 1x1), a 32-d embedding."""
        return cls(stages=((8, 8, 1), (8, 16, 1), (16, 16, 1), (16, 32, 1)), input_size=16, embedding=32,
                   se_reduction=4)  # fmt: skip


class SEModule(nn.Module):
    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1, bias=False)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:  # [B, C, H, W] -> [B, C, H, W]
        w = torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean(dim=(2, 3), keepdim=True)))))  # [B, C, 1, 1]
        return x * w


class BottleneckIRSE(nn.Module):
    def __init__(self, in_channels: int, depth: int, stride: int, reduction: int) -> None:
        super().__init__()
        if in_channels == depth:
            self.shortcut_layer: nn.Module = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(in_channels, depth, 1, stride, bias=False), nn.BatchNorm2d(depth)
            )
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_channels),
            nn.Conv2d(in_channels, depth, 3, 1, 1, bias=False),
            nn.PReLU(depth),
            nn.Conv2d(depth, depth, 3, stride, 1, bias=False),
            nn.BatchNorm2d(depth),
            SEModule(depth, reduction),
        )

    def forward(self, x: Tensor) -> Tensor:  # [B, Cin, H, W] -> [B, depth, H/s, W/s]
        return self.res_layer(x) + self.shortcut_layer(x)


class ArcFace(nn.Module):
    """IR-SE backbone: ``forward`` takes aligned faces [B, 3, S, S] in [-1, 1] and returns unit embeddings."""

    def __init__(self, config: ArcFaceConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or ArcFaceConfig.ir_se50()
        first = config.stages[0][0]
        self.input_layer = nn.Sequential(nn.Conv2d(3, first, 3, 1, 1, bias=False), nn.BatchNorm2d(first),
                                         nn.PReLU(first))  # fmt: skip
        units = []
        for in_ch, depth, count in config.stages:
            units.append(BottleneckIRSE(in_ch, depth, 2, config.se_reduction))
            units.extend(BottleneckIRSE(depth, depth, 1, config.se_reduction) for _ in range(count - 1))
        self.body = nn.Sequential(*units)
        last = config.stages[-1][1]
        side = config.input_size // 2 ** len(config.stages)
        self.output_layer = nn.Sequential(
            nn.BatchNorm2d(last),
            nn.Dropout(0.4),
            nn.Flatten(),
            nn.Linear(last * side * side, config.embedding),
            nn.BatchNorm1d(config.embedding),
        )

    def preprocess(self, x: Tensor) -> Tensor:
        """[B, 3, S, S] in [-1, 1] -> the pSp crop pooled to [B, 3, input_size, input_size]."""
        side = x.shape[-1]
        y0, y1, x0, x1 = (round(v * side / 256) for v in CROP_256)
        return F.adaptive_avg_pool2d(x[:, :, y0:y1, x0:x1], self.config.input_size)

    def forward(self, x: Tensor) -> Tensor:  # [B, 3, S, S] in [-1, 1] -> [B, embedding], unit norm
        h = self.body(self.input_layer(self.preprocess(x.float())))
        return F.normalize(self.output_layer(h), dim=1)


def load_arcface(path: str | Path) -> ArcFace:
    """A frozen, eval-mode ArcFace from a ``model_ir_se50.pth`` state dict (read with weights_only=True) or a
    safetensors file of the same keys; the IR-SE50 layout or the tests' tiny one, recognised by the keys.

    Raises:
        ValueError: the file's keys or shapes fit neither layout (the message names what differs).
    """
    file = Path(path)
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(file))
    else:
        state = torch.load(file, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
    # BatchNorm's num_batches_tracked is absent from files saved by old PyTorch versions; it is never used here
    state = {
        k.removeprefix("module.").removeprefix("facenet."): v
        for k, v in state.items()
        if not k.endswith("num_batches_tracked")
    }
    problems = []
    for config in (ArcFaceConfig.ir_se50(), ArcFaceConfig.tiny()):
        with torch.device("meta"):
            expected = {k: v for k, v in ArcFace(config).state_dict().items() if not k.endswith("num_batches_tracked")}
        missing = sorted(set(expected) - set(state))
        extra = sorted(set(state) - set(expected))
        shapes = sorted(k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape))
        if not (missing or extra or shapes):
            model = ArcFace(config)
            model.load_state_dict(state, strict=False)  # every key but num_batches_tracked was checked above
            return model.eval().requires_grad_(False)
        problems.append(f"missing {missing[:2]}, unexpected {extra[:2]}, mis-shaped {shapes[:2]}")
    raise ValueError(f"{file} is not an IR-SE50 ArcFace state dict (pSp's model_ir_se50.pth): {problems[0]}")


__all__ = ["ArcFace", "ArcFaceConfig", "load_arcface"]
