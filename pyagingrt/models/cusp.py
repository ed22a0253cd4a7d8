"""CUSP adapter: ages in years -> one-hot classes, user-set structure preservation (docs/models/cusp.md section 2).

Configs: ``paper224`` (FFHQ-RR weights, the default), ``paper256`` (FFHQ-LS weights) and ``tiny`` (tests).

Ages. With attr_dim 101 (FFHQ-RR, paper224, tiny) the class is the age in whole years; only the trained
ages 20..69 are accepted, as integers (no soft labels). With attr_dim 10 (FFHQ-LS) years map to clusters:

=====  ======  =====  ======  =====  =====  =====  =====  =====  =====
0      1       2      3       4      5      6      7      8      9
0-2    3-6     7-9    10-14   15-19  20-29  30-39  40-49  50-69  70+
=====  ======  =====  ======  =====  =====  =====  =====  =====  =====

(a fractional age belongs to the cluster of its whole years; negative ages are refused).

Options of ``Engine.age``:

* ``sigma_m`` / ``sigma_g``: blur inside the structure mask / everywhere, in input-image pixels, one value or
  one per image, 0 <= sigma <= max(9, H/25). Defaults: the paper's custom presets, (9, 0) for paper224 and
  tiny, (8, 4.5) for paper256. Low values keep the face's shape; high values let chin, jaw and hair change.
* ``noise``: "const" (default; the stored maps: deterministic, batch independent), "random" (fresh maps per
  image from per-image seeds, docs/models/cusp.md section 2.2) or "none".
* ``noise_seeds``: with noise="random", one int seed per image; by default they are drawn from the run's
  generator (image b gets the b-th draw), so a seed gives the same output on any device and batch size.

Mask modes (load option ``mask=``, docs/models/cusp.md): ``official`` computes what the released ``G_ema``
computes (plain ReLU backward through the DEX, the official code's full mask blur: 1731 taps at 224); it is the
default for official snapshots. ``paper`` uses guided backpropagation and the intended 29-tap blur (Eq. (1));
it is the default for every other config. Both run on every backend.

Random weights (``build``): the official init, except ``noise_strength`` (zero in StyleGAN2, which would
make the noise modes indistinguishable): it is set to N(0, 0.1^2) per layer.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InputError, RandomWeightsWarning
from .base import AgeGroup, ModelAdapter, OptionSpec

MIN_RR_AGE, MAX_RR_AGE = 20, 69  # the FFHQ-RR training ages (docs/models/cusp.md section 2)
LS_CLUSTERS = ((0, 2), (3, 6), (7, 9), (10, 14), (15, 19), (20, 29), (30, 39), (40, 49), (50, 69), (70, math.inf))
NOISE_MODES = ("const", "random", "none")
NOISE_STRENGTH_STD = 0.1  # random-weight perturbation of the zero-initialised noise strengths
MASK_DESCRIPTIONS = {
    "official": "mask official: plain ReLU backward, {k}-tap mask blur, DEX loss '{outclass}' "
    "(what the released G_ema computes)",
    "paper": "mask paper: guided ReLU backward, {k}-tap mask blur, DEX loss '{outclass}' (the paper's Eq. (1))",
}


def _model_module():
    from ..training.models import cusp

    return cusp


class CUSPAdapter(ModelAdapter):
    """CUSP (Gomez-Trenado et al., ECCV 2022): x = 2 * images - 1, model forward, (clamp(y, -1, 1) + 1) / 2."""

    name: ClassVar[str] = "cusp"
    title: ClassVar[str] = "CUSP (Gomez-Trenado et al., ECCV 2022)"
    config_names: ClassVar[tuple[str, ...]] = ("paper224", "paper256", "tiny")
    options: ClassVar[tuple[OptionSpec, ...]] = (
        OptionSpec("sigma_m", None, "blur inside the structure mask, input pixels (default 9 at 224, 8 at 256)"),
        OptionSpec("sigma_g", None, "blur of the whole skip map, input pixels (default 0 at 224, 4.5 at 256)"),
        OptionSpec("noise", "const", "decoder noise: const (deterministic), random (per-image seeds) or none"),
        OptionSpec("noise_seeds", None, "noise='random' only: one int seed per image (default: from seed=)"),
    )
    load_options: ClassVar[tuple[OptionSpec, ...]] = (
        OptionSpec("dex", None, "DEX VGG-16 weights (.safetensors or torch file, keys conv1_1.weight ...)"),
        OptionSpec(
            "mask",
            None,
            "structure mask: 'official' (what the released G_ema computes; the default for official snapshots) or "
            "'paper' (guided ReLU, 29-tap blur; the default otherwise); docs/models/cusp.md",
        ),
    )
    stochastic: ClassVar[bool] = False

    # --- configs -----------------------------------------------------------------------------------------
    def make_config(self, name: str) -> Any:
        cls = _model_module().CUSPConfig
        if name not in self.config_names:
            raise InputError(f"CUSP has no config {name!r}; choose one of: {', '.join(self.config_names)}")
        return getattr(cls, name)()

    def config_name_of(self, config: Any) -> str | None:
        """The named layout, whatever the mask mode and DEX reduction (behaviours read from a snapshot)."""
        return next(
            (
                name
                for name in self.config_names
                if self.make_config(name).replace(mask=config.mask, dex_outclass=config.dex_outclass) == config
            ),
            None,
        )

    def configure(self, config: Any, **load_options: Any) -> Any:
        """``mask=`` chooses the mask mode (docs/models/cusp.md, "Mask modes")."""
        mode = load_options.get("mask")
        if mode is None:
            return config
        modes = _model_module().MASK_MODES
        if mode not in modes:
            raise InputError(f"CUSP mask must be one of {', '.join(modes)}, got {mode!r}")
        return config.replace(mask=mode)

    def behaviour(self, config: Any) -> str | None:
        return MASK_DESCRIPTIONS[config.mask].format(k=config.gb_kernel_size, outclass=config.dex_outclass)

    def config_from_dict(self, data: Mapping[str, Any]) -> Any:
        try:
            return _model_module().CUSPConfig.from_dict(dict(data))
        except TypeError as exc:  # unknown or missing fields
            raise InputError(f"not a CUSP config: {exc}") from exc

    # --- modules -----------------------------------------------------------------------------------------
    def build(self, config: Any) -> nn.Module:
        """CUSP with the official random init; noise strengths perturbed (module docstring)."""
        model = _model_module().CUSP(config)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name.endswith("noise_strength"):
                    param.normal_(0.0, NOISE_STRENGTH_STD)
        return model

    def input_size(self, config: Any) -> int:
        return int(config.resolution)

    def age_groups(self, config: Any) -> tuple[AgeGroup, ...]:
        if config.attr_dim == 101:
            return tuple(AgeGroup(a, float(a), float(a), str(a)) for a in range(MIN_RR_AGE, MAX_RR_AGE + 1))
        if config.attr_dim == len(LS_CLUSTERS):
            return tuple(
                AgeGroup(i, float(lo), float(hi), f"{lo}+" if math.isinf(hi) else f"{lo}-{hi}")
                for i, (lo, hi) in enumerate(LS_CLUSTERS)
            )
        raise InputError(f"CUSP knows age tables for attr_dim 101 or 10, not {config.attr_dim}")

    def validate_ages(self, config: Any, ages: Tensor) -> Tensor:
        """Ages in years float64 [B] -> class indices int64 [B] (tables in the module docstring)."""
        values = ages.double().reshape(-1).tolist()
        if config.attr_dim == 101:
            bad = [a for a in values if not (math.isfinite(a) and a == int(a) and MIN_RR_AGE <= a <= MAX_RR_AGE)]
            if bad:
                raise InputError(
                    f"CUSP ({config.resolution}, FFHQ-RR) takes whole-year target ages {MIN_RR_AGE}..{MAX_RR_AGE} "
                    f"(the trained range), got {bad}; round the age or pick one in range"
                )
            return torch.tensor([int(a) for a in values], dtype=torch.int64, device=ages.device)
        self.age_groups(config)  # raises for an unknown attr_dim
        bad = [a for a in values if not (math.isfinite(a) and a >= 0)]
        if bad:
            raise InputError(f"CUSP (FFHQ-LS clusters) takes ages >= 0 in years, got {bad}")
        index = [next(i for i, (lo, hi) in enumerate(LS_CLUSTERS) if math.floor(a) <= hi) for a in values]
        return torch.tensor(index, dtype=torch.int64, device=ages.device)

    def _sigmas(self, config: Any, batch: int, name: str, value: Any, default: float) -> tuple[float, ...]:
        value = default if value is None else value
        try:
            values = torch.as_tensor(value, dtype=torch.float64).reshape(-1).tolist()
        except (TypeError, ValueError, RuntimeError) as exc:
            raise InputError(f"{name} must be a number or one number per image, got {value!r}") from exc
        if len(values) == 1:
            values = values * batch
        if len(values) != batch:
            raise InputError(f"{name} has {len(values)} values for {batch} images; give one, or one per image")
        top = config.sigma_max
        bad = [v for v in values if not (math.isfinite(v) and 0 <= v <= top)]
        if bad:
            raise InputError(
                f"{name} must lie in [0, {top:g}] input pixels for the {config.resolution}x{config.resolution} "
                f"model, got {bad}"
            )
        return tuple(values)

    def validate_options(self, config: Any, batch: int, options: dict[str, Any]) -> dict[str, Any]:
        """Fill defaults (config presets for the sigmas), expand sigmas to one per image, check ranges."""
        opts = super().validate_options(config, batch, options)
        opts["sigma_m"] = self._sigmas(config, batch, "sigma_m", opts["sigma_m"], config.default_sigma_m)
        opts["sigma_g"] = self._sigmas(config, batch, "sigma_g", opts["sigma_g"], config.default_sigma_g)
        if opts["noise"] not in NOISE_MODES:
            raise InputError(f"noise must be one of {', '.join(NOISE_MODES)}, got {opts['noise']!r}")
        seeds = opts["noise_seeds"]
        if seeds is not None:
            if opts["noise"] != "random":
                raise InputError("noise_seeds is only used with noise='random'")
            seeds = [seeds] if isinstance(seeds, int) else seeds
            if not isinstance(seeds, Sequence) or len(seeds) != batch or not all(isinstance(s, int) for s in seeds):
                raise InputError(f"noise_seeds must be {batch} int(s), one per image, got {opts['noise_seeds']!r}")
            opts["noise_seeds"] = tuple(seeds)
        return opts

    # --- inference ---------------------------------------------------------------------------------------
    def prepare_compile(self, module: nn.Module) -> None:
        """torch.compile cannot keep the mask's torch.autograd.grad in its graph ("the differentiated Tensor ...
        appears to not have been used in the graph"): the mask runs eagerly between two compiled parts. The
        decorator is applied here, not on the class, because it imports torch's compiler stack (~2 s at every
        CLI start). The native runner's mask, an explicit backward of plain ops, needs none of this."""
        module.structure_mask = torch.compiler.disable(module.structure_mask)

    def run(
        self,
        module: nn.Module,
        images: Tensor,
        targets: Tensor,
        generator: torch.Generator | None,
        options: dict[str, Any],
    ) -> Tensor:
        """Age a batch: images Tensor[B, 3, H, H] in [0, 1], targets int64 class indices Tensor[B] ->
        Tensor[B, 3, H, H] float32 in [0, 1]. ``options`` as returned by validate_options."""
        config = module.config
        size = config.resolution
        if images.dim() != 4 or tuple(images.shape[1:]) != (3, size, size):
            raise InputError(
                f"CUSP ({size}x{size} config) needs images of shape [B, 3, {size}, {size}], got "
                f"{tuple(images.shape)}; align the face to an FFHQ crop of side {size} first"
            )
        batch = images.shape[0]
        if targets.shape != (batch,):
            raise InputError(f"need one target per image: {batch} images, targets {tuple(targets.shape)}")
        if any(len(options[k]) != batch for k in ("sigma_m", "sigma_g")):
            raise InputError(f"sigma_m and sigma_g must have one value per image ({batch}); use validate_options")
        dtype = next(module.parameters()).dtype
        noise = None
        if options["noise"] == "random":
            seeds = options.get("noise_seeds")
            if seeds is None:
                if generator is None:
                    raise InputError("noise='random' needs a seed (seed= or noise_seeds=)")
                seeds = torch.randint(0, 2**62, (batch,), generator=generator).tolist()  # image b: b-th draw
            noise = module.make_noise(seeds, images.device)
        x = images.to(dtype) * 2 - 1  # [B, 3, H, H] in [-1, 1]
        onehot = F.one_hot(targets.to(images.device), config.attr_dim).to(dtype)  # [B, attr_dim]
        sigma_m = torch.tensor(options["sigma_m"], dtype=torch.float64)  # [B]
        sigma_g = torch.tensor(options["sigma_g"], dtype=torch.float64)  # [B]
        with torch.no_grad():
            y = module(x, onehot, sigma_m, sigma_g, noise_mode=options["noise"], noise=noise)  # [B, 3, H, H]
        return (y.float().clamp(-1, 1) + 1) / 2  # [B, 3, H, H] in [0, 1]

    # --- checkpoints -------------------------------------------------------------------------------------
    def convert_official(
        self, path: Path, config_name: str | None = None, **load_options: Any
    ) -> tuple[Any, dict[str, Tensor]]:
        """Official ``network-snapshot-*.pkl`` (restricted unpickler, pyagingrt/checkpoints/cusp.py) ->
        (config, state dict). Without DEX weights in the snapshot, the ``dex.*`` entries are zero (the mask is
        then 0 and sigma_m has no effect) and a warning asks for ``dex=PATH``."""
        from ..checkpoints.cusp import convert_snapshot_file

        config = None if config_name is None else self.make_config(config_name)
        converted = convert_snapshot_file(path, config)
        state = converted.state_dict
        if not converted.report["dex_in_snapshot"]:  # zeros now; attach() loads dex=PATH when given
            with torch.device("meta"):
                reference = _model_module().CUSP(converted.config)
            for key, value in reference.state_dict().items():
                if key.startswith("dex."):
                    state[key] = torch.zeros(value.shape, dtype=value.dtype)
            if load_options.get("dex") is None:
                warnings.warn(
                    f"{path} carries no DEX weights: the structure mask is zero until you pass "
                    "dex=PATH (dex_imdb_wiki.caffemodel.pt) to pyagingrt.load",
                    RandomWeightsWarning,
                    stacklevel=2,
                )
        return converted.config, state

    def attach(self, module: nn.Module, config: Any, **load_options: Any) -> None:
        """``dex=PATH``: load DEX weights (keys conv1_1.weight ... fc8_101.bias) into ``module.dex``."""
        super().attach(module, config, **load_options)
        path = load_options.get("dex")
        if path is None:
            return
        from ..checkpoint import load_state_dict_strict
        from ..checkpoints.cusp import load_dex_file

        load_state_dict_strict(module.dex, load_dex_file(path), f"DEX weights {path}")


__all__ = ["LS_CLUSTERS", "CUSPAdapter"]
