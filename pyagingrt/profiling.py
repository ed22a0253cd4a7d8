"""Where the time goes: a short ``torch.profiler`` pass over one bench variant (``agingrt bench --profile DIR``).

The pass runs after the timed calls, never during them, so the timings ``agingrt bench`` reports are the same
with or without ``--profile``. Per variant it writes into DIR

    <model>_<config>_b<batch>_<variant>_<precision>[_nographs].txt         key_averages() table, top 25 rows
    <model>_<config>_b<batch>_<variant>_<precision>[_nographs].trace.json  Chrome trace (chrome://tracing, Perfetto)

and returns a :class:`ProfileSummary` whose rows are the top ops by share of the total self time: self device
(GPU) time on CUDA, self CPU time on CPU. Self time is the time inside an op less the time in the ops it calls,
so the shares of all ops add up to 100% and no time is counted twice. On CPU, oneDNN transposed convolutions
run inside ``aten::_convolution`` (they have no op of their own), so a large self time there is theirs.

With CUDA graphs (the native engine on a GPU) the model's kernels run inside graph launches; for a per-kernel
breakdown profile with ``--profile-no-graphs`` (same engine, graphs bypassed for the profile pass only) or run
``nsys profile --cuda-graph-trace=node agingrt bench ...``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from .errors import OutputError

__all__ = [
    "GRAPHS_NOTE",
    "TABLE_ROWS",
    "ProfileOptions",
    "ProfileRow",
    "ProfileSummary",
    "format_summary",
    "prepare_profile_dir",
    "profile_calls",
    "summarize_events",
]

TABLE_ROWS = 25  # rows of the key_averages() table written to the .txt file
SUMMARY_ROWS = 8  # rows of the terminal summary

GRAPHS_NOTE = (
    "CUDA graphs on: the native engine's kernels run inside graph launches; for per-kernel times rerun with "
    "--profile-no-graphs or `nsys profile --cuda-graph-trace=node agingrt bench ...`"
)


class ProfilerEvent(Protocol):
    """What :func:`summarize_events` reads from one ``key_averages()`` entry (times in microseconds)."""

    key: str
    count: int
    self_cpu_time_total: float
    self_device_time_total: float


@dataclass(frozen=True)
class ProfileOptions:
    """What ``--profile`` asks for: where to write, how many profiled calls, shapes, CUDA graphs on or off."""

    out_dir: Path
    iters: int = 3
    record_shapes: bool = False
    graphs: bool = True  # False: the native engine's profile pass bypasses its CUDA graphs (per-kernel rows)


@dataclass(frozen=True)
class ProfileRow:
    """One op: its name, calls over the profiled iterations, total self time in ms, and % of all self time."""

    name: str
    calls: int
    self_ms: float
    pct: float


@dataclass
class ProfileSummary:
    """The profile pass of one variant: top ops, totals per iteration, and the files written."""

    time_kind: str  # "self device time" (CUDA) or "self CPU time" (CPU)
    iters: int
    wall_ms_per_iter: float  # wall clock under the profiler: inflated by its overhead, not a timing figure
    self_ms_per_iter: float  # sum of the self time of every op
    rows: list[ProfileRow] = field(default_factory=list)
    table_path: str = ""
    trace_path: str = ""
    note: str | None = None


def summarize_events(
    events: Iterable[ProfilerEvent], *, device_time: bool, top: int | None = SUMMARY_ROWS
) -> tuple[list[ProfileRow], float]:
    """The ``top`` ops by self time, each with its share of the total self time of all ops.

    Args:
        events: ``prof.key_averages()``, or any objects with ``key``, ``count``, ``self_cpu_time_total`` and
            ``self_device_time_total`` (microseconds, summed over the profiled calls).
        device_time: rank by self device (GPU) time instead of self CPU time.
        top: rows to keep; None keeps every op with a non-zero self time.

    Returns:
        (rows sorted by self time, largest first; total self time of all ops in ms). The rows' ``pct`` add up
        to at most 100 (exactly 100 when ``top`` keeps every op).
    """
    attr = "self_device_time_total" if device_time else "self_cpu_time_total"
    # Entries with the same name (e.g. one per input shape with group_by_input_shape) are merged.
    merged: dict[str, list[float]] = {}
    for e in events:
        us = float(getattr(e, attr))
        if us <= 0.0:
            continue
        acc = merged.setdefault(e.key, [0.0, 0.0])
        acc[0] += us
        acc[1] += e.count
    total_us = sum(us for us, _ in merged.values())
    ranked = sorted(merged.items(), key=lambda kv: (-kv[1][0], kv[0]))
    if top is not None:
        ranked = ranked[:top]
    rows = [ProfileRow(name, int(calls), us / 1e3, 100.0 * us / total_us) for name, (us, calls) in ranked]
    return rows, total_us / 1e3


def prepare_profile_dir(path: str | Path) -> Path:
    """Create the profile folder (and its parents) if missing; raise OutputError now, before any timing, when
    it cannot be one."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"--profile {path} is a file, not a folder; give a folder for the profile outputs")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the profile folder {path}: {exc.strerror or exc}") from exc
    return path


