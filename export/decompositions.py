"""Standard-op forms of the custom ops ``torch.ops.agingrt.*``, used when a graph is exported to ONNX.

The inference graphs call the compiled ops (when the extension is built), which ``torch.export`` keeps as
opaque nodes traced through their Meta kernels. Before the ONNX translation, :func:`decompose` replaces each
one by its pure-PyTorch form: the same ``impl="torch"`` code the op wrappers in ``pyagingrt/ops/`` run when
the extension is missing (the oracles in ``pyagingrt.training.layers``), so the exported file uses standard
ONNX operators only and any ONNX runtime runs it. Why a decomposition table rather than onnxscript
translations: see docs/export.md ("Custom ops").
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..ops.ddim_step import ddim_step
from ..ops.group_norm_act import group_norm_act
from ..ops.guided_backprop_mask import guided_backprop_mask, guided_backprop_mask_with_taps, guided_relu_backward
from ..ops.inv_conv1x1 import inv_conv1x1
from ..ops.masked_gaussian_blur import masked_gaussian_blur_with_taps


def _group_norm_act(
    x: Tensor, groups: int, scale: Tensor, shift: Tensor, eps: float = 1e-5, act: str = "none"
) -> Tensor:
    return group_norm_act(x, groups, scale, shift, eps, act, impl="torch")  # type: ignore[arg-type]


def _inv_conv1x1(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    return inv_conv1x1(x, weight, bias, impl="torch")


def _ddim_step(x_t: Tensor, eps: Tensor, alpha_bar_t: float, alpha_bar_prev: float, clip: bool = True) -> Tensor:
    return ddim_step(x_t, eps, alpha_bar_t, alpha_bar_prev, clip, impl="torch")


def _guided_relu_backward(grad_out: Tensor, act: Tensor) -> Tensor:
    return guided_relu_backward(grad_out, act, impl="torch")


def _guided_backprop_mask(grad: Tensor, kernel_size: int, sigma: float) -> Tensor:
    return guided_backprop_mask(grad, kernel_size, sigma, impl="torch")


def _guided_backprop_mask_with_taps(grad: Tensor, taps: Tensor) -> Tensor:
    return guided_backprop_mask_with_taps(grad, taps, impl="torch")


def _masked_gaussian_blur_with_taps(features: Tensor, mask: Tensor, taps: Tensor, flags: Tensor) -> Tensor:
    return masked_gaussian_blur_with_taps(features, mask, taps, flags, impl="torch")


_FORMS: dict[str, Callable[..., Tensor]] = {
    "group_norm_act": _group_norm_act,
    "inv_conv1x1": _inv_conv1x1,
    "ddim_step": _ddim_step,
    "guided_relu_backward": _guided_relu_backward,
    "guided_backprop_mask": _guided_backprop_mask,
    "guided_backprop_mask_with_taps": _guided_backprop_mask_with_taps,
    "masked_gaussian_blur_with_taps": _masked_gaussian_blur_with_taps,
}


def decomposition_table() -> dict[torch._ops.OpOverload, Callable[..., Tensor]]:
    """``torch.ops.agingrt.<op>.default`` -> its standard-op form, for each op the extension registers.

    Empty without the compiled extension: the graphs then call the same forms directly and contain no custom op.
    """
    from .._extension import has_native

    if not has_native():
        return {}
    namespace = torch.ops.agingrt
    return {getattr(namespace, name).default: form for name, form in _FORMS.items() if hasattr(namespace, name)}


def decompose(program: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    """The program with every custom op replaced by its standard-op form (and the default ATen decompositions)."""
    table = torch.export.default_decompositions()
    table.update(decomposition_table())
    return program.run_decompositions(table)


def custom_ops_in(program: torch.export.ExportedProgram) -> list[str]:
    """Names of the ``agingrt::`` ops still in a program's graph (empty after :func:`decompose`)."""
    return sorted(
        {
            str(node.target)
            for node in program.graph.nodes
            if node.op == "call_function" and str(node.target).startswith("agingrt.")
        }
    )
