"""A toy model adapter for testing the generic API without any of the four real models."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from pyagingrt.checkpoint import torch_load_weights_only
from pyagingrt.errors import InputError
from pyagingrt.models.base import AgeGroup, ModelAdapter, OptionSpec


@dataclass(frozen=True)
class ToyConfig:
    size: int = 8
    groups: int = 3


class ToyNet(nn.Module):
    def __init__(self, cfg: ToyConfig) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3 + cfg.groups, 3, 3, padding=1)

    def forward(self, x: Tensor, onehot: Tensor) -> Tensor:
        cond = onehot[:, :, None, None].expand(-1, -1, *x.shape[2:])
        return torch.sigmoid(self.conv(torch.cat([x, cond], dim=1)))


class ToyAdapter(ModelAdapter):
    name = "toy"
    title = "Toy (tests only)"
    config_names = ("small", "tiny")
    options = (OptionSpec("gain", 1.0, "multiplies the output before clamping"),)
    load_options = (OptionSpec("extra", None, "an extra weights file"),)

    def make_config(self, name: str) -> ToyConfig:
        return ToyConfig(size=8 if name == "small" else 4)

    def config_from_dict(self, data: dict[str, Any]) -> ToyConfig:
        return ToyConfig(**data)

    def build(self, config: ToyConfig) -> nn.Module:
        return ToyNet(config)

    def input_size(self, config: ToyConfig) -> int:
        return config.size

    def age_groups(self, config: ToyConfig) -> tuple[AgeGroup, ...]:
        return tuple(AgeGroup(i, 30.0 * i, 30.0 * i + 29, f"{30 * i}-{30 * i + 29}") for i in range(config.groups))

    def validate_ages(self, config: ToyConfig, ages: Tensor) -> Tensor:
        if bool(((ages < 0) | (ages > 89)).any()):
            raise InputError(f"toy ages must lie in [0, 89], got {ages.tolist()}")
        return (ages // 30).long()

    def run(self, module, images, targets, generator, options):
        dtype = next(module.parameters()).dtype
        onehot = torch.nn.functional.one_hot(targets, 3).to(dtype)
        return (module(images.to(dtype), onehot) * options["gain"]).float()

    def attach(self, module, config, **load_options):
        super().attach(module, config, **load_options)

    def convert_official(self, path: Path, config_name: str | None = None):
        state = torch_load_weights_only(path)
        return ToyConfig(), {k.removeprefix("module."): v for k, v in state.items()}


class OtherToyAdapter(ToyAdapter):
    name = "othertoy"
