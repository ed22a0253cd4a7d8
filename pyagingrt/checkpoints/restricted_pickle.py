"""A restricted unpickler for StyleGAN2-ADA persistence pickles (CUSP ``network-snapshot-*.pkl``).

A snapshot is a plain pickle. Each persistent object is stored as a call to
``torch_utils.persistence._reconstruct_persistent_obj(meta)`` where ``meta`` holds the *full source text* of
its module and the object's ``__dict__``; the official loader ``exec``s that source. Here nothing from the
file is ever imported or run (specs/cusp.md section 5):

* ``_reconstruct_persistent_obj`` -> an inert :class:`PersistentRecord` (class_name, module_src, state);
* ``torch.storage._load_from_bytes`` -> ``torch.load(BytesIO(b), weights_only=True)``;
* tensor / parameter rebuild functions, ``collections.OrderedDict``, numpy array reconstruction, torch dtypes,
  ``torch.device`` and ``torch.Size`` are allowed unchanged (they build data, nothing else);
* torch module classes, ``dnnlib`` EasyDict, hook handles and function references from the training code
  become inert stubs that only record their name and state; ``builtins.getattr`` becomes an inert
  :class:`BoundMethodRef` (never called);
* any other global raises :class:`UnpicklingRefused` naming ``module.name``.
"""

from __future__ import annotations

import collections
import io
import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch._utils

PERSISTENCE = ("torch_utils.persistence", "_reconstruct_persistent_obj")


class UnpicklingRefused(pickle.UnpicklingError):
    """The pickle names a global outside the allow-list (``module.name`` in ``self.qualname``)."""

    def __init__(self, qualname: str) -> None:
        super().__init__(f"refusing global {qualname}: not on the allow-list of the CUSP snapshot reader")
        self.qualname = qualname


@dataclass
class PersistentRecord:
    """An inert stand-in for a persistent object: what the official loader would exec, but never does."""

    class_name: str
    module_src: str
    state: dict[str, Any]
    version: int | None = None


@dataclass
class BoundMethodRef:
    """``getattr(obj, name)`` as recorded in the pickle; the attribute is never looked up."""

    obj: Any
    name: str


@dataclass
class FunctionRef:
    """A reference to a function of the training code (never called)."""

    qualname: str


class InertDict(dict):
    """Stand-in for ``dnnlib.util.EasyDict``: a plain dict (attribute access is not provided on purpose)."""

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, dict):
            self.update(state)


@dataclass
class InertObject:
    """A stub instance of a whitelisted class (torch module, hook handle, ...): its name and its state."""

    qualname: str
    args: tuple[Any, ...] = ()
    state: dict[str, Any] = field(default_factory=dict)


def _stub_class(qualname: str) -> type:
    """A class that pickle may instantiate (NEWOBJ / REDUCE) and BUILD without running any original code."""

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        obj.qualname, obj.args, obj.state = qualname, args, {}
        return obj

    def __init__(self, *args, **kwargs) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (dict state, slot state)
            state = {**(state[0] or {}), **(state[1] or {})}
        self.state = dict(state) if isinstance(state, dict) else {"__state__": state}

    name = qualname.rsplit(".", 1)[-1]
    return type(name, (InertObject,), {"__new__": __new__, "__init__": __init__, "__setstate__": __setstate__})


def _make_record(meta: Any) -> PersistentRecord:
    if not isinstance(meta, dict):
        raise pickle.UnpicklingError(f"persistent object meta must be a dict, got {type(meta).__name__}")
    state = meta.get("state")
    return PersistentRecord(
        class_name=str(meta.get("class_name")),
        module_src=str(meta.get("module_src", "")),
        state=dict(state) if isinstance(state, dict) else {},
        version=meta.get("version"),
    )


def _load_storage(data: bytes) -> Any:
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def _inert_getattr(obj: Any, name: str, *default: Any) -> BoundMethodRef:
    return BoundMethodRef(obj, str(name))


def _allowed_functions() -> dict[tuple[str, str], Callable[..., Any] | type]:
    table: dict[tuple[str, str], Any] = {
        PERSISTENCE: _make_record,
        ("torch.storage", "_load_from_bytes"): _load_storage,
        ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): torch._utils._rebuild_parameter_with_state,
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch", "device"): torch.device,
        ("torch", "Size"): torch.Size,
        ("builtins", "getattr"): _inert_getattr,
        ("dnnlib.util", "EasyDict"): InertDict,
        ("dnnlib", "EasyDict"): InertDict,
    }
    try:
        import numpy as np

        try:
            from numpy._core import multiarray  # numpy >= 2 (numpy.core warns there)
        except ImportError:  # numpy 1.x
            from numpy.core import multiarray
        for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
            table[(mod, "_reconstruct")] = multiarray._reconstruct
            table[(mod, "scalar")] = multiarray.scalar
        table[("numpy", "ndarray")] = np.ndarray
        table[("numpy", "dtype")] = np.dtype
    except ImportError:  # without numpy, pickles holding arrays are refused
        pass
    return table


# Globals that become inert stubs: torch module classes and hook handles (classes), training-code functions.
_STUB_CLASS_PREFIXES = ("torch.nn.modules.", "torch.utils.hooks")
_FUNCTION_REF_PREFIXES = ("training.", "torch_utils.", "torch.nn.functional", "_imported_module_")


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose ``find_class`` resolves only the allow-list above."""

    def __init__(self, file: Any) -> None:
        super().__init__(file)
        self._allowed = _allowed_functions()
        self.stubbed: set[str] = set()  # qualified names replaced by inert stubs (reported by the converter)

    def find_class(self, module: str, name: str) -> Any:
        key = (module, name)
        if key in self._allowed:
            return self._allowed[key]
        qualname = f"{module}.{name}"
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if module.startswith(_STUB_CLASS_PREFIXES) and name[:1].isupper():
            self.stubbed.add(qualname)
            return _stub_class(qualname)
        if module.startswith(_FUNCTION_REF_PREFIXES):
            self.stubbed.add(qualname)
            return FunctionRef(qualname)
        raise UnpicklingRefused(qualname)

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError(f"persistent id {pid!r} is not supported in a snapshot pickle")


def restricted_load(file: Any) -> tuple[Any, set[str]]:
    """Unpickle ``file`` (a binary file object) with :class:`RestrictedUnpickler`: (object, stubbed names)."""
    unpickler = RestrictedUnpickler(file)
    return unpickler.load(), unpickler.stubbed


__all__ = [
    "BoundMethodRef",
    "FunctionRef",
    "InertDict",
    "InertObject",
    "PersistentRecord",
    "RestrictedUnpickler",
    "UnpicklingRefused",
    "restricted_load",
]
