"""AcGAN adapter: ages in years -> one of five groups, one generator pass, Eq. (1) blend (docs/models/acgan.md).

Age groups (official code edges, both data sets; docs/models/acgan.md section 2). A target age is rounded to the
nearest whole year, halves up (20.5 -> 21), then:

=====  ========  =============
group  years     display age
=====  ========  =============
0      <= 20     15
1      21 - 30   25
2      31 - 40   35
3      41 - 50   45
4      >= 51     55
=====  ========  =============

The 4-group variant (c_dim = 4) uses <= 30, 31 - 40, 41 - 50, >= 51. Ages outside [0, 120] raise InputError;
ages outside the training set's span (``config.data_age_range``, Morph 16 - 77) still map to the end groups
and are reported as extrapolated by :func:`describe_age`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..errors import InputError
from ..training.models.acgan import AcGANConfig, Generator, init_weights
from .base import AgeGroup, ModelAdapter, OptionSpec

MIN_AGE, MAX_AGE = 0.0, 120.0
# Lower edges (whole years) of groups 1..c_dim-1, from the official ops.age_to_group.
_LOWER_EDGES = {5: (21, 31, 41, 51), 4: (31, 41, 51)}


def group_edges(c_dim: int) -> tuple[int, ...]:
    """Lower edges in whole years of groups 1 .. c_dim - 1 (group 0 starts at 0)."""
    if c_dim not in _LOWER_EDGES:
        raise InputError(f"AcGAN has age tables for 4 or 5 groups, not c_dim={c_dim}")
    return _LOWER_EDGES[c_dim]


def round_half_up(years: float) -> int:
    """Nearest whole year, halves up (20.5 -> 21), as the group table counts whole years."""
    return math.floor(years + 0.5)


@dataclass(frozen=True)
class AgeAssignment:
    """Where a target age lands: the group, its label, and whether it lies outside the training data."""

    years: float
    group: int
    label: str
    extrapolated: bool


def describe_age(config: AcGANConfig, years: float) -> AgeAssignment:
    """Map one target age in years to its group (see the module docstring); InputError outside [0, 120]."""
    if not (isinstance(years, (int, float)) and math.isfinite(years)) or not MIN_AGE <= years <= MAX_AGE:
        raise InputError(
            f"AcGAN target age must be a number of years in [{MIN_AGE:g}, {MAX_AGE:g}], got {years!r}; "
            "ages outside the training data's span map to the youngest or oldest group"
        )
    whole = round_half_up(float(years))
    edges = group_edges(config.c_dim)
    group = sum(whole >= e for e in edges)
    low, high = config.data_age_range
    label = AcGANAdapter.group_label(group, edges)
    return AgeAssignment(float(years), group, label, extrapolated=not low <= whole <= high)


class AcGANAdapter(ModelAdapter):
    """AcGAN (Zhu et al., ICASSP 2020): deterministic, 224x224 crops in the paper config, 5 age groups.

    ``run`` maps images from [0, 1] to x = 2 * images - 1 (= u8 / 127.5 - 1), computes
    out = A * x + (1 - A) * C with the generator, and returns (out + 1) / 2. Masks A and C are available from
    ``module.generate(x, groups)``.

    Random weights (``build``) use the official init: conv weights N(0, 0.02), InstanceNorm gamma 1 / beta 0.
    No layer starts at zero, so nothing is perturbed: with these weights A is about 0.5 and C is far from x.
    """

    name: ClassVar[str] = "acgan"
    title: ClassVar[str] = "AcGAN (Zhu et al., ICASSP 2020)"
    config_names: ClassVar[tuple[str, ...]] = ("paper", "tiny")
    options: ClassVar[tuple[OptionSpec, ...]] = ()
    stochastic: ClassVar[bool] = False

    # --- configs -----------------------------------------------------------------------------------------
    def make_config(self, name: str) -> Any:
        if name == "paper":
            return AcGANConfig.paper()
        if name == "tiny":
            return AcGANConfig.tiny()
        raise InputError(f"AcGAN has no config {name!r}; choose one of: {', '.join(self.config_names)}")

    def config_from_dict(self, data: Mapping[str, Any]) -> Any:
        known = {f.name for f in dataclasses.fields(AcGANConfig)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(
                f"AcGAN config has unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        values = dict(data)
        if "align_template" in values:  # JSON turns tuples into lists
            values["align_template"] = tuple(tuple(float(v) for v in p) for p in values["align_template"])
        if "data_age_range" in values:
            values["data_age_range"] = tuple(int(v) for v in values["data_age_range"])
        return AcGANConfig(**values)

    # --- modules -----------------------------------------------------------------------------------------
    def build(self, config: Any) -> nn.Module:
        """The Generator with the official random init (no zero-initialised layer, so nothing to perturb)."""
        return init_weights(Generator(config))

    def input_size(self, config: Any) -> int:
        return int(config.image_size)

    @staticmethod
    def group_label(group: int, edges: tuple[int, ...]) -> str:
        if group == 0:
            return f"<={edges[0] - 1}"
        if group == len(edges):
            return f">={edges[-1]}"
        return f"{edges[group - 1]}-{edges[group] - 1}"

    def age_groups(self, config: Any) -> tuple[AgeGroup, ...]:
        edges = group_edges(config.c_dim)
        lows = (0, *edges)
        highs = (*(e - 1 for e in edges), math.inf)
        return tuple(
            AgeGroup(i, float(lo), float(hi), self.group_label(i, edges))
            for i, (lo, hi) in enumerate(zip(lows, highs, strict=True))
        )

    def validate_ages(self, config: Any, ages: Tensor) -> Tensor:
        """Ages in years float64 [B] -> group indices int64 [B] (table in the module docstring)."""
        if ages.dim() != 1:
            raise InputError(f"target ages must be a 1-D tensor (one per image), got shape {tuple(ages.shape)}")
        groups = [describe_age(config, float(a)).group for a in ages.tolist()]
        return torch.tensor(groups, dtype=torch.int64, device=ages.device)

    # --- inference ---------------------------------------------------------------------------------------
    def run(
        self,
        module: nn.Module,
        images: Tensor,
        targets: Tensor,
        generator: torch.Generator | None,
        options: dict[str, Any],
    ) -> Tensor:
        """Age a batch: images Tensor[B, 3, S, S] in [0, 1], targets int64 group indices Tensor[B] ->
        Tensor[B, 3, S, S] float32 in [0, 1]. ``generator`` is unused (AcGAN samples nothing)."""
        size = module.config.image_size
        if images.dim() != 4 or tuple(images.shape[1:]) != (3, size, size):
            raise InputError(
                f"AcGAN ({size}x{size} config) needs images of shape [B, 3, {size}, {size}], got "
                f"{tuple(images.shape)}; its conditioning depends on the crop size, so resize/align to {size} first"
            )
        if targets.shape != images.shape[:1]:
            raise InputError(f"need one target per image: {images.shape[0]} images, targets {tuple(targets.shape)}")
        dtype = next(module.parameters()).dtype
        with torch.no_grad():
            x = images.to(dtype) * 2 - 1  # [B, 3, S, S] in [-1, 1]
            out, _, _ = module.generate(x, targets.to(images.device))  # [B, 3, S, S]
            return ((out.float() + 1) / 2).clamp_(0, 1)  # [B, 3, S, S]

    # --- checkpoints -------------------------------------------------------------------------------------
    def convert_official(
        self, path: Path, config_name: str | None = None, **load_options: Any
    ) -> tuple[Any, dict[str, Tensor]]:
        """Official ``{n:05d}_netG.pth`` (pyagingrt/checkpoints/acgan.py) -> (config, Generator state dict).

        Without ``config_name`` the paper config (224 crop) with the sizes inferred from the weights.
        """
        from ..checkpoints.acgan import convert_generator_file

        config = None if config_name is None else self.make_config(config_name)
        return convert_generator_file(path, config)
