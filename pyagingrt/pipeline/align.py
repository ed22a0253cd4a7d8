"""From 5 landmarks to the similarity transform that cuts out the crop a model was trained on.

A transform is a 3x3 matrix M (float64) mapping a point of the S x S crop to the photo, both in continuous
pixel coordinates where pixel (i, j) covers [j, j + 1) x [i, i + 1), so its centre is (j + 0.5, i + 0.5).
Detectors report landmarks at pixel centres (pixel (0, 0) at (0, 0)); :func:`crop_transforms` adds the 0.5.
pipeline/warp.py samples the crop through M and pastes the result back through M^-1.

Two recipes:

- ``ffhq`` (AgeFlow, CUSP, PADA): the NVlabs FFHQ recipe (docs/models/pada.md section 2, "Alignment is the NVlabs
  FFHQ recipe"): an oriented square centred at eye_avg + 0.1 * eye_to_mouth with half-side
  max(2 * |eye_to_eye|, 1.8 * |eye_to_mouth|), its x axis along eye_to_eye bent by the eye-to-mouth
  direction.
- ``template`` (AcGAN): the least-squares similarity from the 5 landmarks onto the common 112 x 112 five-point
  template scaled x2, shrunk about the centre by 1 / (1 + margin) (docs/models/acgan.md section 2, "alignment
  (project)"); margin 0.1 for the Morph weights, 0.2 for CACD.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InputError

__all__ = ["ARCFACE_TEMPLATE_112", "Alignment", "alignment_for", "crop_transforms"]

# The common five-point template of 112 x 112 face crops, at pixel centres: eyes, nose, mouth corners.
ARCFACE_TEMPLATE_112 = (
    (38.2946, 51.6963),
    (73.5318, 51.5014),
    (56.0252, 71.7366),
    (41.5493, 92.3655),
    (70.7299, 92.2041),
)


@dataclass(frozen=True)
class Alignment:
    """How to cut a model's crop out of a photo: ``kind`` "ffhq" or "template" (with ``margin``)."""

    kind: str = "ffhq"
    margin: float = 0.1  # template only: the crop is enlarged by (1 + margin) about its centre
    template: tuple[tuple[float, float], ...] = ARCFACE_TEMPLATE_112  # template only: 5 points, 112 x 112 units

    def __post_init__(self) -> None:
        if self.kind not in ("ffhq", "template"):
            raise InputError(f"alignment kind must be 'ffhq' or 'template', got {self.kind!r}")
        if len(self.template) != 5:
            raise InputError(f"an alignment template has 5 points, got {len(self.template)}")
        if not 0.0 <= self.margin < 2.0:
            raise InputError(f"alignment margin must lie in [0, 2), got {self.margin}")


_BY_MODEL = {"ageflow": Alignment("ffhq"), "cusp": Alignment("ffhq"), "pada": Alignment("ffhq")}


def alignment_for(engine: Any) -> Alignment:
    """The recipe for an engine: its own ``alignment`` attribute if it has one, else by model name.

    AcGAN reads the template and margin from its config (``align_template``, ``align_margin``), since they
    belong to the weights (Morph margin 0.1, CACD 0.2).
    """
    own = getattr(engine, "alignment", None)
    if isinstance(own, Alignment):
        return own
    name = str(getattr(engine, "model", "")).lower()
    if name == "acgan":
        config = getattr(engine, "config", None)
        template = tuple(tuple(map(float, p)) for p in getattr(config, "align_template", ARCFACE_TEMPLATE_112))
        return Alignment("template", float(getattr(config, "align_margin", 0.1)), template)
    return _BY_MODEL.get(name, Alignment("ffhq"))


def _ffhq(points: np.ndarray, size: int) -> np.ndarray:
    """points [5, 2] continuous -> M [3, 3] (crop -> photo)."""
    eye_avg = (points[0] + points[1]) / 2  # [2]
    eye_to_eye = points[1] - points[0]
    eye_to_mouth = (points[3] + points[4]) / 2 - eye_avg
    x = eye_to_eye - np.array([-eye_to_mouth[1], eye_to_mouth[0]])  # eye line, bent by the face's vertical
    x *= max(2.0 * np.hypot(*eye_to_eye), 1.8 * np.hypot(*eye_to_mouth)) / max(np.hypot(*x), 1e-9)  # half-side
    y = np.array([-x[1], x[0]])  # x turned 90 degrees: points down the face
    centre = eye_avg + 0.1 * eye_to_mouth
    # crop point (u, v) in [0, S]^2 -> centre + x * (2u / S - 1) + y * (2v / S - 1)
    return np.array(
        [
            [2 * x[0] / size, 2 * y[0] / size, centre[0] - x[0] - y[0]],
            [2 * x[1] / size, 2 * y[1] / size, centre[1] - x[1] - y[1]],
            [0.0, 0.0, 1.0],
        ]
    )


def _template(points: np.ndarray, size: int, margin: float, template: tuple) -> np.ndarray:
    """points [5, 2] continuous -> M [3, 3] (crop -> photo) by least squares onto the shrunk template."""
    half = size / 2
    tpl = (np.asarray(template, dtype=np.float64) + 0.5) * (size / 112.0)  # [5, 2] continuous, at this crop size
    tpl = half + (tpl - half) / (1.0 + margin)
    # The least-squares similarity crop -> photo, written with complex numbers: p = z * t + b minimises
    # sum |p_i - z t_i - b|^2 at z = sum conj(t~_i) p~_i / sum |t~_i|^2 (tilde: centred), b = mean(p) - z mean(t).
    t = tpl[:, 0] + 1j * tpl[:, 1]
    p = points[:, 0] + 1j * points[:, 1]
    tc, pc = t - t.mean(), p - p.mean()
    z = np.sum(np.conj(tc) * pc) / np.sum(np.abs(tc) ** 2)
    b = p.mean() - z * t.mean()
    return np.array([[z.real, -z.imag, b.real], [z.imag, z.real, b.imag], [0.0, 0.0, 1.0]])


def crop_transforms(landmarks: np.ndarray, alignment: Alignment, size: int) -> np.ndarray:
    """Transforms [N, 3, 3] (crop -> photo, continuous pixels) for landmarks [N, 5, 2] at pixel centres."""
    marks = np.asarray(landmarks, dtype=np.float64).reshape(-1, 5, 2) + 0.5  # to continuous coordinates
    if alignment.kind == "ffhq":
        mats = [_ffhq(m, size) for m in marks]
    else:
        mats = [_template(m, size, alignment.margin, alignment.template) for m in marks]
    return np.stack(mats) if mats else np.zeros((0, 3, 3))
