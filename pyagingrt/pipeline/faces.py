"""Age the faces in a photo: detect -> align -> model -> paste back (``FacePipeline``).

    eng = pyagingrt.load("cusp", checkpoint="cusp.pkl")
    pipe = FacePipeline(eng)
    aged = pipe.age(photo, target_age=70, seed=0)  # uint8 [H, W, 3] in, the same out

The engine is anything with ``input_size``, ``model``, ``device`` and ``age(crops, target_age, seed=, **options)``
taking float Tensor[B, 3, S, S] in [0, 1]; an ``Engine`` from ``pyagingrt.load`` is one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from ..errors import InputError, NoFaceError
from .align import Alignment, alignment_for, crop_transforms
from .detect import Face, FaceDetector, check_face_choice, face_shaped, get_detector, select_faces
from .warp import crop_faces, feather_mask, paste_faces

__all__ = ["AgingEngine", "FacePipeline", "is_stochastic", "run_engine"]

_FEATHER_INNER = {"ffhq": 0.7, "template": 0.85}  # template crops are tight: keep more of them at full weight


class AgingEngine(Protocol):
    """What the pipeline needs from an engine (``pyagingrt.Engine`` is one)."""

    @property
    def input_size(self) -> int: ...

    @property
    def model(self) -> str: ...

    device: torch.device

    def age(self, images: Tensor, target_age: Any, *, seed: int | None = None, **options: Any) -> Any: ...


def is_stochastic(engine: Any) -> bool:
    """Whether the engine's output depends on the seed: its ``stochastic`` attribute, else its adapter's; an
    engine that says nothing is treated as stochastic (the safe side: see :func:`run_engine`)."""
    for owner in (engine, getattr(engine, "adapter", None)):
        flag = getattr(owner, "stochastic", None)
        if isinstance(flag, bool):
            return flag
    return True


def run_engine(
    engine: AgingEngine, crops: Tensor, target_age: float, seeds: Sequence[int], options: dict[str, Any]
) -> Tensor:
    """Age crops [N, 3, S, S] with one seed per crop; returns [N, 3, S, S] (or [N, K, 3, S, S] for K samples).

    A deterministic engine gets one batched call. A stochastic one gets one call per crop with that crop's
    seed, because ``Engine.age`` takes one seed per call and a model may draw a batch's noise in sequence: in
    a shared call, a face's noise would depend on its place in the batch, and a video face would flicker
    whenever the batch is made up differently.
    """
    if len(crops) == 0:
        return crops
    if not is_stochastic(engine):
        return engine.age(crops, target_age, seed=int(seeds[0]), **options)
    return torch.cat([engine.age(crops[i : i + 1], target_age, seed=int(s), **options) for i, s in enumerate(seeds)])


class FacePipeline:
    """Detect, align, age and paste back the faces of photos for one engine.

    Args:
        engine: see :class:`AgingEngine`.
        detector: a :class:`FaceDetector` or the name of one (default "mtcnn").
        face: which faces to age: "all" (default), "largest", or N (the N-th from the left, from 1).
        alignment: the crop recipe; default the engine's (:func:`pipeline.align.alignment_for`).
    """

    def __init__(
        self,
        engine: AgingEngine,
        detector: FaceDetector | str = "mtcnn",
        *,
        face: str | int = "all",
        alignment: Alignment | None = None,
    ) -> None:
        self.engine = engine
        self.detector = get_detector(detector) if isinstance(detector, str) else detector
        self.face = face
        self.size = int(engine.input_size)
        self.device = torch.device(engine.device)
        self.alignment = alignment or alignment_for(engine)
        self.mask = feather_mask(self.size, _FEATHER_INNER[self.alignment.kind], self.device)  # [S, S]
        check_face_choice(face)  # now rather than at the first photo

    # --- steps -------------------------------------------------------------------------------------------
    def find_faces(self, image: np.ndarray) -> list[Face]:
        """The selected faces of ``image`` (uint8 RGB [H, W, 3]); NoFaceError when there is none."""
        faces = face_shaped(self.detector.detect(image))
        if not faces:
            raise NoFaceError("no face found in the photo; the detector needs a frontal face at least 40 pixels high")
        return select_faces(faces, self.face)

    def to_device(self, image: np.ndarray, copy: bool = True) -> Tensor:
        """uint8 [H, W, 3] numpy -> uint8 Tensor[H, W, 3] on the engine's device. Pasting works in place, so on
        CPU the array is copied unless ``copy=False`` says the caller's array may change."""
        if not image.flags.writeable:  # e.g. np.asarray(PIL image): torch would warn, and we must not write it
            image, copy = np.array(image), False  # a fresh copy is already ours to change
        photo = torch.from_numpy(np.ascontiguousarray(image))
        if self.device.type == "cpu":
            return photo.clone() if copy else photo
        return photo.to(self.device)

    def transforms(self, landmarks: np.ndarray) -> np.ndarray:
        """Crop -> photo transforms [N, 3, 3] for landmarks [N, 5, 2]."""
        return crop_transforms(landmarks, self.alignment, self.size)

    def crops(self, photo: Tensor, mats: np.ndarray) -> Tensor:
        """Aligned crops float Tensor[N, 3, S, S] of a device photo (see :meth:`to_device`)."""
        return crop_faces(photo, mats, self.size)

    def paste(self, photo: Tensor, aged: Tensor, mats: np.ndarray) -> Tensor:
        """Blend aged crops [N, 3, S, S] into the device photo in place; returns it."""
        return paste_faces(photo, aged, mats, self.mask)

    # --- whole photos ------------------------------------------------------------------------------------
    def reference_crop(self, image: np.ndarray) -> Tensor:
        """The largest face of a reference photo, aligned like the input faces: float Tensor[1, 3, S, S]."""
        faces = face_shaped(self.detector.detect(image))
        if not faces:
            raise NoFaceError("no face found in the reference photo; give a photo with a clear frontal face")
        face = max(faces, key=lambda f: f.size)
        return self.crops(self.to_device(image), self.transforms(face.landmarks[None]))

    def age(
        self,
        image: np.ndarray,
        target_age: float,
        *,
        seed: int = 0,
        faces: Sequence[Face] | None = None,
        **options: Any,
    ) -> np.ndarray:
        """Age the faces of one photo.

        Args:
            image: uint8 RGB [H, W, 3].
            target_age: years.
            seed: seed of every face (stochastic models); the same seed gives the same result.
            faces: faces to age (from :meth:`find_faces`); default: detect them.
            **options: model options, passed to ``engine.age``.

        Returns:
            uint8 [H, W, 3], or [K, H, W, 3] when the model returns K samples per face (PADA num_samples).
            Pixels away from the faces are the input's, bit for bit.
        """
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise InputError(f"photos must be uint8 RGB arrays [H, W, 3], got {getattr(image, 'shape', image)!r}")
        faces = list(faces) if faces is not None else self.find_faces(image)
        photo = self.to_device(image)
        mats = self.transforms(np.stack([f.landmarks for f in faces]))
        aged = run_engine(self.engine, self.crops(photo, mats), target_age, [seed] * len(faces), options)
        if aged.dim() == 4:
            return self.paste(photo, aged, mats).cpu().numpy()
        samples = [self.paste(photo.clone(), aged[:, k], mats) for k in range(aged.shape[1])]  # K x [H, W, 3]
        return torch.stack(samples).cpu().numpy()  # [K, H, W, 3]
