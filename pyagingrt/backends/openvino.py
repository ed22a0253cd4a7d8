"""``backend="openvino"``: the model's exported ONNX graph (``pyagingrt/backends/exported.py``) in OpenVINO on the CPU.

Precision: "fp32" compiles with ``INFERENCE_PRECISION_HINT=f32``; "bf16" with ``bf16``, which OpenVINO runs only
where the CPU has bf16 (``OPTIMIZATION_CAPABILITIES`` lists BF16: AVX512-BF16 or AMX), so elsewhere it is refused
rather than silently run in fp32. ``precision="auto"`` is OpenVINO's own default: bf16 where the CPU has it, else
fp32. The graph itself is exported in fp32; OpenVINO lowers it. Threads: ``torch.get_num_threads()``, as the torch
backends use, so the bench compares like with like.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..errors import BackendUnavailableError, InputError
from .exported import ExportedGraphEngine, require_module
from .openvino_untie import untie_weight_constants

_HINTS = {torch.float32: "f32", torch.bfloat16: "bf16"}


def cpu_has_bf16() -> bool:
    """True when OpenVINO's CPU plugin reports bf16 support on this machine."""
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


class OpenVINOEngine(ExportedGraphEngine):
    """The exported graph compiled for OpenVINO's CPU plugin."""

    backend = "openvino"
    summary = "the exported ONNX graph in OpenVINO (CPU; fp32, or bf16 where the CPU has it)"
    export_dtypes: ClassVar[dict[torch.dtype, torch.dtype]] = {
        torch.float32: torch.float32,
        torch.bfloat16: torch.float32,
    }

    @classmethod
    def check_available(cls, device: torch.device) -> None:
        require_module("openvino", "openvino", cls.backend)
        require_module("onnx", "openvino", cls.backend)
        if device.type != "cpu":
            raise BackendUnavailableError("backend='openvino' runs on the CPU only here; use device='cpu'")

    @classmethod
    def auto_precision(cls, device: torch.device) -> torch.dtype:
        return torch.bfloat16 if cpu_has_bf16() else torch.float32

    @classmethod
    def check_precision(cls, dtype: torch.dtype, device: torch.device) -> None:
        if dtype not in _HINTS:
            raise InputError(f"backend='openvino' runs fp32 or bf16, not {dtype}")
        if dtype == torch.bfloat16 and not cpu_has_bf16():
            raise InputError("this CPU has no bf16 support that OpenVINO uses (AVX512-BF16 or AMX); use fp32")

    def _load(self, path: Path) -> Any:
        import openvino as ov

        core = ov.Core()
        config = {"INFERENCE_PRECISION_HINT": _HINTS[self.dtype], "INFERENCE_NUM_THREADS": torch.get_num_threads()}
        if self.dtype == torch.float32:
            config["EXECUTION_MODE_HINT"] = "ACCURACY"
        model = core.read_model(str(path))
        untie_weight_constants(model)  # an OpenVINO bug: see openvino_untie.py
        compiled = core.compile_model(model, "CPU", config)
        return compiled.create_infer_request()

    def _infer(self, session: Any, feed: dict[str, Tensor]) -> Tensor:
        arrays = {name: t.detach().cpu().contiguous().numpy() for name, t in feed.items()}
        result = session.infer(arrays)
        return torch.from_numpy(result[session.model_outputs[0]].copy()).float()

    def describe(self) -> dict[str, Any]:
        import openvino as ov

        (request, _), *_ = self._sessions.values()
        hint = request.get_compiled_model().get_property("INFERENCE_PRECISION_HINT")
        return {**super().describe(), "openvino": ov.__version__, "inference_precision": str(hint)}
