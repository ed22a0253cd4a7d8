"""The two Triton models served per engine: aligned crops, and whole photos as encoded bytes.

``<name>_crops``
    inputs:  crops uint8 [S, S, 3] (aligned RGB crop), target_age fp32 [1], seed int64 [1] (optional),
             options bytes [1] (optional JSON object of model options, e.g. {"sigma_m": 9})
    outputs: crops uint8 [S, S, 3], error bytes [1], batch_size int32 [1]
``<name>_photos``
    inputs:  image bytes [1] (jpg/png/webp/bmp file), target_age fp32 [1], seed int64 [1] (optional),
             options bytes [1] (optional), format bytes [1] (optional: png (default), jpeg, webp)
    outputs: image bytes [1] (encoded like ``format``), faces int32 [1], error bytes [1], batch_size int32 [1]

Triton itself rejects a request with a missing input, a wrong shape or dtype. Everything it cannot check
(age out of range, undecodable or oversized image, no face, bad options) comes back in that request's
``error`` output (empty when it succeeded), with the other outputs empty: PyTriton 0.7 can only fail a whole
batch, so an error response per request is carried this way (docs/serving.md). ``batch_size`` is the number
of images in the batch Triton formed for this request (what the load test reports).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import AgingError, InputError
from .batching import Item, age_items, parse_options, parse_seed, parse_target_ages
from .codec import FORMATS, decode_image, encode_image

__all__ = ["CropsModel", "PhotoLimits", "PhotosModel", "TensorSpec"]

log = logging.getLogger("pyagingrt.serve")


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a Triton model (shape without the batch axis; -1 = any)."""

    name: str
    dtype: Any  # numpy dtype; bytes for BYTES
    shape: tuple[int, ...]
    optional: bool = False


@dataclass(frozen=True)
class PhotoLimits:
    """What the photos model refuses: payloads over ``max_bytes``, images over ``max_pixels``."""

    max_bytes: int = 20_000_000
    max_pixels: int = 40_000_000


def _error_text(exc: Exception) -> str:
    return str(exc) if isinstance(exc, AgingError) else f"{type(exc).__name__}: {exc}"


def _column(text: str) -> np.ndarray:
    return np.array([text.encode("utf-8")], dtype=np.object_)


