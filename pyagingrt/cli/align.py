"""``agingrt align RAW_DIR OUT_DIR --model M``: raw photos -> the aligned crops model M trains and runs on."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "align",
        help="turn raw photos into the aligned face crops a model expects (for training)",
        description="Detect the largest face of every photo under RAW_DIR (recursive) and cut it out exactly as "
        "inference does for model M (same detector, same alignment, same size), writing OUT_DIR/<same "
        "relative path>.png, so file-name ages (UTKFace, MORPH, CACD) survive. Photos without a face or "
        "unreadable are listed in OUT_DIR/skipped.csv. A RAW_DIR/labels.csv (path,age[,gender]) is rewritten to "
        "OUT_DIR/labels.csv for the crops. Run it again to resume: finished and listed photos "
        "are not redone. Example: agingrt align raw/ aligned/ --model acgan",
    )
    p.add_argument("raw_dir", type=Path, metavar="RAW_DIR", help="folder of photos (searched recursively)")
    p.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="folder for the crops (created if needed)")
    p.add_argument("--model", required=True, help="ageflow, acgan, cusp or pada: whose crop to make (required)")
    p.add_argument(
        "--config",
        help="model config whose crop size and alignment to use, e.g. paper or tiny (default: the model's first, "
        "its paper size)",
    )
    p.add_argument("--size", type=int, help="crop side in pixels (default: the model config's input size)")
    p.add_argument("--format", default="png", choices=("png", "jpg"), help="crop file type (default: png, lossless)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..errors import InputError
    from ..pipeline.crops import SKIPPED_FILE, align_folder, model_crop_spec

    alignment, size = model_crop_spec(args.model, args.config)
    if args.size is not None:
        if not 16 <= args.size <= 4096:
            raise InputError(f"--size must lie in 16..4096, got {args.size}")
        size = args.size
    result = align_folder(
        args.raw_dir,
        args.out_dir,
        alignment,
        size,
        suffix=f".{args.format}",
        progress=lambda items: tqdm(items, unit="photo", disable=args.quiet, dynamic_ncols=True),
    )
    print(
        f"{len(result.written)} crops of {size}x{size} ({alignment.kind} alignment) written to {args.out_dir}; "
        f"{result.already} done before"
    )
    if result.labels is not None:
        print(f"labels of the crops -> {result.labels}")
    if result.skipped:
        print(f"{len(result.skipped)} photos skipped (listed in {args.out_dir / SKIPPED_FILE}):", file=sys.stderr)
        for name, reason in list(result.skipped.items())[:20]:
            print(f"  {name}: {reason}", file=sys.stderr)
        if len(result.skipped) > 20:
            print(f"  ... and {len(result.skipped) - 20} more", file=sys.stderr)
    return 0
