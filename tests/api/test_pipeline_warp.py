"""Crop and paste-back warps: parity with OpenCV's warpAffine, exactness on linear images, antialiasing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pyagingrt.pipeline.align import ARCFACE_TEMPLATE_112, Alignment, crop_transforms
from pyagingrt.pipeline.warp import crop_faces, feather_mask, paste_faces

cv2 = pytest.importorskip("cv2")


def _landmarks(scale: float, shift: tuple[float, float], angle: float = 0.2) -> np.ndarray:
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return (np.asarray(ARCFACE_TEMPLATE_112) @ rot.T + shift)[None]  # [1, 5, 2]


def _linear_photo(height: int = 256, width: int = 256) -> np.ndarray:
    """Exactly affine in x and y, in whole uint8 levels: R = x, G = y, B = 255 - x."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x, y, 255 - x], axis=2).astype(np.uint8)


def test_crop_matches_opencv_warp_affine():
    """Oracle: cv2.warpAffine (bilinear, pixel-index coordinates) at a scale where no supersampling happens."""
    rng = np.random.default_rng(0)
    photo = cv2.GaussianBlur(rng.integers(0, 256, (200, 240, 3), dtype=np.uint8), (0, 0), 2.0)
    size = 64
    mats = crop_transforms(_landmarks(0.5, (80, 60)), Alignment("template", 0.1), size)  # ~1 photo px/crop px
    ours = crop_faces(torch.from_numpy(photo), mats, size)[0].permute(1, 2, 0).numpy() * 255  # [S, S, 3]
    # continuous -> pixel-index coordinates on both sides: M_idx = T(-0.5) M T(+0.5)
    shift = np.array([[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1]])
    m_idx = np.linalg.inv(shift) @ mats[0] @ shift
    ref = cv2.warpAffine(
        photo.astype(np.float32), m_idx[:2], (size, size), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    )
    # OpenCV quantises bilinear weights to 1/32 pixel (INTER_BITS = 5): up to |grad| / 64 levels; the blurred
    # photo's gradient stays under ~40 levels/px, hence 1 level
    np.testing.assert_allclose(ours, ref, atol=1.0)


@pytest.mark.parametrize(("kind", "scale"), [("ffhq", 1.2), ("template", 0.4), ("template", 2.0)])
def test_identity_round_trip_is_exact_on_a_linear_photo(kind, scale):
    """Bilinear sampling, box averaging and alpha blending all reproduce an affine function exactly, so
    align -> identity -> paste-back must return a linear photo to within rounding (0 or 1 level)."""
    photo = _linear_photo()  # the crops below stay inside it: reflection padding would bend the plane
    size = 48
    marks = _landmarks(scale * 0.6 if kind == "ffhq" else scale, (128 - 56 * scale, 128 - 70 * scale), 0.1)
    mats = crop_transforms(marks, Alignment(kind), size)
    dev = torch.from_numpy(photo.copy())
    crops = crop_faces(dev, mats, size)  # [1, 3, S, S]
    out = paste_faces(dev, crops, mats, feather_mask(size, 0.7, dev.device)).numpy()
    assert np.abs(out.astype(int) - photo.astype(int)).max() <= 1


def test_paste_leaves_everything_outside_the_mask_bit_exact():
    rng = np.random.default_rng(1)
    photo = rng.integers(0, 256, (180, 200, 3), dtype=np.uint8)
    size = 32
    mats = crop_transforms(_landmarks(0.8, (60, 40)), Alignment("ffhq"), size)
    white = torch.ones(1, 3, size, size)
    mask = feather_mask(size, 0.7, torch.device("cpu"))
    out = paste_faces(torch.from_numpy(photo.copy()), white, mats, mask).numpy()
    # where the mask, carried to the photo, is zero, nothing may change: sample the mask alone
    alpha = paste_faces(torch.zeros(180, 200, 3, dtype=torch.uint8), white, mats, mask).numpy()[..., 0]
    untouched = alpha == 0
    assert untouched.mean() > 0.5  # the test means something: most of the photo lies outside the face
    np.testing.assert_array_equal(out[untouched], photo[untouched])
    assert (out[~untouched] >= photo[~untouched]).all()  # blending towards white only brightens


def test_mask_is_one_inside_zero_at_the_edge_and_smooth():
    mask = feather_mask(64, 0.7, torch.device("cpu"))
    assert mask[32, 32] == 1.0
    assert mask[0, 0] == 0.0
    assert float(mask[0, :].max()) < 0.05  # the crop's edge never shows: < 5% weight on the border row
    # no step anywhere: smoothstep's steepest slope is 1.5 / band, band = (1 - 0.7) * 32 = 9.6 pixels -> 0.156
    assert float(mask.diff(dim=1).abs().max()) <= 1.5 / 9.6 + 1e-6


def test_large_faces_are_antialiased():
    """A 1-pixel checkerboard seen through a 4x minifying crop must average to grey, not alias into stripes:
    the box prefilter averages 4 x 4 samples per crop pixel."""
    board = ((np.indices((400, 400)).sum(0) % 2) * 255).astype(np.uint8)
    photo = np.repeat(board[..., None], 3, axis=2)
    size = 32
    mats = crop_transforms(_landmarks(1.5, (100, 60), 0.3), Alignment("template", 0.1), size)
    crop = crop_faces(torch.from_numpy(photo), mats, size)[0]  # [3, S, S]
    assert abs(float(crop.mean()) - 0.5) < 0.02
    # plain bilinear sampling at this scale gives near-black and near-white pixels; the prefilter keeps all
    # pixels within 0.2 of grey (what is left is the bilinear taps of the sub-samples at the board's Nyquist rate)
    assert float((crop - 0.5).abs().max()) < 0.2
