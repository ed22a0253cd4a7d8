"""Model adapters (one module per model) and the registry.

``pyagingrt.models()`` lists the model names: this package is callable, because the issue's API names a
function ``pyagingrt.models`` while the package of the same name holds the adapters (Python would let the
imported subpackage shadow a plain function of that name).
"""

from __future__ import annotations

import sys
import types

from .registry import get_adapter, model_names

__all__ = ["get_adapter", "model_names"]


class _CallableModule(types.ModuleType):
    def __call__(self) -> tuple[str, ...]:
        """The names of the models pyagingrt knows: ("ageflow", "acgan", "cusp", "pada")."""
        return model_names()


sys.modules[__name__].__class__ = _CallableModule
