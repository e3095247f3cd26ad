"""`edge-mask receive --config receiver.toml`: the cloud receiver.

Runs until interrupted (SIGINT/SIGTERM), `--duration` seconds, or `--max-frames` stored frames, then prints
a summary: received, stored, duplicates, rejected by reason and gaps per stream (`--json` for machines).

Each stored frame is confirmed to its device on `<prefix>/ack`; an MQTT message is acknowledged to the
broker only once its frame is stored (or rejected, or dropped). If frames cannot be written (disk full,
permissions) the receiver acknowledges nothing, reconnects with a back-off so the broker delivers them again,
and after `max_storage_failures` failures in a row exits with status 2 and one line saying what to fix.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "receive",
        help="receive, verify, decrypt and store sealed frames (cloud side)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", required=True, type=Path, help="receiver config (TOML)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--max-frames", type=int, default=None, metavar="N", help="stop after N stored frames")
    parser.add_argument("--duration", type=float, default=None, metavar="S", help="stop after S seconds")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from edge_mask.commands.interrupts import handle_signals
    from edge_mask.config import ReceiverConfig, load_config
    from edge_mask.core.errors import UserError
    from edge_mask.receiver import Receiver

    if args.max_frames is not None and args.max_frames <= 0:
        raise UserError("--max-frames must be a positive number of frames")
    if args.duration is not None and args.duration <= 0:
        raise UserError("--duration must be a positive number of seconds")
    cfg = load_config(args.config, ReceiverConfig)
    receiver = Receiver(cfg)
    stop = threading.Event()

    timer = threading.Timer(args.duration, stop.set) if args.duration else None
    if timer is not None:
        timer.daemon = True
        timer.start()
    try:
        with handle_signals({signal.SIGINT: stop.set, signal.SIGTERM: stop.set}):
            summary = receiver.run(stop, max_frames=args.max_frames)
    finally:
        if timer is not None:
            timer.cancel()
    if args.json:
        print(json.dumps(summary, indent=2, sort_keys=True))
    else:
        _print_human(summary)
    sys.stdout.flush()
    return 0


def _print_human(summary: dict[str, Any]) -> None:
    print(
        f"received {summary['received']}, stored {summary['stored']}, duplicates {summary['duplicates']}, "
        f"rejected {summary['rejected_total']}, missing {summary['gaps_total']}"
    )
    for reason, count in summary["rejected"].items():
        print(f"  rejected {reason}: {count}")
    for key in ("rate_limited", "incomplete_dropped", "storage_errors"):
        if summary.get(key):
            print(f"  {key.replace('_', ' ')}: {summary[key]}")
    for stream, missing in summary["gaps"].items():
        print(f"  stream {stream}: {missing} missing")
