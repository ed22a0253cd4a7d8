"""``agingrt export MODEL --checkpoint C -o model.onnx``: a model's inference graph to a checked ONNX file."""

from __future__ import annotations

import argparse
import importlib.util
import sys
import warnings


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a model's inference graph to ONNX (checked in ONNX Runtime against torch)",
        description="Build MODEL's inference graph (the native backend's, with its load-time rewrites) from the "
        "checkpoint, export it to ONNX with standard operators only, validate it with onnx.checker, run it in "
        "ONNX Runtime on the same inputs as the torch backend and print the max abs difference. The file is "
        "written only when the difference is within the model's tolerance (1e-4 in fp32). See docs/export.md "
        "for what each graph input means.",
    )
    p.add_argument("model", help="ageflow, acgan, cusp or pada")
    weights = p.add_mutually_exclusive_group(required=True)
    weights.add_argument("--checkpoint", help="weights: a pyagingrt .safetensors file or an official checkpoint")
    weights.add_argument(
        "--random-weights",
        action="store_true",
        help="no checkpoint: random weights, for trying the exporter out (the file's output is meaningless)",
    )
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("-o", "--output", help="the .onnx file to write")
    target.add_argument(
        "--triton-repo",
        metavar="DIR",
        help="instead: write a Triton model repository DIR/NAME/{config.pbtxt, 1/model.onnx} (dynamic batch, "
        "dynamic batching) for the full Triton server's onnxruntime backend (see docs/serving.md)",
    )
    t = p.add_argument_group("Triton repository (with --triton-repo)")
    t.add_argument("--triton-name", help="model name in the repository (default: the model's name)")
    t.add_argument("--max-batch", type=int, default=32, help="config.pbtxt max_batch_size (default: 32)")
    t.add_argument("--max-queue-delay-us", type=int, default=2000, help="dynamic batcher delay (default: 2000)")
    t.add_argument("--tensorrt", action="store_true", help="run it through ORT's TensorRT accelerator on a GPU")
    p.add_argument("--config", default=None, help="config name, e.g. paper or tiny (default: the checkpoint's)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--batch", type=int, default=1, help="fixed batch size of the graph (default: 1)")
    size.add_argument("--dynamic-batch", action="store_true", help="a dynamic batch axis instead of a fixed one")
    p.add_argument("--precision", choices=("fp32", "fp16"), default="fp32", help="graph precision (default: fp32)")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset, >= 18 (default: 18)")
    p.add_argument(
        "--no-optimize",
        action="store_true",
        help="skip the onnxscript optimiser (much faster on big graphs such as PADA's unrolled DDIM loop; "
        "ONNX Runtime optimises the graph when it loads it anyway)",
    )
    p.add_argument("--dex", default=None, help="CUSP: DEX VGG-16 weights when the checkpoint has none")
    p.add_argument("--clip", default=None, help="PADA: CLIP directory (Hugging Face layout)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import pyagingrt
    from pyagingrt.errors import InputError

    missing = [name for name in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(name) is None]
    if missing:
        raise InputError(f"agingrt export needs {', '.join(missing)}: pip install 'pyagingrt[export]'")
    from pyagingrt.export.to_onnx import check_export_args, export_onnx

    if args.triton_repo is not None:
        if args.batch != 1:
            raise InputError("--triton-repo exports a dynamic batch axis; do not give --batch")
        return _triton_repo(args, pyagingrt)
    if not args.output.endswith(".onnx"):
        raise InputError(f"the output must be a .onnx file, got {args.output}")
    batch = None if args.dynamic_batch else args.batch
    check_export_args(args.precision, args.opset, batch)  # before any weights are read
    extra = {k: v for k, v in (("dex", args.dex), ("clip", args.clip)) if v is not None}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pyagingrt.RandomWeightsWarning)
        engine = pyagingrt.load(args.model, checkpoint=args.checkpoint, config=args.config, device="cpu", **extra)
    if args.random_weights:
        print(
            f"agingrt export: WARNING: {engine.model} with RANDOM weights (--random-weights): the exported file "
            "computes nothing meaningful; use it to try the exporter only",
            file=sys.stderr,
        )
    from tqdm import tqdm

    with tqdm(total=3, unit="step", file=sys.stderr, leave=False) as bar:  # step k of 3 while it runs

        def progress(name: str) -> None:
            bar.set_description_str(f"agingrt export: {name}")
            bar.update(1)

        report = export_onnx(
            engine,
            args.output,
            batch=batch,
            precision=args.precision,
            opset=args.opset,
            optimize=not args.no_optimize,
            progress=progress,
        )
    print(report.summary())
    return 0


def _triton_repo(args: argparse.Namespace, pyagingrt: object) -> int:
    from pyagingrt.export.to_onnx import check_export_args
    from pyagingrt.export.triton_repo import write_triton_repository

    check_export_args(args.precision, args.opset, None)
    extra = {k: v for k, v in (("dex", args.dex), ("clip", args.clip)) if v is not None}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pyagingrt.RandomWeightsWarning)  # type: ignore[attr-defined]
        engine = pyagingrt.load(  # type: ignore[attr-defined]
            args.model, checkpoint=args.checkpoint, config=args.config, device="cpu", **extra
        )
    if args.random_weights:
        print(f"agingrt export: WARNING: {engine.model} with RANDOM weights: meaningless output", file=sys.stderr)
    folder, report = write_triton_repository(
        engine,
        args.triton_repo,
        name=args.triton_name,
        max_batch=args.max_batch,
        max_queue_delay_us=args.max_queue_delay_us,
        precision=args.precision,
        opset=args.opset,
        tensorrt=args.tensorrt,
    )
    print(report.summary())
    print(f"Triton model repository: {folder.parent} (model {folder.name}: config.pbtxt, 1/model.onnx)")
    return 0
