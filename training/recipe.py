"""The per-model training recipe interface, and the registry ``agingrt train MODEL [--stage S]`` looks recipes up in.

A recipe is everything model-specific about training; the loop (``training/loop.py``) owns everything else
(processes, devices, precision, data order, checkpoints, logging, sample grids, NaN checks). A recipe:

- declares its default config per preset (``paper``, ``tiny``) and stage, as a nested dict of JSON values
  (:meth:`Recipe.default_config`). The loop adds its own ``loop`` and ``data`` sections, applies the user's
  ``--set section.key=value`` overrides and saves the resolved config in the run folder;
- builds its modules, optimisers and schedulers in ``__init__`` from that config and a :class:`TrainContext`
  (device, precision, world size, steps per epoch, a seeded generator);
- runs one iteration in :meth:`Recipe.train_step` (``batch`` is the data set's item dict collated over this
  process's share of the global batch) and returns its losses as a dict of detached scalar tensors. Every
  optimiser step goes through :meth:`TrainContext.optimize`, which averages gradients over processes and
  handles fp16 loss scaling, so a recipe never talks to ``torch.distributed`` itself;
- renders a sample row per input and target age in :meth:`Recipe.sample` for the grid PNGs;
- gives what ``pyagingrt.load`` reads in :meth:`Recipe.inference_checkpoint` (model name, model config,
  inference state dict: the generator or its EMA copy, keyed as the runtime module).

Exact resume works when every random draw of a recipe comes from ``ctx.generator`` (saved and restored by the
loop) or from torch's global RNG (also saved), and all training state lives in :meth:`Recipe.modules`,
:meth:`Recipe.optimizers`, :meth:`Recipe.schedulers` and :meth:`Recipe.extra_state`.

Register a recipe with ``@register_recipe`` on the class; the registry imports ``training.recipes.<model>`` on
first use, so adding a model is one new module plus one line in ``RECIPE_MODULES``.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import Dataset

# model name -> module under training/recipes that registers it (imported lazily).
RECIPE_MODULES = {
    "acgan": "acgan",
    "cusp": "cusp",
    "ageflow": "ageflow",
    "pada": "pada",
}

_REGISTRY: dict[str, type[Recipe]] = {}


@dataclass(frozen=True)
class InferenceCheckpoint:
    """What the loop writes as a pyagingrt ``.safetensors`` file: ``pyagingrt.load(path)`` rebuilds the model
    from ``model`` and ``config`` (the runtime adapter's config dict) and loads ``state_dict`` strictly."""

    model: str
    config: dict[str, Any]
    state_dict: dict[str, Tensor]


@dataclass
class TrainContext:
    """What the loop gives a recipe: where and how to compute, and the process group's shape.

    ``generator`` is a CPU torch.Generator seeded per rank (``seed + rank``); draw targets, noise, mixing
    coefficients etc. from it (then ``.to(device)``) so that a resumed run repeats them exactly.
    ``autocast_dtype`` is None for fp32 (CPU always), else torch.bfloat16 or torch.float16 on CUDA.
    """

    device: torch.device
    rank: int = 0
    world_size: int = 1
    autocast_dtype: torch.dtype | None = None
    channels_last: bool = False
    steps_per_epoch: int = 1
    total_steps: int = 1
    generator: torch.Generator = field(default_factory=torch.Generator)
    scalers: dict[str, torch.amp.GradScaler] = field(default_factory=dict)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def autocast(self) -> AbstractContextManager[Any]:
        """Mixed precision for the forward passes (a no-op in fp32)."""
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def prepare(self, module: nn.Module) -> nn.Module:
        """Move a module to the device (channels_last on GPU when enabled) and make every rank hold rank 0's
        weights. Returns ``module``."""
        module.to(self.device)
        if self.channels_last:
            module.to(memory_format=torch.channels_last)
        if self.distributed:
            with torch.no_grad():
                for t in [*module.parameters(), *module.buffers()]:
                    dist.broadcast(t.data, src=0)
        return module

    def images(self, x: Tensor) -> Tensor:
        """An image batch on the device, in channels_last when enabled."""
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def optimize(
        self,
        name: str,
        optimizer: torch.optim.Optimizer,
        loss: Tensor,
        clip: Callable[[list[nn.Parameter]], object] | None = None,
    ) -> None:
        """One optimiser step on ``loss``: zero grads, backward, average grads over processes, [clip,] step.

        ``clip`` (e.g. ``torch.nn.utils.clip_grad_norm_``) gets the optimiser's parameters once their gradients
        are averaged and, under fp16, unscaled, just before the step.

        Gradients are averaged with one ``all_reduce`` over a flat buffer per step, as DDP's reducer would,
        but after the whole backward: GAN steps take double backward (gradient penalty, R1) and leave whole
        modules unused, which DDP's hooks do not support. fp16 uses one GradScaler per optimiser ``name``.
        """
        optimizer.zero_grad(set_to_none=True)
        scaler = self._scaler(name)
        (scaler.scale(loss) if scaler is not None else loss).backward()
        params = [p for g in optimizer.param_groups for p in g["params"] if p.requires_grad]
        if self.distributed:
            all_reduce_grads(params, self.world_size)
        if clip is not None:
            if scaler is not None:
                scaler.unscale_(optimizer)
            clip(params)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()

    def _scaler(self, name: str) -> torch.amp.GradScaler | None:
        if self.autocast_dtype != torch.float16:
            return None
        if name not in self.scalers:
            self.scalers[name] = torch.amp.GradScaler(self.device.type)
        return self.scalers[name]


def all_reduce_grads(params: Sequence[nn.Parameter], world_size: int) -> None:
    """Average ``p.grad`` over processes (missing grads count as zeros), one collective per call."""
    if not params:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world_size
    offset = 0
    for p, g in zip(params, grads, strict=True):
        n = g.numel()
        p.grad = flat[offset : offset + n].view_as(p).clone()
        offset += n


class Recipe(ABC):
    """One model's (and stage's) training. See the module docstring for the contract."""

    #: the model name ``pyagingrt.load`` and ``agingrt train`` use.
    name: ClassVar[str]
    #: stages in training order; the first is the default of ``--stage``.
    stages: ClassVar[tuple[str, ...]] = ("main",)
    #: presets of ``--config``.
    presets: ClassVar[tuple[str, ...]] = ("paper", "tiny")
    #: whether fp16 autocast trains this model (False: ``loop.precision=fp16`` is refused, ``auto`` uses fp32
    #: on a GPU without bf16).
    fp16_ok: ClassVar[bool] = True

    def __init__(self, config: dict[str, Any], ctx: TrainContext, stage: str) -> None:
        self.config = config
        self.ctx = ctx
        self.stage = stage

    # --- configuration ----------------------------------------------------------------------------------
    @classmethod
    @abstractmethod
    def default_config(cls, preset: str, stage: str) -> dict[str, Any]:
        """The recipe's sections for ``preset`` and ``stage``: at least ``model`` (the model config dict) and
        ``train`` (losses, optimisers, schedules); it may also set ``loop`` keys (``batch_size``, ``steps``,
        ``epochs``, ...) and ``data`` keys, which override the loop's generic defaults."""

    @classmethod
    def image_size(cls, config: dict[str, Any]) -> int:
        """The side of the square crops the data set must deliver."""
        return int(config["model"]["image_size"])

    @classmethod
    def age_range(cls, config: dict[str, Any]) -> tuple[float, float]:
        """Ages kept by the data set (rows outside are reported and skipped)."""
        return float(config["data"].get("min_age", 0)), float(config["data"].get("max_age", 100))

    def group_edges(self) -> list[float]:
        """Lower edges (years) of age groups 1 .. n-1 for the data summary printed before training; by default
        the inference side's age groups of this model and config."""
        from pyagingrt.models.registry import get_adapter

        adapter = get_adapter(self.name)
        groups = adapter.age_groups(adapter.config_from_dict(self.config["model"]))
        return [float(g.low) for g in groups[1:]]

    # --- state ------------------------------------------------------------------------------------------
    @abstractmethod
    def modules(self) -> dict[str, nn.Module]:
        """Every module whose weights are training state (generators, discriminators, EMA copies)."""

    @abstractmethod
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Optimisers by name (the names key the training-state file and the fp16 scalers)."""

    def schedulers(self) -> dict[str, Any]:
        """LR schedulers by name (anything with state_dict / load_state_dict); the recipe steps them."""
        return {}

    def extra_state(self) -> dict[str, Any]:
        """Any other state needed for an exact resume (counters, caches); tensors and plain values."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:  # noqa: B027 (optional hook, no-op by default)
        """Restore :meth:`extra_state`."""

    def prepare_data(self, dataset: Dataset) -> Dataset:
        """The data set the loop's batches come from, given the opened one (same length, same indices).

        The default is ``dataset`` itself; a recipe that trains on precomputed features (AgeFlow's ICTM on
        cached latents) returns its own view of it here. Called once per process, before the first step.
        """
        return dataset

    # --- training ---------------------------------------------------------------------------------------
    @abstractmethod
    def train_step(self, batch: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        """One iteration (``step`` counts from 0 over the whole run). Returns detached scalar losses."""

    @abstractmethod
    def sample_targets(self) -> list[float]:
        """The target ages (years) of the sample grid's columns."""

    @abstractmethod
    def sample(self, images: Tensor, target_ages: Sequence[float]) -> Tensor:
        """Age ``images`` Tensor[B, 3, S, S] in [0, 1] to each target: Tensor[B, T, 3, S, S] in [0, 1], no grad,
        with the inference weights (EMA where the recipe keeps one)."""

    @abstractmethod
    def inference_checkpoint(self) -> InferenceCheckpoint:
        """The weights and config that ``pyagingrt.load`` reads (CPU or device tensors; the loop copies)."""

    def train(self, mode: bool = True) -> None:
        """Put trained modules in train mode (default) or eval mode; frozen judges stay in eval."""
        for m in self.modules().values():
            m.train(mode)

    def parameters(self) -> Iterator[nn.Parameter]:
        for m in self.modules().values():
            yield from m.parameters()


def register_recipe(cls: type[Recipe]) -> type[Recipe]:
    """Class decorator: make ``cls`` the recipe of ``cls.name``."""
    _REGISTRY[cls.name] = cls
    return cls


def recipe_names() -> tuple[str, ...]:
    return tuple(RECIPE_MODULES)


def get_recipe(model: str) -> type[Recipe]:
    """The recipe class of ``model``; ValueError naming the known models, or saying the recipe is not written."""
    key = model.strip().lower()
    if key not in RECIPE_MODULES:
        raise ValueError(f"no training recipe for model {model!r}; known: {', '.join(RECIPE_MODULES)}")
    if key not in _REGISTRY:
        try:
            importlib.import_module(f"{__package__}.recipes.{RECIPE_MODULES[key]}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__package__}.recipes.{RECIPE_MODULES[key]}":
                raise
            raise ValueError(f"training {key} is not implemented in this version of pyagingrt") from None
    return _REGISTRY[key]
