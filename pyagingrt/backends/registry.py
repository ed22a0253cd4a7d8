"""The backends by name, as ``pyagingrt.load(backend=...)``, ``agingrt age --backend`` and ``agingrt bench`` list them.

Each backend is one module of this package defining an :class:`~pyagingrt.api.Engine` subclass with the same
small interface:

* build: ``cls(adapter, config, module, device, dtype, config_name=..., source=..., **options)`` from the model's
  adapter, its fp32 ``training/`` module holding the weights, a device and a precision; ``options`` are the
  backend's own keyword arguments of ``load()`` (``cls.load_options``);
* ``cls.unavailable(device)``: why the backend cannot run here (a missing package or extension), or None;
  ``cls.check_precision(dtype, device)`` refuses a precision it does not run;
* run a batch: ``engine._run(pixels, targets, generator, options)`` (``Engine.age`` validates and calls it);
* describe itself: ``engine.describe()``, a dict (backend, device, precision and what it chose at build).

Modules are imported only when a backend is asked for, so a missing optional runtime (onnxruntime, openvino)
costs nothing until it is used; ``backend="auto"`` (``pyagingrt/backends/auto.py``) measures the available
ones and picks the fastest.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ..errors import InputError

if TYPE_CHECKING:
    from ..api import Engine

AUTO = "auto"

_BACKENDS: dict[str, str] = {
    "torch": "pyagingrt.backends.torch:TorchEngine",
    "native": "pyagingrt.backends.native:NativeEngine",
    "onnxruntime": "pyagingrt.backends.onnxruntime:OnnxRuntimeEngine",
    "openvino": "pyagingrt.backends.openvino:OpenVINOEngine",
}


def backend_names(*, auto: bool = False) -> tuple[str, ...]:
    """The registered backends in their listing order, and "auto" last when ``auto``."""
    return (*_BACKENDS, AUTO) if auto else tuple(_BACKENDS)


def backend_class(name: str) -> type[Engine]:
    """The Engine subclass of backend ``name``.

    Raises:
        InputError: an unknown name (the message lists the choices).
    """
    target = _BACKENDS.get(name)
    if target is None:
        choices = ", ".join(backend_names(auto=True))
        hint = (
            "; TensorRT is reached through backend='onnxruntime' (its TensorRT provider)" if name == "tensorrt" else ""
        )
        raise InputError(f"backend must be one of {choices}, got {name!r}{hint}")
    module_name, cls_name = target.split(":")
    return getattr(importlib.import_module(module_name), cls_name)


def backend_help() -> str:
    """One line per backend, "name: summary", for ``--help`` texts."""
    lines = [f"{name}: {backend_class(name).summary}" for name in backend_names()]
    return "; ".join([*lines, f"{AUTO}: measure the available ones at load and pick the fastest (cached)"])


def backends_accepting(option: str) -> tuple[str, ...]:
    """The backends whose ``load()`` takes keyword ``option`` (for error messages)."""
    return tuple(n for n in backend_names() if option in backend_class(n).load_options)
