"""The `edge-mask` command line.

Each sub-command lives in `edge_mask/commands/<name>.py` and exposes `register(subparsers)`, which adds
its parser and sets `func` to a callable taking the parsed args and returning an exit code. This module
only dispatches, configures logging and turns `UserError` into one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from edge_mask import __version__
from edge_mask.core.errors import UserError

log = logging.getLogger("edge_mask")

# Sub-command modules, in the order `--help` lists them.
COMMANDS: tuple[str, ...] = (
    "mask", "bench", "models", "receive", "signals", "run", "doctor", "eval", "provision", "demo",
)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole parser, or with `only` the parser of that one sub-command (see `_command_in`)."""
    parser = argparse.ArgumentParser(
        prog="edge-mask",
        description="Mask every face on-device, seal the frames to the clinic cloud and upload them.",
    )
    parser.add_argument("--version", action="version", version=f"edge-mask {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        if only is None or name == only:
            importlib.import_module(f"edge_mask.commands.{name}").register(sub)
    return parser


def _command_in(argv: Sequence[str]) -> str | None:
    """The sub-command `argv` runs, when it names one before anything else but the global flags.

    Why: every sub-command module is imported to build the full parser (about 40 ms of a start), and a
    run needs only its own. `--help`, `--version`, no command or an unknown one get the full parser, so
    listings and error messages are unchanged.
    """
    for arg in argv:
        if arg in ("-q", "--quiet", "--verbose") or (arg.startswith("-v") and set(arg[1:]) == {"v"}):
            continue
        return arg if arg in COMMANDS else None
    return None


def setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; `argv` None means the process's own arguments (the `edge-mask` entry point)."""
    process_entry = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(_command_in(argv))
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    setup_logging(args.verbose, args.quiet)
    try:
        code = int(args.func(args) or 0)
    except UserError as exc:
        for line in exc.message.splitlines() or [""]:
            print(f"edge-mask: error: {line}", file=sys.stderr)
        code = exc.exit_code
    except KeyboardInterrupt:
        print("edge-mask: interrupted", file=sys.stderr)
        return 130
    if process_entry and getattr(args, "exit_fast", False):
        exit_now(code)
    return code


def exit_now(code: int) -> NoReturn:
    """End the process without the interpreter's teardown, for commands that set `exit_fast`.

    Why: after `edge-mask mask` has written, committed and closed every output and joined its threads, the
    interpreter would still spend about 0.1 s (5% of a short clip's run) freeing every module and object one
    by one, work the operating system does at once. Only a command that has nothing left to finish may ask
    for it (no open files, no non-daemon threads, no atexit work); in-process callers of `main(argv)` never
    get it. Log handlers and the standard streams are flushed first.
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing more can reach it anyway
            pass
    os._exit(code)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
