"""Raw photos -> the aligned crops a model takes, with the detector and alignment inference uses.

``agingrt align`` runs :func:`align_folder`; ``agingrt eval`` uses :func:`aligned_crop` on its photos. A crop
made here is what :class:`pyagingrt.pipeline.FacePipeline` feeds the model for the same photo, so a model
trained on these crops sees at inference exactly the kind of input it was trained on.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from ..errors import InputError, MediaError
from .align import Alignment, alignment_for, crop_transforms
from .detect import FaceDetector, get_detector
from .media import IMAGE_SUFFIXES, atomic_output, write_image
from .warp import crop_faces

__all__ = ["AlignResult", "align_folder", "aligned_crop", "model_crop_spec"]

SKIPPED_FILE = "skipped.csv"  # in OUT_DIR: photo, reason; read back on resume
LABELS_FILE = "labels.csv"  # a generic label file in RAW_DIR is carried over to OUT_DIR


def model_crop_spec(model: str, config: str | None = None) -> tuple[Alignment, int]:
    """(alignment recipe, crop side) of a model config (default: the model's first, its paper size), without
    building the model."""
    from ..models.registry import get_adapter

    adapter = get_adapter(model)
    config = config or adapter.config_names[0]
    if config not in adapter.config_names:
        raise InputError(f"{adapter.name} has no config {config!r}; choose one of: {', '.join(adapter.config_names)}")
    cfg = adapter.make_config(config)
    return alignment_for(SimpleNamespace(model=adapter.name, config=cfg)), int(adapter.input_size(cfg))


def aligned_crop(
    image: np.ndarray, alignment: Alignment, size: int, detector: FaceDetector | None = None
) -> np.ndarray | None:
    """The largest face of ``image`` (uint8 RGB [H, W, 3]) as a uint8 [S, S, 3] crop; None without a face."""
    faces = (detector or get_detector()).detect(image)
    if not faces:
        return None
    face = max(faces, key=lambda f: f.size)
    mats = crop_transforms(face.landmarks[None], alignment, size)
    crop = crop_faces(torch.from_numpy(np.ascontiguousarray(image)), mats, size)[0]  # [3, S, S] in [0, 1]
    return crop.mul(255.0).round_().clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


@dataclass
class AlignResult:
    """What :func:`align_folder` did."""

    written: list[Path] = field(default_factory=list)  # crops written by this run
    already: int = 0  # photos done by an earlier run (crop present, or listed as skipped)
    skipped: dict[str, str] = field(default_factory=dict)  # photo (relative) -> reason, this run and earlier ones
    labels: Path | None = None  # OUT_DIR/labels.csv, when RAW_DIR had a labels.csv


def _read_skipped(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    with path.open(newline="") as f:
        return {row[0]: row[1] for row in csv.reader(f) if len(row) >= 2 and row[0] != "photo"}


def _write_skipped(path: Path, skipped: dict[str, str]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["photo", "reason"])
    writer.writerows(sorted(skipped.items()))
    with atomic_output(path) as tmp:
        tmp.write_text(buffer.getvalue())


def align_folder(
    raw_dir: Path,
    out_dir: Path,
    alignment: Alignment,
    size: int,
    *,
    suffix: str = ".png",
    max_pixels: int = 40_000_000,
    progress: Callable | None = None,
) -> AlignResult:
    """Align the largest face of every photo under ``raw_dir`` (recursive) into ``out_dir``.

    Each crop keeps its photo's relative path and stem (``a/25_0_1_x.jpg`` -> ``a/25_0_1_x.png``), so ages in
    file names survive. Photos without a face, or unreadable, are listed in ``out_dir/skipped.csv``. A photo
    whose crop exists or that is listed there is not redone, so an interrupted run resumes where it stopped;
    every file is written atomically, so no half-written crop is ever taken for a finished one. A generic
    ``labels.csv`` in ``raw_dir`` is rewritten into ``out_dir`` for the crops that were made.
    """
    from .media import read_image

    if not raw_dir.is_dir():
        raise InputError(f"{raw_dir} is not a folder of photos")
    if out_dir.resolve() == raw_dir.resolve():
        raise InputError("the output folder must differ from the folder of raw photos")
    photos = sorted(p for p in raw_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    out_root = out_dir.resolve()
    photos = [p for p in photos if out_root not in p.resolve().parents]  # OUT_DIR inside RAW_DIR
    if not photos:
        raise MediaError(f"{raw_dir} holds no photos ({', '.join(IMAGE_SUFFIXES)})")
    out_dir.mkdir(parents=True, exist_ok=True)
    skipped_path = out_dir / SKIPPED_FILE
    result = AlignResult(skipped=_read_skipped(skipped_path))
    detector = get_detector()
    bar = progress(photos) if progress is not None else photos
    for photo in bar:
        name = str(photo.relative_to(raw_dir))
        target = (out_dir / name).with_suffix(suffix)
        if target.is_file() or name in result.skipped:
            result.already += 1
            continue
        try:
            image, _ = read_image(photo, max_pixels)
        except MediaError as exc:
            result.skipped[name] = f"unreadable: {exc}"
            _write_skipped(skipped_path, result.skipped)
            continue
        crop = aligned_crop(image, alignment, size, detector)
        if crop is None:
            result.skipped[name] = "no face found"
            _write_skipped(skipped_path, result.skipped)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        write_image(target, crop)
        result.written.append(target)
    if (raw_dir / LABELS_FILE).is_file():
        from ..training.data.sources import DatasetError

        try:
            result.labels = _carry_labels(raw_dir, out_dir, suffix)
        except DatasetError:  # not the generic path,age[,gender] form: left for the user to convert
            result.labels = None
    return result


def _carry_labels(raw_dir: Path, out_dir: Path, suffix: str) -> Path:
    """RAW_DIR/labels.csv (generic path,age[,gender]) rewritten for the crops: OUT_DIR/labels.csv with the crops'
    names, without the rows whose photo gave no crop."""
    from ..training.data.sources import read_csv_labels

    records, _ = read_csv_labels(raw_dir / LABELS_FILE, raw_dir)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["path", "age", "gender"])
    for record in records:
        if not record.path.is_relative_to(raw_dir):
            continue  # a photo outside RAW_DIR was not aligned
        crop = (out_dir / record.path.relative_to(raw_dir)).with_suffix(suffix)
        if crop.is_file():
            gender = {1: "male", 0: "female"}.get(record.gender, "")
            writer.writerow([crop.relative_to(out_dir).as_posix(), f"{record.age:g}", gender])
    path = out_dir / LABELS_FILE
    with atomic_output(path) as tmp:
        tmp.write_text(buffer.getvalue())
    return path
