"""The AgeFlow adapter: configs, age groups, one batch through G -> T -> G^-1, official checkpoints."""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..errors import InputError
from ..training.models.ageflow import (
    LOWER_LATENT_MODES,
    AgeFlow,
    AgeFlowConfig,
    postprocess_output,
    quantize_input,
)
from .base import AgeGroup, ModelAdapter, OptionSpec

# docs/models/ageflow.md section 2: a = floor(age); g0 a <= 30, g1 31-40, g2 41-50, g3 a >= 51.
AGE_GROUPS = (
    AgeGroup(0, 0, 30, "30-"),
    AgeGroup(1, 31, 40, "31-40"),
    AgeGroup(2, 41, 50, "41-50"),
    AgeGroup(3, 51, math.inf, "51+"),
)
MIN_AGE, MAX_AGE = 0.0, 120.0
WARN_BELOW = 15.0  # MORPH and CACD hold almost no children

# Random-weight perturbation (docs/models/ageflow.md section 8 preamble): zero-initialised layers would make every
# coupling, and T, the identity, so a random engine would return its input.
ZERO_CONV_STD_AT_512 = 0.005  # coupling update RMS about 0.1 of the stream's at width 512; scaled by sqrt(512/h)
ACTNORM_STD = 0.1  # log-scales and locs ~ N(0, 0.1^2)
PRIOR_TABLE_STD = 0.1  # mu and rho per group ~ N(0, 0.1^2), so targets differ


class AgeFlowAdapter(ModelAdapter):
    """AgeFlow (Huang et al., IJCAI 2021): Glow G, ICTM T, prior generator; deterministic.

    Ages: a = floor(age in years) must lie in 0..120 (InputError otherwise); a <= 30 -> g0 "30-",
    31..40 -> g1, 41..50 -> g2, a >= 51 -> g3 "51+"; below 15 maps to g0 with a UserWarning (the training
    sets hold almost no children). Option ``target_group`` (an index 0..3, or one per image) selects groups
    directly and overrides the target ages.

    Random weights (``build``): every ZeroConv2d weight (G's couplings and split/top priors, T's couplings)
    ~ N(0, sigma^2) with sigma = 0.005 * sqrt(512 / width), ActNorm log-scales and locs ~ N(0, 0.1^2) with
    ``initialized`` = 1, and the prior table ~ N(0, 0.1^2); T's 1x1 convs stay the reversal permutation.

    Official checkpoints hold only G: T and the prior table keep their init, so T is the identity and
    ``age`` returns the (quantised) input re-encoded and decoded, whatever the target.

    Inference never inverts a matrix per call: every 1x1 conv's W^-1 is built once, in float64, on the
    first eval use after the weights change (or by ``module.prepare_inference()``).
    """

    name: ClassVar[str] = "ageflow"
    title: ClassVar[str] = "AgeFlow (Huang et al., IJCAI 2021)"
    config_names: ClassVar[tuple[str, ...]] = ("paper", "tiny", "jacobian")
    options: ClassVar[tuple[OptionSpec, ...]] = (
        OptionSpec("quantize_output", False, "return the official 5-bit output instead of the continuous one"),
        OptionSpec("bin_centre", True, "feed 5-bit bin centres (delta = 1/64); False = the official lower edges"),
        OptionSpec("lower_latents", "raw", "lower latents: 'raw' (kept as is) or 'eps' (rebuilt from the priors)"),
        OptionSpec("target_group", None, "group index 0..3 (or one per image); overrides the target ages"),
    )

    # --- configs -------------------------------------------------------------------------------------------
    def make_config(self, name: str) -> AgeFlowConfig:
        factories = {"paper": AgeFlowConfig.paper, "tiny": AgeFlowConfig.tiny, "jacobian": AgeFlowConfig.jacobian}
        if name not in factories:
            raise InputError(f"unknown AgeFlow config {name!r}; choose one of {', '.join(self.config_names)}")
        return factories[name]()

    def config_from_dict(self, data: Mapping[str, Any]) -> AgeFlowConfig:
        fields = {f.name for f in dataclasses.fields(AgeFlowConfig)}
        unknown = sorted(set(data) - fields)
        if unknown:
            raise InputError(f"AgeFlow config has unknown field(s) {', '.join(unknown)}; known: {', '.join(fields)}")
        try:
            return AgeFlowConfig(**data)
        except (TypeError, ValueError) as exc:
            raise InputError(f"invalid AgeFlow config {dict(data)}: {exc}") from exc

    # --- modules -------------------------------------------------------------------------------------------
    def build(self, config: AgeFlowConfig) -> AgeFlow:
        module = AgeFlow(config)
        perturb_zero_init(module)
        return module

    def input_size(self, config: AgeFlowConfig) -> int:
        return config.image_size

    def age_groups(self, config: AgeFlowConfig) -> tuple[AgeGroup, ...]:
        return AGE_GROUPS

    def validate_ages(self, config: AgeFlowConfig, ages: Tensor) -> Tensor:
        """Ages in years, float [B] -> group indices int64 [B] (table in the class docstring)."""
        ages = ages.to(torch.float64)
        bad = ages[~((ages >= MIN_AGE) & (ages <= MAX_AGE))]  # NaN fails both comparisons
        if bad.numel():
            raise InputError(
                f"AgeFlow target ages must lie in {MIN_AGE:g}..{MAX_AGE:g} years, got {bad.tolist()}; "
                "pass an age in years (groups: <=30, 31-40, 41-50, >=51) or use target_group=0..3"
            )
        if bool((ages < WARN_BELOW).any()):
            warnings.warn(
                f"AgeFlow target ages below {WARN_BELOW:g} map to the youngest group 30- (its training data hold "
                "almost no children); expect an adult-looking result",
                UserWarning,
                stacklevel=2,
            )
        years = torch.floor(ages)  # [B]
        groups = torch.zeros_like(years, dtype=torch.int64)  # [B]
        for group in AGE_GROUPS[1:]:
            groups[years >= group.low] = group.index
        return groups

    def validate_options(self, config: AgeFlowConfig, batch: int, options: dict[str, Any]) -> dict[str, Any]:
        opts = super().validate_options(config, batch, options)
        for flag in ("quantize_output", "bin_centre"):
            if not isinstance(opts[flag], bool):
                raise InputError(f"AgeFlow option {flag} must be True or False, got {opts[flag]!r}")
        if opts["lower_latents"] not in LOWER_LATENT_MODES:
            raise InputError(
                f"AgeFlow option lower_latents must be one of {LOWER_LATENT_MODES}, got {opts['lower_latents']!r}"
            )
        if opts["target_group"] is not None:
            opts["target_group"] = _validate_groups(opts["target_group"], batch, config.groups)
        return opts

    def run(
        self,
        module: nn.Module,
        images: Tensor,
        targets: Tensor,
        generator: torch.Generator | None,
        options: dict[str, Any],
    ) -> Tensor:
        """Age one batch: images [B, 3, S, S] in [0, 1] -> [B, 3, S, S] float32 in [0, 1] (no randomness)."""
        config: AgeFlowConfig = module.config
        size = config.image_size
        if images.dim() != 4 or tuple(images.shape[1:]) != (3, size, size):
            raise InputError(f"AgeFlow ({size}x{size}) takes images [B, 3, {size}, {size}], got {tuple(images.shape)}")
        dtype = next(module.parameters()).dtype
        if options.get("target_group") is not None:
            groups = torch.tensor(options["target_group"], dtype=torch.int64, device=images.device)  # [B]
        else:
            groups = targets.to(device=images.device, dtype=torch.int64)  # [B]
        x = quantize_input(images, n_bits=config.n_bits, bin_centre=options.get("bin_centre", True))  # [B,3,S,S]
        with torch.no_grad():
            y = module(x.to(dtype), groups, options.get("lower_latents", "raw"))  # [B, 3, S, S]
        quantize = options.get("quantize_output", False)
        return postprocess_output(y.float(), n_bits=config.n_bits, quantize=quantize)  # [B, 3, S, S]

    def flops_per_image(self, module: nn.Module, config: AgeFlowConfig) -> float:
        """FLOPs of one steady-state run: the one-off float64 W / W^-1 build is done first, outside the count."""
        module.prepare_inference()
        return super().flops_per_image(module, config)

    # --- checkpoints ---------------------------------------------------------------------------------------
    def convert_official(
        self, path: Path, config_name: str | None = None, **load_options: Any
    ) -> tuple[AgeFlowConfig, dict[str, Tensor]]:
        """Official ``generator-*`` flow -> (config, state dict); T / prior / D at init (see the class doc)."""
        from ..checkpoints.ageflow import convert_official_ageflow

        if config_name is not None:
            self.make_config(config_name)  # InputError for an unknown name
        return convert_official_ageflow(path, config_name)


