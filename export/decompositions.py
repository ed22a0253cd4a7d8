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
import torch.nn.functional as F
from torch import Tensor

from ..ops.ddim_step import ddim_step
from ..ops.group_norm_act import group_norm_act
from ..ops.guided_backprop_mask import guided_backprop_mask, guided_backprop_mask_with_taps, guided_relu_backward
from ..ops.inv_conv1x1 import inv_conv1x1
from ..ops.masked_gaussian_blur import FLAG_G_IDENTITY, FLAG_M_IDENTITY, FLAG_SAME, tap_dtype


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


def per_sample_blur(x: Tensor, taps: Tensor) -> Tensor:
    """Separable zero-padded blur of x [B, C, H, W] with per-sample taps [B, K]: rows then columns, each a sum of K
    shifted, scaled copies. The op wrappers' torch form runs a grouped conv with B*C groups instead, but ONNX needs
    a conv's group count to be a constant, which a dynamic batch axis would not give; this form has no such axis."""
    kernel = taps.shape[1]
    pad = (kernel - 1) // 2
    height, width = x.shape[2], x.shape[3]
    weight = taps.to(x.dtype)[:, :, None, None, None]  # [B, K, 1, 1, 1]
    padded = F.pad(x, (pad, pad, 0, 0))  # [B, C, H, W + 2 pad]
    rows = sum(weight[:, i] * padded[:, :, :, i : i + width] for i in range(kernel))  # [B, C, H, W]
    padded = F.pad(rows, (0, 0, pad, pad))  # [B, C, H + 2 pad, W]
    return sum(weight[:, i] * padded[:, :, i : i + height, :] for i in range(kernel))  # [B, C, H, W]


def _masked_gaussian_blur_with_taps(features: Tensor, mask: Tensor, taps: Tensor, flags: Tensor) -> Tensor:
    """The wrapper's torch form (flags applied with ``torch.where``) with :func:`per_sample_blur` as the blur."""
    work = tap_dtype(features.dtype)
    f = features.to(work)  # [B, C, H, W]
    m = mask.to(work)  # [B, 1, H, W]
    bits = flags.to(torch.int32)[:, None, None, None]  # [B, 1, 1, 1]
    blurred_g = torch.where((bits & FLAG_G_IDENTITY) != 0, f, per_sample_blur(f, taps[:, 1]))  # [B, C, H, W]
    blurred_m = torch.where((bits & FLAG_M_IDENTITY) != 0, f, per_sample_blur(f, taps[:, 0]))  # [B, C, H, W]
    out = torch.where((bits & FLAG_SAME) != 0, blurred_g, m * blurred_m + (1 - m) * blurred_g)  # [B, C, H, W]
    return out.to(features.dtype)


def _winograd_conv3x3(x: Tensor, weight: Tensor, u: Tensor, bias: Tensor | None = None, chunk_tiles: int = 0) -> Tensor:
    """The convolution the op computes, as a standard Conv: the runtime then picks its own algorithm (the
    Winograd transforms are a CPU speed choice, not part of the function)."""
    return F.conv2d(x, weight, bias, padding=1)


_FORMS: dict[str, Callable[..., Tensor]] = {
    "group_norm_act": _group_norm_act,
    "inv_conv1x1": _inv_conv1x1,
    "ddim_step": _ddim_step,
    "guided_relu_backward": _guided_relu_backward,
    "guided_backprop_mask": _guided_backprop_mask,
    "guided_backprop_mask_with_taps": _guided_backprop_mask_with_taps,
    "masked_gaussian_blur_with_taps": _masked_gaussian_blur_with_taps,
    "winograd_conv3x3": _winograd_conv3x3,
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
    """The program with every custom op replaced by its standard-op form; other ops are left for the ONNX
    exporter's own decomposition pass (a table with only these entries decomposes nothing else)."""
    table = decomposition_table()
    return program.run_decompositions(table) if table else program


def custom_ops_in(program: torch.export.ExportedProgram) -> list[str]:
    """Names of the ``agingrt::`` ops still in a program's graph (empty after :func:`decompose`)."""
    return sorted(
        {
            str(node.target)
            for node in program.graph.nodes
            if node.op == "call_function" and str(node.target).startswith("agingrt.")
        }
    )
