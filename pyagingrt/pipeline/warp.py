"""Warps between a photo and aligned face crops, as tensor ops on the model's device.

Photos stay uint8 [H, W, 3] (HWC, as decoded) on the device; only the region a face covers is converted to
float, so a 4K frame costs no more than its faces. Transforms come from pipeline/align.py: M [3, 3] maps crop
pixels to photo pixels, both continuous (pixel (i, j) covers [j, j + 1) x [i, i + 1)), which is exactly
``grid_sample``'s ``align_corners=False`` convention once divided by the size.

- :func:`crop_faces` samples each crop through M. When a crop pixel covers several photo pixels (a large face,
  a small crop), bilinear sampling alone aliases; we supersample k x k points per crop pixel, k = ceil(scale),
  and average them (a box prefilter: rendering the crop at the photo's resolution, then downsampling with
  antialiasing, as docs/models/cusp.md section 2 asks).
- :func:`paste_faces` samples each aged crop and a feathered mask through M^-1 over the face's bounding box
  only, and blends with premultiplied alpha, so nothing outside the mask changes (bit for bit) and no edge of
  the crop square shows. A crop much finer than the photo region it lands on is first downscaled with
  antialiasing for the same reason as above.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["crop_faces", "feather_mask", "paste_faces"]

_MAX_SUPERSAMPLE = 8  # beyond this the box prefilter is wide enough; bounds the memory at 8^2 samples/pixel


def _scales(mats: np.ndarray) -> np.ndarray:
    """Photo pixels per crop pixel, [N] (the similarity's scale)."""
    return np.sqrt(np.abs(np.linalg.det(mats[:, :2, :2])))


def _sample_points(height: int, width: int, sub: int, device: torch.device) -> Tensor:
    """Centres of sub x sub samples per pixel of a height x width grid, continuous coordinates: [h*sub, w*sub, 3]
    homogeneous (x, y, 1)."""
    ys = (torch.arange(height * sub, device=device, dtype=torch.float64) + 0.5) / sub  # [h*sub]
    xs = (torch.arange(width * sub, device=device, dtype=torch.float64) + 0.5) / sub  # [w*sub]
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")  # [h*sub, w*sub] each
    return torch.stack([gx, gy, torch.ones_like(gx)], dim=-1)  # [h*sub, w*sub, 3]


def _roi(mat: np.ndarray, size: float, height: int, width: int, pad: int = 2) -> tuple[int, int, int, int] | None:
    """Bounding box (x0, y0, x1, y1) in the photo of the crop square [0, size]^2 mapped by ``mat``, grown by
    ``pad`` pixels for the bilinear taps and clipped to the photo; None when it lies outside."""
    corners = mat @ np.array([[0, 0, 1], [size, 0, 1], [0, size, 1], [size, size, 1]], dtype=np.float64).T  # [3, 4]
    x0, y0 = (math.floor(corners[k].min()) - pad for k in (0, 1))
    x1, y1 = (math.ceil(corners[k].max()) + pad for k in (0, 1))
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


def crop_faces(photo: Tensor, mats: np.ndarray, size: int) -> Tensor:
    """Aligned crops of one photo.

    Args:
        photo: uint8 Tensor[H, W, 3] (RGB) on the model's device.
        mats: float64 [N, 3, 3], crop -> photo (pipeline/align.py).
        size: crop side S.

    Returns:
        float32 Tensor[N, 3, S, S] in [0, 1] on the photo's device. Crop pixels outside the photo mirror it
        (reflection padding, as the FFHQ recipe pads).
    """
    height, width = photo.shape[:2]
    out = torch.empty(len(mats), 3, size, size, device=photo.device)  # [N, 3, S, S]
    for i, (mat, scale) in enumerate(zip(mats, _scales(mats), strict=True)):
        sub = int(min(_MAX_SUPERSAMPLE, max(1, math.ceil(scale - 1e-3))))
        # cut the photo to the region this face's samples can reach, so only that is converted to float
        x0, y0, x1, y1 = _roi(mat, size, height, width) or (0, 0, width, height)
        region = photo[y0:y1, x0:x1].permute(2, 0, 1)[None].float().div_(255.0)  # [1, 3, h, w]
        to_region = np.array([[1, 0, -x0], [0, 1, -y0], [0, 0, 1]], dtype=np.float64) @ mat  # crop -> region px
        pts = _sample_points(size, size, sub, photo.device) @ torch.from_numpy(to_region.T).to(photo.device)
        norm = torch.tensor([2.0 / (x1 - x0), 2.0 / (y1 - y0)], dtype=torch.float64, device=photo.device)
        grid = (pts[..., :2] * norm - 1.0).float()[None]  # [1, S*sub, S*sub, 2] in grid_sample's [-1, 1]
        dense = F.grid_sample(region, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        out[i] = F.avg_pool2d(dense, sub)[0] if sub > 1 else dense[0]  # [3, S, S]
    return out


@functools.lru_cache(maxsize=16)
def _mask_cpu(size: int, inner: float) -> Tensor:
    coords = (torch.arange(size, dtype=torch.float64) + 0.5) * (2.0 / size) - 1.0  # pixel centres in (-1, 1)
    y, x = torch.meshgrid(coords, coords, indexing="ij")  # [S, S]
    # a superellipse |x|^4 + |y|^4 = r^4: round enough that no corner shows, square enough to keep the chin
    r = (x.abs() ** 4 + y.abs() ** 4) ** 0.25  # [S, S]
    t = ((1.0 - r) / (1.0 - inner)).clamp(0.0, 1.0)
    return (t * t * (3.0 - 2.0 * t)).float()  # smoothstep: 1 inside r <= inner, 0 from the square's edge on


def feather_mask(size: int, inner: float, device: torch.device) -> Tensor:
    """Blend weights float32 [S, S]: 1 inside the rounded square of "radius" ``inner`` (the crop's half-side is
    1), falling smoothly to 0 at the crop's edge."""
    return _mask_cpu(size, inner).to(device)


def paste_faces(photo: Tensor, crops: Tensor, mats: np.ndarray, mask: Tensor) -> Tensor:
    """Blend aged crops back into the photo, in place.

    Args:
        photo: uint8 Tensor[H, W, 3] on the crops' device; modified in place and returned.
        crops: float Tensor[N, 3, S, S] in [0, 1].
        mats: float64 [N, 3, 3], crop -> photo, as used to cut the crops.
        mask: float Tensor[S, S] blend weights (:func:`feather_mask`).

    Returns:
        ``photo``. Pixels whose bilinear footprint misses every mask are unchanged.
    """
    height, width = photo.shape[:2]
    size = crops.shape[-1]
    for crop, mat, scale in zip(crops, mats, _scales(mats), strict=True):
        box = _roi(mat, size, height, width)
        if box is None:
            continue
        x0, y0, x1, y1 = box
        source = torch.cat([crop.float() * mask, mask[None]], dim=0)[None]  # [1, 4, S, S] premultiplied RGB + alpha
        if scale < 2.0 / 3.0:  # one photo pixel spans > 1.5 crop pixels: prefilter, then sample
            small = max(4, math.ceil(size * scale))
            source = F.interpolate(source, size=(small, small), mode="bilinear", antialias=True, align_corners=False)
        to_crop = np.linalg.inv(mat) @ np.array([[1, 0, x0], [0, 1, y0], [0, 0, 1]], dtype=np.float64)  # region->crop
        pts = _sample_points(y1 - y0, x1 - x0, 1, photo.device) @ torch.from_numpy(to_crop.T).to(photo.device)
        grid = (pts[..., :2] * (2.0 / size) - 1.0).float()[None]  # [1, h, w, 2]
        rgba = F.grid_sample(source, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]  # [4, h, w]
        region = photo[y0:y1, x0:x1].permute(2, 0, 1).float().div_(255.0)  # [3, h, w]
        blended = region * (1.0 - rgba[3:]) + rgba[:3]  # [3, h, w]
        photo[y0:y1, x0:x1] = blended.mul_(255.0).round_().clamp_(0, 255).to(torch.uint8).permute(1, 2, 0)
    return photo