def _validate_groups(value: Any, batch: int, groups: int) -> list[int]:
    """An int or a sequence of B ints in 0..groups-1 -> a list of B ints."""
    items = [value] * batch if isinstance(value, int) and not isinstance(value, bool) else value
    ok = isinstance(items, Sequence | Tensor) and len(items) == batch
    items = [int(v) for v in items] if ok and all(_is_int(v) for v in items) else None
    if items is None or not all(0 <= v < groups for v in items):
        raise InputError(
            f"AgeFlow option target_group must be an int in 0..{groups - 1} or a list of {batch} of them "
            f"(one per image), got {value!r}"
        )
    return items


def _is_int(value: Any) -> bool:
    if isinstance(value, Tensor):
        return value.dim() == 0 and not value.is_floating_point() and value.dtype != torch.bool
    return isinstance(value, int) and not isinstance(value, bool)


@torch.no_grad()
def perturb_zero_init(module: AgeFlow) -> None:
    """Give the zero-initialised layers of a fresh AgeFlow random values (see AgeFlowAdapter's docstring)."""
    from ..training.layers.glow import ActNorm, ZeroConv2d

    config = module.config
    for sub, width in ((module.flow, config.hidden), (module.ictm, config.ictm_hidden)):
        std = ZERO_CONV_STD_AT_512 * math.sqrt(512 / width)
        for layer in sub.modules():
            if isinstance(layer, ZeroConv2d):
                layer.conv.weight.normal_(0.0, std)
            elif isinstance(layer, ActNorm):
                layer.loc.normal_(0.0, ACTNORM_STD)
                layer.scale.copy_(torch.exp(torch.randn_like(layer.scale) * ACTNORM_STD))
                layer.initialized.fill_(1)
    module.prior.linear.weight.normal_(0.0, PRIOR_TABLE_STD)


__all__ = ["AGE_GROUPS", "AgeFlowAdapter", "perturb_zero_init"]
