"""The native backend's generic machinery (runner selection, bucketing, graph cache, overflow check) on the
toy adapter; each model's own runner is tested against the torch backend in tests/models/."""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn

import pyagingrt
from pyagingrt import RandomWeightsWarning
from pyagingrt.backends.cuda_graphs import GraphCache, _pad, bucket_for
from pyagingrt.backends.native import NativeEngine, first_nonfinite_layer, runner_class
from pyagingrt.backends.runner import GenericRunner


def load(**kwargs):
    with pytest.warns(RandomWeightsWarning):
        return pyagingrt.load("toy", **kwargs)


def test_buckets():
    assert [bucket_for(b, (1, 4, 16, 32)) for b in (1, 2, 4, 5, 16, 17, 32, 33)] == [1, 4, 4, 16, 16, 32, 32, 32]
    x = torch.arange(6.0).reshape(3, 2)
    padded = _pad(x, 5)
    assert padded.shape == (5, 2)
    assert torch.equal(padded[:3], x)
    assert torch.equal(padded[3:], x[-1:].expand(2, 2))


def test_unknown_model_uses_generic_runner():
    assert runner_class("toy") is GenericRunner


@pytest.mark.usefixtures("toy")
def test_native_cpu_equals_torch_backend():
    torch_eng = load(device="cpu")
    native = NativeEngine(
        torch_eng.adapter, torch_eng.config, torch_eng.module, torch.device("cpu"), torch.float32, config_name="small"
    )
    assert native.backend == "native"
    assert native.graphs is None
    x = torch.rand(3, 3, 8, 8)
    torch.testing.assert_close(native.age(x, [10, 40, 70]), torch_eng.age(x, [10, 40, 70]), atol=1e-6, rtol=0)


@pytest.mark.usefixtures("toy")
def test_load_native_on_cpu():
    eng = load(device="cpu", backend="native")
    assert eng.backend == "native"
    assert eng.age(torch.rand(1, 3, 8, 8), 30).shape == (1, 3, 8, 8)


def test_first_nonfinite_layer_names_the_layer():
    net = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    with torch.no_grad():
        net[1].weight.fill_(float("inf"))
    assert first_nonfinite_layer(net, lambda: net(torch.ones(1, 4))) == "1"
    with torch.no_grad():
        net[1].weight.fill_(1.0)
    assert first_nonfinite_layer(net, lambda: net(torch.ones(1, 4))) is None


@pytest.mark.gpu
def test_graph_replay_equals_eager_and_pads_buckets():
    dev = torch.device("cuda")
    lin = nn.Linear(8, 8).to(dev)
    cache = GraphCache(dev, buckets=(1, 4))

    def fn(inputs):
        return lin(inputs["x"]) * 2

    for batch in (1, 3, 4, 3):
        x = torch.randn(batch, 8, device=dev)
        torch.testing.assert_close(cache.run(fn, {"x": x}, key="k"), fn({"x": x}))
    assert len(cache) == 2  # buckets 1 and 4, the second batch-3 call replays


@pytest.mark.gpu
@pytest.mark.usefixtures("toy")
def test_native_fp16_graphs_match_torch_fp32():
    ref = load(device="cuda")
    eng = load(device="cuda", backend="native", precision="fp16")
    x = torch.rand(3, 3, 8, 8, device="cuda")
    torch.testing.assert_close(eng.age(x, 40), ref.age(x, 40), atol=2e-3, rtol=0)


@pytest.mark.usefixtures("toy")
def test_overflow_at_build_names_the_layer():
    eng = load(device="cpu")
    with torch.no_grad():
        eng.module.conv.weight.fill_(3e38)  # finite in fp32, but the conv sum overflows to inf

    class Overflowing(GenericRunner):
        def forward(self, inputs, options):
            return super().forward(inputs, options) * float("inf")

    native = NativeEngine.__new__(NativeEngine)
    native.__dict__.update(eng.__dict__)
    native.dtype = torch.bfloat16
    native.runner = Overflowing(eng.adapter, eng.module, eng.config, eng.device, torch.bfloat16)
    with pytest.raises(pyagingrt.NumericalError, match=r"overflows.*first at layer 'conv'"):
        native._check_finite()
    with torch.no_grad():
        eng.module.conv.weight.fill_(0.1)
    with pytest.raises(pyagingrt.NumericalError, match="the native rewrite itself overflows"):
        native._check_finite()


