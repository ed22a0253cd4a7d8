"""Side-by-side timing of the backends on the same inputs (``agingrt bench``).

Protocol (docs/performance.md section 7.5): random weights, rotating random inputs (never zeros), warm-up
first, then the median of CUDA-event timings (wall clock on CPU) over ``iters`` calls; FLOPs from
FlopCounterMode on one image; achieved TFLOP/s and % of the GPU's dense fp16 peak; build (or compile) time
reported apart. Every variant of one model and batch is timed in the same process on the same inputs, so
the speed-ups printed are ratios measured side by side; with ``rounds=True`` (``agingrt bench --rounds``) the
variants are built first and timed in interleaved rounds, one call each per round. With ``profile=`` a short
torch.profiler pass runs after each variant's timed calls (pyagingrt/profiling.py), so it never changes the figures.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .api import Engine, RandomWeightsWarning, load
from .backends.registry import backend_names
from .errors import AgingError, InputError
from .profiling import GRAPHS_NOTE, ProfileOptions, ProfileSummary, prepare_profile_dir, profile_calls

# Dense fp16/bf16 tensor-core peaks in TFLOP/s (datasheets; docs/performance.md section 1.1).
GPU_FP16_PEAK_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0, "V100": 125.0, "L4": 121.0, "T4": 65.0}


def variants() -> dict[str, tuple[str, bool]]:
    """Variant name -> (backend, torch.compile): the torch backend eager and compiled, then every other backend of
    the registry under its own name (native, onnxruntime, openvino)."""
    table = {"eager": ("torch", False), "compile": ("torch", True)}
    table.update({name: (name, False) for name in backend_names() if name != "torch"})
    return table


@dataclass
class BenchResult:
    model: str
    config: str
    variant: str  # eager | compile | a backend of the registry (native, onnxruntime, openvino)
    precision: str
    batch: int
    device: str
    ms_per_batch: float | None = None
    images_per_s: float | None = None
    tflops: float | None = None
    pct_of_peak: float | None = None
    build_s: float | None = None
    gflop_per_image: float | None = None
    error: str | None = None
    samples_ms: list[float] = field(default_factory=list)
    profile: ProfileSummary | None = None  # with --profile: the top ops of a profiled pass after the timed calls
    profile_error: str | None = None


def gpu_peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in GPU_FP16_PEAK_TFLOPS.items() if k in name), None)


def _timer(device: torch.device) -> Callable[[Callable[[], Any]], float]:
    """Milliseconds of one call: CUDA events on a GPU, perf_counter on CPU."""
    if device.type == "cuda":

        def time_cuda(fn: Callable[[], Any]) -> float:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end)

        return time_cuda

    def time_cpu(fn: Callable[[], Any]) -> float:
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3

    return time_cpu


def _make_runner(
    engine: Engine, compiled: bool, batch: int, *, graphs: bool = True
) -> tuple[Callable[[Tensor, Tensor], Tensor], Any]:
    """fn(pixels, targets) for the engine's model, and the validated default options. ``graphs=False`` makes
    a native engine bypass its CUDA graphs (the profile pass's per-kernel view); other engines ignore it."""
    from .backends.native import NativeEngine

    options = engine.adapter.validate_options(engine.config, batch, {})
    generator = torch.Generator().manual_seed(0)
    if not compiled:
        call = engine._run_eager if not graphs and isinstance(engine, NativeEngine) else engine._run
        return (lambda x, t: call(x, t, generator, options)), options

    adapter, module = engine.adapter, engine.module
    adapter.prepare_compile(module)  # this engine is the compile variant's own

    def forward(x: Tensor, t: Tensor) -> Tensor:
        return adapter.run(module, x, t.to(x.device), generator, options)

    compiled_fn = torch.compile(forward)

    def run(x: Tensor, t: Tensor) -> Tensor:
        with torch.no_grad():
            return compiled_fn(x, t)

    return run, options


@dataclass
class _Built:
    """One variant built and called once (graph capture / compilation done), ready to be timed."""

    result: BenchResult
    engine: Engine
    compiled: bool
    run: Callable[[Tensor, Tensor], Tensor]
    pixels: list[Tensor]
    targets: Tensor

    def call(self, i: int) -> Tensor:
        return self.run(self.pixels[i % len(self.pixels)], self.targets)


_FAILURES = (AgingError, RuntimeError, NotImplementedError)  # one variant failing must not stop the run


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"


def _failed(result: BenchResult, exc: BaseException) -> BenchResult:
    result.error = _error_text(exc)
    return result


def _build(
    model: str, config: str | None, variant: str, precision: str, batch: int, device: torch.device, inputs: int = 3
) -> _Built | BenchResult:
    """Load the variant's engine, make its inputs and run the first call; a BenchResult with ``error`` on failure."""
    backend, compiled = variants()[variant]
    result = BenchResult(model, config or "default", variant, precision, batch, str(device))
    try:
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RandomWeightsWarning)
            # native: one CUDA graph of exactly this batch (the default buckets would pad or chunk it)
            extra = {"buckets": (batch,)} if backend == "native" else {}
            engine = load(model, backend=backend, device=device, precision=precision, config=config, **extra)
        result.config = engine.config_name or result.config
        result.gflop_per_image = engine.flops_per_image() / 1e9
        size = engine.input_size
        gen = torch.Generator().manual_seed(1234)
        # rotating random inputs, never zeros; targets spread over the model's groups
        pixels = [torch.rand(batch, 3, size, size, generator=gen).to(device) for _ in range(inputs)]
        groups = engine.age_groups
        ages = torch.tensor(
            [groups[(i * 7) % len(groups)].representative_age() for i in range(batch)], dtype=torch.float64
        )
        targets = engine.adapter.validate_ages(engine.config, ages)  # on the host, as Engine.age passes them
        run, _ = _make_runner(engine, compiled, batch)
        built = _Built(result, engine, compiled, run, pixels, targets)
        built.call(0)  # first call: graph capture / compilation
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        result.build_s = time.perf_counter() - t0
    except _FAILURES as exc:
        return _failed(result, exc)
    return built


