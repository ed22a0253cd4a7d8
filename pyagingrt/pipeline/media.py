"""Reading photos safely and writing outputs atomically.

Every output goes to a hidden temporary file in the target folder, renamed over the target only when it is
complete, so an interrupted or failed run leaves no broken file (and never a half-overwritten old one).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..errors import MediaError, OutputError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_SUFFIXES",
    "atomic_output",
    "check_writable",
    "list_images",
    "read_image",
    "write_image",
]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
DEFAULT_MAX_PIXELS = 40_000_000  # above this a photo is downscaled (8K is 33 MP); the decoded copy is 120 MB
_REFUSE_FACTOR = 16  # above 16 x max_pixels (640 MP by default) a photo is refused without decoding it


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


def read_image(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, str | None]:
    """A photo as uint8 RGB [H, W, 3], upright (EXIF orientation applied), and a note when it was downscaled.

    A photo over ``max_pixels`` is downscaled to fit (JPEGs are decoded at reduced size, so memory stays low);
    one over 16 x ``max_pixels`` is refused before decoding. Raises MediaError for anything unreadable.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            width, height = im.size
            if width * height > _REFUSE_FACTOR * max_pixels:
                raise MediaError(
                    f"{path} is {width}x{height} ({width * height / 1e6:.0f} MP), too large to process; "
                    f"downscale it below {_REFUSE_FACTOR * max_pixels / 1e6:.0f} MP first"
                )
            note = None
            if width * height > max_pixels:
                factor = (max_pixels / (width * height)) ** 0.5
                target = (max(1, int(width * factor)), max(1, int(height * factor)))
                im.draft("RGB", target)  # JPEG: decode at 1/2, 1/4 or 1/8 size straight away
                note = (
                    f"{path.name} is {width}x{height} ({width * height / 1e6:.0f} MP); working on a "
                    f"{target[0]}x{target[1]} copy (--max-pixels {max_pixels})"
                )
                im = im.resize(target, Image.Resampling.LANCZOS) if im.size != target else im
            image = ImageOps.exif_transpose(im.convert("RGB"))
            return np.asarray(image, dtype=np.uint8).copy(), note
    except MediaError:
        raise
    except UnidentifiedImageError as exc:
        raise MediaError(f"{path} is not an image Pillow can read (jpg, png, bmp, webp, tiff)") from exc
    except Image.DecompressionBombError as exc:
        raise MediaError(f"{path} is too large to process safely: {exc}") from exc
    except (OSError, SyntaxError, ValueError) as exc:  # truncated or corrupt data, permissions, directories
        raise MediaError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from exc


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
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def write_image(path: Path, image: np.ndarray) -> None:
    """Write uint8 RGB [H, W, 3] atomically; the format follows the suffix."""
    from PIL import Image

    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise OutputError(f"cannot write {path}: unknown image type {path.suffix!r}; use .jpg or .png")
    options = {"quality": 95} if fmt == "JPEG" else {}
    with atomic_output(path) as tmp:
        Image.fromarray(image).save(tmp, format=fmt, **options)
