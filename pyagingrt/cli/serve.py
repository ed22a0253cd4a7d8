"""``agingrt serve``: serve one model on Triton Inference Server (through PyTriton), with a web page."""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from pathlib import Path

from ..errors import InputError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve a model on Triton Inference Server (HTTP/gRPC, dynamic batching, metrics) with a web page",
        description="Build the engine once, warm it up, and serve it on Triton Inference Server through PyTriton "
        "as two models: NAME_crops (aligned uint8 crops) and NAME_photos (encoded photos: detect, align, age, "
        "paste back). Triton's dynamic batcher forms the batches; /v2/health/ready answers once the engine is "
        "warm; Prometheus metrics on --metrics-port. SIGTERM (or Ctrl+C) stops it after answering the requests "
        "in flight. Needs `pip install 'pyagingrt[serve]'` in a Python with a shared libpython (see "
        "docs/serving.md). Example: agingrt serve --model acgan --checkpoint acgan.safetensors",
    )
    g = p.add_argument_group("model")
    g.add_argument("--model", help="ageflow, acgan, cusp or pada (default: read from a pyagingrt checkpoint)")
    weights = g.add_mutually_exclusive_group(required=True)
    weights.add_argument("--checkpoint", type=Path, help="weights: a pyagingrt .safetensors or official checkpoint")
    weights.add_argument(
        "--random-weights",
        action="store_true",
        help="no checkpoint: random weights, MEANINGLESS output (for load tests and trying the API)",
    )
    g.add_argument("--config", help="model config, e.g. paper or tiny (default: the checkpoint's, else paper)")
    g.add_argument("--backend", default="torch", choices=("torch", "native"), help="(default: torch)")
    g.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available, else cpu)")
    g.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "bf16", "auto"), help="(default: fp32)")
    g.add_argument("--dex", help="CUSP: DEX VGG-16 weights, when the snapshot carries none")
    g.add_argument("--clip", help="PADA: CLIP directory in Hugging Face layout")
    g.add_argument("--name", help="Triton model name prefix: NAME_crops, NAME_photos (default: the model name)")
    b = p.add_argument_group("batching and limits")
    b.add_argument("--max-batch", type=int, default=32, help="largest batch Triton forms (default: 32)")
    b.add_argument(
        "--max-queue-delay-us",
        type=int,
        default=2000,
        help="how long Triton may hold a request to fill a batch, microseconds (default: 2000)",
    )
    b.add_argument("--no-photos", action="store_true", help="serve the crops model only (no face detector)")
    b.add_argument("--max-image-mb", type=float, default=20.0, help="largest encoded photo accepted (default: 20)")
    b.add_argument("--max-pixels", type=int, default=40_000_000, help="largest photo accepted (default: 40000000)")
    n = p.add_argument_group("network")
    n.add_argument("--host", default="127.0.0.1", help="address to bind; 0.0.0.0 for all (default: 127.0.0.1)")
    n.add_argument("--http-port", type=int, default=8000, help="KServe v2 HTTP (default: 8000)")
    n.add_argument("--grpc-port", type=int, default=8001, help="KServe v2 gRPC (default: 8001)")
    n.add_argument("--metrics-port", type=int, default=8002, help="Prometheus metrics (default: 8002)")
    n.add_argument("--web-port", type=int, default=8080, help="the web page (default: 8080; 0 = no page)")
    n.add_argument(
        "--exit-timeout", type=int, default=30, help="on SIGTERM, seconds to finish requests in flight (default: 30)"
    )
    p.add_argument(
        "--verbose", action="store_true", help="PyTriton's info logs and Triton's verbose logs (default: off)"
    )
    p.set_defaults(func=run)


def _check(args: argparse.Namespace) -> None:
    if args.max_batch < 1:
        raise InputError(f"--max-batch must be 1 or more, got {args.max_batch}")
    if args.max_queue_delay_us < 0:
        raise InputError(f"--max-queue-delay-us must be 0 or more, got {args.max_queue_delay_us}")
    if args.random_weights and args.model is None:
        raise InputError("--random-weights needs --model (and usually --config tiny or paper)")
    if args.checkpoint is not None and not args.checkpoint.is_file():
        raise InputError(f"checkpoint {args.checkpoint} does not exist or is not a file")
    ports = [args.http_port, args.grpc_port, args.metrics_port] + ([args.web_port] if args.web_port else [])
    if len(set(ports)) != len(ports):
        raise InputError(f"the HTTP, gRPC, metrics and web ports must differ, got {ports}")


def run(args: argparse.Namespace) -> int:
    import importlib.util

    import pyagingrt

    from ..serve.libpython import check_shared_libpython
    from ..serve.models import PhotoLimits
    from ..serve.server import ServeSettings, model_names, serve, warm_up

    _check(args)
    check_shared_libpython()  # before minutes of engine building
    if importlib.util.find_spec("pytriton") is None:
        raise InputError("agingrt serve needs PyTriton: pip install 'pyagingrt[serve]' (see docs/serving.md)")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    logging.getLogger("pyagingrt.serve").setLevel(logging.INFO)

    extra = {k: getattr(args, k) for k in ("dex", "clip") if getattr(args, k) is not None}
    common = {"device": args.device, "precision": args.precision, "config": args.config, "backend": args.backend}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", pyagingrt.RandomWeightsWarning)
        if args.random_weights:
            engine = pyagingrt.load(args.model, None, **common, **extra)
        elif args.model is None:
            engine = pyagingrt.load(args.checkpoint, **common, **extra)
        else:
            engine = pyagingrt.load(args.model, args.checkpoint, **common, **extra)
    for w in caught:
        print(f"agingrt: warning: {w.message}", file=sys.stderr)
    if args.random_weights:
        print("agingrt: warning: RANDOM WEIGHTS: every image this server returns is meaningless", file=sys.stderr)
    name = args.name or engine.model
    print(f"agingrt: warming up {engine!r} up to batch {args.max_batch}", file=sys.stderr)
    warm_up(engine, args.max_batch)
    settings = ServeSettings(
        max_batch=args.max_batch,
        max_queue_delay_us=args.max_queue_delay_us,
        host=args.host,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        web_port=args.web_port or None,
        exit_timeout_s=args.exit_timeout,
        photos=not args.no_photos,
        limits=PhotoLimits(max_bytes=int(args.max_image_mb * 1e6), max_pixels=args.max_pixels),
        log_verbose=1 if args.verbose else 0,
        random_weights=args.random_weights,
    )

    def ready(web: object) -> None:
        crops, photos = model_names(name)
        served = crops + ("" if args.no_photos else f", {photos}")
        print(
            f"agingrt: serving {served}: HTTP {args.host}:{args.http_port}, gRPC {args.host}:{args.grpc_port}, "
            f"metrics http://{args.host}:{args.metrics_port}/metrics"
            + (f", web page {web.url}" if web is not None else ""),  # type: ignore[attr-defined]
            file=sys.stderr,
            flush=True,
        )

    serve(engine, name, settings, ready=ready)
    print("agingrt: stopped", file=sys.stderr)
    return 0
