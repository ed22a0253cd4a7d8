"""Parity checks shared by the native-backend tests (docs/conventions.md item 13).

fp32: native vs torch within a stated absolute tolerance. fp16/bf16 (flash-attention's rule): the native
engine's max error against the torch fp32 output must be at most twice the error of torch's own run of the
same model in that precision, plus a small floor for outputs where torch's low-precision error is ~0.
"""

from __future__ import annotations

import torch


def max_abs_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max())


def assert_low_precision_parity(
    native: torch.Tensor, torch_low: torch.Tensor, ref_fp32: torch.Tensor, floor: float = 1e-3
) -> None:
    """native and torch_low ran in fp16/bf16, ref_fp32 in fp32, all on the same inputs."""
    native_err = max_abs_err(native, ref_fp32)
    baseline = max_abs_err(torch_low, ref_fp32)
    assert native_err <= 2 * baseline + floor, (
        f"native low-precision error {native_err:.3g} exceeds 2 x torch's own ({baseline:.3g}) + {floor}"
    )


def make_torch_engine(adapter, config, module: torch.nn.Module, device: str = "cpu", precision: str = "fp32"):
    """A torch-backend Engine over a copy of ``module`` (the runner tests' reference)."""
    import copy

    from pyagingrt.api import PRECISIONS, Engine

    return Engine(adapter, config, copy.deepcopy(module), torch.device(device), PRECISIONS[precision])


def make_native_engine(
    adapter, config, module: torch.nn.Module, runner_cls, device: str = "cpu", precision: str = "fp32", **runner_kwargs
):
    """A NativeEngine over a copy of ``module``; ``runner_kwargs`` rebuild its runner with non-default options."""
    import copy

    from pyagingrt.api import PRECISIONS
    from pyagingrt.backends.native import NativeEngine

    engine = NativeEngine(adapter, config, copy.deepcopy(module), torch.device(device), PRECISIONS[precision])
    if runner_kwargs:
        engine.runner = runner_cls(adapter, engine.module, config, engine.device, engine.dtype, **runner_kwargs)
    return engine