def _finish(built: _Built, samples: list[float], device: torch.device, profile: ProfileOptions | None) -> BenchResult:
    result = built.result
    result.samples_ms = samples
    result.ms_per_batch = statistics.median(samples)
    result.images_per_s = result.batch / (result.ms_per_batch / 1e3)
    result.tflops = result.gflop_per_image * result.batch / result.ms_per_batch  # GFLOP per ms == TFLOP/s
    peak = gpu_peak_tflops(device)
    result.pct_of_peak = None if peak is None else 100.0 * result.tflops / peak
    if profile is not None:  # after the timed calls, so the figures above are the same with or without it
        try:
            result.profile = _profile_variant(
                result, built.engine, built.compiled, built.run, built.pixels, built.targets, profile
            )
        except RuntimeError as exc:  # a failing profiler must not lose the timings
            result.profile_error = _error_text(exc)
    return result


def bench_one(
    model: str,
    config: str | None,
    variant: str,
    precision: str,
    batch: int,
    device: torch.device,
    *,
    warmup: int,
    iters: int,
    inputs: int = 3,
    profile: ProfileOptions | None = None,
) -> BenchResult:
    """Build one variant, warm it up and time ``iters`` calls in a row (rounds of one variant)."""
    specs = [(variant, precision)]
    (result,) = bench_rounds(
        model, config, specs, batch, device, warmup=warmup, iters=iters, inputs=inputs, profile=profile
    )
    return result