class _FakeCuda:
    """Just enough of torch.cuda for GraphCache on the CPU. As on a GPU, work on a device's tensors joins a graph
    only while a capture is open on a stream of that device (``record``; ATen launches on the tensors' device);
    otherwise it runs eagerly and the graph stays empty, so its replay leaves the first call's output in place."""

    def __init__(self):
        self.current_device = 0
        self.capturing = None
        self.captures = []  # (current device, capture stream's device) per capture
        self.replays = []  # current device per replay
        fake = self

        class Stream:
            def __init__(self, device=None):
                self.device = torch.device("cuda", fake.current_device if device is None else device.index)

            def wait_stream(self, other):
                pass

        class CUDAGraph:
            work = None

            def pool(self):
                return "pool"

            def replay(self):
                fake.replays.append(fake.current_device)
                if self.work is not None:
                    fn, static, out = self.work
                    out.copy_(fn(static))

        class graph:  # lower case, as torch.cuda.graph
            default_stream = None

            def __init__(self, cuda_graph, pool=None, stream=None):
                if stream is None:  # torch: one class-wide stream, on the device current at its first use
                    graph.default_stream = graph.default_stream or Stream()
                self.g, self.stream = cuda_graph, stream or graph.default_stream

            def __enter__(self):
                fake.captures.append((fake.current_device, self.stream.device.index))
                fake.capturing = self

            def __exit__(self, *exc):
                fake.capturing = None
                return False

        self.Stream, self.CUDAGraph, self.graph = Stream, CUDAGraph, graph

    def record(self, fn, inputs, out, device):
        if self.capturing is not None and self.capturing.stream.device.index == device:
            self.capturing.g.work = (fn, inputs, out)

    @contextlib.contextmanager
    def device(self, device):
        previous, self.current_device = self.current_device, torch.device(device).index
        try:
            yield
        finally:
            self.current_device = previous

    @contextlib.contextmanager
    def stream(self, stream):
        yield

    def current_stream(self, device=None):
        return self.Stream(device)


def test_graph_capture_and_replay_run_on_the_cache_device(monkeypatch):
    # An engine on cuda:1 while cuda:0 is current: a capture on cuda:0's stream records none of cuda:1's work,
    # and the empty graph's replay would return the first call's output for every later call.
    fake = _FakeCuda()
    for name in ("device", "stream", "current_stream", "Stream", "CUDAGraph", "graph"):
        monkeypatch.setattr(torch.cuda, name, getattr(fake, name))
    cache = GraphCache(torch.device("cuda", 1), buckets=(4,), warmup_iters=1)

    def fn(inputs):
        out = inputs["x"] * 2  # [B, 3], "on cuda:1"
        fake.record(fn, inputs, out, device=1)
        return out

    for batch in (3, 2):
        x = torch.randn(batch, 3)
        torch.testing.assert_close(cache.run(fn, {"x": x}, key="k"), x * 2, atol=0, rtol=0)
    assert fake.captures == [(1, 1)]  # captured once, with cuda:1 current, on a cuda:1 stream
    assert fake.replays == [1, 1]
    assert fake.current_device == 0  # the caller's device is restored


@pytest.mark.gpu
def test_graph_cache_on_a_device_that_is_not_current():
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA devices")
    dev = torch.device("cuda", 1)
    lin = nn.Linear(8, 8).to(dev)
    cache = GraphCache(dev, buckets=(4,))
    with torch.cuda.device(0):
        for _ in range(3):  # a stale (empty) graph would return the first call's output again
            x = torch.randn(3, 8, device=dev)
            torch.testing.assert_close(cache.run(lambda s: lin(s["x"]), {"x": x}, key="k"), lin(x))


def test_batches_above_the_largest_bucket_run_in_chunks(monkeypatch):
    # The number of graphs is bounded by the bucket list: batch 9 with buckets (2, 4) is 4 + 4 + 1 (padded to 2),
    # two captures, three replays, and the rows come back in order.
    fake = _FakeCuda()
    for name in ("device", "stream", "current_stream", "Stream", "CUDAGraph", "graph"):
        monkeypatch.setattr(torch.cuda, name, getattr(fake, name))
    cache = GraphCache(torch.device("cuda", 0), buckets=(4, 2), warmup_iters=1)

    def fn(inputs):
        out = inputs["x"] * 2 + inputs["t"][:, None]  # [B, 3]
        fake.record(fn, inputs, out, device=0)
        return out

    x, t = torch.randn(9, 3), torch.arange(9.0)
    torch.testing.assert_close(cache.run(fn, {"x": x, "t": t}, key="k"), x * 2 + t[:, None], atol=0, rtol=0)
    assert len(cache) == 2
    assert len(fake.replays) == 3
    assert bucket_for(9, (2, 4)) == 4


@pytest.mark.parametrize("bad", [(), (0, 4), (-1,), (2.5,), (True,)])
def test_bad_buckets_are_rejected(bad):
    with pytest.raises(ValueError, match="positive batch sizes"):
        GraphCache(torch.device("cpu"), buckets=bad)


@pytest.mark.usefixtures("toy")
def test_load_buckets_option():
    eng = load(device="cpu", backend="native", buckets=[8, 2])
    assert eng.age(torch.rand(3, 3, 8, 8), 30).shape == (3, 3, 8, 8)
    with pytest.raises(pyagingrt.InputError, match="backend='native' only"):  # before any weights are built
        pyagingrt.load("toy", device="cpu", buckets=(4,))
    with pytest.raises(pyagingrt.InputError, match="positive batch sizes"):
        pyagingrt.load("toy", device="cpu", backend="native", buckets=(0,))
