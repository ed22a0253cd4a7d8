"""Reading the label sources of face-age data sets into records (path, age, gender), one kind per function.

Kinds (docs/data.md has the formats and examples):

- ``csv``: a folder of images and a CSV of ``path, age[, gender]`` (a header row naming the columns is
  optional); paths are relative to the folder. The generic form every other kind could be converted to.
- ``utkface``: file names ``AGE_GENDER_RACE_DATE.jpg`` (UTKFace: gender 0 = male, 1 = female).
- ``ffhq-aging``: FFHQ-Aging's ``ffhq_aging_labels.csv`` (``image_number``, ``age_group``, confidences, head
  pose, eye occlusion, glasses) with images ``NNNNN.png``; rows pass the filter the reference training code
  applies in effect (:func:`ffhq_aging_keeps`). The age of a row is the middle of its cluster.
- ``morph``: MORPH file names ``ID_NNGAA.JPG``: the two digits after the M/F letter are the age.
- ``cacd``: CACD file names ``AGE_First_Last_NNNN.jpg``: the number before the first ``_`` is the age.

Genders are 1 = male, 0 = female, -1 = unknown, whatever the source's own coding. A row that cannot be used
becomes a :class:`SkippedRow` naming where it was (file and line, or file name) and why; nothing raises for a
bad row. Only a source that cannot be read at all raises :class:`DatasetError`.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pyagingrt.errors import InputError

__all__ = [
    "FFHQ_AGING_CLUSTERS",
    "IMAGE_SUFFIXES",
    "KINDS",
    "DatasetError",
    "Record",
    "SkippedRow",
    "detect_kind",
    "ffhq_aging_keeps",
    "read_records",
]

KINDS = ("csv", "utkface", "ffhq-aging", "morph", "cacd")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

# FFHQ-Aging's ten hand-labelled clusters, in order (the upper bound of the last is the label's own "120").
FFHQ_AGING_CLUSTERS = ("0-2", "3-6", "7-9", "10-14", "15-19", "20-29", "30-39", "40-49", "50-69", "70-120")
FFHQ_AGING_COLUMNS = ("image_number", "age_group", "age_group_confidence", "gender", "gender_confidence")

_PATH_COLUMNS = ("path", "file", "filename", "file_name", "fname", "image", "name")
_AGE_COLUMNS = ("age", "apparent_age", "real_age")
_GENDER_COLUMNS = ("gender", "sex")
_MALE = {"1", "m", "male", "man"}
_FEMALE = {"0", "f", "female", "woman"}
_UNKNOWN = {"", "-1", "?", "u", "unknown", "none", "nan"}

_UTKFACE = re.compile(r"^(\d+)_([01])_(\d+)_(\d+)")  # age_gender_race_date[.jpg.chip].jpg
_MORPH = re.compile(r"^\d+_\d+([MFmf])(\d{2})(?:\D|$)")  # 001234_1M23.JPG
_CACD = re.compile(r"^(\d+)_(?=[^.]*[A-Za-z])")  # 53_Robin_Williams_0001.jpg, 23_50_Cent_0001.jpg: a name follows


class DatasetError(InputError):
    """A data set that cannot be opened at all: no such folder, no labels, no usable row."""


@dataclass(frozen=True)
class Record:
    """One usable image: its file, age in years, gender (1 male, 0 female, -1 unknown), and where it came from."""

    path: Path
    age: float
    gender: int
    where: str  # "labels.csv line 12" or the file name, for messages


@dataclass(frozen=True)
class SkippedRow:
    """A row or file left out of a data set, and why."""

    where: str  # "labels.csv line 12" or a file name
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


def parse_gender(text: str) -> int | None:
    """1 male, 0 female, -1 unknown; None when ``text`` is none of the spellings we know."""
    value = text.strip().lower()
    if value in _MALE:
        return 1
    if value in _FEMALE:
        return 0
    if value in _UNKNOWN:
        return -1
    return None


def _parse_age(text: str) -> float | None:
    try:
        age = float(text)
    except ValueError:
        return None
    return age if math.isfinite(age) else None


def list_image_files(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursive), sorted."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _read_csv(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(line number, cells) of every non-empty row of a CSV file."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            for cells in reader:
                if cells and any(c.strip() for c in cells):
                    yield reader.line_num, cells
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"cannot read the label file {path}: {exc}") from exc


def csv_header(path: Path) -> list[str]:
    """The lower-cased cells of the first row of a CSV file (empty for an empty file)."""
    for _, cells in _read_csv(path):
        return [c.strip().lower() for c in cells]
    return []


# --- csv ----------------------------------------------------------------------------------------------------
def read_csv_labels(labels: Path, root: Path) -> tuple[list[Record], list[SkippedRow]]:
    """``path, age[, gender]`` rows; a first row whose age cell is not a number is taken as the header."""
    records: list[Record] = []
    skipped: list[SkippedRow] = []
    columns = (0, 1, 2)  # path, age, gender positions without a header
    for row, (number, cells) in enumerate(_read_csv(labels)):
        where = f"{labels.name} line {number}"
        if row == 0 and len(cells) > 1 and _parse_age(cells[1]) is None:
            columns = _header_columns([c.strip().lower() for c in cells], labels)
            continue
        path_col, age_col, gender_col = columns
        if len(cells) <= max(path_col, age_col):
            skipped.append(SkippedRow(where, f"expected at least {max(path_col, age_col) + 1} columns"))
            continue
        age = _parse_age(cells[age_col])
        if age is None:
            skipped.append(SkippedRow(where, f"age {cells[age_col]!r} is not a number"))
            continue
        gender = -1
        if gender_col >= 0 and gender_col < len(cells):
            parsed = parse_gender(cells[gender_col])
            if parsed is None:
                skipped.append(SkippedRow(where, f"gender {cells[gender_col]!r} is not male/female/m/f/1/0"))
                continue
            gender = parsed
        name = cells[path_col].strip()
        records.append(Record(root / name, age, gender, where))
    return records, skipped


def _header_columns(header: list[str], labels: Path) -> tuple[int, int, int]:
    def find(names: Iterable[str]) -> int:
        return next((header.index(n) for n in names if n in header), -1)

    path_col, age_col, gender_col = find(_PATH_COLUMNS), find(_AGE_COLUMNS), find(_GENDER_COLUMNS)
    if path_col < 0 or age_col < 0:
        raise DatasetError(
            f"{labels}: the header {', '.join(header)} has no path column ({'/'.join(_PATH_COLUMNS)}) or no age "
            "column (age); the generic label file is path,age[,gender]"
        )
    return path_col, age_col, gender_col


# --- FFHQ-Aging ---------------------------------------------------------------------------------------------
def cluster_age(label: str) -> float:
    """The middle of an FFHQ-Aging cluster "lo-hi" in years (the 70-120 cluster gives 95)."""
    low, high = (float(v) for v in label.split("-"))
    return (low + high) / 2


def ffhq_aging_keeps(row: dict[str, str]) -> str | None:
    """None when an FFHQ-Aging row passes the filter, else the reason it fails.

    The filter the reference training code applies in effect: age-group confidence > 0.6, gender confidence
    > 0.66, |head pitch| < 30, |head yaw| < 40, eye occlusion (left < 90 and right < 50) or (left < 50 and
    right < 90), and glasses not "Dark". (That code's other branch, for rows without attributes, compares the
    glasses string with -1 and so never fires.)
    """
    f = {k: float(row[k]) for k in ("age_group_confidence", "gender_confidence", "head_pitch", "head_yaw")}
    left, right = float(row["left_eye_occluded"]), float(row["right_eye_occluded"])
    if f["age_group_confidence"] <= 0.6:
        return f"age-group confidence {f['age_group_confidence']:g} <= 0.6"
    if f["gender_confidence"] <= 0.66:
        return f"gender confidence {f['gender_confidence']:g} <= 0.66"
    if not (abs(f["head_pitch"]) < 30 and abs(f["head_yaw"]) < 40):
        return f"head pose pitch {f['head_pitch']:g}, yaw {f['head_yaw']:g} (limits 30, 40)"
    if not ((left < 90 and right < 50) or (left < 50 and right < 90)):
        return f"eyes occluded (left {left:g}, right {right:g})"
    if row["glasses"].strip() == "Dark":
        return "dark glasses"
    return None


def _ffhq_image(root: Path, number: int) -> Path:
    """FFHQ-Aging's image for ``number``: NNNNN.png flat, or in the per-thousand folders; .png or .jpg."""
    name = f"{number:05d}"
    for folder in (root, root / f"{number // 1000 * 1000:05d}"):
        for suffix in (".png", ".jpg"):
            if (folder / f"{name}{suffix}").is_file():
                return folder / f"{name}{suffix}"
    return root / f"{name}.png"  # missing: reported by the caller


