"""``backend="onnxruntime"``: not built yet: it runs the graph that ``pyagingrt.export`` writes to ONNX, which this
version does not have; loading it raises BackendUnavailableError."""

from __future__ import annotations

import torch

from ..api import Engine
from ..errors import BackendUnavailableError


class OnnxRuntimeEngine(Engine):
    backend = "onnxruntime"
    summary = "the exported ONNX graph in ONNX Runtime (CPU, CUDA; TensorRT's provider first where installed)"

    @classmethod
    def check_available(cls, device: torch.device) -> None:
        raise BackendUnavailableError(f"backend={cls.backend!r} needs the ONNX export, which this version lacks")
