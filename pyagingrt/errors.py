"""The errors pyagingrt raises for things a user can fix.

Every message says what was wrong and what to do. The CLI prints them on one line and exits non-zero;
anything else escaping to the user is a bug.
"""

from __future__ import annotations

__all__ = [
    "AgingError",
    "BackendUnavailableError",
    "CheckpointError",
    "InputError",
    "MediaError",
    "NativeExtensionError",
    "NoFaceError",
    "NumericalError",
    "OutputError",
    "RandomWeightsWarning",
    "UnknownModelError",
]


class AgingError(Exception):
    """Base class of every error pyagingrt raises on purpose."""


class InputError(AgingError, ValueError):
    """A bad argument: wrong shape, dtype, range, age, or an unknown option."""


class UnknownModelError(InputError):
    """A model or config name that pyagingrt does not know."""


class CheckpointError(AgingError):
    """A checkpoint that cannot be read, or that does not fit the model's architecture."""


class BackendUnavailableError(AgingError, RuntimeError):
    """A backend that cannot run here: its runtime package is not installed, or it does not run on this device."""


class NativeExtensionError(BackendUnavailableError):
    """The compiled extension pyagingrt._C is missing, or was built against another torch."""


class MediaError(InputError):
    """An image or video file that cannot be read or decoded."""


class NoFaceError(InputError):
    """No face was found where one was required."""


class NumericalError(AgingError, ArithmeticError):
    """A model produced NaN or Inf."""


class OutputError(AgingError, OSError):
    """An output path that cannot be written."""


class RandomWeightsWarning(UserWarning):
    """Some or all of a model's weights are random (no checkpoint, no CLIP/DEX file): the output is
    meaningless, which is fine for benchmarks and tests."""


class PrecisionFallbackWarning(UserWarning):
    """``precision="auto"`` built a bf16 engine because the fp16 one overflowed."""