def _inputs(request: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A PyTriton request as a plain dict (Request objects map names to arrays)."""
    return {k: request[k] for k in request.keys()}  # noqa: SIM118 (Request is not a dict)


def _safe(call, requests: Sequence[Any]) -> list[dict[str, np.ndarray]]:
    """Run ``call``; if it fails as a whole (a bug), answer every request with the error instead of failing the
    batch through Triton (which would look like a server fault to the client)."""
    try:
        return call(requests)
    except Exception as exc:
        log.exception("batch failed")
        return [{"error": _column(f"internal error: {_error_text(exc)}")} for _ in requests]


class CropsModel:
    """Triton inference callable for aligned crops (see the module docstring)."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.size = int(engine.input_size)

    @property
    def inputs(self) -> list[TensorSpec]:
        s = self.size
        return [
            TensorSpec("crops", np.uint8, (s, s, 3)),
            TensorSpec("target_age", np.float32, (1,)),
            TensorSpec("seed", np.int64, (1,), optional=True),
            TensorSpec("options", bytes, (1,), optional=True),
        ]

    @property
    def outputs(self) -> list[TensorSpec]:
        return [
            TensorSpec("crops", np.uint8, (self.size, self.size, 3)),
            TensorSpec("error", bytes, (1,)),
            TensorSpec("batch_size", np.int32, (1,)),
        ]

    def __call__(self, requests: Sequence[Mapping[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        return _safe(self._infer, requests)

    def _infer(self, requests: Sequence[Mapping[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        items: list[Item] = []
        errors: dict[int, Exception] = {}
        counts = []
        for r, request in enumerate(requests):
            inputs = _inputs(request)
            crops = np.asarray(inputs["crops"])
            counts.append(len(crops))
            try:
                ages = parse_target_ages(self.engine, inputs.get("target_age"), len(crops))
                seeds = parse_seed(inputs.get("seed"), len(crops))
                options, key = parse_options(self.engine, inputs.get("options"), len(crops))
            except AgingError as exc:
                errors[r] = exc
                continue
            pixels = torch.from_numpy(np.ascontiguousarray(crops)).permute(0, 3, 1, 2).float().div_(255.0)
            for i in range(len(crops)):
                items.append(Item(r, pixels[i], float(ages[i]), int(seeds[i]), key, options))
        age_items(self.engine, items, errors)
        batch = np.array([sum(counts)], dtype=np.int32)
        results: dict[int, list[torch.Tensor]] = {}
        for it in items:
            if it.request not in errors:
                results.setdefault(it.request, []).append(it.result)
        responses = []
        for r, count in enumerate(counts):
            if r in errors:
                responses.append({"error": np.repeat(_column(_error_text(errors[r])), count)[:, None]})
                continue
            out = torch.stack(results[r])
            if out.dim() == 5:  # K samples per crop (PADA num_samples): the crops model returns the first
                out = out[:, 0]
            crops_u8 = (out.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
            responses.append(
                {
                    "crops": crops_u8,
                    "error": np.repeat(_column(""), count)[:, None],
                    "batch_size": np.repeat(batch, count)[:, None],
                }
            )
        return responses


class PhotosModel:
    """Triton inference callable for whole photos: decode, detect, align, age, paste back, encode."""

    def __init__(self, engine: Any, limits: PhotoLimits | None = None, detector: str = "mtcnn") -> None:
        from ..pipeline.faces import FacePipeline

        self.engine = engine
        self.limits = limits or PhotoLimits()
        self.pipeline = FacePipeline(engine, detector, face="all")
        self.pipeline.detector.detect(np.zeros((96, 96, 3), np.uint8))  # load the detector now, not at request 1

    @property
    def inputs(self) -> list[TensorSpec]:
        return [
            TensorSpec("image", bytes, (1,)),
            TensorSpec("target_age", np.float32, (1,)),
            TensorSpec("seed", np.int64, (1,), optional=True),
            TensorSpec("options", bytes, (1,), optional=True),
            TensorSpec("format", bytes, (1,), optional=True),
        ]

    @property
    def outputs(self) -> list[TensorSpec]:
        return [
            TensorSpec("image", bytes, (1,)),
            TensorSpec("faces", np.int32, (1,)),
            TensorSpec("error", bytes, (1,)),
            TensorSpec("batch_size", np.int32, (1,)),
        ]

    def __call__(self, requests: Sequence[Mapping[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        return _safe(self._infer, requests)

    def _prepare(self, r: int, inputs: dict[str, np.ndarray], items: list[Item]) -> dict[str, Any]:
        """Decode and detect one request (a single photo); append its face crops to ``items``."""
        images = np.asarray(inputs["image"]).reshape(-1)
        if images.size != 1:
            raise InputError(f"send one photo per request, got {images.size}; batching is the server's job")
        data = images[0]
        if not isinstance(data, bytes | np.bytes_):
            raise InputError("input 'image' must be the bytes of an image file")
        fmt = "png"
        if inputs.get("format") is not None:
            fmt = bytes(np.asarray(inputs["format"]).reshape(-1)[0]).decode("utf-8", "replace").strip().lower()
            if fmt not in FORMATS:
                raise InputError(f"unknown output format {fmt!r}; use png, jpeg or webp")
        age = float(parse_target_ages(self.engine, inputs.get("target_age"), 1)[0])
        seed = int(parse_seed(inputs.get("seed"), 1)[0])
        options, key = parse_options(self.engine, inputs.get("options"), 1)
        image = decode_image(bytes(data), self.limits.max_bytes, self.limits.max_pixels)
        faces = self.pipeline.find_faces(image)  # NoFaceError when there is none
        photo = self.pipeline.to_device(image, copy=False)
        mats = self.pipeline.transforms(np.stack([f.landmarks for f in faces]))
        for crop in self.pipeline.crops(photo, mats):
            items.append(Item(r, crop, age, seed, key, options))
        return {"photo": photo, "mats": mats, "faces": len(faces), "format": fmt}

    def _infer(self, requests: Sequence[Mapping[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        items: list[Item] = []
        errors: dict[int, Exception] = {}
        prepared: dict[int, dict[str, Any]] = {}
        for r, request in enumerate(requests):
            try:
                prepared[r] = self._prepare(r, _inputs(request), items)
            except AgingError as exc:
                errors[r] = exc
            except Exception as exc:  # a bug in decoding or detection: this request only
                log.exception("request failed before the model")
                errors[r] = exc
        age_items(self.engine, items, errors)
        batch = np.array([[len(requests)]], dtype=np.int32)
        responses = []
        for r in range(len(requests)):
            if r not in errors:
                try:
                    info = prepared[r]
                    aged = torch.stack([it.result for it in items if it.request == r])
                    if aged.dim() == 5:  # K samples per face: the photos model returns the first
                        aged = aged[:, 0]
                    out = self.pipeline.paste(info["photo"], aged, info["mats"]).cpu().numpy()
                    responses.append(
                        {
                            "image": np.array([[encode_image(out, info["format"])]], dtype=np.object_),
                            "faces": np.array([[info["faces"]]], dtype=np.int32),
                            "error": _column("")[:, None],
                            "batch_size": batch,
                        }
                    )
                    continue
                except Exception as exc:
                    log.exception("request failed after the model")
                    errors[r] = exc
            responses.append({"error": _column(_error_text(errors[r]))[:, None]})
        return responses
