"""Face detection (MTCNN through OpenCV DNN) on a real public-domain portrait, and face selection."""

from __future__ import annotations

import numpy as np
import pytest

from pyagingrt.errors import InputError
from pyagingrt.pipeline.detect import Face, get_detector, select_faces

skimage_data = pytest.importorskip("skimage.data")


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return skimage_data.astronaut()  # 512 x 512 RGB, NASA portrait of Eileen Collins (public domain)


@pytest.fixture(scope="module")
def detector():
    return get_detector("mtcnn")


def _check_face_geometry(face: Face) -> None:
    left_eye, right_eye, nose, mouth_l, mouth_r = face.landmarks
    assert left_eye[0] < right_eye[0]  # image-left first
    assert mouth_l[0] < mouth_r[0]
    assert max(left_eye[1], right_eye[1]) < nose[1] < min(mouth_l[1], mouth_r[1])  # eyes, nose, mouth downwards
    x0, y0, x1, y1 = face.box
    assert np.all((face.landmarks >= [x0, y0]) & (face.landmarks <= [x1, y1]))  # landmarks inside the box
    assert 0.9 < face.score <= 1.0


def test_finds_the_one_face_in_the_astronaut_portrait(astronaut, detector):
    faces = detector.detect(astronaut)
    assert len(faces) == 1
    _check_face_geometry(faces[0])
    eye_distance = np.hypot(*(faces[0].landmarks[1] - faces[0].landmarks[0]))
    assert 30 < eye_distance < 60  # the face is ~90 px wide in this 512 px portrait


def test_mirrored_photo_gives_mirrored_landmarks(astronaut, detector):
    (face,) = detector.detect(astronaut)
    (mirror,) = detector.detect(np.ascontiguousarray(astronaut[:, ::-1]))
    width = astronaut.shape[1]
    expected = face.landmarks[[1, 0, 2, 4, 3]] * [-1, 1] + [width - 1, 0]  # swap left/right, flip x
    # MTCNN is not exactly mirror-symmetric (its networks and pyramid are not); 3 px is ~7% of the eye distance
    np.testing.assert_allclose(mirror.landmarks, expected, atol=3.0)


def test_large_photo_is_detected_downscaled_and_mapped_back(astronaut, detector):
    import cv2

    (face,) = detector.detect(astronaut)
    big = cv2.resize(astronaut, (2048, 2048), interpolation=cv2.INTER_LINEAR)  # over max_side 1024: downscaled
    (found,) = detector.detect(big)
    # landmarks come back in the big photo's pixels: 4x the small ones (pixel centres: (p + 0.5) * 4 - 0.5),
    # within the detector's own wobble between two resamplings of the photo (~2 px at 512, so 8 px here)
    np.testing.assert_allclose(found.landmarks, (face.landmarks + 0.5) * 4 - 0.5, atol=8.0)


@pytest.mark.parametrize("kind", ["flat", "noise", "coffee"])
def test_no_face_where_there_is_none(detector, kind):
    rng = np.random.default_rng(0)
    image = {
        "flat": np.full((240, 320, 3), 128, np.uint8),
        "noise": rng.integers(0, 256, (240, 320, 3), dtype=np.uint8),
        "coffee": skimage_data.coffee(),
    }[kind]
    assert detector.detect(image) == []


def _face(x0: float, size: float) -> Face:
    marks = np.array([[0.3, 0.4], [0.7, 0.4], [0.5, 0.6], [0.35, 0.8], [0.65, 0.8]]) * size + [x0, 0]
    return Face(box=np.array([x0, 0.0, x0 + size, size]), landmarks=marks, score=0.99)


def test_select_faces_orders_left_to_right_and_picks():
    faces = [_face(300, 50), _face(0, 80), _face(150, 120)]
    assert [f.box[0] for f in select_faces(faces, "all")] == [0, 150, 300]
    assert select_faces(faces, "largest")[0].box[0] == 150
    assert select_faces(faces, 3)[0].box[0] == 300
    with pytest.raises(InputError, match="face 4 was asked for but only 3"):
        select_faces(faces, 4)
    with pytest.raises(InputError, match="must be 1 or more"):
        select_faces(faces, 0)
    with pytest.raises(InputError, match="'all', 'largest' or a number"):
        select_faces(faces, "biggest")


def test_unknown_detector_names_the_choices():
    with pytest.raises(InputError, match="unknown face detector 'yolo'; choose one of: mtcnn"):
        get_detector("yolo")
