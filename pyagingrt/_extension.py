"""Loads the compiled extension pyagingrt._C once, and explains its absence when it is needed.

``import pyagingrt`` never needs _C: the torch backend runs without it. The first call that needs a
native op calls :func:`require_native`, which raises :class:`NativeExtensionError` naming the build
command (the torchvision ``_assert_has_ops`` pattern, docs/conventions.md item 7).
"""

from __future__ import annotations

import functools
from types import ModuleType
from typing import Any

from .errors import NativeExtensionError

BUILD_COMMAND = "pip install --no-build-isolation -e .   (from the repository root, with torch installed first)"


@functools.cache
def _load() -> tuple[ModuleType | None, str | None]:
    import torch

    try:
        from . import _C
    except ImportError as exc:
        return None, f"pyagingrt._C could not be imported ({exc})"
    built = _C.build_info()["torch_version"]
    if built != torch.__version__:
        return None, (
            f"pyagingrt._C was built against torch {built}, but torch {torch.__version__} is installed; "
            "an extension must be rebuilt for the torch that loads it"
        )
    return _C, None


def has_native() -> bool:
    """True when the compiled extension is importable and matches the installed torch."""
    return _load()[0] is not None


# A fixed fact of the process, so torch.compile must trace no import or file read here. This is what
# torch.compiler.assume_constant_result does (it only sets this attribute), without its import of
# torch._dynamo, which would add ~1 s to every CLI start; the export tests' torch.compile(fullgraph=True)
# runs fail if torch ever renames it.
has_native._dynamo_marked_constant = True  # type: ignore[attr-defined]


def require_native() -> ModuleType:
    """Return pyagingrt._C, or raise NativeExtensionError saying why not and how to build it."""
    module, reason = _load()
    if module is None:
        raise NativeExtensionError(f"{reason}. Build it with: {BUILD_COMMAND}")
    return module


def build_info() -> dict[str, Any] | None:
    """The extension's build configuration, or None when it is not available."""
    module = _load()[0]
    return None if module is None else dict(module.build_info())


def native_cuda_available() -> bool:
    """True when the extension was built with CUDA kernels and a CUDA device is present."""
    import torch

    info = build_info()
    return bool(info and info["with_cuda"] and torch.cuda.is_available())
