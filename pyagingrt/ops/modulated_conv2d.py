"""Typed wrapper for ``torch.ops.agingrt.modulated_conv2d`` (oracle: ``pyagingrt.training.layers.modulated_conv2d``)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..training.layers.modulated_conv2d import modulated_conv2d as _oracle
from ._dispatch import Impl, use_native


def modulated_conv2d(
    x: Tensor,
    weight: Tensor,
    styles: Tensor,
    demodulate: bool = True,
    padding: int = 0,
    up: int = 1,
    eps: float = 1e-8,
    q: Tensor | None = None,
    *,
    impl: Impl = "auto",
) -> Tensor:
    """StyleGAN2 modulated convolution in activation-scaling form, y_b = d_b * conv(s_b * x_b, W).

    The native op scales x by s per (b, c_in) in a kernel, runs the shared-weight convolution through ATen
    (cuDNN on CUDA) and scales by d per (b, c_out) in a second kernel; d = (s^2 Q^T + eps)^(-1/2) with
    Q = sum_k W^2 (Karras et al. 2020, Eq. (3); docs/models/cusp.md section 3.4). Autograd: yes, for x, weight,
    styles and q (a C++ autograd kernel with an ATen backward), so ``impl="auto"`` uses the native op in
    training too.

    Args:
        x: Tensor[B, I, H, W], float32 / float16 / bfloat16 (float64 on CPU); NCHW or channels_last.
        weight: Tensor[O, I, kh, kw], x's dtype.
        styles: Tensor[B, I], float32 (float64 when x is float64): the per-sample modulation s.
        demodulate: apply d (toRGB layers do not).
        padding: zero padding of the up=1 correlation; 0 when up=2.
        up: 1 (stride-1 correlation) or 2 (stride-2 transposed conv with weight.transpose(0, 1), CUSP conv0).
        eps: added inside the demodulation rsqrt.
        q: optional Tensor[O, I] = sum_k W^2 precomputed (styles' dtype); None computes it from weight.
        impl: "native" (compiled op, raises if not built), "torch" (oracle) or "auto".

    Returns:
        Tensor[B, O, H', W'] in x's dtype and layout: H' = H + 2*padding - kh + 1 (up=1), (H - 1)*2 + kh (up=2).
    """
    if use_native(impl, x, weight, styles, q, differentiable=True):
        return torch.ops.agingrt.modulated_conv2d(
            x, weight, styles, bool(demodulate), int(padding), int(up), float(eps), q
        )
    if q is None and styles.dtype == x.dtype:
        return _oracle(x, weight, styles, demodulate, padding, up, eps)
    # float32 styles with half x (the native op's contract): the conv runs in x's dtype, d in styles' dtype
    y = _oracle(x, weight, styles.to(x.dtype), False, padding, up, eps)  # [B, O, H', W']
    if not demodulate:
        return y
    q = weight.to(styles.dtype).square().sum(dim=(2, 3)) if q is None else q  # [O, I]
    d = (styles.square() @ q.t() + eps).rsqrt()  # [B, O]
    return y * d[:, :, None, None].to(y.dtype)  # [B, O, H', W']
