"""Reading photos safely and writing outputs atomically.

Every output goes to a hidden temporary file in the target folder, renamed over the target only when it is
complete, so an interrupted or failed run leaves no broken file (and never a half-overwritten old one).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..errors import MediaError, OutputError

__all__ = [
    "ALPHA_FORMATS",
    "DEFAULT_MAX_PIXELS",
    "IMAGE_SUFFIXES",
    "atomic_output",
    "check_writable",
    "list_images",
    "read_image",
    "write_image",
]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
ALPHA_FORMATS = ("PNG", "WEBP", "TIFF")  # image formats that keep an alpha channel
# Above this a photo is refused (the CLI's --max-pixels): 200 MP holds a 14000x14000 photo. Faces are found on
# a copy of at most 1024 px a side and aged at full resolution; the decoded photo, its working copy and the
# encoder's take about 20 bytes a pixel at peak (measured: 2.8 GB for a 12000x12000 JPEG).
DEFAULT_MAX_PIXELS = 200_000_000
_BYTES_PER_PIXEL = 20


def list_images(path: Path) -> list[Path]:
    """The photos in a folder (not recursive), sorted; a file is returned as itself."""
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise MediaError(f"folder {path} holds no photos ({', '.join(IMAGE_SUFFIXES)})")
        return found
    if not path.exists():
        raise MediaError(f"{path} does not exist")
    return [path]


def read_image(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, np.ndarray | None]:
    """A photo at its full size, upright (EXIF orientation applied): uint8 RGB [H, W, 3], and its alpha channel
    uint8 [H, W] when it has one (RGBA, LA, or a palette with transparency), else None.

    A photo over ``max_pixels`` is refused from its header, before decoding, with a message naming the CLI's
    ``--max-pixels``; below that, Pillow's own decompression-bomb limit and warning do not apply (our limit
    replaces it). Raises MediaError for anything unreadable.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with _pillow_limit_lifted(), Image.open(path) as im:
            width, height = im.size
            if width * height > max_pixels:
                raise MediaError(
                    f"{path} is {width}x{height} ({width * height / 1e6:.3g} MP), too large: above --max-pixels "
                    f"{max_pixels} ({max_pixels / 1e6:.3g} MP); raise --max-pixels if the memory allows "
                    f"(about {width * height * _BYTES_PER_PIXEL / 1e9:.2g} GB), or downscale the photo"
                )
            im = ImageOps.exif_transpose(im)
            has_alpha = im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info
            if has_alpha:
                rgba = np.asarray(im.convert("RGBA"), dtype=np.uint8)  # [H, W, 4]
                return np.ascontiguousarray(rgba[..., :3]), np.ascontiguousarray(rgba[..., 3])
            return np.array(im.convert("RGB"), dtype=np.uint8), None
    except MediaError:
        raise
    except UnidentifiedImageError as exc:
        raise MediaError(f"{path} is not an image Pillow can read (jpg, png, bmp, webp, tiff)") from exc
    except (OSError, SyntaxError, ValueError) as exc:  # truncated or corrupt data, permissions, directories
        raise MediaError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from exc


_pillow_lock = threading.Lock()


@contextlib.contextmanager
def _pillow_limit_lifted() -> Iterator[None]:
    """Pillow's MAX_IMAGE_PIXELS (89 MP warns, 179 MP refuses) off while a photo is opened: read_image checks
    its own ``max_pixels`` from the header instead, so the user sees one limit, the one ``--max-pixels`` sets."""
    from PIL import Image

    with _pillow_lock, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def check_writable(path: Path) -> None:
    """Raise OutputError now, before any work, when ``path`` cannot be created."""
    folder = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise OutputError(f"output {path} is a folder; give a file name (or use --out-dir)")
    if not folder.is_dir():
        raise OutputError(f"cannot write {path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {path}: folder {folder} is not writable")


@contextlib.contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix, so formats are guessed alike); rename it to ``path``
    when the block succeeds, delete it when it fails."""
    check_writable(path)
    tmp = path.with_name(f".{path.stem}.{secrets.token_hex(4)}.partial{path.suffix}")
    try:
        # O_EXCL: never reuse someone's file; the default mode (0o666 less the umask) is what a plain open gives
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from exc
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except OutputError:
        raise
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def image_format(path: Path) -> str:
    """Pillow's format name for ``path``'s suffix; OutputError for a suffix that is not an image type."""
    from PIL import Image

    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise OutputError(f"cannot write {path}: unknown image type {path.suffix!r}; use .jpg or .png")
    return fmt


def write_image(path: Path, image: np.ndarray, alpha: np.ndarray | None = None) -> None:
    """Write uint8 RGB [H, W, 3] atomically, with ``alpha`` uint8 [H, W] when given and the format keeps one
    (:data:`ALPHA_FORMATS`; elsewhere it is dropped); the format follows the suffix."""
    from PIL import Image

    fmt = image_format(path)
    options = {"quality": 95} if fmt in ("JPEG", "WEBP") else {}
    picture = Image.fromarray(image)
    if alpha is not None and fmt in ALPHA_FORMATS:
        picture.putalpha(Image.fromarray(alpha))
    with atomic_output(path) as tmp:
        picture.save(tmp, format=fmt, **options)
