"""An age-progression sheet: the input and one column per target age, labelled, around the faces."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .detect import Face

__all__ = ["progression_sheet"]


def _face_window(faces: Sequence[Face], height: int, width: int) -> tuple[int, int, int, int]:
    """A square (x0, y0, x1, y1) around all faces with room for hair and chin, clipped to the photo."""
    boxes = np.stack([f.box for f in faces])  # [N, 4]
    x0, y0 = boxes[:, 0].min(), boxes[:, 1].min()
    x1, y1 = boxes[:, 2].max(), boxes[:, 3].max()
    side = max(x1 - x0, y1 - y0) * 1.8  # a face box is about the inner face; 1.8x shows the head
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    side = min(side, width, height)
    left = int(np.clip(cx - side / 2, 0, width - side))
    top = int(np.clip(cy - side / 2, 0, height - side))
    return left, top, left + int(side), top + int(side)


def progression_sheet(
    original: np.ndarray,
    aged: Sequence[np.ndarray],
    labels: Sequence[str],
    faces: Sequence[Face],
    tile: int = 320,
) -> np.ndarray:
    """One row: the original and each aged photo, cut to the same window around ``faces``, each ``tile``
    pixels square with its label underneath.

    Args:
        original: uint8 [H, W, 3]. aged: uint8 [H, W, 3] each, same size. labels: one per aged photo.

    Returns:
        uint8 [tile + band, (1 + len(aged)) * tile, 3].
    """
    from PIL import Image, ImageDraw, ImageFont

    x0, y0, x1, y1 = _face_window(faces, *original.shape[:2])
    band = max(24, tile // 8)
    sheet = Image.new("RGB", ((1 + len(aged)) * tile, tile + band), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=band * 0.6)
    for col, (image, label) in enumerate(zip([original, *aged], ["input", *labels], strict=True)):
        part = Image.fromarray(image[y0:y1, x0:x1]).resize((tile, tile), Image.Resampling.LANCZOS)
        sheet.paste(part, (col * tile, 0))
        draw.text((col * tile + tile / 2, tile + band / 2), label, fill="black", font=font, anchor="mm")
    return np.asarray(sheet)
