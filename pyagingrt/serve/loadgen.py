"""A load generator for ``agingrt serve``: async gRPC clients (tritonclient) on loopback only.

    report = run_level(port, "acgan_crops", crops, concurrency=16, max_requests=400, max_seconds=30)

Every request carries a unique id (the KServe request id); the report counts the ids answered, so a request
lost or answered twice shows up. Each response says how many images were in the batch Triton formed for it
(the models' ``batch_size`` output), from which the report gives the batch-size histogram.
"""

from __future__ import annotations

import asyncio
import collections
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["HOST", "LevelReport", "percentile", "run_level"]

HOST = "127.0.0.1"  # loopback only: this tool never sends load anywhere else


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) of ``values`` by linear interpolation; nan when empty."""
    return float(np.percentile(values, q)) if values else math.nan


@dataclass
class LevelReport:
    """One concurrency level: counts, latencies (seconds), batch sizes, and id bookkeeping."""

    concurrency: int
    sent: int = 0
    answered: int = 0
    failed: int = 0  # transport or Triton errors
    app_errors: int = 0  # non-empty ``error`` outputs
    wall_s: float = 0.0
    latencies: list[float] = field(default_factory=list)
    batch_sizes: collections.Counter = field(default_factory=collections.Counter)
    lost: list[str] = field(default_factory=list)  # ids sent and never answered
    duplicated: list[str] = field(default_factory=list)  # ids answered more than once
    mismatched: list[str] = field(default_factory=list)  # responses whose id is not one that was sent
    first_error: str = ""
    outputs: dict[str, np.ndarray] = field(default_factory=dict)  # a few outputs by id, for checks

    @property
    def throughput(self) -> float:
        return self.answered / self.wall_s if self.wall_s > 0 else math.nan

    def summary(self) -> dict[str, Any]:
        ms = [x * 1000 for x in self.latencies]
        total = sum(self.batch_sizes.values())
        return {
            "concurrency": self.concurrency,
            "requests": self.sent,
            "answered": self.answered,
            "failed": self.failed,
            "app_errors": self.app_errors,
            "lost": len(self.lost),
            "duplicated": len(self.duplicated),
            "mismatched": len(self.mismatched),
            "throughput_rps": round(self.throughput, 2),
            "p50_ms": round(percentile(ms, 50), 2),
            "p95_ms": round(percentile(ms, 95), 2),
            "p99_ms": round(percentile(ms, 99), 2),
            "mean_batch": round(sum(b * n for b, n in self.batch_sizes.items()) / total, 2) if total else math.nan,
            "batch_sizes": dict(sorted(self.batch_sizes.items())),
            "wall_s": round(self.wall_s, 2),
        }


async def _level(
    port: int,
    model: str,
    crops: np.ndarray,
    age: float,
    concurrency: int,
    max_requests: int,
    max_seconds: float,
    keep: int,
) -> LevelReport:
    import tritonclient.grpc.aio as grpcclient
    from tritonclient.utils import InferenceServerException

    report = LevelReport(concurrency)
    answered: collections.Counter = collections.Counter()
    sent_ids: list[str] = []
    failed_ids: list[str] = []
    next_id = 0
    start = time.perf_counter()
    deadline = start + max_seconds

    def make_inputs(i: int) -> list[Any]:
        crop = crops[i % len(crops)][None]
        inputs = [
            grpcclient.InferInput("crops", list(crop.shape), "UINT8"),
            grpcclient.InferInput("target_age", [1, 1], "FP32"),
            grpcclient.InferInput("seed", [1, 1], "INT64"),
        ]
        inputs[0].set_data_from_numpy(crop)
        inputs[1].set_data_from_numpy(np.array([[age]], dtype=np.float32))
        inputs[2].set_data_from_numpy(np.array([[i]], dtype=np.int64))
        return inputs

    outputs = [grpcclient.InferRequestedOutput(n) for n in ("crops", "error", "batch_size")]

    async with grpcclient.InferenceServerClient(url=f"{HOST}:{port}") as client:

        async def worker() -> None:
            nonlocal next_id
            while next_id < max_requests and time.perf_counter() < deadline:
                i = next_id
                next_id += 1
                rid = f"req-{concurrency}-{i}"
                sent_ids.append(rid)
                t0 = time.perf_counter()
                try:
                    result = await client.infer(model, make_inputs(i), outputs=outputs, request_id=rid)
                except InferenceServerException as exc:  # answered, with an error
                    failed_ids.append(rid)
                    report.failed += 1
                    report.first_error = report.first_error or str(exc)
                    continue
                report.latencies.append(time.perf_counter() - t0)
                got = result.get_response().id
                answered[got] += 1
                error = result.as_numpy("error")
                if error is not None and error.reshape(-1)[0]:
                    report.app_errors += 1
                    report.first_error = report.first_error or error.reshape(-1)[0].decode()
                    continue
                report.batch_sizes[int(result.as_numpy("batch_size").reshape(-1)[0])] += 1
                if i < keep:
                    report.outputs[rid] = result.as_numpy("crops")[0]

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    report.wall_s = time.perf_counter() - start
    report.sent = len(sent_ids)
    sent = set(sent_ids)
    report.answered = sum(answered[r] for r in sent)
    failed = set(failed_ids)
    report.lost = [r for r in sent_ids if answered[r] == 0 and r not in failed]
    report.duplicated = [r for r, n in answered.items() if n + (r in failed) > 1]
    report.mismatched = [r for r in answered if r not in sent]
    return report


def run_level(
    port: int,
    model: str,
    crops: np.ndarray,
    *,
    age: float = 60.0,
    concurrency: int = 1,
    max_requests: int = 200,
    max_seconds: float = 30.0,
    keep: int = 0,
) -> LevelReport:
    """Send up to ``max_requests`` requests (one crop each, seeds = request numbers) with ``concurrency`` in
    flight, for at most ``max_seconds`` (requests in flight at the deadline are awaited), to ``model`` on
    ``127.0.0.1:port`` (gRPC). ``crops``: uint8 [N, S, S, 3], used in turn. ``keep``: keep the outputs of the
    first ``keep`` requests (by id) for correctness checks."""
    if concurrency < 1 or max_requests < 1 or max_seconds <= 0:
        raise ValueError("concurrency and max_requests must be >= 1 and max_seconds > 0")
    return asyncio.run(_level(port, model, crops, age, concurrency, max_requests, max_seconds, keep))
