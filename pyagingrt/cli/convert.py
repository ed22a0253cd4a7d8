"""``agingrt convert IN -o OUT --model M``: an official checkpoint to the pyagingrt format."""

from __future__ import annotations

import argparse
import warnings


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        help="convert an official checkpoint to a pyagingrt .safetensors file",
        description="Read an official checkpoint of MODEL (AgeFlow/AcGAN state dicts, CUSP network-snapshot "
        "pickles read without running their code, DiffAE .ckpt) and write a pyagingrt .safetensors file, which "
        "loads without executing any code.",
    )
    p.add_argument("checkpoint", help="the official checkpoint file")
    p.add_argument("-o", "--output", required=True, help="the .safetensors file to write")
    p.add_argument("--model", required=True, help="ageflow, acgan, cusp or pada")
    p.add_argument("--config", default=None, help="config name when the file does not determine it (default: auto)")
    p.add_argument("--dex", default=None, help="CUSP: DEX VGG-16 weights when the snapshot has none")
    p.add_argument("--clip", default=None, help="PADA: CLIP directory (Hugging Face layout)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import pyagingrt
    from pyagingrt.errors import InputError

    if not args.output.endswith(".safetensors"):
        raise InputError(f"the output must be a .safetensors file, got {args.output}")
    extra = {k: v for k, v in (("dex", args.dex), ("clip", args.clip)) if v is not None}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pyagingrt.RandomWeightsWarning)
        engine = pyagingrt.load(args.model, checkpoint=args.checkpoint, config=args.config, device="cpu", **extra)
    path = engine.save(args.output)
    print(f"wrote {path} ({engine.num_parameters():,} parameters, {engine.model}, config {engine.config_name})")
    return 0
