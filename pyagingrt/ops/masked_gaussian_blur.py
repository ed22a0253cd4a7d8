"""Typed wrappers for CUSP's masked dual Gaussian blur (oracle: ``training.layers.masked_gaussian_blur``).

Three entries over one implementation (``csrc/ops/masked_gaussian_blur.cpp``):

* :func:`masked_gaussian_blur_tables` builds the per-sample taps and flags from the sigmas on the host;
* :func:`masked_gaussian_blur_with_taps` blurs with those tables. It is the **CUDA-graph-safe** entry: it reads no
  tensor value on the host and copies nothing between host and device, so it can be captured over static table
  buffers that are refilled before each replay (the CUSP native runner does this);
* :func:`masked_gaussian_blur` takes the sigmas and is the two above in sequence, so for the same sigmas all give
  the same bits. It reads the sigmas on the host on every call: not capturable.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import InputError
from ..training.layers import masked_gaussian_blur as _oracle
from ._dispatch import Impl, use_native

# Per-sample flag bits of the tables (csrc/kernels/masked_gaussian_blur.h, enum MaskedBlurFlag).
FLAG_M_IDENTITY = 1  # sigma_m == 0: F conv k_m is F itself
FLAG_G_IDENTITY = 2  # sigma_g == 0
FLAG_SAME = 4  # sigma_m == sigma_g: the single blur, no blend (M is not read)


def _sigma_vector(sigma: Tensor | float, batch: int, name: str) -> Tensor:
    """A scalar or [B] sigma as the op's float64 [B] tensor (kept on its device)."""
    values = torch.as_tensor(sigma)
    if values.dtype not in (torch.float32, torch.float64):
        values = values.to(torch.float64)
    values = values.reshape(-1)
    if values.numel() == 1:
        values = values.expand(batch)
    if values.numel() != batch:
        raise InputError(
            f"{name} must be a scalar or have one value per sample ({batch}), got {values.numel()} values; "
            f"pass a float or a Tensor[{batch}]"
        )
    return values


def tap_dtype(features_dtype: torch.dtype) -> torch.dtype:
    """The taps' dtype for features of this dtype: float64 for float64, else float32 (the kernels' accumulator)."""
    return torch.float64 if features_dtype == torch.float64 else torch.float32


def masked_gaussian_blur(
    features: Tensor,
    mask: Tensor,
    sigma_m: Tensor | float,
    sigma_g: Tensor | float,
    kernel_size: int,
    *,
    impl: Impl = "auto",
) -> Tensor:
    """CUSP Eq. (2): ``M * (F conv k_m) + (1 - M) * (F conv k_g)`` with separable, zero-padded Gaussians.

    sigma 0 is the identity, bitwise; where sigma_m == sigma_g the blend is skipped, so the output is exactly the
    single blur and does not depend on M. Taps are built per sample in float64 and rounded once (to float32, or
    kept float64 for float64 features); accumulation is fp32 for float32 / float16 / bfloat16 features.

    Not CUDA-graph safe (the sigmas are read on the host): inside a captured graph use
    :func:`masked_gaussian_blur_with_taps` with tables from :func:`masked_gaussian_blur_tables`.

    The native op has no autograd (CUSP training differentiates through the oracle): ``impl="auto"`` picks the
    oracle when an input needs a gradient.

    Args:
        features: F, Tensor[B, C, H, W], float32 / float16 / bfloat16 (float64 on CPU).
        mask: M, Tensor[B, 1, H, W] in [0, 1], features' dtype or float32.
        sigma_m: blur inside the mask, a float or Tensor[B] (CPU or features' device; a GPU one is copied to the
            host), >= 0.
        sigma_g: blur outside the mask, like sigma_m.
        kernel_size: K, odd (at most 63 on CUDA).
        impl: "native" (compiled op, raises if not built), "torch" (oracle) or "auto".

    Returns:
        Tensor[B, C, H, W] in features' dtype, contiguous.
    """
    if use_native(impl, features, mask):
        batch = features.shape[0] if features.dim() > 0 else 0
        sm = _sigma_vector(sigma_m, batch, "sigma_m")
        sg = _sigma_vector(sigma_g, batch, "sigma_g")
        return torch.ops.agingrt.masked_gaussian_blur(features, mask, sm, sg, int(kernel_size))
    return _oracle.masked_gaussian_blur(features, mask, sigma_m, sigma_g, kernel_size)


