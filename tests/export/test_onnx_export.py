"""``export_onnx`` / ``agingrt export`` on the tiny configs: onnx.checker, ONNX Runtime parity against the torch
backend (the ``training/`` module in fp32) on the same call, dynamic batch, fp16, metadata, argument errors and
atomic writes.

Tolerances (docs/export.md): fp32 files within 1e-4 of the torch backend for every model (the graphs differ from
it only by rounding order: measured <= 4e-6 on these configs); fp16 files within 5e-2.
"""

from __future__ import annotations

import json
import warnings

import onnx
import onnxruntime as ort
import pytest
import torch

import pyagingrt
from pyagingrt.cli.main import main
from pyagingrt.errors import InputError, NumericalError
from pyagingrt.export import to_onnx
from pyagingrt.export.graphs import INPUT_MEANINGS, build_graph
from pyagingrt.export.to_onnx import export_onnx
from pyagingrt.ops import group_norm_act

FP32_TOL = 1e-4
# PADA: one DDIM step keeps the unrolled loop small (the graph is the same code at any step count); the larger
# graphs skip the onnxscript optimiser here (its constant folding is slow on them; ORT optimises at load).
FAST = {
    "acgan": {},
    "cusp": {"optimize": False},
    "ageflow": {"optimize": False},
    "pada": {"options": {"steps": 1}, "optimize": False},
}


def tiny_engine(model: str) -> pyagingrt.Engine:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pyagingrt.RandomWeightsWarning)
        return pyagingrt.load(model, config="tiny", device="cpu")


@pytest.fixture(scope="module")
def acgan() -> pyagingrt.Engine:
    return tiny_engine("acgan")


def ort_run(path, names, inputs) -> torch.Tensor:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {n: t.numpy() for n, t in zip(names, inputs, strict=True)})
    return torch.from_numpy(out)


@pytest.mark.parametrize("model", ["acgan", "cusp", "ageflow", "pada"])
def test_fp32_file_matches_the_torch_backend(model, tmp_path):
    engine = tiny_engine(model)
    path = tmp_path / f"{model}.onnx"
    report = export_onnx(engine, path, batch=1, **FAST[model])
    assert path.is_file()
    assert report.path == path
    onnx.checker.check_model(str(path), full_check=True)
    proto = onnx.load(str(path))
    assert [i.name for i in proto.graph.input] == list(report.input_names)
    assert not [n.op_type for n in proto.graph.node if n.domain not in ("", "ai.onnx")]  # standard ops only
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["pyagingrt.model"] == model
    assert meta["pyagingrt.input_size"] == str(engine.input_size)
    assert meta["pyagingrt.version"] == pyagingrt.__version__
    assert len(json.loads(meta["pyagingrt.age_groups"])) == len(engine.age_groups)
    assert set(json.loads(meta["pyagingrt.inputs"])) == set(report.input_names)
    assert set(INPUT_MEANINGS[model]) <= set(report.input_names)
    # the parity figure is real: recompute it here from the file, on a second seed's inputs
    sample = build_graph(engine, torch.float32, 1, seed=5, options=FAST[model].get("options"))
    got = ort_run(path, sample.input_names, sample.inputs)
    assert got.shape == sample.reference.shape
    assert float((got - sample.reference).abs().max()) <= FP32_TOL
    assert report.max_abs_diff is not None
    assert report.max_abs_diff <= FP32_TOL
    assert float(sample.reference.std()) > 1e-3  # the model computes something on these weights


def test_dynamic_batch_runs_other_batch_sizes(acgan, tmp_path):
    path = tmp_path / "acgan_dyn.onnx"
    report = export_onnx(acgan, path, batch=None)
    assert report.batch is None
    proto = onnx.load(str(path))
    assert all(i.type.tensor_type.shape.dim[0].dim_param for i in proto.graph.input)  # symbolic batch axis
    for batch in (1, 3):
        sample = build_graph(acgan, torch.float32, batch, seed=batch)
        got = ort_run(path, sample.input_names, sample.inputs)
        assert got.shape[0] == batch
        assert float((got - sample.reference).abs().max()) <= FP32_TOL


def test_meta_kernels_validate_again_after_a_dynamic_export(acgan, tmp_path):
    """The symbolic fake kernels replace the ops' C++ Meta kernels only while the graph is traced."""
    export_onnx(acgan, tmp_path / "acgan_dyn.onnx", batch=None, check=False)
    with pytest.raises(ValueError, match="shift must be on the same device as x"):
        group_norm_act(torch.zeros(2, 8, 4, 4), 8, torch.ones(8), torch.ones(8, device="meta"), impl="native")


def test_fp16_file_runs_in_onnxruntime(acgan, tmp_path):
    path = tmp_path / "acgan_fp16.onnx"
    report = export_onnx(acgan, path, batch=2, precision="fp16")
    proto = onnx.load(str(path))
    assert {p.key: p.value for p in proto.metadata_props}["pyagingrt.precision"] == "fp16"
    assert any(init.data_type == onnx.TensorProto.FLOAT16 for init in proto.graph.initializer)
    assert report.max_abs_diff is not None
    assert report.max_abs_diff <= to_onnx.FP16_TOLERANCE


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"precision": "bf16"}, "precision must be one of"),
        ({"opset": 11}, "opset must be an integer >= 18"),
        ({"batch": 0}, "batch must be a positive integer"),
    ],
)
def test_bad_arguments_raise_one_line_errors(acgan, tmp_path, kwargs, message):
    with pytest.raises(InputError, match=message) as info:
        export_onnx(acgan, tmp_path / "x.onnx", **kwargs)
    assert "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_failed_parity_writes_nothing(acgan, tmp_path, monkeypatch):
    path = tmp_path / "acgan.onnx"
    path.write_bytes(b"previous file")
    monkeypatch.setitem(to_onnx.FP32_TOLERANCE, "acgan", -1.0)  # no difference can pass
    with pytest.raises(NumericalError, match="nothing written"):
        export_onnx(acgan, path)
    assert path.read_bytes() == b"previous file"  # untouched, and no temporary file left beside it
    assert [p.name for p in tmp_path.iterdir()] == ["acgan.onnx"]


def test_cli_exports_with_random_weights_and_says_so(tmp_path, capsys):
    path = tmp_path / "acgan.onnx"
    code = main(["export", "acgan", "--random-weights", "--config", "tiny", "-o", str(path), "--batch", "2"])
    out, err = capsys.readouterr()
    assert code == 0
    assert path.is_file()
    assert "RANDOM weights" in err
    assert "max abs diff" in out
    assert "tolerance 0.0001" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["acgan", "--random-weights", "-o", "out.txt"], "the output must be a .onnx file"),
        (["acgan", "--random-weights", "-o", "m.onnx", "--opset", "9"], "opset must be an integer >= 18"),
        (["acgan", "--checkpoint", "missing.safetensors", "-o", "m.onnx"], "does not exist"),
        (["nosuchmodel", "--random-weights", "-o", "m.onnx"], "nosuchmodel"),
    ],
)
def test_cli_mistakes_are_one_line(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    assert main(["export", *args]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("agingrt: error:")
    assert message in err
    assert "\n" not in err
    assert list(tmp_path.iterdir()) == []


def test_export_needs_a_cpu_fp32_engine(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pyagingrt.RandomWeightsWarning)
        engine = pyagingrt.load("acgan", config="tiny", device="cpu", precision="bf16")
    with pytest.raises(InputError, match="fp32 engine on the CPU"):
        export_onnx(engine, tmp_path / "x.onnx")
