"""The per-model half of the native backend: a model's inference, rewritten for speed.

A runner is built once per engine from the fp32 torch module (on the engine's device). It splits one call in
two so the expensive half can be captured in a CUDA graph:

* ``prepare(images, targets, generator, options) -> dict[str, Tensor]``: everything that touches the host or
  draws randomness (noise from the seeded CPU generator, per-sample option tensors, text embeddings), returning
  device tensors whose first axis is the batch;
* ``forward(inputs, options) -> Tensor``: pure device work with no host synchronisation, deterministic given
  ``inputs``, so it can be captured once per (batch bucket, ``graph_key(options)``) and replayed.

The runner is an ``nn.Module``: its folded weights and tables are registered buffers, built once from the
trained module. :meth:`NativeRunner.graph` gives, per ``graph_key(options)``, the model's **inference graph**: an
:class:`InferenceGraph` whose ``forward`` takes only tensors (``graph.input_names``, in that order) and
has no value-dependent Python control flow. The same graph is what the native backend captures in CUDA graphs,
what ``torch.compile`` compiles, what ``torch.export`` traces and what ``agingrt export`` writes to ONNX
(docs/export.md).

Rewrites must not change results beyond the tolerances the parity tests state against the torch backend.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Hashable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .._extension import has_native
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


def winograd_option(winograd: bool | None, device: torch.device, dtype: torch.dtype, channels_last: bool) -> bool:
    """The runners' ``winograd`` option (3x3 'same' convs as ``agingrt::winograd_conv3x3``), resolved at build.

    The op runs on the CPU in fp32 only: asking for it elsewhere raises ValueError. Default: on there with
    channels_last (the layout its kernels read in place) and the compiled extension; the runners call it with
    ``impl="native"``, so without the extension (the ONNX exporter may build runners then) it stays off.
    """
    applies = device.type == "cpu" and dtype == torch.float32
    if winograd and not applies:
        raise ValueError("winograd runs on the CPU in fp32 only (on CUDA, cuDNN chooses its own algorithm)")
    return (applies and channels_last and has_native()) if winograd is None else winograd


class Tensors(nn.Module):
    """A fixed tuple of tensors held as buffers: unpacks, indexes and iterates like the tuple it replaces
    (``weight, bias = layer``, ``F.linear(h, *layer)``), so folded weights move with ``.to()`` and export."""

    def __init__(self, *tensors: Tensor) -> None:
        super().__init__()
        for i, t in enumerate(tensors):
            self.register_buffer(f"t{i}", t)

    def __len__(self) -> int:
        return len(self._buffers)

    def __iter__(self):
        return iter(self._buffers.values())

    def __getitem__(self, index: int) -> Tensor:
        return getattr(self, f"t{range(len(self))[index]}")


class InferenceGraph(nn.Module):
    """A runner's device work for one ``graph_key``, as a module whose forward takes only tensors.

    ``forward(*tensors)`` takes the tensors ``prepare()`` returns, in the order of :attr:`input_names`, and
    returns the runner's output; the options that change the work are fixed when the graph is made. The runner
    (and so every weight) is a submodule: ``graph.to(...)``, ``state_dict()`` and exporters see its buffers.
    """

    def __init__(self, runner: NativeRunner, options: dict[str, Any], input_names: Sequence[str]) -> None:
        super().__init__()
        self.runner = runner
        self.options = dict(options)
        self.input_names = tuple(input_names)

    def forward(self, *tensors: Tensor) -> Tensor:
        if len(tensors) != len(self.input_names):
            raise TypeError(f"the graph takes {len(self.input_names)} tensors {self.input_names}, got {len(tensors)}")
        return self.runner.forward(dict(zip(self.input_names, tensors, strict=True)), self.options)


class NativeRunner(nn.Module, ABC):
    """Base class of the per-model runners (``pyagingrt/backends/native_<model>.py``)."""

    #: False when forward() cannot be captured in a CUDA graph for these options (then it runs eagerly).
    def graph_safe(self, options: dict[str, Any]) -> bool:
        return True

    def __init__(
        self, adapter: ModelAdapter, module: nn.Module, config: Any, device: torch.device, dtype: torch.dtype
    ) -> None:
        super().__init__()
        self._graphs: dict[Hashable, InferenceGraph] = {}
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

    def register_tensors(self) -> None:
        """Make every plain tensor attribute (``self.x = tensor`` in the build code) a buffer of the module."""
        for name, value in list(vars(self).items()):
            if isinstance(value, Tensor) and not isinstance(value, nn.Parameter):
                delattr(self, name)
                self.register_buffer(name, value)

    def graph_input_names(self, inputs: dict[str, Tensor]) -> tuple[str, ...]:
        """The tensors of ``prepare()``'s result that the inference graph takes, in its argument order
        (the dict's own order: each runner's prepare() builds it in a fixed order per graph key)."""
        return tuple(k for k, v in inputs.items() if isinstance(v, Tensor))

    def graph(self, options: dict[str, Any], inputs: dict[str, Tensor]) -> InferenceGraph:
        """The inference graph for these options (one per ``graph_key``, made on first use).

        Args:
            options: validated options; those in ``graph_key`` are fixed into the graph.
            inputs: a ``prepare()`` result for these options (only its keys are read).
        """
        key = self.graph_key(options)
        graph = self._graphs.get(key)
        if graph is None:
            graph = InferenceGraph(self, options, self.graph_input_names(inputs))
            self._graphs[key] = graph
        return graph


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