def masked_gaussian_blur_tables(
    sigma_m: Tensor | Sequence[float],
    sigma_g: Tensor | Sequence[float],
    kernel_size: int,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    impl: Impl = "auto",
) -> tuple[Tensor, Tensor]:
    """The per-sample tables of :func:`masked_gaussian_blur_with_taps`, built on the host (host work, not capturable).

    Row 0 of each sample's taps is k_m, row 1 k_g: g[n] = exp(-(n - (K-1)/2)^2 / (2 sigma^2)) / sum in float64
    (the oracle's ``gaussian_kernel1d``; sigma 0 gives the unit impulse), rounded once to :func:`tap_dtype`. The
    flags mark sigma_m = 0 (1), sigma_g = 0 (2) and sigma_m == sigma_g (4), which make those cases exact.

    Args:
        sigma_m: blur inside the mask per sample, Tensor[B] or B floats, finite and >= 0 (0 = identity).
        sigma_g: blur outside the mask per sample, like sigma_m.
        kernel_size: K, positive odd (at most 63 for CUDA features).
        dtype: the dtype of the features the tables are for (float64 features take float64 taps).
        device: where to put the tables (one host-to-device copy each); None leaves them where they were built.
        impl: "native" (the compiled builder, raises if not built), "torch" (built from the oracle's
            ``gaussian_kernel1d``) or "auto".

    Returns:
        (taps Tensor[B, 2, K] in ``tap_dtype(dtype)``, flags int32 Tensor[B]) on ``device``; without it on the
        CPU (on the sigmas' device for tensor sigmas on a GPU).
    """
    sm = torch.as_tensor(sigma_m, dtype=torch.float64).reshape(-1)  # [B]
    sg = torch.as_tensor(sigma_g, dtype=torch.float64, device=sm.device).reshape(-1)  # [B]
    if sm.numel() != sg.numel():
        raise InputError(
            f"sigma_m and sigma_g need one value per sample each, got {sm.numel()} and {sg.numel()} values"
        )
    if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
        raise InputError(f"kernel_size must be a positive odd integer (CUSP: 2*floor(S/6)+1), got {kernel_size!r}")
    if dtype not in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        raise InputError(f"dtype must be the features' float dtype (float32/64, float16, bfloat16), got {dtype}")
    values = torch.cat([sm, sg]).cpu()
    if not bool(torch.isfinite(values).all()) or bool((values < 0).any()):
        raise InputError(
            f"sigmas must be finite and >= 0 (0 = no blur), got sigma_m={sm.tolist()}, sigma_g={sg.tolist()}"
        )
    if use_native(impl):
        taps, flags = torch.ops.agingrt.masked_gaussian_blur_tables(sm, sg, kernel_size, dtype)
    else:
        taps, flags = _tables_from_oracle(sm, sg, kernel_size, dtype)
    return (taps, flags) if device is None else (taps.to(device), flags.to(device))