def read_ffhq_aging(labels: Path, root: Path) -> tuple[list[Record], list[SkippedRow], int]:
    """FFHQ-Aging rows that pass :func:`ffhq_aging_keeps`; returns (records, bad rows, rows filtered out)."""
    records: list[Record] = []
    skipped: list[SkippedRow] = []
    filtered = 0
    header: list[str] = []
    for number, cells in _read_csv(labels):
        if not header:
            header = [c.strip() for c in cells]
            missing = [c for c in (*FFHQ_AGING_COLUMNS, "head_pitch", "head_yaw", "glasses") if c not in header]
            if missing:
                raise DatasetError(f"{labels} is not an FFHQ-Aging label file: no column {', '.join(missing)}")
            continue
        where = f"{labels.name} line {number}"
        row = dict(zip(header, cells, strict=False))
        try:
            reason = ffhq_aging_keeps(row)
            image_number = int(row["image_number"])
        except (KeyError, ValueError) as exc:
            skipped.append(SkippedRow(where, f"malformed row ({exc})"))
            continue
        if reason is not None:
            filtered += 1
            continue
        cluster = row["age_group"].strip()
        gender = parse_gender(row["gender"])
        if cluster not in FFHQ_AGING_CLUSTERS or gender is None:
            skipped.append(SkippedRow(where, f"unknown age group {cluster!r} or gender {row['gender']!r}"))
            continue
        records.append(Record(_ffhq_image(root, image_number), cluster_age(cluster), gender, where))
    return records, skipped, filtered


