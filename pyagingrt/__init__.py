"""pyagingrt: fast inference for four face-aging models (AgeFlow, AcGAN, CUSP, PADA).

    import pyagingrt
    eng = pyagingrt.load("acgan", checkpoint="netG.pth")
    aged = eng.age(images, target_age=70)

``import pyagingrt`` never needs the compiled extension; the torch backend runs without it.
"""

from __future__ import annotations

from . import models
from ._extension import build_info, has_native
from ._version import __version__
from .api import Engine, RandomWeightsWarning, load
from .backends.registry import backend_names
from .errors import (
    AgingError,
    BackendUnavailableError,
    CheckpointError,
    InputError,
    MediaError,
    NativeExtensionError,
    NoFaceError,
    NumericalError,
    OutputError,
    PrecisionFallbackWarning,
    UnknownModelError,
)

__all__ = [
    "AgingError",
    "BackendUnavailableError",
    "CheckpointError",
    "Engine",
    "InputError",
    "MediaError",
    "NativeExtensionError",
    "NoFaceError",
    "NumericalError",
    "OutputError",
    "PrecisionFallbackWarning",
    "RandomWeightsWarning",
    "UnknownModelError",
    "__version__",
    "backend_names",
    "build_info",
    "has_native",
    "load",
    "models",
]
