"""Write CUSP ``network-snapshot-*.pkl`` structures at the opcode level (test helper, no test here).

The official snapshot is ``pickle.dump(dict(G=..., D=..., G_ema=...))`` through StyleGAN2-ADA's persistence
module, with the torch of the official image (1.10). :class:`OpcodePickler` is the pure-Python pickler plus
:class:`Raw` objects that write their own opcodes, so the tests can reproduce what that environment writes and
today's torch does not: torch 1.10 hook handles, instances of training-code classes, a persistent object whose
state holds a bound method of itself, and hostile records (state changes, oversized claims).
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
from collections.abc import Callable
from typing import Any


class Raw:
    """An object that pickles as the opcodes ``emit(pickler)`` writes."""

    def __init__(self, emit: Callable[[OpcodePickler], None]) -> None:
        self.emit = emit


class OpcodePickler(pickle._Pickler):  # type: ignore[name-defined]
    def save(self, obj: Any, save_persistent_id: bool = True) -> None:
        if isinstance(obj, Raw):
            obj.emit(self)
            return
        super().save(obj, save_persistent_id)


def dump(obj: Any) -> bytes:
    """Protocol 4, as ``pickle.dump`` writes by default on the Python of the official image."""
    buffer = io.BytesIO()
    OpcodePickler(buffer, protocol=4).dump(obj)
    return buffer.getvalue()


def _unicode(text: str) -> bytes:
    data = text.encode()
    return pickle.SHORT_BINUNICODE + bytes([len(data)]) + data


def write_global(p: OpcodePickler, module: str, name: str) -> None:
    p.write(_unicode(module) + _unicode(name) + pickle.STACK_GLOBAL)


def global_ref(module: str, name: str) -> Raw:
    """``module.name`` as a plain reference (STACK_GLOBAL)."""
    return Raw(lambda p: write_global(p, module, name))


def call(module: str, name: str, *args: Any) -> Raw:
    """``module.name(*args)`` (REDUCE)."""

    def emit(p: OpcodePickler) -> None:
        write_global(p, module, name)
        p.save(tuple(args))
        p.write(pickle.REDUCE)

    return Raw(emit)


def bound_method(obj: Any, name: str) -> Raw:
    """``obj.name`` as pickle writes a bound method: ``getattr(obj, name)``."""
    return call("builtins", "getattr", obj, name)


def new_object(module: str, name: str, state: Any) -> Raw:
    """An instance as protocol 4 writes it: class, empty args, NEWOBJ, then BUILD with ``state``."""

    def emit(p: OpcodePickler) -> None:
        write_global(p, module, name)
        p.write(pickle.EMPTY_TUPLE + pickle.NEWOBJ)
        p.save(state)
        p.write(pickle.BUILD)

    return Raw(emit)


def torch110_hook_handle(hooks: collections.OrderedDict, handle_id: int) -> Raw:
    """torch 1.10's ``RemovableHandle``: its ``__getstate__`` is the tuple (hooks dict, id)."""
    return new_object("torch.utils.hooks", "RemovableHandle", (hooks, handle_id))


def build_on(target: Raw, state: Any) -> Raw:
    """BUILD ``state`` on whatever ``target`` pushes (e.g. a global): a state change the reader must refuse."""

    def emit(p: OpcodePickler) -> None:
        target.emit(p)
        p.save(state)
        p.write(pickle.BUILD)

    return Raw(emit)


def bytes8_claim(claimed: int, actual: bytes) -> bytes:
    """A whole pickle whose BINBYTES8 record claims ``claimed`` bytes but holds ``actual``."""
    return b"\x80\x04" + pickle.BINBYTES8 + struct.pack("<Q", claimed) + actual + pickle.STOP


def legacy_storage_bytes(numel_claimed: int, data: bytes, storage: str = "FloatStorage") -> bytes:
    """A legacy ``torch.save(storage)`` stream whose storage record claims ``numel_claimed`` elements."""
    sentinel = object()

    class Saver(pickle._Pickler):  # type: ignore[name-defined]
        def persistent_id(self, obj: Any) -> Any:
            if obj is sentinel:
                storage_class = Raw(lambda p: p.write(pickle.GLOBAL + f"torch\n{storage}\n".encode()))
                return ("storage", storage_class, "0", "cpu", numel_claimed, None)
            return None

        def save(self, obj: Any, save_persistent_id: bool = True) -> None:
            if isinstance(obj, Raw):
                obj.emit(self)
                return
            super().save(obj, save_persistent_id)

    buffer = io.BytesIO()
    for header in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True}):
        pickle.dump(header, buffer, protocol=2)
    Saver(buffer, protocol=2).dump(sentinel)
    pickle.dump(["0"], buffer, protocol=2)
    buffer.write(struct.pack("<q", len(data) // 4) + data)
    return buffer.getvalue()


__all__ = [
    "OpcodePickler",
    "Raw",
    "bound_method",
    "build_on",
    "bytes8_claim",
    "call",
    "dump",
    "global_ref",
    "legacy_storage_bytes",
    "new_object",
    "torch110_hook_handle",
    "write_global",
]