def _tables_from_oracle(sm: Tensor, sg: Tensor, kernel_size: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """The tables built from the oracle's ``gaussian_kernel1d``: sm, sg float64 [B] -> ([B, 2, K], int32 [B])."""
    rows = [
        torch.stack([_oracle.gaussian_kernel1d(m, kernel_size), _oracle.gaussian_kernel1d(g, kernel_size)])
        for m, g in zip(sm.tolist(), sg.tolist(), strict=True)
    ]  # [2, K] float64 each
    taps = torch.stack(rows) if rows else torch.empty(0, 2, kernel_size, dtype=torch.float64)  # [B, 2, K]
    flags = (sm == 0).int() * FLAG_M_IDENTITY + (sg == 0).int() * FLAG_G_IDENTITY + (sm == sg).int() * FLAG_SAME
    return taps.to(device=sm.device, dtype=tap_dtype(dtype)), flags.to(torch.int32)  # [B, 2, K], [B]


def _blur_from_taps(x: Tensor, taps: Tensor) -> Tensor:
    """The oracle's separable zero-padded blur with per-sample taps: x [B, C, H, W], taps [B, K] -> [B, C, H, W].

    One depthwise group per (sample, channel), rows then columns, as ``gaussian_blur``; no host reads."""
    batch, channels, height, width = x.shape
    kernel = taps.shape[1]
    pad = (kernel - 1) // 2
    weight = taps.to(x.dtype)[:, None, :].expand(batch, channels, kernel).reshape(batch * channels, 1, 1, kernel)
    h = x.reshape(1, batch * channels, height, width)  # [1, B*C, H, W]
    h = F.conv2d(h, weight, padding=(0, pad), groups=batch * channels)  # rows
    h = F.conv2d(h, weight.view(batch * channels, 1, kernel, 1), padding=(pad, 0), groups=batch * channels)
    return h.view(batch, channels, height, width)  # columns


def masked_gaussian_blur_with_taps(
    features: Tensor, mask: Tensor, taps: Tensor, flags: Tensor, *, impl: Impl = "auto"
) -> Tensor:
    """CUSP Eq. (2) from precomputed tables: the CUDA-graph-safe entry of the masked blur.

    The native op checks only shapes, dtypes and devices (never a value, no device-to-host copy), allocates its
    output with ATen and launches on the current stream, so it can be captured in a CUDA graph whose static
    ``taps`` / ``flags`` buffers are refilled between replays. The torch impl computes the same result with the
    oracle's maths (grouped convolutions, then the blend; flags applied with ``torch.where``), also without host
    reads, in float32 (float64 for float64 features) and rounded once to the features' dtype. Tables must come
    from :func:`masked_gaussian_blur_tables` (their values are not checked).

    Args:
        features: F, Tensor[B, C, H, W], float32 / float16 / bfloat16 (float64 on CPU).
        mask: M, Tensor[B, 1, H, W] in [0, 1], features' dtype or float32.
        taps: Tensor[B, 2, K] on features' device, ``tap_dtype(features.dtype)``; K odd (at most 63 on CUDA).
        flags: int32 Tensor[B] on features' device.
        impl: "native" (compiled op, raises if not built), "torch" or "auto" (the torch impl when an input needs
            a gradient: the native op has no autograd).

    Returns:
        Tensor[B, C, H, W] in features' dtype, contiguous; equal bit for bit to :func:`masked_gaussian_blur` with
        the sigmas the tables were built from (native).
    """
    if use_native(impl, features, mask):
        return torch.ops.agingrt.masked_gaussian_blur_with_taps(features, mask, taps, flags)
    work = tap_dtype(features.dtype)
    f = features.to(work)  # [B, C, H, W]
    m = mask.to(work)  # [B, 1, H, W]
    bits = flags.to(torch.int32)[:, None, None, None]  # [B, 1, 1, 1]
    blurred_g = torch.where((bits & FLAG_G_IDENTITY) != 0, f, _blur_from_taps(f, taps[:, 1]))  # [B, C, H, W]
    blurred_m = torch.where((bits & FLAG_M_IDENTITY) != 0, f, _blur_from_taps(f, taps[:, 0]))  # [B, C, H, W]
    out = torch.where((bits & FLAG_SAME) != 0, blurred_g, m * blurred_m + (1 - m) * blurred_g)  # [B, C, H, W]
    return out.to(features.dtype).contiguous()


__all__ = ["masked_gaussian_blur", "masked_gaussian_blur_tables", "masked_gaussian_blur_with_taps", "tap_dtype"]
