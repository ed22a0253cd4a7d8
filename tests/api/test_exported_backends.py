"""backend="onnxruntime" and backend="openvino": the exported graph of each model (tiny configs) against the torch
backend on the same weights, images, targets and seed. One export per model serves both runtimes (the export cache
in a per-session folder), so the file costs one export of each model."""

from __future__ import annotations

import copy

import pytest
import torch

import pyagingrt
from pyagingrt import BackendUnavailableError, InputError
from pyagingrt.backends import auto
from pyagingrt.backends.registry import backend_class

pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")

MODELS = ("acgan", "ageflow", "cusp", "pada")
# Max |runtime - torch backend| on outputs in [0, 1], fp32: the graphs differ from the torch backend by rounding only.
FP32_ATOL = 1e-4


@pytest.fixture(scope="module", autouse=True)
def shared_export_cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(auto.CACHE_ENV, str(tmp_path_factory.mktemp("agingrt-cache")))
        yield


_REFERENCES: dict[str, pyagingrt.Engine] = {}


def reference(model: str) -> pyagingrt.Engine:
    """The fp32 torch engine of the tiny config, one per model (fixed random weights)."""
    if model not in _REFERENCES:
        torch.manual_seed(0)
        with pytest.warns(pyagingrt.RandomWeightsWarning):
            _REFERENCES[model] = pyagingrt.load(model, config="tiny", device="cpu")
    return _REFERENCES[model]


def build(backend: str, model: str, dtype: torch.dtype = torch.float32) -> pyagingrt.Engine:
    ref = reference(model)
    cls = backend_class(backend)
    # a source marks the weights as reloadable, so the export is cached and shared by the two runtimes
    source = {"tests": "fixed random weights"}
    return cls(
        ref.adapter,
        ref.config,
        copy.deepcopy(ref.module),
        torch.device("cpu"),
        dtype,
        config_name="tiny",
        source=source,
    )


def call(engine: pyagingrt.Engine, batch: int, **options) -> torch.Tensor:
    size = engine.input_size
    x = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(batch))
    groups = engine.age_groups
    ages = [groups[(2 * i + 1) % len(groups)].representative_age() for i in range(batch)]
    return engine.age(x, ages, seed=7, **options)


def parity_cases():
    for backend in ("onnxruntime", "openvino"):
        for model in MODELS:
            marks = []
            if backend == "openvino" and model == "cusp":
                marks.append(
                    pytest.mark.xfail(
                        raises=AssertionError,
                        reason="OpenVINO's CPU plugin computes CUSP's guided-backprop mask differently (up to ~0.06 "
                        "on the output; exact with sigma_m=0, see test_openvino_cusp_without_mask)",
                    )
                )
            yield pytest.param(backend, model, marks=marks, id=f"{backend}-{model}")


@pytest.mark.parametrize(("backend", "model"), list(parity_cases()))
def test_exported_backend_matches_torch(backend, model):
    engine = build(backend, model)
    ref = reference(model)
    described = engine.describe()
    # a dynamic-batch graph serves every batch; a static one is exported per batch size, and the load already
    # exported batch 1, so it is checked there (another batch would cost another export)
    for batch in (2, 1) if described["dynamic_batch"] else (1,):
        torch.testing.assert_close(call(engine, batch), call(ref, batch), atol=FP32_ATOL, rtol=0)
    assert described["backend"] == backend
    assert described["runner"].lower().startswith(model)


def test_openvino_cusp_without_mask():
    engine = build("openvino", "cusp")
    options = {"sigma_m": 0.0, "sigma_g": 0.0}
    torch.testing.assert_close(
        call(engine, 2, **options), call(reference("cusp"), 2, **options), atol=FP32_ATOL, rtol=0
    )


def test_onnxruntime_uses_io_binding_and_the_cpu_provider():
    engine = build("onnxruntime", "acgan")
    assert engine.describe()["providers"] == ["CPUExecutionProvider"]
    assert engine.describe()["dynamic_batch"] is True
    # a second engine of the same weights reuses the export (nothing exported again)
    again = build("onnxruntime", "acgan")
    assert again.cached_exports == 1
    # random weights (no source: nothing to reload them from) are never cached
    ref = reference("acgan")
    scratch = backend_class("onnxruntime")(
        ref.adapter, ref.config, copy.deepcopy(ref.module), torch.device("cpu"), torch.float32
    )
    assert scratch.cached_exports == 0


def test_openvino_bf16_runs_close_to_fp32():
    from pyagingrt.backends.openvino import cpu_has_bf16

    if not cpu_has_bf16():
        with pytest.raises(InputError, match="no bf16"):
            backend_class("openvino").check_precision(torch.bfloat16, torch.device("cpu"))
        return
    engine = build("openvino", "acgan", torch.bfloat16)
    assert "bfloat16" in engine.describe()["inference_precision"]
    torch.testing.assert_close(call(engine, 2), call(reference("acgan"), 2), atol=5e-2, rtol=0)


def test_backend_precisions_and_devices_are_checked():
    ort, ov = backend_class("onnxruntime"), backend_class("openvino")
    with pytest.raises(InputError, match="fp32"):
        ort.check_precision(torch.bfloat16, torch.device("cpu"))
    with pytest.raises(BackendUnavailableError, match="CPU only"):
        ov.check_available(torch.device("cuda"))


def test_onnxruntime_gpu_providers_put_tensorrt_first():
    from pyagingrt.backends.onnxruntime import CPU, CUDA, TENSORRT, providers_for

    gpu = torch.device("cuda")
    assert providers_for(torch.device("cpu"), [TENSORRT, CUDA, CPU]) == [CPU]
    assert providers_for(gpu, [CPU, CUDA, TENSORRT]) == [TENSORRT, CUDA, CPU]
    assert providers_for(gpu, [CUDA, CPU]) == [CUDA, CPU]
    with pytest.raises(BackendUnavailableError, match="onnxruntime-gpu"):
        providers_for(gpu, [CPU])
