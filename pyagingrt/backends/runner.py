"""The per-model half of the native backend: a model's inference, rewritten for speed.

A runner is built once per engine from the fp32 torch module (on the engine's device). It splits one call in
two so the expensive half can be captured in a CUDA graph:

* ``prepare(images, targets, generator, options) -> dict[str, Tensor]``: everything that touches the host or
  draws randomness (noise from the seeded CPU generator, per-sample option tensors, text embeddings), returning
  device tensors whose first axis is the batch;
* ``forward(inputs, options) -> Tensor``: pure device work with no host synchronisation, deterministic given
  ``inputs``, so it can be captured once per (batch bucket, ``graph_key(options)``) and replayed.

Rewrites must not change results beyond the tolerances the parity tests state against the torch backend.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Hashable
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import InputError
from ..models.base import ModelAdapter


def check_target_indices(
    targets: Tensor,
    batch: int,
    count: int | None,
    model: str,
    *,
    unit: str = "age group",
    hint: str = "map ages with adapter.validate_ages first",
) -> None:
    """prepare()'s check of host targets: one integer index per image, each in [0, count) when count is given.

    Raises:
        InputError naming what was found.
    """
    if tuple(targets.shape) != (batch,) or targets.is_floating_point() or targets.dtype == torch.bool:
        raise InputError(
            f"need one integer {unit} per image: {batch} images, targets {targets.dtype} of shape "
            f"{tuple(targets.shape)}; {hint}"
        )
    if count is not None and batch and (int(targets.min()) < 0 or int(targets.max()) >= count):
        raise InputError(f"{model} {unit}s must lie in 0..{count - 1}, got {targets.tolist()}")


class NativeRunner(ABC):
    """Base class of the per-model runners (``pyagingrt/backends/native_<model>.py``)."""

    #: False when forward() cannot be captured in a CUDA graph for these options (then it runs eagerly).
    def graph_safe(self, options: dict[str, Any]) -> bool:
        return True

    def __init__(
        self, adapter: ModelAdapter, module: nn.Module, config: Any, device: torch.device, dtype: torch.dtype
    ) -> None:
        self.adapter = adapter
        self.config = config
        self.device = device
        self.dtype = dtype

    @abstractmethod
    def prepare(
        self, images: Tensor, targets: Tensor, generator: torch.Generator | None, options: dict[str, Any]
    ) -> dict[str, Tensor]:
        """Host-side work; returns device tensors, each with the batch as its first axis."""

    @abstractmethod
    def forward(self, inputs: dict[str, Tensor], options: dict[str, Any]) -> Tensor:
        """Device-only work: Tensor[B, 3, S, S] (or [B, K, 3, S, S]) float in [0, 1]."""

    def graph_key(self, options: dict[str, Any]) -> Hashable:
        """Options that change the captured work (everything not passed as an input tensor)."""
        return tuple(sorted((k, repr(v)) for k, v in options.items()))


class GenericRunner(NativeRunner):
    """Fallback for a model without its own runner: the torch module in the engine's precision and
    channels_last, with CUDA graphs, and none of the model-specific rewrites. Only for deterministic models
    whose adapter.run draws nothing from the generator and never synchronises with the host."""

    def __init__(self, adapter, module, config, device, dtype) -> None:
        super().__init__(adapter, module, config, device, dtype)
        import copy

        self.module = copy.deepcopy(module).to(device=device, dtype=dtype)
        if device.type == "cuda":
            self.module = self.module.to(memory_format=torch.channels_last)

    def graph_safe(self, options: dict[str, Any]) -> bool:
        return not self.adapter.stochastic

    def prepare(self, images, targets, generator, options):
        return {"images": images, "targets": targets, "_generator": generator}  # type: ignore[dict-item]

    def forward(self, inputs, options):
        return self.adapter.run(self.module, inputs["images"], inputs["targets"], inputs.get("_generator"), options)
