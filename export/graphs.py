"""Build a model's inference graph (the native runner's ``nn.Module``) with example inputs, ready to export.

The graph is the one the native backend runs (``pyagingrt/backends/native_<model>.py``), built on the CPU in
the export precision from an fp32 torch engine, which also gives the reference outputs for the parity check.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..api import Engine
from ..backends.native import runner_class
from ..backends.runner import InferenceGraph, NativeRunner
from ..errors import InputError

#: What each graph input means, per model (written into the ONNX file's metadata and docs/export.md).
INPUT_MEANINGS: dict[str, dict[str, str]] = {
    "acgan": {
        "images": "float32 [B, 3, S, S] RGB in [0, 1], aligned crops",
        "groups": "int64 [B] target age group index (0..c_dim-1)",
    },
    "cusp": {
        "images": "float32 [B, 3, H, H] RGB in [0, 1], FFHQ-aligned crops",
        "ages": "int64 [B] target age class index",
        "blur_g.taps": "float32 [B, 2, K] Gaussian taps (rows k_m, k_g) of the skip blur's first call: (s_g, s_g)",
        "blur_g.flags": "int32 [B] flags of that call: 1 sigma_m == 0, 2 sigma_g == 0, 4 sigma_m == sigma_g",
        "blur_m.taps": "float32 [B, 2, K] taps of the second call: (s_m, 0)",
        "blur_m.flags": "int32 [B] flags of the second call",
    },
    "ageflow": {
        "images": "float32 [B, 3, S, S] RGB in [0, 1], aligned crops",
        "groups": "int64 [B] target age group index",
    },
    "pada": {
        "images": "float32 [B, 3, S, S] RGB in [0, 1], aligned crops",
        "e_mean": "float32 [B, D] age embedding mean (CLIP text embedding of the target prompt)",
        "e_scale": "float32 [B, D] age embedding scale; e_age = e_mean + e_scale * eta",
        "eta": "float32 [B, K, D] standard normal draws of the probabilistic aging embedding",
        "x_T": "float32 [B, K, 3, S, S] standard normal DDIM start noise",
    },
}


@dataclass
class GraphSample:
    """A built inference graph, example inputs for it, and the torch backend's output on the same call."""

    model: str
    runner: NativeRunner
    graph: InferenceGraph
    inputs: tuple[Tensor, ...]  # the graph's arguments, in graph.input_names order
    reference: Tensor  # the torch backend (training/ module, fp32) on the same images, targets, seed, options
    options: dict[str, Any]

    @property
    def input_names(self) -> tuple[str, ...]:
        return self.graph.input_names

    def describe_inputs(self) -> dict[str, str]:
        meanings = INPUT_MEANINGS.get(self.model, {})
        return {
            name: meanings.get(name, _describe(name, t)) for name, t in zip(self.input_names, self.inputs, strict=True)
        }


def _describe(name: str, t: Tensor) -> str:
    if name.startswith("noise."):
        return f"{str(t.dtype).replace('torch.', '')} [B, 1, R, R] decoder noise map times its strength"
    return f"{str(t.dtype).replace('torch.', '')} {list(t.shape)}"


def example_call(
    engine: Engine, batch: int, seed: int = 0, options: dict[str, Any] | None = None
) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """Random images in [0, 1], one target per image (cycling through the groups) and the validated options."""
    if batch < 1:
        raise InputError(f"batch must be >= 1, got {batch}")
    size = engine.input_size
    pixels = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))  # [B, 3, S, S]
    groups = engine.age_groups
    ages = torch.tensor([groups[i % len(groups)].representative_age() for i in range(batch)], dtype=torch.float64)
    targets = engine.adapter.validate_ages(engine.config, ages)  # [B]
    return pixels, targets, engine.adapter.validate_options(engine.config, batch, dict(options or {}))


def build_graph(
    engine: Engine, dtype: torch.dtype, batch: int, seed: int = 0, options: dict[str, Any] | None = None
) -> GraphSample:
    """The model's inference graph in ``dtype`` on the CPU, example inputs of ``batch`` images, and the fp32 torch
    backend's output on the same call (same images, targets, options and seed).

    Args:
        engine: an fp32 torch-backend engine on the CPU (its module is the master copy the runner folds).
        dtype: the graph's compute dtype (torch.float32 or torch.float16).
        batch: example batch size.
        seed: seed of the example images and of the model's own draws.
        options: model options (validated by the adapter; those in the runner's graph_key are fixed in the graph).
    """
    device = torch.device("cpu")
    pixels, targets, options = example_call(engine, batch, seed, options)
    runner = runner_class(engine.adapter.name)(engine.adapter, engine.module, engine.config, device, dtype)
    runner.eval()
    with torch.no_grad():
        inputs = runner.prepare(pixels, targets, torch.Generator().manual_seed(seed), options)
        reference = engine._run(pixels, targets, torch.Generator().manual_seed(seed), options).float()
    graph = runner.graph(options, inputs)
    args = tuple(inputs[name] for name in graph.input_names)
    return GraphSample(engine.adapter.name, runner, graph, args, reference, options)
