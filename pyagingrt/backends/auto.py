"""``backend="auto"``: build each backend that can run here, time a short probe, keep the fastest.

The probe is ``PROBE_CALLS`` calls of one batch of ``PROBE_BATCH`` random images after one warm-up call (the median
wall-clock time, with a device synchronisation on CUDA). The pick is cached in a small JSON file
(:func:`cache_path`) keyed by model, config, input size, probe batch, device, precision and the versions of torch
and pyagingrt, so a later load of the same model on the same machine builds only the backend it picked. The
engine says what it picked in ``engine.describe()["auto"]`` and in an INFO line of the ``pyagingrt`` logger.

A backend that cannot run here (missing package or extension, unsupported precision) or fails to build is
skipped, and the reason recorded. Timing outcomes never decide a test: tests inject the timings (``measure=``).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._version import __version__
from ..api import Engine, _resolve_precision, build_engine
from ..errors import AgingError
from ..models.base import ModelAdapter
from .registry import backend_class, backend_names

logger = logging.getLogger("pyagingrt")

PROBE_BATCH = 1
PROBE_CALLS = 3
CACHE_ENV = "PYAGINGRT_CACHE_DIR"

Measure = Callable[[Engine], float]


def cache_path() -> Path:
    """``$PYAGINGRT_CACHE_DIR/backend_choice.json``, else that file in ``$XDG_CACHE_HOME/pyagingrt`` or
    ``~/.cache/pyagingrt``."""
    root = os.environ.get(CACHE_ENV)
    if root is None:
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        root = Path(base) / "pyagingrt"
    return Path(root) / "backend_choice.json"


def device_label(device: torch.device) -> str:
    """The device as the cache key sees it: a GPU by name, the CPU with its thread count."""
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"cpu:{torch.get_num_threads()}threads"


def probe_key(adapter: ModelAdapter, config: Any, device: torch.device, precision: str) -> str:
    """The cache key of one probe: what the timing depends on, readable, with the config as a short hash."""
    blob = json.dumps(adapter.config_to_dict(config), sort_keys=True, default=str)
    config_hash = hashlib.sha256(blob.encode()).hexdigest()[:12]
    size = adapter.input_size(config)
    return (
        f"{adapter.name}/{config_hash}/{size}x{size}/b{PROBE_BATCH}/{device_label(device)}/{precision}"
        f"/torch{torch.__version__}/pyagingrt{__version__}"
    )


def read_cache(path: Path) -> dict[str, Any]:
    """The cache's entries, or {} when it is missing or unreadable (it is only a cache)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_cache(path: Path, key: str, entry: dict[str, Any]) -> None:
    """Add one entry, atomically (temp file, then rename); a cache that cannot be written is only logged."""
    data = read_cache(path)
    data[key] = entry
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        tmp.replace(path)
    except OSError as exc:
        logger.warning("backend='auto': could not write the probe cache %s (%s)", path, exc)


def measure_engine(engine: Engine) -> float:
    """Median milliseconds of PROBE_CALLS calls on one batch of PROBE_BATCH random images, after one warm-up."""
    size = engine.input_size
    gen = torch.Generator().manual_seed(0)
    pixels = torch.rand(PROBE_BATCH, 3, size, size, generator=gen).to(engine.device)
    groups = engine.age_groups
    ages = torch.tensor([groups[i % len(groups)].representative_age() for i in range(PROBE_BATCH)], dtype=torch.float64)
    targets = engine.adapter.validate_ages(engine.config, ages)
    options = engine.adapter.validate_options(engine.config, PROBE_BATCH, {})

    def call() -> None:
        engine._run(pixels, targets, torch.Generator().manual_seed(0), options)
        if engine.device.type == "cuda":
            torch.cuda.synchronize(engine.device)

    call()
    samples = []
    for _ in range(PROBE_CALLS):
        t0 = time.perf_counter()
        call()
        samples.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(samples)


def _build(
    name: str, adapter: ModelAdapter, config: Any, module: nn.Module, device: torch.device, precision: str, **kw: Any
) -> Engine:
    cls = backend_class(name)
    cls.check_available(device)
    dtype = cls.auto_precision(device) if precision == "auto" else _resolve_precision(precision, device)
    cls.check_precision(dtype, device)
    return build_engine(cls, adapter, config, module, device, dtype, precision, **kw)


def load_auto(
    adapter: ModelAdapter,
    config: Any,
    module: nn.Module,
    device: torch.device,
    precision: str,
    *,
    config_name: str | None = None,
    source: dict[str, Any] | None = None,
    measure: Measure = measure_engine,
    candidates: tuple[str, ...] | None = None,
) -> Engine:
    """The engine of the fastest backend for this model, device and precision (see the module docstring).

    Args:
        measure: engine -> milliseconds of the probe (tests inject their own).
        candidates: the backends to try, default every registered one.

    Raises:
        BackendUnavailableError (the first backend's error) when no backend builds.
    """
    path, key = cache_path(), probe_key(adapter, config, device, precision)
    kwargs = {"config_name": config_name, "source": source}
    cached = read_cache(path).get(key)
    if isinstance(cached, dict) and cached.get("backend") in backend_names():
        try:
            engine = _build(cached["backend"], adapter, config, module, device, precision, **kwargs)
        except AgingError as exc:  # the cached pick no longer builds here: probe again
            logger.info("backend='auto': cached pick %s does not build any more (%s); probing again", cached, exc)
        else:
            engine.auto_choice = {**cached, "cached": True, "cache": str(path), "key": key}
            logger.info("backend='auto' picked %s for %s (cached in %s)", engine.backend, adapter.name, path)
            return engine

    timings: dict[str, float] = {}
    skipped: dict[str, str] = {}
    best: Engine | None = None
    first_error: AgingError | None = None
    for name in candidates or backend_names():
        try:
            # a copy each: an engine may convert its module in place (the torch backend to its precision)
            engine = _build(name, adapter, config, copy.deepcopy(module), device, precision, **kwargs)
            timings[name] = float(measure(engine))
        except (AgingError, RuntimeError, NotImplementedError) as exc:  # one backend failing must not stop the pick
            skipped[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            if first_error is None and isinstance(exc, AgingError):
                first_error = exc
            continue
        if best is None or timings[name] < timings[best.backend]:
            best = engine  # the slower engines are dropped as soon as a faster one is measured
    if best is None:
        if first_error is not None:
            raise first_error
        raise RuntimeError(f"backend='auto': no backend could be built for {adapter.name}: {skipped}")
    entry = {"backend": best.backend, "timings_ms": timings, "skipped": skipped, "probe_batch": PROBE_BATCH}
    write_cache(path, key, entry)
    best.auto_choice = {**entry, "cached": False, "cache": str(path), "key": key}
    times = ", ".join(f"{n} {t:.1f} ms" for n, t in sorted(timings.items(), key=lambda kv: kv[1]))
    logger.info(
        "backend='auto' picked %s for %s on %s (probe at batch %d: %s)",
        best.backend,
        adapter.name,
        device_label(device),
        PROBE_BATCH,
        times,
    )
    return best
