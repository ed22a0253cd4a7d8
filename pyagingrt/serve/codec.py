"""Encoded photos in and out of the server: size limits before decoding, clear errors for anything else."""

from __future__ import annotations

import io

import numpy as np

from ..errors import InputError, MediaError

__all__ = ["FORMATS", "decode_image", "encode_image"]

FORMATS = {"png": "PNG", "jpeg": "JPEG", "jpg": "JPEG", "webp": "WEBP"}


def decode_image(data: bytes, max_bytes: int, max_pixels: int) -> np.ndarray:
    """An encoded photo (jpg, png, webp, bmp...) as upright uint8 RGB [H, W, 3].

    Raises InputError for a payload over ``max_bytes`` or an image over ``max_pixels`` (checked from the header,
    before decoding), MediaError for anything that is not a readable image.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    if len(data) == 0:
        raise MediaError("the image is empty (0 bytes); send the bytes of a jpg, png or webp file")
    if len(data) > max_bytes:
        raise InputError(f"the image is {len(data) / 1e6:.1f} MB, over the server's limit of {max_bytes / 1e6:.1f} MB")
    try:
        with Image.open(io.BytesIO(data)) as im:
            width, height = im.size
            if width * height > max_pixels:
                raise InputError(
                    f"the image is {width}x{height} ({width * height / 1e6:.1f} MP), over the server's limit of "
                    f"{max_pixels / 1e6:.1f} MP; downscale it first"
                )
            image = ImageOps.exif_transpose(im.convert("RGB"))
            return np.asarray(image, dtype=np.uint8).copy()
    except InputError:
        raise
    except UnidentifiedImageError as exc:
        raise MediaError("the image could not be decoded: send the bytes of a jpg, png, webp or bmp file") from exc
    except (Image.DecompressionBombError, OSError, SyntaxError, ValueError) as exc:
        raise MediaError(f"the image could not be decoded: {exc}") from exc


def encode_image(image: np.ndarray, fmt: str) -> bytes:
    """uint8 RGB [H, W, 3] as ``fmt`` ("png", "jpeg" or "webp") bytes."""
    from PIL import Image

    pil_format = FORMATS.get(fmt.lower())
    if pil_format is None:
        raise InputError(f"unknown output format {fmt!r}; use one of: png, jpeg, webp")
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format=pil_format, **({"quality": 92} if pil_format == "JPEG" else {}))
    return buf.getvalue()
