"""A restricted unpickler for StyleGAN2-ADA persistence pickles (CUSP ``network-snapshot-*.pkl``).

A snapshot is a plain pickle. Each persistent object is stored as a call to
``torch_utils.persistence._reconstruct_persistent_obj(meta)`` where ``meta`` holds the *full source text* of
its module and the object's ``__dict__``; the official loader ``exec``s that source. Here nothing from the
file is ever imported or run (docs/models/cusp.md, "Reading a snapshot"):

* ``_reconstruct_persistent_obj`` -> an inert :class:`PersistentRecord` (class_name, module_src, state); the
  state dict is kept **by reference**, because a record can be rebuilt before its state is filled (an object
  whose ``__dict__`` holds a bound method of itself, as the DEX classifier's ``topclass`` does);
* ``torch.storage._load_from_bytes`` -> ``torch.load(BytesIO(b), weights_only=True)``, after checking that
  the sizes its records claim fit in its bytes;
* tensor / parameter rebuild functions (a tensor's extent must fit in its storage), ``collections.OrderedDict``,
  numpy array reconstruction (an array's size must fit in its data), ``numpy.dtype`` (always a fresh copy),
  torch dtypes, ``torch.device`` and ``torch.Size`` build data and nothing else;
* torch module classes, hook handles, ``dnnlib`` EasyDict and every global of the training code
  (``training.*``, ``torch_utils.*``, modules the persistence loader imported) become inert stub classes that
  only record their name, constructor arguments and state; ``builtins.getattr`` becomes an inert
  :class:`BoundMethodRef` (never looked up);
* any other global raises :class:`UnpicklingRefused` naming ``module.name``.

Nothing a file contains can change state outside the objects this reader creates: every function handed to
the pickle is a fresh per-load handle, and BUILD / SETITEM(S) / APPEND(S) on anything the reader handed out (or
on any class, function or module) is refused. No size a file claims is allocated before it is checked against
the bytes the file still holds (a bounded reader under the pure-Python unpickler, whose reads are the only
allocations of raw data). Every refusal is a :class:`PickleRefused` with a one-line message.
"""

from __future__ import annotations

import collections
import io
import math
import os
import pickle
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch._utils

PERSISTENCE = ("torch_utils.persistence", "_reconstruct_persistent_obj")

# Globals that become inert stub classes: torch module classes and hook handles (capitalised class names),
# and any name of the training code, whatever it is (class, function, instance).
_STUB_CLASS_PREFIXES = ("torch.nn.modules.", "torch.utils.hooks")
_TRAINING_CODE_PREFIXES = ("training.", "torch_utils.", "dnnlib.", "_imported_module_", "torch.nn.functional")


class PickleRefused(pickle.UnpicklingError):
    """The reader refused the file (a global off the allow-list, a state change, a size it cannot hold)."""


class UnpicklingRefused(PickleRefused):
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
class InertObject:
    """A stub instance of a stubbed class (torch module, hook handle, training-code class): name and state."""

    qualname: str
    args: tuple[Any, ...] = ()
    state: dict[str, Any] = field(default_factory=dict)


def _refuse_state_change(target: str) -> PickleRefused:
    return PickleRefused(
        f"the pickle tries to change {target}, which the reader handed out; a snapshot may only set the state of "
        "objects it creates"
    )


