"""The ``agingrt`` command line: one sub-command per module in pyagingrt/cli/.

Every user mistake surfaces as one line ``agingrt: error: ...`` and a non-zero exit; a traceback is shown
only with ``--debug``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .. import __version__
from ..errors import AgingError


def _cmd_info(args: argparse.Namespace) -> int:
    from .._extension import build_info

    info = build_info()
    print(f"pyagingrt {__version__}")
    if info is None:
        print("native extension: not built (pip install --no-build-isolation -e .)")
    else:
        print("native extension: " + ", ".join(f"{k}={v}" for k, v in info.items()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="agingrt",
        description="Fast inference for four face-aging models: AgeFlow, AcGAN, CUSP and PADA.",
    )
    parser.add_argument("--version", action="version", version=f"pyagingrt {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors (default: off)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    info = sub.add_parser("info", help="show the build and the models", description="Show the build and the models.")
    info.set_defaults(func=_cmd_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except AgingError as exc:
        if args.debug:
            raise
        print(f"agingrt: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("agingrt: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