def profile_calls(
    calls: Sequence[Callable[[], Any]],
    device: torch.device,
    options: ProfileOptions,
    stem: str,
    *,
    title: str,
    note: str | None = None,
) -> ProfileSummary:
    """Profile ``calls`` (one per iteration, already warmed up) and write ``<stem>.txt`` and ``<stem>.trace.json``
    into ``options.out_dir`` atomically.

    Args:
        calls: the iterations to record; each runs one batch through the engine.
        device: where the engine runs; CUDA adds CUDA activity and ranks by self device time.
        options: folder, shapes on or off (``options.iters`` is for the caller: ``len(calls)`` is what runs).
        stem: file name stem, e.g. ``acgan_paper_b1_native_fp32``.
        title: the first line of the .txt file (what was profiled).
        note: a line for the .txt file and the summary, e.g. :data:`GRAPHS_NOTE`.
    """
    from torch.profiler import ProfilerActivity, profile

    from .pipeline.media import atomic_output

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    # acc_events: one cycle only, so nothing accumulates; without it torch 2.11 warns on every profile
    with profile(activities=activities, record_shapes=options.record_shapes, acc_events=True) as prof:
        t0 = time.perf_counter()
        for call in calls:
            call()
        if cuda:
            torch.cuda.synchronize(device)
        wall_ms = (time.perf_counter() - t0) * 1e3
    averages = prof.key_averages()
    sort_by = "self_device_time_total" if cuda else "self_cpu_time_total"
    rows, total_ms = summarize_events(averages, device_time=cuda)
    n = max(len(calls), 1)
    summary = ProfileSummary(
        time_kind="self device time" if cuda else "self CPU time",
        iters=len(calls),
        wall_ms_per_iter=wall_ms / n,
        self_ms_per_iter=total_ms / n,
        rows=rows,
        note=note,
    )
    table_path = options.out_dir / f"{stem}.txt"
    header = [title, f"{len(calls)} profiled calls after the timed ones; sorted by {sort_by}"]
    with atomic_output(table_path) as tmp:
        tmp.write_text("\n".join([*header, *([note] if note else []), averages.table(sort_by, TABLE_ROWS)]) + "\n")
    trace_path = options.out_dir / f"{stem}.trace.json"
    with atomic_output(trace_path) as tmp:
        prof.export_chrome_trace(str(tmp))
    summary.table_path, summary.trace_path = str(table_path), str(trace_path)
    return summary


def format_summary(label: str, summary: ProfileSummary) -> str:
    """A few lines for the terminal: the top ops of one variant with their share of the total self time."""
    s = summary
    share = 100.0 * s.self_ms_per_iter / s.wall_ms_per_iter if s.wall_ms_per_iter > 0 else 0.0
    head = f"  {label}: {s.self_ms_per_iter:.3f} ms {s.time_kind} per call over {s.iters} calls "
    lines = [head + f"({share:.0f}% of the profiled wall time); top ops by share:"]
    for r in s.rows:
        lines.append(f"    {r.pct:5.1f}%  {r.self_ms / s.iters:9.3f} ms/call  {r.calls / s.iters:>5g}x  {r.name}")
    if s.note:
        lines.append(f"    note: {s.note}")
    lines.append(f"    table {s.table_path}, trace {s.trace_path}")
    return "\n".join(lines)