def bench_rounds(
    model: str,
    config: str | None,
    specs: Sequence[tuple[str, str]],
    batch: int,
    device: torch.device,
    *,
    warmup: int,
    iters: int,
    inputs: int = 3,
    profile: ProfileOptions | None = None,
) -> list[BenchResult]:
    """Build every (variant, precision) of ``specs`` first, warm each up, then time ``iters`` rounds of one call
    per variant in turn: drift of the machine (other load, clocks, memory state left by an earlier variant) then
    falls on every variant alike instead of on whichever ran during it, so the ratios are fairer. Every engine
    is held at once (memory of all variants together)."""
    slots: list[_Built | BenchResult] = [_build(model, config, v, p, batch, device, inputs) for v, p in specs]
    samples: dict[int, list[float]] = {k: [] for k, s in enumerate(slots) if isinstance(s, _Built)}
    timer = _timer(device)
    for k in list(samples):
        built = slots[k]
        assert isinstance(built, _Built)
        try:
            for i in range(warmup):
                built.call(i)
        except _FAILURES as exc:
            slots[k] = _failed(built.result, exc)
            del samples[k]
    for i in range(iters):
        for k in list(samples):
            built = slots[k]
            assert isinstance(built, _Built)
            try:
                samples[k].append(timer(lambda b=built, i=i: b.call(i)))
            except _FAILURES as exc:
                slots[k] = _failed(built.result, exc)
                del samples[k]
    return [
        _finish(slot, samples[k], device, profile) if isinstance(slot, _Built) else slot for k, slot in enumerate(slots)
    ]


def _profile_stem(r: BenchResult, bypassed_graphs: bool) -> str:
    """File name stem of one variant's profile outputs, e.g. ``acgan_paper_b1_native_fp32``."""
    return f"{r.model}_{r.config}_b{r.batch}_{r.variant}_{r.precision}" + ("_nographs" if bypassed_graphs else "")


def _profile_variant(
    r: BenchResult,
    engine: Engine,
    compiled: bool,
    run: Callable[[Tensor, Tensor], Tensor],
    pixels: Sequence[Tensor],
    targets: Tensor,
    options: ProfileOptions,
) -> ProfileSummary:
    """Record ``options.iters`` calls of an already warmed-up variant on the same rotating inputs."""
    graphs = getattr(engine, "graphs", None)  # a native engine's CUDA graph cache, None elsewhere
    defaults = engine.adapter.validate_options(engine.config, r.batch, {})
    graphs_on = graphs is not None and engine.runner.graph_safe(defaults)
    bypass = graphs_on and not options.graphs
    if bypass:
        run, _ = _make_runner(engine, compiled, r.batch, graphs=False)
        run(pixels[0], targets)  # warm the eager path (cuDNN, allocator) outside the profile
    note = GRAPHS_NOTE if graphs_on and options.graphs else None
    calls = [lambda i=i: run(pixels[i % len(pixels)], targets) for i in range(options.iters)]
    title = f"agingrt bench profile: {r.model} ({r.config}) batch {r.batch}, {r.variant} {r.precision} on {r.device}"
    if bypass:
        title += ", CUDA graphs bypassed for this profile"
    return profile_calls(calls, engine.device, options, _profile_stem(r, bypass), title=title, note=note)


def split_variant(spec: str) -> tuple[str, str | None]:
    """``"openvino:bf16"`` -> ("openvino", "bf16"): a variant may carry its own precision, which replaces the
    run's precision list for it (e.g. one bf16 row beside fp32 ones); ``"native"`` -> ("native", None)."""
    name, _, precision = spec.partition(":")
    return name, precision or None


def run_bench(
    models: Sequence[str],
    batches: Sequence[int],
    precisions: Sequence[str],
    variant_names: Sequence[str],
    device: torch.device,
    *,
    config: str | None = None,
    warmup: int = 3,
    iters: int = 10,
    progress: Callable[[BenchResult], None] | None = None,
    profile: ProfileOptions | None = None,
    rounds: bool = False,
) -> list[BenchResult]:
    """Time every (model, batch, variant, precision). ``rounds=True`` times the variants of each (model, batch)
    in interleaved rounds (:func:`bench_rounds`), otherwise one variant after the other (:func:`bench_one`)."""
    known = variants()
    for v in variant_names:
        if split_variant(v)[0] not in known:
            raise InputError(f"unknown backend variant {v!r}; choose from {', '.join(known)}")
    if profile is not None:
        if profile.iters < 1:
            raise InputError(f"--profile-iters must be >= 1, got {profile.iters}")
        prepare_profile_dir(profile.out_dir)  # a bad folder fails before any timing
    specs = []
    for spec in variant_names:
        variant, own_precision = split_variant(spec)
        specs += [(variant, precision) for precision in ([own_precision] if own_precision else precisions)]
    results = []
    for model in models:
        for batch in batches:
            if rounds:
                group = bench_rounds(model, config, specs, batch, device, warmup=warmup, iters=iters, profile=profile)
            else:
                group = (
                    bench_one(model, config, v, p, batch, device, warmup=warmup, iters=iters, profile=profile)
                    for v, p in specs
                )
            for r in group:
                results.append(r)
                if progress is not None:
                    progress(r)
    return results


