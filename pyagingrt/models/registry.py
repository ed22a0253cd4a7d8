"""Model names -> adapters, imported lazily so ``import pyagingrt`` stays light."""

from __future__ import annotations

import functools
import importlib

from ..errors import UnknownModelError
from .base import ModelAdapter

_ADAPTERS = {
    "ageflow": "pyagingrt.models.ageflow:AgeFlowAdapter",
    "acgan": "pyagingrt.models.acgan:AcGANAdapter",
    "cusp": "pyagingrt.models.cusp:CUSPAdapter",
    "pada": "pyagingrt.models.pada:PADAAdapter",
}


def model_names() -> tuple[str, ...]:
    """Every model pyagingrt knows, in a fixed order."""
    return tuple(_ADAPTERS)


@functools.cache
def get_adapter(name: str) -> ModelAdapter:
    """The adapter for ``name`` (case-insensitive); UnknownModelError lists the known names."""
    key = name.strip().lower()
    if key not in _ADAPTERS:
        raise UnknownModelError(f"unknown model {name!r}; choose one of: {', '.join(_ADAPTERS)}")
    module_name, cls_name = _ADAPTERS[key].split(":")
    return getattr(importlib.import_module(module_name), cls_name)()