class _InstanceOnly:
    """A method descriptor that refuses use on the class itself (BUILD on a stub class looks it up there)."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self._fn = fn

    def __get__(self, obj: Any, owner: type | None = None) -> Callable[..., Any]:
        if obj is None:
            name = getattr(owner, "qualname", getattr(owner, "__qualname__", "a class"))

            def refuse(*args: Any, **kwargs: Any) -> None:
                raise _refuse_state_change(f"the class {name}")

            return refuse
        return types.MethodType(self._fn, obj)


def _stub_setstate(self: InertObject, state: Any) -> None:
    if isinstance(state, tuple) and len(state) == 2 and all(s is None or isinstance(s, dict) for s in state):
        state = {**(state[0] or {}), **(state[1] or {})}  # (dict state, slot state)
    # anything else, e.g. torch 1.10's hook handle (hooks_dict, id), is kept as it came
    self.state = state if isinstance(state, dict) else {"__state__": state}


def _stub_class(qualname: str) -> type:
    """A fresh class that pickle may instantiate (NEWOBJ / REDUCE) and BUILD without running original code."""

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        obj.qualname, obj.args, obj.state = qualname, args, {}
        return obj

    def __init__(self, *args, **kwargs) -> None:
        pass

    name = qualname.rsplit(".", 1)[-1]
    namespace = {
        "__new__": __new__,
        "__init__": __init__,
        "__setstate__": _InstanceOnly(_stub_setstate),
        "qualname": qualname,
    }
    return type(name, (InertObject,), namespace)


class InertDict(dict):
    """Stand-in for ``dnnlib.util.EasyDict``: a plain dict (attribute access is not provided on purpose)."""

    def _setstate(self, state: Any) -> None:
        if isinstance(state, dict):
            self.update(state)

    __setstate__ = _InstanceOnly(_setstate)


class _ReaderFunction:
    """A per-load handle on one function the pickle may call; BUILD on it is refused (no ``__dict__``)."""

    __slots__ = ("_fn", "qualname")

    def __init__(self, fn: Callable[..., Any], qualname: str) -> None:
        self._fn, self.qualname = fn, qualname

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._fn(*args, **kwargs)

    def __setstate__(self, state: Any) -> None:
        raise _refuse_state_change(f"the function {self.qualname}")

    def __repr__(self) -> str:
        return f"<reader handle {self.qualname}>"


# --- size checks -------------------------------------------------------------------------------------------
class _BoundedReader:
    """A binary file view that refuses any read longer than what is left (checked before anything is read)."""

    def __init__(self, file: Any, remaining: int) -> None:
        self._file, self.remaining = file, remaining

    def _claim(self, n: int) -> int:
        if n is None or n < 0:
            n = self.remaining
        if n > self.remaining:
            raise PickleRefused(f"a record claims {n:,} bytes, but only {self.remaining:,} are left in the file")
        return n

    def read(self, n: int = -1) -> bytes:
        data = self._file.read(self._claim(n))
        self.remaining -= len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        count = self._file.readinto(memoryview(buffer)[: self._claim(len(buffer))])
        self.remaining -= count
        return count

    def readline(self, limit: int = -1) -> bytes:
        line = self._file.readline(self._claim(limit))
        self.remaining -= len(line)
        return line


def _remaining_bytes(file: Any) -> int:
    """Bytes between the file position and its end."""
    try:
        return max(os.fstat(file.fileno()).st_size - file.tell(), 0)
    except (AttributeError, OSError, io.UnsupportedOperation):
        here = file.tell()
        end = file.seek(0, io.SEEK_END)
        file.seek(here)
        return max(end - here, 0)


def _storage_dtypes() -> dict[str, torch.dtype]:
    """``FloatStorage`` -> torch.float32, ... (the legacy storage class names)."""
    return {name: dtype for dtype, name in torch.storage._dtype_to_storage_type_map().items()}


@dataclass(frozen=True)
class _StorageClass:
    name: str


class _LegacyHeaderScanner(pickle._Unpickler):  # type: ignore[name-defined]
    """Reads the pickles of a legacy ``torch.save`` stream only to collect what its storages claim."""

    def __init__(self, file: Any) -> None:
        super().__init__(file)
        self.claims: dict[str, tuple[str, int]] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and name.endswith("Storage"):
            return _StorageClass(name)
        if (module, name) == ("collections", "OrderedDict"):
            return _ReaderFunction(collections.OrderedDict, "collections.OrderedDict")
        if (module, name) in (("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_tensor")):
            return lambda *args: None  # a tensor view of a storage: the storage claim is what counts
        raise UnpicklingRefused(f"{module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        if isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage" and isinstance(pid[1], _StorageClass):
            key, numel = str(pid[2]), pid[4]
            if not isinstance(numel, int) or numel < 0:
                raise PickleRefused(f"storage {key} claims {numel!r} elements")
            self.claims[key] = (pid[1].name, numel)
            return None
        raise PickleRefused(f"unexpected persistent id {pid!r} in a storage record")


def check_legacy_storage_bytes(data: bytes) -> None:
    """Refuse a legacy ``torch.save`` byte string whose storages claim more elements than its bytes hold.

    Layout: magic number, protocol version and system info pickles; the object pickle (its storages as
    persistent ids ``('storage', <Name>Storage, key, location, numel, view)``); the pickled list of keys; then per
    key an 8-byte element count and the raw data. ``torch.load`` allocates each storage when it meets its id, before
    reading the data, so the claims are checked first.
    """
    stream = io.BytesIO(data)
    dtypes = _storage_dtypes()
    try:
        for _ in range(3):  # magic number, protocol version, sys info
            _LegacyHeaderScanner(_BoundedReader(stream, len(data) - stream.tell())).load()
        scanner = _LegacyHeaderScanner(_BoundedReader(stream, len(data) - stream.tell()))
        scanner.load()
        keys = _LegacyHeaderScanner(_BoundedReader(stream, len(data) - stream.tell())).load()
    except PickleRefused:
        raise
    except Exception as exc:
        raise PickleRefused(f"a storage record is not a readable torch.save stream ({exc})") from exc
    if not isinstance(keys, list):
        raise PickleRefused("a storage record has no list of storage keys")
    need = 0
    for key in dict.fromkeys(str(k) for k in keys):
        if key not in scanner.claims:
            raise PickleRefused(f"storage key {key} has no record")
        name, numel = scanner.claims[key]
        if name not in dtypes:
            raise PickleRefused(f"unknown storage class torch.{name}")
        need += 8 + numel * torch._utils._element_size(dtypes[name])
    left = len(data) - stream.tell()
    if need > left:
        raise PickleRefused(f"storages claim {need:,} bytes, but their record holds only {left:,}")


def _load_storage(data: bytes) -> Any:
    if not isinstance(data, (bytes, bytearray)):
        raise PickleRefused(f"_load_from_bytes needs bytes, got {type(data).__name__}")
    check_legacy_storage_bytes(bytes(data))
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise PickleRefused(f"a storage record cannot be read with weights_only=True: {one_line(exc)}") from exc


def one_line(exc: BaseException) -> str:
    """The line of an error message that says what went wrong (torch's weights-only errors add advice lines)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for i, line in enumerate(lines):
        if line.endswith("WeightsUnpickler error:") and i + 1 < len(lines):
            return lines[i + 1]
    return lines[0] if lines else type(exc).__name__


def _check_extent(storage: Any, offset: Any, size: Any, stride: Any) -> None:
    """A tensor view must lie inside its storage (set_ would otherwise grow the storage to any size)."""
    try:
        numel = int(storage.size()) if callable(getattr(storage, "size", None)) else -1
        dims, steps, offset = [int(s) for s in size], [int(s) for s in stride], int(offset)
    except (TypeError, ValueError) as exc:
        raise PickleRefused(f"a tensor record has a malformed size/stride ({exc})") from exc
    if len(dims) != len(steps) or offset < 0 or any(d < 0 for d in dims) or any(s < 0 for s in steps):
        raise PickleRefused(f"a tensor record has size {dims}, stride {steps}, offset {offset}")
    if 0 in dims:
        return
    extent = offset + sum((d - 1) * s for d, s in zip(dims, steps, strict=True)) + 1
    if extent > numel:
        raise PickleRefused(
            f"a tensor record of size {dims} claims {extent:,} elements of a storage holding {max(numel, 0):,}"
        )


def _rebuild_tensor_v2(storage: Any, storage_offset: Any, size: Any, stride: Any, *args: Any) -> Any:
    _check_extent(storage, storage_offset, size, stride)
    return torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride, *args)


