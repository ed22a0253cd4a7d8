"""``export_onnx``: a model's inference graph -> a checked ONNX file, with ONNX Runtime parity against torch.

Steps (docs/export.md): build the native runner's graph on the CPU in the export precision; ``torch.export``
it (optionally with a dynamic batch axis); replace the custom ops by their standard-op forms
(:mod:`.decompositions`); translate with the ``torch.onnx`` dynamo exporter; add the metadata; check with
``onnx.checker``; run the file in ONNX Runtime on the example inputs and compare with the torch backend (the
``training/`` module in fp32) on the same call. The file appears at its path only when all of that passed.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .._version import __version__
from ..errors import InputError, NumericalError, OutputError
from ..ops.fake_kernels import symbolic_fake_kernels
from .decompositions import custom_ops_in, decompose
from .graphs import GraphSample, build_graph

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16}
DEFAULT_OPSET = 18
MIN_OPSET = 18  # the dynamo exporter's translations target opset 18 and later
#: Max |ONNX Runtime - torch backend| allowed for an fp32 export, per model, on outputs in [0, 1]. The graphs
#: differ from the torch backend only by rounding order (measured on the tiny configs: docs/export.md).
FP32_TOLERANCE = {"acgan": 1e-4, "cusp": 1e-4, "ageflow": 1e-4, "pada": 1e-4}
#: fp16 files are checked the same way, with this bound (a half-precision graph against the fp32 module).
FP16_TOLERANCE = 5e-2


@dataclass
class ExportReport:
    """What :func:`export_onnx` did: the file, its inputs, and the parity figures."""

    path: Path
    model: str
    precision: str
    batch: int | None  # None: dynamic
    opset: int
    input_names: tuple[str, ...]
    max_abs_diff: float | None  # ONNX Runtime vs the torch backend (None when not run)
    max_abs_diff_graph: float | None  # ONNX Runtime vs the same graph run by torch
    tolerance: float
    ort_provider: str | None
    metadata: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        batch = "dynamic" if self.batch is None else str(self.batch)
        lines = [
            f"wrote {self.path} ({self.model}, {self.precision}, batch {batch}, opset {self.opset})",
            f"inputs: {', '.join(self.input_names)}",
        ]
        if self.max_abs_diff is not None:
            lines.append(
                f"ONNX Runtime ({self.ort_provider}) vs torch backend: max abs diff {self.max_abs_diff:.3g} "
                f"(tolerance {self.tolerance:g}); vs the torch graph: {self.max_abs_diff_graph:.3g}"
            )
        return "\n".join(lines)


def check_export_args(precision: str, opset: int, batch: int | None) -> torch.dtype:
    """The export dtype, after checking the arguments (InputError with one line otherwise)."""
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if not isinstance(opset, int) or opset < MIN_OPSET:
        raise InputError(f"opset must be an integer >= {MIN_OPSET} (the torch.onnx dynamo exporter's), got {opset!r}")
    if batch is not None and (not isinstance(batch, int) or batch < 1):
        raise InputError(f"batch must be a positive integer, got {batch!r}")
    return PRECISIONS[precision]


def export_program(sample: GraphSample, dynamic_batch: bool) -> torch.export.ExportedProgram:
    """``torch.export`` of the sample's graph (batch axis dynamic when asked), custom ops still in it."""
    dynamic_shapes = None
    if dynamic_batch:
        batch = torch.export.Dim("batch", min=1, max=1024)
        dynamic_shapes = (tuple({0: batch} for _ in sample.inputs),)  # forward(*tensors): one varargs entry
    with torch.no_grad():
        return torch.export.export(sample.graph, sample.inputs, dynamic_shapes=dynamic_shapes, strict=False)


