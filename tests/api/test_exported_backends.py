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


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
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


def _shared_weight_graph(kind: str, w):
    """y = layer(x, W), z = its transpose applied to g, both reading the one constant W (as CUSP's backward)."""
    from onnx import TensorProto, helper, numpy_helper

    if kind == "linear":  # y = x W^T (torch's linear), z = g W
        nodes = [helper.make_node("Gemm", ["x", "W"], ["y"], transB=1), helper.make_node("MatMul", ["g", "W"], ["z"])]
        shapes = {"x": [2, 16], "g": [2, 16], "y": [2, 16], "z": [2, 16]}
    else:  # y = conv(x, W), z = conv_transpose(g, W)
        nodes = [
            helper.make_node("Conv", ["x", "W"], ["y"], pads=[1, 1, 1, 1]),
            helper.make_node("ConvTranspose", ["g", "W"], ["z"], pads=[1, 1, 1, 1]),
        ]
        shapes = {"x": [1, 16, 5, 5], "g": [1, 16, 5, 5], "y": [1, 16, 5, 5], "z": [1, 16, 5, 5]}
    io = {n: helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n, shape in shapes.items()}
    graph = helper.make_graph(
        nodes, "shared_weight", [io["x"], io["g"]], [io["y"], io["z"]], [numpy_helper.from_array(w, "W")]
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9), shapes


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_openvino_reads_a_weight_shared_by_two_layers_in_each_layout(kind):
    """CUSP's guided backward reads each DEX weight in its layer and in that layer's transpose; OpenVINO 2026.4
    computed the second with the first's layout when both read one constant. untie_weight_constants gives each
    reader its own copy; ONNX Runtime is the reference."""
    import numpy as np
    import onnxruntime as ort
    import openvino as ov

    from pyagingrt.backends.openvino_untie import untie_weight_constants

    rng = np.random.default_rng(0)
    w = rng.standard_normal((16, 16) if kind == "linear" else (16, 16, 3, 3)).astype(np.float32)
    proto, shapes = _shared_weight_graph(kind, w)
    feed = {n: rng.standard_normal(shapes[n]).astype(np.float32) for n in ("x", "g")}
    want = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(["y", "z"], feed)
    core = ov.Core()
    model = core.read_model(proto.SerializeToString(), b"")
    assert untie_weight_constants(model) == 1
    request = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"}).create_infer_request()
    got = {next(iter(port.get_names())): value for port, value in request.infer(feed).items()}
    np.testing.assert_allclose(got["y"], want[0], atol=1e-4, rtol=0)
    np.testing.assert_allclose(got["z"], want[1], atol=1e-4, rtol=0)


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
