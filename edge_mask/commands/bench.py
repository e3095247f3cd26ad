"""`edge-mask bench SOURCE`: per-stage latency and frames/s of the masker on a video or photo."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from edge_mask.config import EdgeConfig, load_config


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="measure decode/detect/track/mask latency and frames/s on a video or photo",
        description="Feed SOURCE (a video, looped, or a photo, repeated) through the real masker and print "
        "p50/p99 per stage and overall frames/s, with the project's speed targets.",
    )
    parser.add_argument("source", metavar="SOURCE", help="video file or photo, or `compare` (deface vs edge-mask)")
    parser.add_argument("clip", nargs="?", metavar="CLIP",
                        help="with `compare`: the clip (default: the shared Hamilton clip)")
    parser.add_argument("--config", type=Path, help="config.toml to take detector/tracker/mask settings from")
    parser.add_argument("--width", type=int, metavar="W", help="resize frames to this width (with --height)")
    parser.add_argument("--height", type=int, metavar="H", help="resize frames to this height (with --width)")
    parser.add_argument("--frames", type=int, default=300, metavar="N", help="timed frames (default 300)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--live", action="store_true",
                        help="play SOURCE as a 30 fps camera through the whole service to a local mosquitto and "
                        "report capture->broker-ack latency p50/p99 and CPU use")
    parser.add_argument("--seconds", type=float, default=20.0, metavar="S", help="--live: measured seconds")
    from edge_mask.commands.eval import add_compare_arguments

    add_compare_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from edge_mask.bench import run_bench
    from edge_mask.engine import build_masker
    from edge_mask.errors import UserError

    if args.source == "compare":
        from edge_mask.commands.eval import bench_compare

        return bench_compare(args)
    if args.clip is not None:
        raise UserError(f"unexpected CLIP {args.clip!r}: only `edge-mask bench compare CLIP` takes a second argument")
    if args.live:
        from edge_mask.bench_live import live_command

        return live_command(args)
    if (args.width is None) != (args.height is None):
        raise UserError("--width and --height go together; pass both (e.g. --width 640 --height 480) or neither")
    if args.frames <= 0:
        raise UserError(f"--frames {args.frames}: pass a positive number of frames")
    size = (args.width, args.height) if args.width is not None else None
    cfg = load_config(args.config) if args.config is not None else EdgeConfig(device_id="bench")
    masker = build_masker(cfg)
    try:
        result = run_bench(args.source, masker, frames=args.frames, size=size)
    finally:
        masker.close()
    result.extra["detector"] = cfg.detector.model_dump(mode="json")
    if args.json:
        print(json.dumps(result.as_dict()))
    else:
        print("\n".join(result.lines()))
    return 0
