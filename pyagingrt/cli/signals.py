"""SIGTERM and SIGHUP (``kill``, a closed terminal, a job scheduler) end a command the way Ctrl-C does: an
exception unwinds the stack, so every ``finally`` runs and temporary outputs are deleted
(pipeline/media.py:atomic_output). Python's default for these signals is to die on the spot, which leaves a
``.partial`` file behind."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

__all__ = ["Terminated", "exit_cleanly_on_signals"]

_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))


class Terminated(BaseException):
    """Raised in the main thread when a termination signal arrives (a BaseException, like KeyboardInterrupt,
    so ``except Exception`` blocks do not swallow it)."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.name = signal.Signals(signum).name
        super().__init__(f"stopped by {self.name}")


def _raise(signum: int, frame: FrameType | None) -> None:
    raise Terminated(signum)


@contextlib.contextmanager
def exit_cleanly_on_signals() -> Iterator[None]:
    """Within the block, SIGTERM and SIGHUP raise :class:`Terminated` in the main thread; the previous handlers
    come back after it. Off the main thread (where Python cannot install handlers) it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _raise) for s in _SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