# --- file-name kinds ----------------------------------------------------------------------------------------
def _name_age_gender(kind: str, name: str) -> tuple[float, int] | str:
    """(age, gender) parsed from a file name, or the reason it cannot be."""
    if kind == "utkface":
        m = _UTKFACE.match(name)
        if m is None:
            return "file name does not follow UTKFace's AGE_GENDER_RACE_DATE.jpg"
        return float(m.group(1)), 1 - int(m.group(2))  # UTKFace: 0 male, 1 female
    if kind == "morph":
        m = _MORPH.match(name)
        if m is None:
            return "file name does not follow MORPH's ID_NNGAA.JPG (G = M/F, AA = age)"
        return float(m.group(2)), 1 if m.group(1).upper() == "M" else 0
    m = _CACD.match(name)
    if m is None:
        return "file name does not follow CACD's AGE_Name_NNNN.jpg"
    return float(m.group(1)), -1


def read_file_names(kind: str, root: Path) -> tuple[list[Record], list[SkippedRow]]:
    """Records of a folder whose file names carry the ages (utkface, morph, cacd)."""
    records: list[Record] = []
    skipped: list[SkippedRow] = []
    for path in list_image_files(root):
        where = str(path.relative_to(root))
        parsed = _name_age_gender(kind, path.name)
        if isinstance(parsed, str):
            skipped.append(SkippedRow(where, parsed))
        else:
            records.append(Record(path, parsed[0], parsed[1], where))
    return records, skipped


def detect_kind(source: Path, labels: Path | None) -> str:
    """The kind of a source: from the label file's header when there is one, else from the file names."""
    label_file = labels or (source if source.is_file() else None)
    if label_file is None and (source / "labels.csv").is_file():
        label_file = source / "labels.csv"
    if label_file is not None:
        header = csv_header(label_file)
        return "ffhq-aging" if all(c in header for c in FFHQ_AGING_COLUMNS) else "csv"
    names = [p.name for p in list_image_files(source)]
    if not names:
        raise DatasetError(f"{source} holds no images ({', '.join(IMAGE_SUFFIXES)}) and no labels.csv")
    for kind, pattern in (("utkface", _UTKFACE), ("morph", _MORPH), ("cacd", _CACD)):
        if sum(1 for n in names if pattern.match(n)) > len(names) / 2:
            return kind
    raise DatasetError(
        f"cannot tell what kind of data set {source} is: no labels.csv, and the file names are not UTKFace's, "
        "MORPH's or CACD's; give a label CSV (path,age[,gender]) with labels= / --set data.labels=..."
    )


def read_records(source: Path, kind: str, labels: Path | None) -> tuple[list[Record], list[SkippedRow], int, str]:
    """(records, bad rows, rows filtered out, resolved kind) of a source; see the module docstring."""
    if not source.exists():
        raise DatasetError(f"data set {source} does not exist")
    if labels is not None and not labels.is_file():
        raise DatasetError(f"label file {labels} does not exist")
    if kind == "auto":
        kind = detect_kind(source, labels)
    if kind not in KINDS:
        raise DatasetError(f"unknown data set kind {kind!r}; choose auto or one of: {', '.join(KINDS)}")
    root = source.parent if source.is_file() else source
    if kind in ("csv", "ffhq-aging"):
        label_file = labels or (source if source.is_file() else source / "labels.csv")
        if not label_file.is_file():
            raise DatasetError(f"a {kind} data set needs a label file: {label_file} does not exist")
        if kind == "ffhq-aging":
            records, skipped, filtered = read_ffhq_aging(label_file, root)
            return records, skipped, filtered, kind
        records, skipped = read_csv_labels(label_file, root)
        return records, skipped, 0, kind
    if source.is_file():
        raise DatasetError(f"a {kind} data set is a folder of images, not the file {source}")
    records, skipped = read_file_names(kind, root)
    return records, skipped, 0, kind
