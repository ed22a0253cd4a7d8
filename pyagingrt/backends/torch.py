"""``backend="torch"``: the ``training/`` modules in eval mode, in the engine's precision. The reference every
other backend is tested against; runs wherever torch runs (CPU, CUDA), needs no compiled extension."""

from __future__ import annotations

from ..api import Engine


class TorchEngine(Engine):
    """The :class:`~pyagingrt.api.Engine` itself: ``_run`` calls the adapter on the module."""

    backend = "torch"
