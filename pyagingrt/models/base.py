"""The contract between the generic API (``pyagingrt.load`` / ``Engine``) and one model.

Each model has one adapter module ``pyagingrt/models/<name>.py`` defining a subclass of :class:`ModelAdapter`;
``pyagingrt.models.registry`` finds it by name. The adapter knows its ``training/models/<name>.py`` module:
how to build it from a config, how to map ages in years to the model's groups, how to run one batch, and
how to convert the official checkpoints.
"""

from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..errors import InputError


@dataclass(frozen=True)
class AgeGroup:
    """One target class of a model: ages ``low``..``high`` in whole years (inclusive; high may be inf)."""

    index: int
    low: float
    high: float
    label: str

    def representative_age(self) -> float:
        """A whole-year age well inside the group (benchmarks and warm-up use it)."""
        high = self.low + 10 if math.isinf(self.high) else self.high
        return float(math.floor((self.low + high) / 2))

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "low": self.low,
            "high": None if math.isinf(self.high) else self.high,
            "label": self.label,
        }


@dataclass(frozen=True)
class OptionSpec:
    """A keyword option of ``Engine.age`` (e.g. CUSP's sigma_m): default and one-line help."""

    name: str
    default: Any
    help: str


class ModelAdapter(ABC):
    """Everything the API needs to know about one model. Subclasses are stateless."""

    name: ClassVar[str]  # "ageflow", "acgan", "cusp", "pada"
    title: ClassVar[str]  # "AcGAN (Zhu et al., ICASSP 2020)"
    config_names: ClassVar[tuple[str, ...]]  # ("paper", "tiny", ...); the first is the default
    options: ClassVar[tuple[OptionSpec, ...]] = ()  # model keyword options of Engine.age
    stochastic: ClassVar[bool] = False  # True when the output depends on the seed (PADA; CUSP noise="random")
    load_options: ClassVar[tuple[OptionSpec, ...]] = ()  # extra keyword arguments of pyagingrt.load (dex=, clip=)

    # --- configs -----------------------------------------------------------------------------------------
    @abstractmethod
    def make_config(self, name: str) -> Any:
        """The dataclass config called ``name`` (one of config_names); raise InputError otherwise."""

    def config_to_dict(self, config: Any) -> dict[str, Any]:
        return dataclasses.asdict(config)

    def config_name_of(self, config: Any) -> str | None:
        """The name of the named config ``config`` is (its label in ``info``), None when it is none of them."""
        return next((name for name in self.config_names if self.make_config(name) == config), None)

    def configure(self, config: Any, **load_options: Any) -> Any:
        """The config ``load()`` builds, after the load options that choose a behaviour (e.g. CUSP ``mask=``)."""
        return config

    def behaviour(self, config: Any) -> str | None:
        """One line on a behaviour the config selects that ``info`` should show (e.g. CUSP's mask mode)."""
        return None

    @abstractmethod
    def config_from_dict(self, data: Mapping[str, Any]) -> Any:
        """Inverse of config_to_dict (JSON turns tuples into lists; restore them)."""

    # --- modules -----------------------------------------------------------------------------------------
    @abstractmethod
    def build(self, config: Any) -> nn.Module:
        """The training/ module for ``config`` with random weights; layers that start at zero are
        perturbed where the paper's init would make the output trivially equal to the input, so that
        a random-weight engine computes something (documented per model)."""

    @abstractmethod
    def input_size(self, config: Any) -> int:
        """Side of the square aligned RGB crop the model takes (224 or 256 for the paper configs)."""

    @abstractmethod
    def age_groups(self, config: Any) -> tuple[AgeGroup, ...]:
        """The model's target groups, for display and for the checkpoint header."""

    @abstractmethod
    def validate_ages(self, config: Any, ages: Tensor) -> Tensor:
        """Check target ages in years (float64 [B]) and return what ``run`` consumes (group indices, or the
        ages themselves); raise InputError naming the allowed range. May warn (e.g. AgeFlow below 15)."""

    def validate_options(self, config: Any, batch: int, options: dict[str, Any]) -> dict[str, Any]:
        """Fill defaults, check ranges, raise InputError for unknown options or bad values."""
        known = {o.name: o.default for o in self.options}
        unknown = sorted(set(options) - set(known))
        if unknown:
            allowed = ", ".join(known) or "none"
            raise InputError(f"{self.name} does not take option(s) {', '.join(unknown)}; allowed: {allowed}")
        return {**known, **options}

    def prepare_compile(self, module: nn.Module) -> None:  # noqa: B027 (optional hook)
        """Make ``module`` traceable by ``torch.compile`` (in place) before ``run`` is compiled; e.g. CUSP runs
        the part that calls torch.autograd.grad eagerly between compiled parts. Nothing by default."""

    @abstractmethod
    def run(
        self,
        module: nn.Module,
        images: Tensor,
        targets: Tensor,
        generator: torch.Generator | None,
        options: dict[str, Any],
    ) -> Tensor:
        """Age one batch.

        Args:
            module: the model from ``build`` (eval mode, on the images' device, maybe half precision).
            images: Tensor[B, 3, S, S] float in [0, 1], RGB, S = input_size, on the module's device.
            targets: what validate_ages returned, on the images' device.
            generator: a seeded CPU generator for every random draw (None for deterministic models).
            options: validated keyword options.

        Returns:
            Tensor[B, 3, S, S] float in [0, 1] (or Tensor[B, K, 3, S, S] for PADA with num_samples K > 1).
        """

    def attach(self, module: nn.Module, config: Any, **load_options: Any) -> None:  # noqa: B027 (optional hook)
        """Load the extra weights named by ``load_options`` (e.g. CUSP ``dex=``, PADA ``clip=``) into module.

        load() has already refused options not in ``load_options``; options used only by the converter
        (PADA ``latent=``) arrive here too and are ignored."""

    # --- checkpoints -------------------------------------------------------------------------------------
    @abstractmethod
    def convert_official(
        self, path: Path, config_name: str | None = None, **load_options: Any
    ) -> tuple[Any, dict[str, Tensor]]:
        """Read an official checkpoint (see the layout in docs/models/<model>.md)
        and return (config, state_dict of ``build``).

        ``load_options`` are the extra keyword arguments given to load() (e.g. CUSP ``dex=``, PADA
        ``latent=``); a converter uses the ones it needs and ignores the rest.

        Raise CheckpointError naming missing / unexpected / mis-shaped keys; never execute code from the file.
        """

    # --- information -------------------------------------------------------------------------------------
    def flops_per_image(self, module: nn.Module, config: Any) -> float:
        """FLOPs (2 per multiply-add) of one ``run`` on one image, counted with torch's FlopCounterMode on
        the meta device. Override when run() has data-dependent work (e.g. PADA's steps)."""
        from torch.utils.flop_counter import FlopCounterMode

        size = self.input_size(config)
        device = next(module.parameters()).device  # meta for a module built under torch.device("meta")
        images = torch.rand(1, 3, size, size, device=device)
        targets = self.validate_ages(config, torch.tensor([self.age_groups(config)[-1].representative_age()]))
        targets = targets.to(device)
        options = self.validate_options(config, 1, {})
        gen = torch.Generator().manual_seed(0)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            self.run(module, images, targets, gen, options)
        return float(counter.get_total_flops())
