"""The `edge-mask` command line.

Each sub-command lives in `edge_mask/commands/<name>.py` and exposes `register(subparsers)`, which adds
its parser and sets `func` to a callable taking the parsed args and returning an exit code. This module
only dispatches, configures logging and turns `UserError` into one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from edge_mask import __version__
from edge_mask.core.errors import UserError

log = logging.getLogger("edge_mask")

# Sub-command modules, in the order `--help` lists them.
COMMANDS: tuple[str, ...] = ("mask", "bench", "models", "receive", "run", "doctor", "eval", "provision", "demo")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-mask",
        description="Mask every face on-device, seal the frames to the clinic cloud and upload them.",
    )
    parser.add_argument("--version", action="version", version=f"edge-mask {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"edge_mask.commands.{name}").register(sub)
    return parser


def setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    setup_logging(args.verbose, args.quiet)
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        for line in exc.message.splitlines() or [""]:
            print(f"edge-mask: error: {line}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("edge-mask: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
