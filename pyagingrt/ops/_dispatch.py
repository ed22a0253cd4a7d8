"""How a typed op wrapper picks between the compiled op and the pure-PyTorch oracle.

``impl="native"`` always runs ``torch.ops.agingrt.<op>`` and raises NativeExtensionError when the
extension is missing (never a silent fallback, docs/conventions.md item 6). ``impl="torch"`` always runs the oracle
from ``pyagingrt.training.layers``. ``impl="auto"`` runs the native op when the extension is built and no
input needs a gradient (the native ops have no autograd unless stated), else the oracle.
"""

from __future__ import annotations

from typing import Literal

import torch

from .._extension import has_native, require_native
from ..errors import InputError

Impl = Literal["auto", "native", "torch"]
IMPLS = ("auto", "native", "torch")


def use_native(impl: str, *tensors: torch.Tensor | None, differentiable: bool = False) -> bool:
    """True when the wrapper should call the compiled op."""
    if impl not in IMPLS:
        raise InputError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl == "native":
        if not has_native():  # has_native() is a constant to torch.compile; require_native() reads the extension
            require_native()  # raises NativeExtensionError with the build command
        return True
    if impl == "torch":
        return False
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    return has_native() and (differentiable or not needs_grad)
