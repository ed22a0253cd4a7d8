"""`agingrt export --triton-repo`: a Triton model repository (config.pbtxt + 1/model.onnx, dynamic batch)."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import pyagingrt  # noqa: E402
from pyagingrt.cli.main import main  # noqa: E402


@pytest.fixture(scope="module")
def tiny_acgan():
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pyagingrt.RandomWeightsWarning)
        return pyagingrt.load("acgan", config="tiny", device="cpu")


def _config_tensors(text: str, kind: str) -> dict[str, tuple[str, list[int]]]:
    block = re.search(rf"^{kind} \[\n(.*?)\n\]", text, re.DOTALL | re.MULTILINE).group(1)
    found = re.findall(
        r'name: "([^"]+)"\s+data_type: (\w+)\s+dims: \[ ([^\]]*) \](\s+reshape: \{ shape: \[ \] \})?', block
    )
    # dims as the model sees them: [1] reshaped to [] is a [B] tensor
    return {n: (t, [] if reshape else [int(d) for d in dims.split(", ")]) for n, t, dims, reshape in found}


def test_the_repository_describes_the_onnx_file_and_serves_any_batch(tiny_acgan, tmp_path):
    from pyagingrt.export.graphs import build_graph
    from pyagingrt.export.triton_repo import write_triton_repository

    folder, report = write_triton_repository(tiny_acgan, tmp_path / "repo", max_batch=8, max_queue_delay_us=500)
    assert folder == tmp_path / "repo" / "acgan"
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")) == ["1", "1/model.onnx", "config.pbtxt"]
    assert report.batch is None
    assert report.max_abs_diff <= report.tolerance
    text = (folder / "config.pbtxt").read_text()
    assert 'name: "acgan"' in text
    assert 'platform: "onnxruntime_onnx"' in text
    assert "max_batch_size: 8" in text
    assert "max_queue_delay_microseconds: 500" in text

    session = ort.InferenceSession(str(folder / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    sample = build_graph(tiny_acgan, torch.float32, 3, seed=1)  # another batch size than the export's
    inputs = _config_tensors(text, "input")
    assert list(inputs) == [i.name for i in session.get_inputs()] == list(sample.input_names)
    for tensor, value in zip(session.get_inputs(), sample.inputs, strict=True):
        assert inputs[tensor.name][1] == list(value.shape[1:])  # dims without the batch axis
    outputs = _config_tensors(text, "output")
    assert list(outputs) == [o.name for o in session.get_outputs()]
    feed = {name: value.numpy() for name, value in zip(sample.input_names, sample.inputs, strict=True)}
    got = session.run(None, feed)[0]
    assert got.shape[0] == 3
    assert list(got.shape[1:]) == next(iter(outputs.values()))[1]
    np.testing.assert_allclose(got, sample.reference.numpy(), atol=report.tolerance)


def test_the_cli_writes_it_and_refuses_to_overwrite(tmp_path, capsys):
    args = ["export", "acgan", "--random-weights", "--config", "tiny", "--triton-repo", str(tmp_path / "repo")]
    assert main(args) == 0
    assert (tmp_path / "repo" / "acgan" / "config.pbtxt").is_file()
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "already exists" in err
    assert [p.name for p in (tmp_path / "repo").iterdir()] == ["acgan"]  # no staging folder left behind
