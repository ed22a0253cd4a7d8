"""The ``agingrt`` command line. Each sub-command lives in its own module of pyagingrt/cli/ and exposes
``register(subparsers)``; heavy imports happen inside the command, so ``agingrt --help`` is fast.

Every user mistake surfaces as one line ``agingrt: error: ...`` and a non-zero exit; a traceback is shown
only with ``--debug``.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from collections.abc import Sequence

from .. import __version__
from ..errors import AgingError

# In the order `agingrt --help` lists them; a module that does not exist yet is skipped.
COMMANDS = ("age", "video", "bench", "info", "convert", "export", "serve", "train", "align", "label", "eval")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="agingrt",
        description="Fast inference for four face-aging models: AgeFlow, AcGAN, CUSP and PADA.",
        epilog="Run `agingrt COMMAND --help` for the options of one command.",
    )
    parser.add_argument("--version", action="version", version=f"pyagingrt {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors (default: off)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module_name = f"{__package__}.{name}"
        if importlib.util.find_spec(module_name) is not None:
            importlib.import_module(module_name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from .messages import cli_words
    from .signals import Terminated, exit_cleanly_on_signals

    try:
        with exit_cleanly_on_signals():  # SIGTERM/SIGHUP unwind like Ctrl-C: no half-written output stays
            return int(args.func(args) or 0)
    except AgingError as exc:
        if args.debug:
            raise
        print(f"agingrt: error: {cli_words(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("agingrt: interrupted", file=sys.stderr)
        return 130
    except Terminated as exc:
        print(f"agingrt: stopped by {exc.name}", file=sys.stderr)
        return 128 + exc.signum


if __name__ == "__main__":
    raise SystemExit(main())
