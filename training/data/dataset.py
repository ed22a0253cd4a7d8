"""Face-age data sets for training: :func:`open_dataset` turns a folder (and its labels) into a ``Dataset``.

    data = open_dataset("data/utkface_aligned", image_size=224, min_age=10, max_age=80)
    item = data[0]  # {"image": float32 [3, S, S] in [0, 1], "age": float32, "gender": int64, "index": int64}
    print(describe_groups(data.ages, (21, 31, 41, 51)))

Bad rows never stop training (docs/data.md):

- At open time every row is checked cheaply: a label that does not parse, an age outside [min_age, max_age],
  a missing file, a file whose header Pillow cannot identify. Each is logged with its file and line (first
  20, then a count) and left out; ``data.skipped`` keeps them all. No usable row at all is an error.
- An image that turns out to be unreadable only when an item is loaded (truncated data past the header, a
  file removed since) is logged once and replaced by the next readable item, so a batch keeps its size and
  every rank of a distributed run keeps the same number of steps. The returned ``index`` is that of the image
  actually returned, so its age and gender match. More than :data:`MAX_CONSECUTIVE_UNREADABLE` unreadable
  items in a row (a disk gone, say) is an error rather than a silent loop.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from .sources import KINDS, DatasetError, Record, SkippedRow, read_records

__all__ = [
    "KINDS",
    "MAX_CONSECUTIVE_UNREADABLE",
    "DatasetError",
    "FaceAgeDataset",
    "SkippedRow",
    "describe_groups",
    "load_image",
    "open_dataset",
]

log = logging.getLogger("pyagingrt.data")

MAX_CONSECUTIVE_UNREADABLE = 32
_SHOWN_SKIPS = 20  # bad rows logged one by one; the rest are counted


class UnreadableImageError(DatasetError):
    """One image file that Pillow cannot decode."""


def load_image(path: Path, image_size: int) -> Tensor:
    """An image file as float32 [3, S, S] in [0, 1]: RGB, the shorter side resized to S (antialiased), the
    longer one centre-cropped (aligned crops are square already, so nothing is cut from them)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            width, height = im.size
            scale = image_size / min(width, height)
            if (width, height) != (image_size, image_size):
                size = (max(image_size, round(width * scale)), max(image_size, round(height * scale)))
                im = im.resize(size, Image.Resampling.LANCZOS)
                left, top = (size[0] - image_size) // 2, (size[1] - image_size) // 2
                im = im.crop((left, top, left + image_size, top + image_size))
            pixels = np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise UnreadableImageError(f"{path} cannot be read as an image ({exc})") from exc
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1).float().div_(255.0)  # [3, S, S]


