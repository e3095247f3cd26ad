"""`edge-mask signals STREAM_DIR [-o PNG]`: draw a received stream's clinical signals (eye openness, gaze,
blink rate over time) from the `signals.csv` the receiver wrote, for the clinician reviewing it."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("signals", help="plot a received stream's clinical signals", description=__doc__)
    parser.add_argument("stream", type=Path, metavar="STREAM_DIR",
                        help="the receiver's folder of one stream (output_dir/DEVICE/STREAM)")
    parser.add_argument("-o", "--output", type=Path, help="PNG to write (default STREAM_DIR/signals.png)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from edge_mask.receiver import draw_signals

    print(draw_signals(args.stream, args.output))
    return 0
