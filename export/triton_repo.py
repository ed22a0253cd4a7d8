"""A Triton model repository from a model's ONNX export: ``agingrt export MODEL --triton-repo DIR``.

    DIR/NAME/config.pbtxt     platform onnxruntime_onnx, max_batch_size, dynamic batching
    DIR/NAME/1/model.onnx     the inference graph with a dynamic batch axis (export_onnx, checked in ORT)

The full Triton server (not the PyTriton wheel) serves it with its ONNX Runtime backend, or with TensorRT
through ORT's TensorRT execution accelerator (``tensorrt=True``): no Python in the request path. The graph's
inputs are the prepared tensors described in docs/export.md (images, target tables, noise), not photos.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from pyagingrt.errors import InputError, OutputError

from .to_onnx import ExportReport, export_onnx

__all__ = ["config_pbtxt", "write_triton_repository"]

# ONNX TensorProto element types -> Triton data types
_TRITON_TYPES = {1: "TYPE_FP32", 2: "TYPE_UINT8", 3: "TYPE_INT8", 6: "TYPE_INT32", 7: "TYPE_INT64", 9: "TYPE_BOOL",
                 10: "TYPE_FP16", 11: "TYPE_FP64", 16: "TYPE_BF16"}  # fmt: skip


def _tensors(values: Any) -> list[tuple[str, str, list[int]]]:
    """(name, Triton type, dims without the batch axis; -1 where symbolic) of ONNX graph inputs or outputs."""
    out = []
    for v in values:
        tensor_type = v.type.tensor_type
        if tensor_type.elem_type not in _TRITON_TYPES:
            raise InputError(f"ONNX tensor {v.name} has element type {tensor_type.elem_type}, which Triton lacks")
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor_type.shape.dim]
        out.append((v.name, _TRITON_TYPES[tensor_type.elem_type], dims[1:]))
    return out


def config_pbtxt(
    onnx_path: Path, name: str, max_batch: int, max_queue_delay_us: int, tensorrt: bool = False, fp16: bool = False
) -> str:
    """The config.pbtxt for ``onnx_path`` (every input and output batched along axis 0)."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}

    def block(kind: str, tensors: list[tuple[str, str, list[int]]]) -> str:
        items = []
        for n, t, dims in tensors:
            # a [B] tensor: Triton wants non-empty dims, so clients send [B, 1] and the model sees [B]
            shape = (
                f"dims: [ {', '.join(str(d) for d in dims)} ]" if dims else "dims: [ 1 ]\n    reshape: { shape: [ ] }"
            )
            items.append(f'  {{\n    name: "{n}"\n    data_type: {t}\n    {shape}\n  }}')
        return f"{kind} [\n" + ",\n".join(items) + "\n]"

    inputs = _tensors([v for v in graph.input if v.name not in initializers])
    lines = [
        f'name: "{name}"',
        'platform: "onnxruntime_onnx"',
        f"max_batch_size: {max_batch}",
        block("input", inputs),
        block("output", _tensors(graph.output)),
        f"dynamic_batching {{\n  max_queue_delay_microseconds: {max_queue_delay_us}\n}}",
        "instance_group [\n  {\n    count: 1\n    kind: KIND_AUTO\n  }\n]",
    ]
    if tensorrt:  # ORT's TensorRT execution provider inside Triton's onnxruntime backend
        precision = "FP16" if fp16 else "FP32"
        lines.append(
            "optimization {\n  execution_accelerators {\n    gpu_execution_accelerator : [\n      {\n"
            '        name : "tensorrt"\n'
            f'        parameters {{ key: "precision_mode" value: "{precision}" }}\n'
            '        parameters { key: "max_workspace_size_bytes" value: "4294967296" }\n'
            "      }\n    ]\n  }\n}"
        )
    return "\n".join(lines) + "\n"


def write_triton_repository(
    engine: Any,
    repo: str | os.PathLike[str],
    *,
    name: str | None = None,
    max_batch: int = 32,
    max_queue_delay_us: int = 2000,
    precision: str = "fp32",
    opset: int = 18,
    tensorrt: bool = False,
) -> tuple[Path, ExportReport]:
    """Write ``repo/NAME/{config.pbtxt, 1/model.onnx}`` for ``engine`` (an fp32 CPU engine, as export_onnx).

    The model folder is built beside its target and renamed into place at the end; an existing one is refused.
    Returns the model folder and the export report (ONNX Runtime parity at a dynamic batch).
    """
    name = name or engine.model
    if max_batch < 1 or max_queue_delay_us < 0:
        raise InputError("max_batch must be >= 1 and max_queue_delay_us >= 0")
    root = Path(repo)
    root.mkdir(parents=True, exist_ok=True)
    target = root / name
    if target.exists():
        raise OutputError(f"{target} already exists; remove it or choose another --triton-name")
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".partial", dir=root))
    try:
        (staging / "1").mkdir()
        report = export_onnx(engine, staging / "1" / "model.onnx", batch=None, precision=precision, opset=opset)
        text = config_pbtxt(staging / "1" / "model.onnx", name, max_batch, max_queue_delay_us, tensorrt,
                            fp16=precision == "fp16")  # fmt: skip
        (staging / "config.pbtxt").write_text(text)
        os.chmod(staging, 0o755)
        staging.rename(target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    report.path = target / "1" / "model.onnx"
    return target, report
