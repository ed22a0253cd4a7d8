"""The backend registry, the native backend's refusal without the compiled extension, and backend="auto"
(with injected timings: no test here depends on what is faster on this machine)."""

from __future__ import annotations

import json

import pytest
import torch

import pyagingrt
from pyagingrt import BackendUnavailableError, InputError, NativeExtensionError, RandomWeightsWarning, ops
from pyagingrt import _extension as extension
from pyagingrt.backends import auto, registry
from pyagingrt.backends.native import NativeEngine
from pyagingrt.backends.registry import backend_class, backend_names
from pyagingrt.benchmark import format_table, run_bench, variants
from pyagingrt.cli.main import build_parser


def load_toy(**kwargs):
    with pytest.warns(RandomWeightsWarning):
        return pyagingrt.load("toy", device="cpu", **kwargs)


# --- registry ---------------------------------------------------------------------------------------------------
def test_registry_lists_the_four_backends_each_with_the_interface():
    assert backend_names() == ("torch", "native", "onnxruntime", "openvino")
    assert backend_names(auto=True)[-1] == "auto"
    assert pyagingrt.backend_names() == backend_names()
    for name in backend_names():
        cls = backend_class(name)
        assert issubclass(cls, pyagingrt.Engine)
        assert cls.backend == name
        assert cls.summary
        for method in ("check_available", "check_precision", "check_options", "auto_precision", "describe", "_run"):
            assert callable(getattr(cls, method))


def test_unknown_backend_lists_the_choices_and_points_tensorrt_to_onnxruntime():
    with pytest.raises(InputError, match="backend must be one of torch, native, onnxruntime, openvino, auto"):
        backend_class("onnx")
    with pytest.raises(InputError, match="TensorRT is reached through backend='onnxruntime'"):
        pyagingrt.load("acgan", backend="tensorrt", device="cpu")


def test_cli_and_bench_list_the_registry():
    parser = build_parser()
    age = parser._subparsers._group_actions[0].choices["age"]
    (backend_action,) = [a for a in age._actions if a.dest == "backend"]
    assert tuple(backend_action.choices) == backend_names(auto=True)
    assert list(variants()) == ["eager", "compile", *[n for n in backend_names() if n != "torch"]]


@pytest.mark.usefixtures("toy")
def test_torch_engine_describes_itself():
    eng = load_toy()
    assert type(eng).__name__ == "TorchEngine"
    assert eng.describe() == {
        "backend": "torch",
        "model": "toy",
        "config": "small",
        "device": "cpu",
        "precision": "fp32",
    }
    native = load_toy(backend="native")
    described = native.describe()
    assert described["backend"] == "native"
    assert described["runner"] == "GenericRunner"
    assert described["cuda_graphs"] is None  # CPU


@pytest.mark.usefixtures("toy")
def test_backend_options_go_to_the_backends_that_take_them():
    with pytest.raises(InputError, match="buckets= applies to backend='native' only, not to backend='torch'"):
        pyagingrt.load("toy", device="cpu", buckets=(1, 4))
    with pytest.raises(InputError, match="positive batch sizes"):
        pyagingrt.load("toy", device="cpu", backend="native", buckets=(0,))


# --- native without the extension -------------------------------------------------------------------------------
@pytest.fixture
def no_extension(monkeypatch):
    """Make pyagingrt._C look absent, as on an installation that never built it."""
    monkeypatch.setattr(extension, "_load", lambda: (None, "pyagingrt._C could not be imported (made absent)"))
    assert not pyagingrt.has_native()


@pytest.mark.usefixtures("no_extension")
@pytest.mark.parametrize("model", ["ageflow", "acgan", "cusp", "pada"])
def test_native_without_extension_refuses_with_the_build_command(model):
    with pytest.raises(NativeExtensionError, match=r"made absent\). Build it with: pip install --no-build-isolation"):
        pyagingrt.load(model, config="tiny", device="cpu", backend="native")


@pytest.mark.usefixtures("no_extension", "toy")
def test_native_engine_refuses_to_build_without_extension_even_when_built_directly():
    eng = load_toy()
    with pytest.raises(NativeExtensionError, match="Build it with"):
        NativeEngine(eng.adapter, eng.config, eng.module, eng.device, torch.float32)
    with pytest.raises(NativeExtensionError):
        ops.group_norm_act(torch.rand(1, 4, 2, 2), 2, torch.ones(4), torch.zeros(4), 1e-5, impl="native")