def _make_record(meta: Any) -> PersistentRecord:
    if not isinstance(meta, dict):
        raise pickle.UnpicklingError(f"persistent object meta must be a dict, got {type(meta).__name__}")
    state = meta.get("state")
    return PersistentRecord(
        class_name=str(meta.get("class_name")),
        module_src=str(meta.get("module_src", "")),
        state=state if isinstance(state, dict) else {},  # by reference: it may still be filled (module docstring)
        version=meta.get("version"),
    )


def _inert_getattr(obj: Any, name: str, *default: Any) -> BoundMethodRef:
    return BoundMethodRef(obj, str(name))


def _numpy_table(max_items: int) -> dict[tuple[str, str], Any]:
    """numpy's array/scalar reconstruction, with sizes checked against the file (``max_items``)."""
    try:
        import numpy as np

        try:
            from numpy._core import multiarray  # numpy >= 2 (numpy.core warns there)
        except ImportError:  # numpy 1.x
            from numpy.core import multiarray
    except ImportError:  # without numpy, pickles holding arrays are refused
        return {}

    ndarray_handle = _ReaderFunction(np.ndarray, "numpy.ndarray")

    def reconstruct(subtype: Any, shape: Any, dtype: Any) -> Any:
        if subtype is not ndarray_handle:
            raise PickleRefused(f"numpy _reconstruct of {subtype!r}: only numpy.ndarray is allowed")
        count = math.prod(int(s) for s in (shape if isinstance(shape, tuple) else (shape,)))
        if count < 0 or count * np.dtype(dtype).itemsize > max_items:
            raise PickleRefused(f"a numpy array claims shape {shape}, more than the file holds")
        return multiarray._reconstruct(np.ndarray, shape, dtype)

    def dtype(obj: Any, align: bool = False, copy: bool = False) -> Any:
        return np.dtype(obj, bool(align), True)  # always a copy: BUILD then sets the copy, never numpy's own

    table: dict[tuple[str, str], Any] = {("numpy", "ndarray"): ndarray_handle}
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        table[(mod, "_reconstruct")] = _ReaderFunction(reconstruct, f"{mod}._reconstruct")
        table[(mod, "scalar")] = _ReaderFunction(multiarray.scalar, f"{mod}.scalar")
    table[("numpy", "dtype")] = _ReaderFunction(dtype, "numpy.dtype")
    return table