def _fmt(v: float | None, spec: str) -> str:
    """format(v, spec), or a right-aligned "-" of the same width for a missing value."""
    width = int(spec.split(".")[0] or 0) if spec[0].isdigit() else 0
    return f"{'-':>{width}}" if v is None else format(v, spec)


def format_table(results: Sequence[BenchResult]) -> str:
    """One table per (model, batch): each variant, and the speed-up of the native engine of the same precision over
    each other variant (none where no native engine of that precision was timed)."""
    lines = []
    keys = sorted({(r.model, r.config, r.batch) for r in results}, key=lambda k: (k[0], k[2]))
    for model, config, batch in keys:
        rows = [r for r in results if (r.model, r.config, r.batch) == (model, config, batch)]
        gflop = next((r.gflop_per_image for r in rows if r.gflop_per_image), None)
        lines.append(f"\n{model} ({config}), batch {batch}, {_fmt(gflop, '.3f')} GFLOP/image, random weights")
        lines.append(
            f"  {'variant':<16}{'ms/batch':>11}{'img/s':>11}{'TFLOP/s':>10}{'% peak':>8}{'build s':>9}  native speed-up"
        )
        natives = {r.precision: r for r in rows if r.variant == "native" and r.ms_per_batch}
        for r in rows:
            name = f"{r.variant} {r.precision}"
            if r.error:
                lines.append(f"  {name:<16}  not run: {r.error}")
                continue
            speedup = ""
            native = natives.get(r.precision)  # against the native engine of the same precision only
            if native is not None and r.variant != "native":
                speedup = f"x{r.ms_per_batch / native.ms_per_batch:.2f}"
            lines.append(
                f"  {name:<16}{_fmt(r.ms_per_batch, '11.3f')}{_fmt(r.images_per_s, '11.1f')}"
                f"{_fmt(r.tflops, '10.3g')}{_fmt(r.pct_of_peak, '8.1f')}{_fmt(r.build_s, '9.1f')}  {speedup}"
            )
    return "\n".join(lines)


def environment() -> dict[str, Any]:
    from ._extension import build_info

    env = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "extension": build_info(),
        "weights": "random",
    }
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
        env["cuda"] = torch.version.cuda
    return env


def write_json(results: Sequence[BenchResult], path: str | Path, command: str) -> Path:
    path = Path(path)
    payload = {"command": command, "environment": environment(), "results": [asdict(r) for r in results]}
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    tmp.replace(path)
    return path


def plot_bars(results: Sequence[BenchResult], path: str | Path) -> Path:
    """A bar chart of images/s per variant, one panel per (model, batch)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted({(r.model, r.batch) for r in results})
    ncols = min(4, len(keys))
    nrows = -(-len(keys) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 3.0 * nrows), squeeze=False)
    for ax in axes.flat[len(keys) :]:
        ax.set_visible(False)
    for ax, (model, batch) in zip(axes.flat, keys, strict=False):
        rows = [r for r in results if (r.model, r.batch) == (model, batch) and r.images_per_s]
        names = [f"{r.variant}\n{r.precision}" for r in rows]
        ax.bar(
            names,
            [r.images_per_s for r in rows],
            color=["#4c72b0" if r.variant != "native" else "#dd8452" for r in rows],
        )
        ax.set_title(f"{model}, batch {batch}", fontsize=9)
        ax.set_ylabel("images / s")
        ax.tick_params(axis="x", labelsize=7)
    fig.suptitle("pyagingrt bench (random weights)", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
    return path