@pytest.mark.usefixtures("no_extension", "toy")
def test_bench_never_times_oracles_as_native():
    (r,) = run_bench(["toy"], [1], ["fp32"], ["native"], torch.device("cpu"), warmup=0, iters=1)
    assert r.ms_per_batch is None
    assert r.error.startswith("NativeExtensionError")
    assert "not run: NativeExtensionError" in format_table([r])


@pytest.mark.usefixtures("no_extension", "toy")
def test_auto_skips_native_without_extension_and_says_why(tmp_path, monkeypatch):
    monkeypatch.setenv(auto.CACHE_ENV, str(tmp_path))
    for name in ("onnxruntime", "openvino"):  # their exports are tested apart; here they would only cost time
        monkeypatch.delitem(registry._BACKENDS, name)
    with pytest.warns(RandomWeightsWarning):
        eng = pyagingrt.load("toy", device="cpu", backend="auto")
    assert eng.backend != "native"
    assert eng.auto_choice["skipped"]["native"].startswith("NativeExtensionError")


# --- auto ----------------------------------------------------------------------------------------------------
class FakeTimings:
    """An injected probe: milliseconds per backend name, and the backends it was asked to time."""

    def __init__(self, ms: dict[str, float]) -> None:
        self.ms = ms
        self.timed: list[str] = []

    def __call__(self, engine: pyagingrt.Engine) -> float:
        self.timed.append(engine.backend)
        return self.ms[engine.backend]


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv(auto.CACHE_ENV, str(tmp_path))
    return tmp_path


def load_auto_toy(measure, config="small"):
    torch.manual_seed(0)  # the same random weights on every call
    eng = load_toy(config=config)  # the adapter, config and a module with random weights
    return auto.load_auto(
        eng.adapter,
        eng.config,
        eng.module,
        eng.device,
        "fp32",
        config_name=config,
        measure=measure,
        candidates=("torch", "native"),
    )


@pytest.mark.usefixtures("toy")
def test_auto_picks_the_fastest_measured_backend_and_caches_the_pick(cache_dir, caplog):
    first = FakeTimings({"torch": 5.0, "native": 2.0})
    with caplog.at_level("INFO", logger="pyagingrt"):
        eng = load_auto_toy(first)
    assert eng.backend == "native"
    assert first.timed == ["torch", "native"]
    assert eng.describe()["auto"]["timings_ms"] == {"torch": 5.0, "native": 2.0}
    assert eng.describe()["auto"]["cached"] is False
    assert "backend='auto' picked native for toy" in caplog.text
    entries = json.loads((cache_dir / "backend_choice.json").read_text())
    (key,) = entries
    assert key.startswith("toy/")
    assert "/8x8/b1/cpu:" in key
    assert "/fp32/" in key
    assert entries[key]["backend"] == "native"

    again_timings = FakeTimings({"torch": 1.0, "native": 9.0})  # would pick torch if it were asked
    again = load_auto_toy(again_timings)
    assert again.backend == "native"
    assert again_timings.timed == []  # the cached pick: nothing probed
    assert again.describe()["auto"]["cached"] is True
    x = torch.rand(2, 3, 8, 8)
    torch.testing.assert_close(again.age(x, 30), eng.age(x, 30))

    other_shape = FakeTimings({"torch": 1.0, "native": 9.0})
    assert load_auto_toy(other_shape, config="tiny").backend == "torch"  # another input size: probed anew
    assert other_shape.timed == ["torch", "native"]
    assert len(json.loads((cache_dir / "backend_choice.json").read_text())) == 2


@pytest.mark.usefixtures("toy", "cache_dir")
def test_auto_skips_a_backend_that_fails_and_reraises_when_none_builds(monkeypatch):
    def broken(engine):
        if engine.backend == "native":
            raise BackendUnavailableError("native broke")
        return 3.0

    eng = load_auto_toy(broken)
    assert eng.backend == "torch"
    assert eng.auto_choice["skipped"] == {"native": "BackendUnavailableError: native broke"}

    def always(engine):
        raise BackendUnavailableError(f"{engine.backend} broke")

    monkeypatch.setenv(auto.CACHE_ENV, str(auto.cache_path().parent / "fresh"))
    with pytest.raises(BackendUnavailableError, match="torch broke"):
        load_auto_toy(always)


def test_a_corrupt_cache_is_ignored(tmp_path):
    path = tmp_path / "backend_choice.json"
    path.write_text("{not json")
    assert auto.read_cache(path) == {}
    auto.write_cache(path, "k", {"backend": "torch"})
    assert auto.read_cache(path) == {"k": {"backend": "torch"}}
    assert not list(tmp_path.glob(".*.tmp"))