def _check_array_state(array: Any, state: Any, file_size: int) -> None:
    """An ndarray BUILD state (version, shape, dtype, fortran, data) must hold exactly the data its shape needs
    (numpy allocates an object array from the shape before it reads the list) and fit in the file."""
    if not isinstance(state, tuple) or len(state) not in (4, 5):
        raise PickleRefused("a numpy array record has a malformed state")
    shape, dtype, data = state[-4], state[-3], state[-1]
    try:
        count = math.prod(int(s) for s in shape)
        itemsize = dtype.itemsize
        has_object = bool(dtype.hasobject)
    except (TypeError, ValueError, AttributeError) as exc:
        raise PickleRefused(f"a numpy array record has a malformed shape or dtype ({exc})") from exc
    have = len(data) if isinstance(data, (list, bytes, bytearray)) else -1
    want = count if has_object else count * itemsize
    if count < 0 or have != want or count * itemsize > file_size:
        raise PickleRefused(
            f"a numpy array record of shape {tuple(shape)} needs {want:,} items, its data holds {have:,}"
        )


class RestrictedUnpickler(pickle._Unpickler):  # type: ignore[name-defined]
    """The pure-Python unpickler with an allow-list ``find_class``, refused state changes and bounded reads.

    The pure-Python implementation is used on purpose: its reads go through the bounded file (the C unpickler
    allocates a record's claimed size before reading it) and its BUILD can be checked.
    """

    dispatch: ClassVar[dict[int, Callable[..., Any]]] = dict(pickle._Unpickler.dispatch)  # type: ignore[attr-defined]

    def __init__(self, file: Any) -> None:
        remaining = _remaining_bytes(file)
        super().__init__(_BoundedReader(file, remaining))
        self._file_size = remaining
        self._allowed = self._allowed_globals(remaining)
        self._handed_out: dict[int, Any] = {}  # id -> object (kept alive so ids stay unique)
        self.stubbed: set[str] = set()  # qualified names replaced by inert stubs (reported by the converter)

    @staticmethod
    def _allowed_globals(file_size: int) -> dict[tuple[str, str], Any]:
        """Fresh per-load handles: nothing here is shared with another load or with the rest of the process."""
        functions: dict[tuple[str, str], Callable[..., Any]] = {
            PERSISTENCE: _make_record,
            ("torch.storage", "_load_from_bytes"): _load_storage,
            ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
            ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
            ("torch._utils", "_rebuild_parameter_with_state"): torch._utils._rebuild_parameter_with_state,
            ("collections", "OrderedDict"): collections.OrderedDict,
            ("torch", "device"): torch.device,
            ("torch", "Size"): torch.Size,
            ("builtins", "getattr"): _inert_getattr,
        }
        table: dict[tuple[str, str], Any] = {key: _ReaderFunction(fn, ".".join(key)) for key, fn in functions.items()}
        table[("dnnlib.util", "EasyDict")] = table[("dnnlib", "EasyDict")] = InertDict
        table.update(_numpy_table(file_size))
        return table

    def find_class(self, module: str, name: str) -> Any:
        qualname = f"{module}.{name}"
        key = (module, name)
        if key in self._allowed:
            found = self._allowed[key]
        elif module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            found = getattr(torch, name)  # immutable: no attribute can be set on a torch.dtype
        elif (module.startswith(_STUB_CLASS_PREFIXES) and name[:1].isupper()) or module.startswith(
            _TRAINING_CODE_PREFIXES
        ):
            self.stubbed.add(qualname)
            found = _stub_class(qualname)
        else:
            raise UnpicklingRefused(qualname)
        self._handed_out[id(found)] = found
        return found

    def persistent_load(self, pid: Any) -> Any:
        raise PickleRefused(f"persistent id {pid!r} is not supported in a snapshot pickle")

    # --- state changes: only on objects this load created ------------------------------------------------
    def _check_target(self, target: Any) -> None:
        if id(target) in self._handed_out or isinstance(
            target, (type, types.FunctionType, types.BuiltinFunctionType, types.MethodType, types.ModuleType)
        ):
            raise _refuse_state_change(getattr(target, "qualname", None) or repr(target))

    def load_build(self) -> None:
        target, state = self.stack[-2], self.stack[-1]
        self._check_target(target)
        if type(target).__module__.startswith("numpy") and type(target).__name__ == "ndarray":
            _check_array_state(target, state, self._file_size)
        super().load_build()

    def load_setitem(self) -> None:
        self._check_target(self.stack[-3])
        super().load_setitem()

    def load_setitems(self) -> None:
        self._check_target(self._below_mark())
        super().load_setitems()

    def load_append(self) -> None:
        self._check_target(self.stack[-2])
        super().load_append()

    def load_appends(self) -> None:
        self._check_target(self._below_mark())
        super().load_appends()

    def _below_mark(self) -> Any:
        """The object SETITEMS / APPENDS will change: the top of the stack saved by the last MARK."""
        outer = self.metastack[-1] if self.metastack else []
        return outer[-1] if outer else None

    dispatch[pickle.BUILD[0]] = load_build
    dispatch[pickle.SETITEM[0]] = load_setitem
    dispatch[pickle.SETITEMS[0]] = load_setitems
    dispatch[pickle.APPEND[0]] = load_append
    dispatch[pickle.APPENDS[0]] = load_appends


def restricted_load(file: Any) -> tuple[Any, set[str]]:
    """Unpickle ``file`` (a binary file object) with :class:`RestrictedUnpickler`: (object, stubbed names)."""
    unpickler = RestrictedUnpickler(file)
    return unpickler.load(), unpickler.stubbed


__all__ = [
    "BoundMethodRef",
    "InertDict",
    "InertObject",
    "PersistentRecord",
    "PickleRefused",
    "RestrictedUnpickler",
    "UnpicklingRefused",
    "check_legacy_storage_bytes",
    "one_line",
    "restricted_load",
]
