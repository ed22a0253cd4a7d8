"""Face tracks across video frames: detect every few frames, follow landmarks by optical flow in between,
and smooth them so the aligned crop does not jitter.

Each track keeps an id for its whole life; the video pipeline seeds a stochastic model with seed + id, so a
face keeps its noise from frame to frame and does not flicker.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np

from .detect import Face, FaceDetector, face_shaped, is_face_shaped, select_faces

__all__ = ["FaceTracker", "OneEuroFilter", "TrackedFace"]


class OneEuroFilter:
    """The 1-euro filter (Casiez, Roussel and Vogel, CHI 2012) on an array of coordinates.

    A low-pass filter whose cutoff rises with speed: still faces get heavy smoothing (no jitter) and moving
    faces little (no lag). Cutoffs are in Hz; ``beta`` is per (pixel per second) of landmark speed, so it is
    scaled by the face size here to behave the same for small and large faces.
    """

    def __init__(self, rate: float, min_cutoff: float = 1.0, beta: float = 0.5, d_cutoff: float = 1.0) -> None:
        self.rate, self.min_cutoff, self.beta, self.d_cutoff = rate, min_cutoff, beta, d_cutoff
        self.value: np.ndarray | None = None
        self.speed: np.ndarray | None = None

    def _alpha(self, cutoff: np.ndarray | float) -> np.ndarray | float:
        tau = 1.0 / (2 * math.pi * cutoff)
        return 1.0 / (1.0 + tau * self.rate)

    def __call__(self, x: np.ndarray, scale: float) -> np.ndarray:
        """Filter one sample ``x`` (any shape); ``scale`` is the face size in pixels."""
        if self.value is None:
            self.value, self.speed = x.copy(), np.zeros_like(x)
            return x.copy()
        speed = (x - self.value) * self.rate  # pixels per second
        a_d = self._alpha(self.d_cutoff)
        self.speed = a_d * speed + (1 - a_d) * self.speed
        cutoff = self.min_cutoff + self.beta * np.abs(self.speed) / max(scale, 1.0) * 100.0
        a = self._alpha(cutoff)
        self.value = a * x + (1 - a) * self.value
        return self.value.copy()


@dataclass
class _Track:
    id: int
    face: Face  # latest raw estimate
    smooth: OneEuroFilter
    missed: int = 0  # detection rounds in a row without a matching detection
    hits: int = 1  # detections matched to it so far
    confirmed: bool = False  # seen by the detector in enough frames in a row to be aged


@dataclass(frozen=True)
class TrackedFace:
    """A face in one frame: its track id and smoothed landmarks [5, 2]."""

    track_id: int
    landmarks: np.ndarray
    face: Face = field(repr=False)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


class FaceTracker:
    """Faces of consecutive frames with stable ids.

    Args:
        detector: runs on frames 0, k, 2k, ... (k = ``detect_every``) and whenever there is no track.
        rate: frames per second (for the smoothing filter's cutoffs).
        detect_every: detection interval; in between, landmarks follow Lucas-Kanade optical flow.
        face: "all", "largest" or N (see pipeline.detect.select_faces), applied to each frame's tracks.
        max_missed: a track that no detection matches this many rounds in a row ends.
        confirm: a new track is only aged once the detector has found it in this many frames in a row (the
            detector runs on every frame while a track waits), so a pattern it mistakes for a face in one frame
            (a blurred logo) is never aged; a real face starts being aged ``confirm - 1`` frames late.

    Detections and tracked faces whose landmarks are not laid out like a face (pipeline.detect.is_face_shaped)
    are dropped.
    """

    def __init__(
        self,
        detector: FaceDetector,
        rate: float,
        detect_every: int = 5,
        face: str | int = "all",
        max_missed: int = 2,
        smooth: bool = True,
        confirm: int = 2,
    ) -> None:
        import cv2

        self._cv2 = cv2
        self.detector, self.rate, self.detect_every, self.face = detector, rate, max(1, detect_every), face
        self.max_missed, self.smooth, self.confirm = max_missed, smooth, max(1, confirm)
        self._tracks: list[_Track] = []
        self._ids = itertools.count()
        self._frame = 0
        self._gray: np.ndarray | None = None

    def _flow(self, gray: np.ndarray) -> None:
        """Move every track's landmarks (and box) along the optical flow from the previous frame."""
        if self._gray is None or not self._tracks:
            return
        pts = np.concatenate([t.face.landmarks for t in self._tracks]).astype(np.float32)[:, None]  # [5T, 1, 2]
        moved, status, _ = self._cv2.calcOpticalFlowPyrLK(self._gray, gray, pts, None, winSize=(21, 21), maxLevel=3)
        moved, status = moved[:, 0].astype(np.float64), status[:, 0].astype(bool)  # [5T, 2], [5T]
        kept = []
        for i, track in enumerate(self._tracks):
            ok = status[5 * i : 5 * i + 5]
            if ok.sum() < 4:  # lost (left the frame, occluded): end the track
                continue
            new = np.where(ok[:, None], moved[5 * i : 5 * i + 5], track.face.landmarks)  # [5, 2]
            shift = np.median(new - track.face.landmarks, axis=0)  # [2]
            track.face = Face(box=track.face.box + np.tile(shift, 2), landmarks=new, score=track.face.score)
            if is_face_shaped(track.face.landmarks, track.face.box):  # else the flow lost it: end the track
                kept.append(track)
        self._tracks = kept

    def _match(self, faces: list[Face]) -> None:
        """Assign detections to tracks greedily by box overlap; unmatched detections start tracks."""
        pairs = sorted(
            ((_iou(t.face.box, f.box), ti, fi) for ti, t in enumerate(self._tracks) for fi, f in enumerate(faces)),
            reverse=True,
        )
        used_t, used_f = set(), set()
        for iou, ti, fi in pairs:
            if iou < 0.3 or ti in used_t or fi in used_f:
                continue
            used_t.add(ti)
            used_f.add(fi)
            track = self._tracks[ti]
            track.face, track.missed, track.hits = faces[fi], 0, track.hits + 1
            track.confirmed = track.confirmed or track.hits >= self.confirm
        for ti, track in enumerate(self._tracks):
            if ti not in used_t:
                track.missed += 1
        # a confirmed track survives a few missed rounds; one still waiting for confirmation ends at its first
        self._tracks = [t for t in self._tracks if t.missed < (self.max_missed if t.confirmed else 1)]
        for fi, face in enumerate(faces):
            if fi not in used_f:
                self._tracks.append(
                    _Track(next(self._ids), face, OneEuroFilter(self.rate), confirmed=self.confirm == 1)
                )

    def update(self, image: np.ndarray) -> list[TrackedFace]:
        """The selected faces of the next frame (uint8 RGB [H, W, 3]), with smoothed landmarks."""
        gray = self._cv2.cvtColor(image, self._cv2.COLOR_RGB2GRAY)
        self._flow(gray)
        waiting = any(not t.confirmed for t in self._tracks)
        if self._frame % self.detect_every == 0 or not self._tracks or waiting:
            self._match(face_shaped(self.detector.detect(image)))
        self._gray, self._frame = gray, self._frame + 1
        wanted = self.face
        tracks = [t for t in self._tracks if t.confirmed]
        if isinstance(wanted, int) and wanted > len(tracks):
            return []  # face N is not in this frame: pass it through
        faces = select_faces([t.face for t in tracks], wanted) if tracks else []
        by_face = {id(t.face): t for t in tracks}
        out = []
        for face in faces:
            track = by_face[id(face)]
            marks = track.smooth(face.landmarks, face.size) if self.smooth else face.landmarks
            out.append(TrackedFace(track.id, marks, face))
        return out
