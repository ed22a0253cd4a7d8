"""``agingrt bench``: time the models side by side (torch eager, torch.compile and every other backend of the
registry: native, onnxruntime, openvino) on this machine."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from ..benchmark import variants


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="time the models: torch eager vs torch.compile vs the other backends, same inputs, one run",
        description="Time each model side by side on the same rotating random inputs (random weights: speed "
        "does not depend on them): ms per batch, images/s, achieved TFLOP/s, % of the GPU's dense fp16 peak, "
        "build/compile time, and the speed-up of the native engine (same precision) over each baseline. "
        "CUDA-event medians after warm-up on a GPU, wall-clock medians on CPU; --rounds interleaves the "
        "variants. With --profile DIR, each variant is then profiled apart "
        "(torch.profiler, after its timed calls, so the figures do not change): DIR gets its top-25 op table "
        "(.txt) and a Chrome trace (.trace.json, open in chrome://tracing or ui.perfetto.dev), and the terminal "
        "shows where the time goes. On a GPU the native engine's kernels run inside CUDA graph launches: add "
        "--profile-no-graphs to see each kernel, or run the bench under `nsys profile --cuda-graph-trace=node`.",
    )
    p.add_argument("--model", default="all", help="all, or a comma list of ageflow,acgan,cusp,pada (default: all)")
    p.add_argument(
        "--config", default=None, help="config for every model, e.g. tiny (default: each model's paper size)"
    )
    p.add_argument("--batch", default="1", help="comma list of batch sizes (default: 1)")
    p.add_argument(
        "--precision", default=None, help="comma list of fp32,fp16,bf16 (default: fp32,fp16 on a GPU, fp32 on CPU)"
    )
    p.add_argument(
        "--backends",
        default=None,
        help=f"comma list of {','.join(variants())}: eager and compile are the torch backend without and with "
        "torch.compile, the others the backends of that name; NAME:PRECISION times that variant in that precision "
        "only, e.g. openvino:bf16 (default: eager,compile,native on a GPU; eager,native on CPU, where "
        "torch.compile takes minutes)",
    )
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls before timing (default: 3)")
    p.add_argument("--iters", type=int, default=10, help="timed calls; the median is reported (default: 10)")
    p.add_argument(
        "--rounds",
        action="store_true",
        help="build every variant of a model and batch first, then time them in interleaved rounds (one call "
        "each per round) instead of one after the other: load on the machine or state left by an earlier "
        "variant then hits all alike, so the ratios are fairer; holds all their engines in memory at once",
    )
    p.add_argument("--quick", action="store_true", help="tiny configs, batch 1, 1 warm-up, 3 iterations: a smoke run")
    p.add_argument("--json", default=None, help="write every measurement and the environment to this JSON file")
    p.add_argument("--plot", default=None, help="write a bar chart of images/s to this PNG file")
    p.add_argument(
        "--profile",
        default=None,
        metavar="DIR",
        help="after each variant's timed calls, profile a few more with torch.profiler (CPU, plus CUDA on a GPU) "
        "and write its op table (top 25 by self GPU time, or self CPU time on CPU) and Chrome trace into DIR "
        "(created if missing); prints the top ops of each variant with their share of the time",
    )
    p.add_argument(
        "--profile-iters", type=int, default=None, help="calls recorded per variant by --profile (default: 3)"
    )
    p.add_argument(
        "--profile-shapes", action="store_true", help="record input shapes in the --profile traces (larger files)"
    )
    p.add_argument(
        "--profile-no-graphs",
        action="store_true",
        help="profile the native engine with its CUDA graphs bypassed (the timed calls still use them), so each "
        "kernel shows by name instead of inside one graph launch",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from pyagingrt.api import _resolve_device
    from pyagingrt.benchmark import format_table, plot_bars, run_bench, write_json
    from pyagingrt.errors import InputError
    from pyagingrt.models.registry import get_adapter, model_names
    from pyagingrt.profiling import ProfileOptions, format_summary

    device = _resolve_device(args.device)
    models = list(model_names()) if args.model == "all" else _csv(args.model)
    for m in models:
        get_adapter(m)  # unknown names fail before any timing
    config, batches, warmup, iters = args.config, args.batch, args.warmup, args.iters
    if args.quick:
        config, batches, warmup, iters = config or "tiny", "1", 1, 3
    try:
        batch_list = [int(b) for b in _csv(batches)]
    except ValueError as exc:
        raise InputError(f"--batch takes a comma list of integers, got {batches!r}") from exc
    if not batch_list or min(batch_list) < 1:
        raise InputError(f"--batch sizes must be >= 1, got {batches!r}")
    gpu = device.type == "cuda"
    precisions = _csv(args.precision) if args.precision else (["fp32", "fp16"] if gpu else ["fp32"])
    variants = (
        _csv(args.backends) if args.backends else (["eager", "compile", "native"] if gpu else ["eager", "native"])
    )
    profile = None
    if not args.profile and (args.profile_iters is not None or args.profile_shapes or args.profile_no_graphs):
        raise InputError("--profile-iters, --profile-shapes and --profile-no-graphs need --profile DIR")
    if args.profile:
        profile_iters = 3 if args.profile_iters is None else args.profile_iters
        no_graphs, shapes = args.profile_no_graphs, args.profile_shapes
        profile = ProfileOptions(Path(args.profile), profile_iters, record_shapes=shapes, graphs=not no_graphs)
    where = torch.cuda.get_device_name(device) if gpu else f"CPU ({torch.get_num_threads()} threads)"
    print(f"agingrt bench on {where}, torch {torch.__version__}; random weights (speed does not depend on them)")

    command = "agingrt bench " + " ".join(shlex.quote(a) for a in sys.argv[2:])
    done = []

    def progress(r) -> None:
        state = r.error or f"{r.ms_per_batch:.3f} ms"
        print(f"  {r.model} {r.variant} {r.precision} batch {r.batch}: {state}", file=sys.stderr, flush=True)
        done.append(r)
        if args.json:  # after every variant, so an interrupted run keeps what it measured
            write_json(done, args.json, command)

    results = run_bench(
        models,
        batch_list,
        precisions,
        variants,
        device,
        config=config,
        warmup=warmup,
        iters=iters,
        progress=progress,
        profile=profile,
        rounds=args.rounds,
    )
    print(format_table(results))
    if profile is not None:
        print(f"\nwhere the time goes (torch.profiler, {profile.iters} calls per variant after the timed ones):")
        for r in results:
            label = f"{r.model} ({r.config}) batch {r.batch}, {r.variant} {r.precision}"
            if r.profile is not None:
                print(format_summary(label, r.profile))
            elif r.error is None:
                print(f"  {label}: not profiled: {r.profile_error}")
    if args.json:
        print(f"wrote {write_json(results, args.json, command)}")
    if args.plot:
        print(f"wrote {plot_bars(results, args.plot)}")
    return 0
