"""Output timestamps for re-encoded video frames.

Decoded frames come out in display order, but the timestamps they carry can be missing, repeated or out of
order: an AVI with MPEG-4 "packed B-frames" (DivX/Xvid) stores a P- and a B-frame in one packet, so after
decoding the timestamps go backwards every few frames. Encoders and muxers refuse such input (FFmpeg: "Invalid
argument"). :class:`FrameClock` gives each frame, in display order, the smallest timestamp not yet handed out
among the frames seen so far within a short window: the set of timestamps is kept (so the frame rate,
variable frame rates and the sync with audio stay as they were), and the sequence is strictly increasing.
"""

from __future__ import annotations

import heapq
from fractions import Fraction

__all__ = ["FrameClock"]


class FrameClock:
    """Strictly increasing timestamps in ``time_base`` for frames pushed in display order.

    Args:
        time_base: the output stream's time base (seconds per tick).
        rate: frames per second, for frames without a timestamp (next = previous + one frame).
        window: how many frames may be held back to put timestamps in order (the decoder's reorder depth is
            1 or 2 frames for B-frames; 16 leaves room).
    """

    def __init__(self, time_base: Fraction, rate: Fraction, window: int = 16) -> None:
        self.time_base, self.window = Fraction(time_base), max(1, window)
        self.step = max(1, round(1 / (Fraction(rate) * self.time_base)))  # one frame, in ticks
        self._heap: list[int] = []
        self._latest: int | None = None  # largest timestamp pushed
        self._last: int | None = None  # last timestamp handed out

    def push(self, pts: int | None, time_base: Fraction | None) -> None:
        """Note the next frame's decoded timestamp (``pts`` ticks of ``time_base``; None when it has none)."""
        if pts is None or time_base is None:
            ticks = (self._latest + self.step) if self._latest is not None else 0
        else:
            ticks = round(pts * Fraction(time_base) / self.time_base)
        self._latest = ticks if self._latest is None else max(self._latest, ticks)
        heapq.heappush(self._heap, ticks)

    @property
    def ready(self) -> bool:
        """Whether enough frames are held back that the oldest can take its timestamp."""
        return len(self._heap) > self.window

    def pop(self) -> int:
        """The timestamp of the oldest frame not yet given one (call once per pushed frame, in order)."""
        ticks = heapq.heappop(self._heap)
        if self._last is not None and ticks <= self._last:  # a repeated timestamp: the next free tick
            ticks = self._last + 1
        self._last = ticks
        return ticks

    def __len__(self) -> int:
        return len(self._heap)
