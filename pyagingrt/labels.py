"""Apparent age and gender for every face picture of a folder (``agingrt label``), as a training label CSV.

The CSV is the generic data set form (``path,age,gender`` plus the judge's confidence), so
``open_dataset(DIR)`` reads a folder labelled this way (docs/data.md). The judges are in pyagingrt/judges.py.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import MediaError
from .pipeline.media import IMAGE_SUFFIXES, atomic_output, read_image

if TYPE_CHECKING:
    from .judges import FaceJudge

__all__ = ["LabelResult", "label_folder", "write_labels"]

COLUMNS = ("path", "age", "gender", "male_probability")


@dataclass
class LabelResult:
    """Rows (path relative to the folder, apparent age, "male"/"female", P(male)) and the pictures left out."""

    rows: list[tuple[str, float, str, float]] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


def label_folder(folder: Path, *, progress: Callable | None = None, judge: FaceJudge | None = None) -> LabelResult:
    """Judge the largest face of every picture under ``folder`` (recursive); ``progress`` wraps the list of
    pictures (e.g. tqdm); ``judge`` defaults to the shared one without the identity network."""
    from .judges import get_judge

    if not folder.is_dir():
        raise MediaError(f"{folder} is not a folder of pictures")
    pictures = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not pictures:
        raise MediaError(f"{folder} holds no pictures ({', '.join(IMAGE_SUFFIXES)})")
    judge = judge or get_judge(identity=False)
    result = LabelResult()
    for picture in progress(pictures) if progress is not None else pictures:
        name = picture.relative_to(folder).as_posix()
        try:
            image, _ = read_image(picture)
        except MediaError as exc:
            result.skipped[name] = f"unreadable: {exc}"
            continue
        reading = judge.read(image)
        if reading is None:
            result.skipped[name] = "no face found"
            continue
        result.rows.append((name, reading.age, reading.gender, reading.male))
    return result


def write_labels(path: Path, result: LabelResult) -> None:
    """The rows as a CSV, written atomically (ages to 0.1 year, probabilities to 0.001)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(COLUMNS)
    for name, age, gender, male in result.rows:
        writer.writerow([name, f"{age:.1f}", gender, f"{male:.3f}"])
    with atomic_output(path) as tmp:
        tmp.write_text(buffer.getvalue())