def to_onnx_model(sample: GraphSample, *, dynamic_batch: bool, opset: int, optimize: bool = True) -> Any:
    """The sample's graph as an ``onnx.ModelProto`` of standard operators only (``optimize``: the onnxscript
    optimiser's constant folding and cleanup; slow on large graphs, and ONNX Runtime optimises at load anyway)."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)  # the exporter's notes (e.g. "torchvision is not installed") are not the user's
    try:
        # symbolic_fake_kernels: the ops' C++ Meta kernels would fix the batch axis to the example's, in
        # torch.export and again when the decompositions re-trace the program
        with warnings.catch_warnings(), symbolic_fake_kernels():
            # torch's own deprecation notes from inside torch.export / torch.onnx, not about the caller's code
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            program = decompose(export_program(sample, dynamic_batch))
            left = custom_ops_in(program)
            if left:
                raise NumericalError(f"no standard-op form for the custom op(s) {', '.join(left)}: cannot export")
            onnx_program = torch.onnx.export(
                program,
                sample.inputs,
                dynamo=True,
                opset_version=opset,
                input_names=list(sample.input_names),
                output_names=["aged"],
                optimize=optimize,
                verbose=False,
            )
    finally:
        logger.setLevel(level)
    return onnx_program.model_proto


def file_metadata(engine: Any, sample: GraphSample, precision: str, batch: int | None, opset: int) -> dict[str, str]:
    """The metadata_props written into the file (all strings; JSON for structured values)."""
    adapter = engine.adapter
    out_shape = list(sample.reference.shape[1:])
    return {
        "pyagingrt.version": __version__,
        "pyagingrt.model": adapter.name,
        "pyagingrt.title": adapter.title,
        "pyagingrt.config_name": engine.config_name or "custom",
        "pyagingrt.config": json.dumps(adapter.config_to_dict(engine.config), default=str),
        "pyagingrt.age_groups": json.dumps([g.to_dict() for g in engine.age_groups]),
        "pyagingrt.input_size": str(engine.input_size),
        "pyagingrt.precision": precision,
        "pyagingrt.batch": "dynamic" if batch is None else str(batch),
        "pyagingrt.opset": str(opset),
        "pyagingrt.inputs": json.dumps(sample.describe_inputs()),
        "pyagingrt.outputs": json.dumps({"aged": f"float32 [B, {', '.join(map(str, out_shape))}] in [0, 1]"}),
        "pyagingrt.options": json.dumps(sample.options, default=str),
        "pyagingrt.weights": "random (meaningless output)" if engine.source is None else json.dumps(engine.source),
    }


def run_onnxruntime(path: Path, names: tuple[str, ...], inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, str]:
    """Run the file in ONNX Runtime on the CPU provider: (output as a float32 tensor, provider name)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {name: t.detach().cpu().numpy() for name, t in zip(names, inputs, strict=True)}
    (out,) = session.run(None, feed)
    return torch.from_numpy(out).float(), session.get_providers()[0]


def _atomic_target(path: Path) -> tuple[Path, Path]:
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise OutputError(f"cannot write {path}: folder {folder} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    os.close(fd)
    return folder, Path(tmp)


def export_onnx(
    engine: Any,
    path: str | os.PathLike[str],
    *,
    batch: int | None = 1,
    precision: str = "fp32",
    opset: int = DEFAULT_OPSET,
    check: bool = True,
    seed: int = 0,
    options: dict[str, Any] | None = None,
    optimize: bool = True,
) -> ExportReport:
    """Export a loaded model's inference graph to ONNX and check it.

    Args:
        engine: an fp32 torch-backend :class:`~pyagingrt.Engine` on the CPU (``pyagingrt.load(model,
            checkpoint, device="cpu")``); its module is folded into the graph and is the parity reference.
        path: the .onnx file to write (written to a temporary file and renamed at the end).
        batch: the graph's batch size, or None for a dynamic batch axis (traced at batch 2).
        precision: "fp32" or "fp16" (the native engine's precision rules: weights and activations in fp16,
            statistics, tables and the blend in fp32).
        opset: ONNX opset (>= 18).
        check: run ``onnx.checker`` and the ONNX Runtime parity check (always on in the CLI).
        seed: seed of the example inputs (and of the model's own draws: PADA noise, CUSP random noise).
        options: model options fixed into the graph (e.g. PADA ``steps``); default the model's defaults.
        optimize: run the onnxscript optimiser on the file (default on).

    Returns:
        An :class:`ExportReport` with the parity figures.

    Raises:
        InputError (bad arguments), NumericalError (parity outside the tolerance: nothing is written),
        OutputError (unwritable path).
    """
    import onnx

    dtype = check_export_args(precision, opset, batch)
    if engine.device.type != "cpu" or engine.dtype != torch.float32:
        raise InputError("export_onnx needs an fp32 engine on the CPU: load(model, checkpoint, device='cpu')")
    target = Path(path)
    sample = build_graph(engine, dtype, 2 if batch is None else batch, seed, options)
    model_proto = to_onnx_model(sample, dynamic_batch=batch is None, opset=opset, optimize=optimize)
    metadata = file_metadata(engine, sample, precision, batch, opset)
    del model_proto.metadata_props[:]
    for key, value in metadata.items():
        model_proto.metadata_props.add(key=key, value=value)
    model_proto.doc_string = f"pyagingrt {__version__}: {engine.adapter.title}, {precision} inference graph"

    _, tmp = _atomic_target(target)
    tolerance = FP32_TOLERANCE[engine.adapter.name] if precision == "fp32" else FP16_TOLERANCE
    report = ExportReport(
        target, engine.adapter.name, precision, batch, opset, sample.input_names, None, None, tolerance, None, metadata
    )
    try:
        onnx.save_model(model_proto, str(tmp))
        if check:
            onnx.checker.check_model(str(tmp), full_check=True)
            got, provider = run_onnxruntime(tmp, sample.input_names, sample.inputs)
            with torch.no_grad():
                graph_out = sample.graph(*sample.inputs).float()
            report.ort_provider = provider
            report.max_abs_diff = float((got - sample.reference).abs().max())
            report.max_abs_diff_graph = float((got - graph_out).abs().max())
            if not report.max_abs_diff <= tolerance:  # NaN fails too
                raise NumericalError(
                    f"{engine.adapter.name} {precision} ONNX file differs from the torch backend by "
                    f"{report.max_abs_diff:.3g} > {tolerance:g}; nothing written"
                )
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
    return report
