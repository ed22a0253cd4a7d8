"""Face detection behind a small interface: a detector turns an RGB photo into boxes and 5 landmarks.

The five landmarks, in this order, in pixel coordinates (x right, y down, pixel (0, 0) centred at (0, 0)):
eye on the image's left, eye on the image's right, nose tip, mouth corner on the left, mouth corner on the
right. Both alignment recipes need exactly these (pipeline/align.py). A new detector implements
:class:`FaceDetector` and is added to :data:`DETECTORS`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ..errors import InputError

__all__ = [
    "DETECTORS",
    "Face",
    "FaceDetector",
    "check_face_choice",
    "face_shaped",
    "get_detector",
    "is_face_shaped",
    "select_faces",
]


@dataclass(frozen=True)
class Face:
    """One detected face."""

    box: np.ndarray  # [4] float64: x0, y0, x1, y1 in pixels
    landmarks: np.ndarray  # [5, 2] float64: (x, y) of left eye, right eye, nose, left and right mouth corners
    score: float  # detector confidence in [0, 1]

    @property
    def size(self) -> float:
        """Side of the box's bounding square, in pixels (what "largest" compares)."""
        return float(max(self.box[2] - self.box[0], self.box[3] - self.box[1]))


class FaceDetector(Protocol):
    """What the pipeline needs from a detector."""

    name: str

    def detect(self, image: np.ndarray) -> list[Face]:
        """All faces in ``image`` (uint8 RGB [H, W, 3]), most confident first."""
        ...


def _mtcnn() -> FaceDetector:
    from .mtcnn import MTCNNDetector

    return MTCNNDetector()


# name -> factory; the first is the default.
DETECTORS: dict[str, Callable[[], FaceDetector]] = {"mtcnn": _mtcnn}


@functools.cache
def get_detector(name: str = "mtcnn") -> FaceDetector:
    """The detector called ``name`` (built once per process: loading its networks takes ~50 ms)."""
    if name not in DETECTORS:
        raise InputError(f"unknown face detector {name!r}; choose one of: {', '.join(DETECTORS)}")
    return DETECTORS[name]()


def is_face_shaped(landmarks: np.ndarray, box: np.ndarray) -> bool:
    """Whether 5 landmarks [5, 2] are laid out like a face, in the frame of the eyes (x along the eye line, y
    down from it, in eye distances): the nose below the eyes, both mouth corners below the nose's level, the
    mouth corners in their left/right order, and an eye distance that is a sane share of the box width.

    The bounds are loose (a frontal face has nose y ~0.55, mouth y ~0.95, eye distance ~0.47 of the box;
    turned or tilted faces stay inside them): they reject landmarks a detector put on a pattern (a logo, text,
    a texture) in a non-face layout, and tracks whose points optical flow has pulled apart.
    """
    marks = np.asarray(landmarks, dtype=np.float64)
    axis = marks[1] - marks[0]
    eyes = float(np.hypot(*axis))
    width = float(box[2] - box[0])
    if not np.isfinite(marks).all() or eyes < 1e-6 or width <= 0 or not 0.2 <= eyes / width <= 0.9:
        return False
    ux, uy = axis / eyes
    rel = (marks - (marks[0] + marks[1]) / 2) / eyes  # [5, 2] from the eyes' midpoint, in eye distances
    x, y = rel @ np.array([ux, uy]), rel @ np.array([-uy, ux])  # along the eye line, and down from it
    nose_ok = 0.15 <= y[2] <= 2.0 and abs(x[2]) <= 1.2
    mouth_ok = all(0.35 <= y[k] <= 3.0 and y[k] >= y[2] - 0.1 and abs(x[k]) <= 1.8 for k in (3, 4))
    return bool(nose_ok and mouth_ok and 0.2 <= x[4] - x[3] <= 2.5)


def face_shaped(faces: Sequence[Face]) -> list[Face]:
    """The faces whose landmarks pass :func:`is_face_shaped`."""
    return [f for f in faces if is_face_shaped(f.landmarks, f.box)]


def select_faces(faces: Sequence[Face], which: str | int = "all") -> list[Face]:
    """Pick faces: "all" (left to right), "largest", or N, the N-th face from the left (1-based)."""
    check_face_choice(which)
    ordered = sorted(faces, key=lambda f: float(f.box[0] + f.box[2]))  # left to right by box centre
    if which == "all":
        return ordered
    if which == "largest":
        return [max(ordered, key=lambda f: f.size)] if ordered else []
    if isinstance(which, int):
        if which > len(ordered):
            raise InputError(
                f"face {which} was asked for but only {len(ordered)} face(s) were found; "
                "faces are numbered from the left starting at 1"
            )
        return [ordered[which - 1]]
    return []


def check_face_choice(which: str | int) -> None:
    """Raise InputError unless ``which`` is "all", "largest" or a face number from 1."""
    if which in ("all", "largest"):
        return
    if not isinstance(which, int) or isinstance(which, bool):
        raise InputError(f"face must be 'all', 'largest' or a number from 1, got {which!r}")
    if which < 1:
        raise InputError(f"face number must be 1 or more (faces count from the left), got {which}")
