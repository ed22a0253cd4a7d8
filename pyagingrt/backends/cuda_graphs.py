"""CUDA-graph capture and replay over static buffers, one graph per (batch bucket, options key).

A call with batch B runs in the smallest bucket >= B: inputs are copied into the bucket's static buffers
(the padding rows repeat the last sample, which is harmless because every model's output for one sample is
independent of the rest of the batch, a property the model tests check), the graph is replayed, and the
first B rows of the static output are cloned out. A batch above the largest bucket runs as consecutive chunks
of the largest bucket (the last one padded into its own bucket), so the number of graphs, and the memory
they hold, is bounded by the bucket list; pass a larger bucket (``load(..., buckets=...)``) to run big batches
as one graph.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

DEFAULT_BUCKETS = (1, 4, 16, 32)


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    static_inputs: dict[str, Tensor]
    static_output: Tensor


def bucket_for(batch: int, buckets: Sequence[int]) -> int:
    """The smallest bucket >= batch; the largest bucket beyond it (the batch then runs in chunks of that size)."""
    ordered = sorted(buckets)
    return next((b for b in ordered if b >= batch), ordered[-1])


def check_buckets(buckets: Sequence[int]) -> tuple[int, ...]:
    """Buckets as a sorted tuple of distinct positive ints; ValueError otherwise."""
    values = tuple(buckets)
    if not values or not all(isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in values):
        raise ValueError(f"buckets must be a non-empty list of positive batch sizes, got {list(values)}")
    return tuple(sorted(set(values)))


def _pad(t: Tensor, size: int) -> Tensor:
    if t.shape[0] == size:
        return t
    reps = t[-1:].expand(size - t.shape[0], *t.shape[1:])
    return torch.cat([t, reps], dim=0)


class GraphCache:
    """Captures ``fn(inputs) -> Tensor`` per (bucket, key) on first use and replays it afterwards."""

    def __init__(self, device: torch.device, buckets: Sequence[int] = DEFAULT_BUCKETS, warmup_iters: int = 2) -> None:
        self.device = device
        self.buckets = check_buckets(buckets)
        self.warmup_iters = warmup_iters
        self._graphs: dict[tuple[int, Hashable], _Captured] = {}
        self._pool = None  # graphs share one memory pool: they never run concurrently
        # One side stream for every warm-up and capture: the caching allocator reuses a block only on the stream
        # that allocated it, so captures on different streams would not share the pool's memory.
        self._stream: torch.cuda.Stream | None = None

    def __len__(self) -> int:
        return len(self._graphs)

    def _capture(self, fn: Callable[[dict[str, Tensor]], Tensor], inputs: dict[str, Tensor]) -> _Captured:
        # Everything on self.device: torch.cuda.graph's default capture stream belongs to whichever device was
        # current when it was first used, and a capture on another device's stream records none of this
        # device's kernels (an empty graph whose replay returns the first call's output forever).
        with torch.cuda.device(self.device):
            static = {k: v.clone() for k, v in inputs.items()}
            if self._stream is None:
                self._stream = torch.cuda.Stream(self.device)
            stream = self._stream
            stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(stream):  # warm-up off the legacy stream (cuDNN autotuning, lazy init)
                for _ in range(self.warmup_iters):
                    fn(static)
            torch.cuda.current_stream(self.device).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._pool, stream=stream):
                out = fn(static)
            self._pool = graph.pool()
        return _Captured(graph, static, out)

    def run(self, fn: Callable[[dict[str, Tensor]], Tensor], inputs: dict[str, Tensor], key: Hashable) -> Tensor:
        batch = next(iter(inputs.values())).shape[0]
        largest = self.buckets[-1]
        if batch > largest:
            chunks = [
                self._run_bucket(fn, {k: v[i : i + largest] for k, v in inputs.items()}, key)
                for i in range(0, batch, largest)
            ]
            return torch.cat(chunks, dim=0)
        return self._run_bucket(fn, inputs, key)

    def _run_bucket(
        self, fn: Callable[[dict[str, Tensor]], Tensor], inputs: dict[str, Tensor], key: Hashable
    ) -> Tensor:
        batch = next(iter(inputs.values())).shape[0]
        bucket = bucket_for(batch, self.buckets)
        padded = {k: _pad(v, bucket) for k, v in inputs.items()}
        entry = self._graphs.get((bucket, key))
        if entry is None:
            entry = self._capture(fn, padded)
            self._graphs[(bucket, key)] = entry
        with torch.cuda.device(self.device):  # replay on this device's current stream, after the copies
            for name, value in padded.items():
                entry.static_inputs[name].copy_(value)
            entry.graph.replay()
            return entry.static_output[:batch].clone()
