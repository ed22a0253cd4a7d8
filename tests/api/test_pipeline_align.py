"""Alignment transforms: the FFHQ recipe and the five-point template, checked against their definitions."""

from __future__ import annotations

import types

import numpy as np
import pytest

from pyagingrt.errors import InputError
from pyagingrt.pipeline.align import ARCFACE_TEMPLATE_112, Alignment, alignment_for, crop_transforms


def _apply(mat: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ mat[:2, :2].T + mat[:2, 2]


def _random_landmarks(rng: np.random.Generator) -> np.ndarray:
    """A plausible face: the template under a random similarity, plus a little noise (pixel-centre coords)."""
    angle, scale, shift = rng.uniform(-0.5, 0.5), rng.uniform(0.5, 3.0), rng.uniform(50, 400, 2)
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return np.asarray(ARCFACE_TEMPLATE_112) @ rot.T + shift + rng.normal(0, 0.5, (5, 2))


@pytest.mark.parametrize("seed", range(5))
def test_ffhq_recipe_centre_side_and_orientation(seed):
    rng = np.random.default_rng(seed)
    marks = _random_landmarks(rng)
    size = 256
    (mat,) = crop_transforms(marks[None], Alignment("ffhq"), size)
    p = marks + 0.5  # continuous coordinates
    eye_avg, mouth_avg = (p[0] + p[1]) / 2, (p[3] + p[4]) / 2
    eye_to_eye, eye_to_mouth = p[1] - p[0], mouth_avg - eye_avg
    # the crop centre lands on eye_avg + 0.1 * eye_to_mouth
    np.testing.assert_allclose(_apply(mat, np.array([[size / 2, size / 2]]))[0], eye_avg + 0.1 * eye_to_mouth)
    # the crop side is 2 * max(2 |eye_to_eye|, 1.8 |eye_to_mouth|) photo pixels
    side = np.hypot(*(_apply(mat, np.array([[size, 0.0]])) - _apply(mat, np.array([[0.0, 0.0]])))[0])
    np.testing.assert_allclose(side, 2 * max(2 * np.hypot(*eye_to_eye), 1.8 * np.hypot(*eye_to_mouth)))
    # a similarity (no shear), and the crop's x axis is eye_to_eye bent by the rotated eye_to_mouth
    a = mat[:2, :2]
    np.testing.assert_allclose(a.T @ a, np.eye(2) * (side / size) ** 2, rtol=1e-9, atol=1e-12)
    x = eye_to_eye - np.array([-eye_to_mouth[1], eye_to_mouth[0]])
    np.testing.assert_allclose(a[:, 0] / np.hypot(*a[:, 0]), x / np.hypot(*x))


@pytest.mark.parametrize(("size", "margin"), [(224, 0.1), (224, 0.2), (48, 0.1)])
def test_template_maps_an_exact_face_onto_the_shrunk_template(size, margin):
    angle, scale, shift = 0.3, 1.7, np.array([120.0, 80.0])
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    marks = np.asarray(ARCFACE_TEMPLATE_112) @ rot.T + shift  # noiseless: the fit must be exact
    (mat,) = crop_transforms(marks[None], Alignment("template", margin), size)
    in_crop = _apply(np.linalg.inv(mat), marks + 0.5)  # where the landmarks land in the crop (continuous)
    centre = size / 2
    expected = centre + ((np.asarray(ARCFACE_TEMPLATE_112) + 0.5) * size / 112 - centre) / (1 + margin)
    np.testing.assert_allclose(in_crop, expected, atol=1e-9)


def test_template_fit_is_least_squares():
    """With noisy landmarks, no nearby similarity fits better (the closed form is the minimum)."""
    rng = np.random.default_rng(2)
    marks = _random_landmarks(rng)
    (mat,) = crop_transforms(marks[None], Alignment("template", 0.1), 224)
    tpl = 112 + ((np.asarray(ARCFACE_TEMPLATE_112) + 0.5) * 2 - 112) / 1.1

    def cost(m: np.ndarray) -> float:
        return float(np.sum((_apply(m, tpl) - (marks + 0.5)) ** 2))

    best = cost(mat)
    for _ in range(50):
        a, b, tx, ty = rng.normal(0, 1e-3, 4)
        step = np.array([[a, -b, tx], [b, a, ty], [0, 0, 0]])
        assert cost(mat + step) >= best - 1e-9


def test_alignment_for_models():
    acgan_cfg = types.SimpleNamespace(align_margin=0.2, align_template=ARCFACE_TEMPLATE_112)
    assert alignment_for(types.SimpleNamespace(model="acgan", config=acgan_cfg)) == Alignment("template", 0.2)
    for name in ("ageflow", "cusp", "pada"):
        assert alignment_for(types.SimpleNamespace(model=name)).kind == "ffhq"
    own = Alignment("template", 0.0)
    assert alignment_for(types.SimpleNamespace(model="cusp", alignment=own)) is own


def test_bad_alignment_is_rejected():
    with pytest.raises(InputError, match="'ffhq' or 'template'"):
        Alignment("arcface")
    with pytest.raises(InputError, match="margin must lie in"):
        Alignment("template", -0.1)
