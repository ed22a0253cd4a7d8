"""``backend="onnxruntime"``: the model's exported ONNX graph (``pyagingrt/backends/exported.py``) in ONNX Runtime.

Execution providers, in ONNX Runtime's order of preference: on a GPU, TensorRT's provider first where the
installed onnxruntime has it, then CUDA's, then the CPU's (for the nodes the others do not take); on the CPU, the
CPU provider with ``torch.get_num_threads()`` intra-op threads (the same count as the torch backends, so the
bench compares like with like). Precision: fp32 (CPU and GPU), fp16 on a GPU (the graph exported in fp16).

Every call goes through IO binding: the inputs are bound where the prepared tensors live and the output is
bound to a torch tensor allocated on the engine's device, so on a GPU nothing is copied through the host. The
same binding code runs on the CPU (device type "cpu"), which is how the tests exercise it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..errors import BackendUnavailableError, InputError
from .exported import ExportedGraphEngine, require_module

CPU, CUDA, TENSORRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"

_NUMPY_DTYPES = {torch.float32: "float32", torch.float16: "float16", torch.int64: "int64", torch.int32: "int32"}


def providers_for(device: torch.device, available: list[str]) -> list[str]:
    """The providers to ask for on ``device``, given ``onnxruntime.get_available_providers()``.

    Raises:
        BackendUnavailableError: a GPU was asked for and this onnxruntime has no CUDA provider.
    """
    if device.type == "cpu":
        return [CPU]
    if CUDA not in available:
        raise BackendUnavailableError(
            "backend='onnxruntime' on a GPU needs onnxruntime's CUDA provider (this onnxruntime has "
            f"{', '.join(available)}); install onnxruntime-gpu instead of onnxruntime, or use device='cpu'"
        )
    return [p for p in (TENSORRT, CUDA) if p in available] + [CPU]


class OnnxRuntimeEngine(ExportedGraphEngine):
    """The exported graph in an ``onnxruntime.InferenceSession``, called through IO binding."""

    backend = "onnxruntime"
    summary = "the exported ONNX graph in ONNX Runtime (CPU; CUDA with TensorRT's provider first where installed)"
    export_dtypes: ClassVar[dict[torch.dtype, torch.dtype]] = {
        torch.float32: torch.float32,
        torch.float16: torch.float16,
    }

    @classmethod
    def check_available(cls, device: torch.device) -> None:
        ort = require_module("onnxruntime", "export", cls.backend)
        require_module("onnx", "export", cls.backend)
        providers_for(device, ort.get_available_providers())

    @classmethod
    def check_precision(cls, dtype: torch.dtype, device: torch.device) -> None:
        if dtype == torch.float32 or (dtype == torch.float16 and device.type == "cuda"):
            return
        raise InputError(f"backend='onnxruntime' runs fp32 (and fp16 on a GPU), not {dtype} on {device.type}")

    def _load(self, path: Path) -> Any:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.device.type == "cpu":
            options.intra_op_num_threads = torch.get_num_threads()
        providers = providers_for(self.device, ort.get_available_providers())
        if self.device.type == "cuda":
            device_id = {"device_id": self.device.index or 0}
            provider_options = [device_id if p in (TENSORRT, CUDA) else {} for p in providers]
            return ort.InferenceSession(str(path), options, providers=providers, provider_options=provider_options)
        return ort.InferenceSession(str(path), options, providers=providers)

    def _infer(self, session: Any, feed: dict[str, Tensor]) -> Tensor:
        device_type, device_id = self.device.type, self.device.index or 0
        binding = session.io_binding()
        bound = []  # keep every bound tensor alive until the run is over
        for name, value in feed.items():
            t = value.to(self.device).contiguous()
            bound.append(t)
            binding.bind_input(name, device_type, device_id, _NUMPY_DTYPES[t.dtype], list(t.shape), t.data_ptr())
        out_meta = session.get_outputs()[0]
        batch = next(iter(feed.values())).shape[0]
        shape = [batch, *out_meta.shape[1:]]
        out_dtype = torch.float16 if out_meta.type == "tensor(float16)" else torch.float32
        out = torch.empty(shape, dtype=out_dtype, device=self.device)
        binding.bind_output(out_meta.name, device_type, device_id, _NUMPY_DTYPES[out_dtype], shape, out.data_ptr())
        binding.synchronize_inputs()
        session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        return out.float()

    def describe(self) -> dict[str, Any]:
        (session, _), *_ = self._sessions.values()
        import onnxruntime as ort

        return {**super().describe(), "onnxruntime": ort.__version__, "providers": session.get_providers()}
