"""``agingrt export MODEL --checkpoint C -o model.onnx``: a model's inference graph to a checked ONNX file."""

from __future__ import annotations

import argparse
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
    p.add_argument("-o", "--output", required=True, help="the .onnx file to write")
    p.add_argument("--config", default=None, help="config name, e.g. paper or tiny (default: the checkpoint's)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--batch", type=int, default=1, help="fixed batch size of the graph (default: 1)")
    size.add_argument("--dynamic-batch", action="store_true", help="a dynamic batch axis instead of a fixed one")
    p.add_argument("--precision", choices=("fp32", "fp16"), default="fp32", help="graph precision (default: fp32)")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset, >= 18 (default: 18)")
    p.add_argument("--dex", default=None, help="CUSP: DEX VGG-16 weights when the checkpoint has none")
    p.add_argument("--clip", default=None, help="PADA: CLIP directory (Hugging Face layout)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import pyagingrt
    from pyagingrt.errors import InputError

    try:
        from pyagingrt.export.to_onnx import check_export_args, export_onnx
    except ModuleNotFoundError as exc:  # onnx / onnxscript / onnxruntime missing
        raise InputError(
            f"agingrt export needs the export extra ({exc.name} is missing): pip install 'pyagingrt[export]'"
        ) from None

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
    report = export_onnx(engine, args.output, batch=batch, precision=args.precision, opset=args.opset)
    print(report.summary())
    return 0