def _header_readable(path: Path) -> str | None:
    """None when Pillow identifies the file (header only, no decoding), else the reason."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path):
            return None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        return f"not an image Pillow can read ({type(exc).__name__})"


class FaceAgeDataset(Dataset):
    """Aligned face images with ages; items ``{"image", "age", "gender", "index"}`` (see the module docstring).

    Attributes:
        ages: float32 Tensor[N], the age of every item in years.
        genders: int64 Tensor[N], 1 male, 0 female, -1 unknown.
        paths: the image files, in item order.
        skipped: every row left out at open time, with where it was and why.
        kind: the data set kind that was read ("csv", "utkface", "ffhq-aging", "morph", "cacd").
        filtered: rows a kind's own filter left out (FFHQ-Aging's confidence/pose/occlusion filter).
    """

    def __init__(
        self,
        records: Sequence[Record],
        *,
        image_size: int,
        kind: str = "csv",
        skipped: Sequence[SkippedRow] = (),
        filtered: int = 0,
    ) -> None:
        if image_size < 1:
            raise DatasetError(f"image_size must be positive, got {image_size}")
        self.records = list(records)
        self.image_size = int(image_size)
        self.kind = kind
        self.skipped = list(skipped)
        self.filtered = filtered
        self.paths = [r.path for r in self.records]
        self.ages = torch.tensor([r.age for r in self.records], dtype=torch.float32)
        self.genders = torch.tensor([r.gender for r in self.records], dtype=torch.int64)
        self.unreadable: set[int] = set()  # items found unreadable while loading (in this process)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a data set of {len(self)}")
        index %= len(self)
        for step in range(min(MAX_CONSECUTIVE_UNREADABLE, len(self))):
            i = (index + step) % len(self)
            try:
                image = load_image(self.paths[i], self.image_size)
            except UnreadableImageError as exc:
                if i not in self.unreadable:
                    self.unreadable.add(i)
                    log.warning("%s: %s; using the next item in its place", self.records[i].where, exc)
                continue
            return {
                "image": image,
                "age": self.ages[i].clone(),
                "gender": self.genders[i].clone(),
                "index": torch.tensor(i, dtype=torch.int64),
            }
        raise DatasetError(
            f"{MAX_CONSECUTIVE_UNREADABLE} images in a row from item {index} ({self.paths[index]}) cannot be read; "
            "is the data set's folder still there?"
        )

    def summary(self) -> str:
        """One line: how many images, how many rows were left out and why in short."""
        text = f"{len(self)} images ({self.kind})"
        if self.skipped:
            text += f", {len(self.skipped)} bad rows skipped"
        if self.filtered:
            text += f", {self.filtered} rows left out by the {self.kind} filter"
        return text


def open_dataset(
    source: str | Path,
    *,
    image_size: int,
    kind: str = "auto",
    labels: str | Path | None = None,
    min_age: float = 0,
    max_age: float = 100,
    check_images: bool = True,
) -> FaceAgeDataset:
    """Open a face-age data set.

    Args:
        source: a folder of images (with ``labels.csv`` inside, or file names that carry the ages), or a label
            CSV whose paths are relative to its folder.
        image_size: side S of the returned images (resized if the files differ).
        kind: "auto" (from the label header or the file names), or one of :data:`KINDS`.
        labels: the label CSV of a folder kept elsewhere (generic ``path,age[,gender]`` or FFHQ-Aging's).
        min_age, max_age: rows with an age outside [min_age, max_age] are skipped as bad rows.
        check_images: open each file's header now, so a non-image is reported with its line at open time
            (milliseconds per file); False checks only that the files exist.

    Raises:
        DatasetError: the source or its labels cannot be read, or no row is usable.
    """
    if not min_age <= max_age:
        raise DatasetError(f"min_age {min_age} is above max_age {max_age}")
    root = Path(source)
    label_file = Path(labels) if labels else None  # None or "" (an unset config value): no label file
    records, skipped, filtered, resolved = read_records(root, kind or "auto", label_file)
    usable: list[Record] = []
    for record in records:
        reason = None
        if not min_age <= record.age <= max_age:
            reason = f"age {record.age:g} outside [{min_age:g}, {max_age:g}]"
        elif not record.path.is_file():
            reason = f"file {record.path} is missing"
        elif check_images:
            reason = _header_readable(record.path)
        if reason is None:
            usable.append(record)
        else:
            skipped.append(SkippedRow(record.where, reason))
    for row in skipped[:_SHOWN_SKIPS]:
        log.warning("%s; skipped", row)
    if len(skipped) > _SHOWN_SKIPS:
        log.warning("... and %d more bad rows skipped (dataset.skipped lists them all)", len(skipped) - _SHOWN_SKIPS)
    if not usable:
        raise DatasetError(
            f"data set {root} has no usable image ({len(skipped)} bad rows, {filtered} filtered out; "
            f"ages kept: {min_age:g}..{max_age:g})"
        )
    return FaceAgeDataset(usable, image_size=image_size, kind=resolved, skipped=skipped, filtered=filtered)


def describe_groups(ages: Tensor | Sequence[float] | np.ndarray, edges: Sequence[float]) -> str:
    """A table of the images per age group, printed before training.

    ``edges`` are the lower edges of groups 1 .. n-1 in whole years (group 0 starts at 0), as the models'
    group tables give them; an age counts in whole years with halves up (20.5 is 21), as the models map
    target ages. An empty group is flagged: a conditional model cannot learn a group it never sees.
    """
    values = torch.as_tensor(np.asarray(ages, dtype=np.float64) if not isinstance(ages, Tensor) else ages)
    values = values.double().reshape(-1)
    whole = torch.floor(values + 0.5)
    bounds = [float(e) for e in edges]
    if any(b >= a for a, b in zip(bounds[1:], bounds[:-1], strict=False)):
        raise DatasetError(f"group edges must increase, got {list(edges)}")
    group = (whole[:, None] >= torch.tensor(bounds, dtype=torch.float64)[None, :]).sum(dim=1) if bounds else None
    total = len(values)
    lines = [f"{'group':>5}  {'ages':>9}  {'images':>8}  {'share':>6}  {'mean age':>8}"]
    lows = [0.0, *bounds]
    highs = [b - 1 for b in bounds] + [math.inf]
    for g, (low, high) in enumerate(zip(lows, highs, strict=True)):
        members = values[group == g] if group is not None else values
        span = f"{low:g}+" if math.isinf(high) else f"{low:g}-{high:g}"
        count = len(members)
        share = f"{100 * count / total:5.1f}%" if total else "    -"
        mean = f"{members.mean().item():8.1f}" if count else "       -"
        flag = "  <- empty: this group cannot be learned" if count == 0 else ""
        lines.append(f"{g:>5}  {span:>9}  {count:>8}  {share:>6}  {mean}{flag}")
    lines.append(f"{'all':>5}  {'':>9}  {total:>8}")
    return "\n".join(lines)
