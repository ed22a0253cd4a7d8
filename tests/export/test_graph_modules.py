"""Each model's inference graph (``runner.graph(options, inputs)``) is an ``nn.Module`` that ``torch.export`` and
``torch.compile`` accept whole, and that holds every folded tensor as a buffer (tiny configs, CPU)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import Tensor, nn

import pyagingrt
from pyagingrt.backends.runner import InferenceGraph
from pyagingrt.export.graphs import build_graph

MODELS = ["acgan", "cusp", "ageflow", "pada"]
OPTIONS = {"pada": {"steps": 1}}  # one DDIM step: the same code as 25, a smaller graph


@pytest.fixture(scope="module", params=MODELS)
def sample(request):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pyagingrt.RandomWeightsWarning)
        engine = pyagingrt.load(request.param, config="tiny", device="cpu")
    return build_graph(engine, torch.float32, 2, options=OPTIONS.get(request.param))


def _plain_tensors(module: nn.Module) -> list[str]:
    """Tensor attributes of any submodule that are not registered (they would miss .to() and exporters)."""
    found = []
    for name, sub in module.named_modules():
        for attr, value in vars(sub).items():
            values = value if isinstance(value, list | tuple) else (value,)
            if any(isinstance(v, Tensor) for v in values):
                found.append(f"{name}.{attr}")
    return found


def test_graph_is_a_module_over_buffers(sample):
    graph = sample.graph
    assert isinstance(graph, InferenceGraph)
    assert isinstance(graph, nn.Module)
    assert graph.runner is sample.runner
    assert len(list(graph.buffers())) > 0
    assert _plain_tensors(graph) == []
    assert all(isinstance(t, Tensor) for t in sample.inputs)


def test_torch_export_accepts_the_graph(sample):
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        program = torch.export.export(sample.graph, sample.inputs, strict=False)
        got = program.module()(*sample.inputs)
        want = sample.graph(*sample.inputs)
    assert torch.equal(got, want)


def test_torch_compile_accepts_the_whole_graph(sample):
    torch._dynamo.reset()
    compiled = torch.compile(sample.graph, fullgraph=True, backend="aot_eager", dynamic=False)
    with torch.no_grad():
        got = compiled(*sample.inputs)
        want = sample.graph(*sample.inputs)
    assert torch.equal(got, want)
