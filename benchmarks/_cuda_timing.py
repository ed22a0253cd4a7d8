"""Shared timing helpers for the op micro-benchmarks (CUDA only): CUDA-event timing with an L2 flush between
runs, and the device-to-device copy bandwidth measured in the same run as a reference point."""

from __future__ import annotations

from collections.abc import Callable

import torch

_L2_FLUSH_BYTES = 256 * 2**20  # larger than any current L2 (H100: 50 MB), so each run starts cold


def time_cuda_ms(fn: Callable[[], object], iters: int = 50, warmup: int = 5) -> float:
    """Median milliseconds of fn() on the current stream, flushing L2 before every timed call."""
    flush = torch.empty(_L2_FLUSH_BYTES, dtype=torch.uint8, device="cuda")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        flush.zero_()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def copy_bandwidth_gbs(nbytes: int = 512 * 2**20) -> float:
    """Achieved device-to-device copy bandwidth (read + write bytes per second, in GB/s)."""
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = time_cuda_ms(lambda: dst.copy_(src), iters=20)
    return 2 * nbytes / ms / 1e6


def report(name: str, ms: float, nbytes: int, flops: float | None = None) -> str:
    """One result line: time, achieved GB/s of the minimum traffic, and TFLOP/s when flops is given."""
    line = f"{name:<40s} {ms * 1e3:9.1f} us {nbytes / ms / 1e6:8.1f} GB/s"
    if flops is not None:
        line += f" {flops / ms / 1e9:7.2f} TFLOP/s"
    return line
