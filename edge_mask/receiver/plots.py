"""The clinician's view of one stream's signals at the cloud: eye openness, gaze and blink rate over time,
drawn from the stream's `signals.csv` into one PNG.

Why OpenCV and not a plotting library: the receiver already depends on it, and a cloud host needs nothing
more to draw three traces. One face per stream is drawn (the one with most readings: the patient in front of
the camera); rows repeated by a re-delivery count once.
"""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from edge_mask.core.errors import UserError

WIDTH, PANEL, MARGIN = 900, 160, 60
RATE_WINDOW_S = 60.0
COLORS = {"right": (200, 90, 30), "left": (40, 140, 230), "x": (60, 160, 60), "y": (150, 60, 170),
          "rate": (40, 40, 200), "blink": (0, 0, 0)}


def _number(value: str | None) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except ValueError:
        return None


def read_signals(path: Path) -> tuple[int, list[dict[str, float | None]]]:
    """(track id, its rows sorted by capture time, one per frame) of the face with the most readings."""
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as exc:
        raise UserError(f"{path}: cannot read the stream's signals ({exc.strerror}); pass a stream folder "
                        "the receiver wrote with clinical signals on") from None
    counts = Counter(row.get("track_id") for row in rows if row.get("track_id"))
    if not counts:
        raise UserError(f"{path}: no clinical signals in it; the device sends them with clinical.signals on")
    track = counts.most_common(1)[0][0]
    seen: dict[str, dict[str, float | None]] = {}
    for row in rows:
        if row.get("track_id") == track and row.get("seq"):
            seen[str(row["seq"])] = {key: _number(value) for key, value in row.items() if key != "track_id"}
    ordered = sorted(seen.values(), key=lambda r: (r.get("captured_at") or 0.0))
    return int(str(track)), ordered


def _panel(canvas: npt.NDArray[np.uint8], top: int, title: str, low: float, high: float) -> None:
    cv2.rectangle(canvas, (MARGIN, top), (WIDTH - 20, top + PANEL), (200, 200, 200), 1)
    cv2.putText(canvas, title, (MARGIN, top - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    for value in (low, high):
        y = top + PANEL if value == low else top
        cv2.putText(canvas, f"{value:g}", (8, y + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (80, 80, 80), 1, cv2.LINE_AA)


def _trace(canvas: npt.NDArray[np.uint8], top: int, times: list[float], values: list[float | None],
           low: float, high: float, span: float, color: tuple[int, int, int]) -> None:
    points: list[tuple[int, int]] = []
    for t, v in zip(times, values, strict=True):
        if v is None:  # gated: the trace breaks
            if len(points) > 1:
                cv2.polylines(canvas, [np.array(points, np.int32)], False, color, 1, cv2.LINE_AA)
            points = []
            continue
        x = MARGIN + round((WIDTH - 20 - MARGIN) * t / span)
        y = top + PANEL - round(PANEL * (min(max(v, low), high) - low) / (high - low))
        points.append((x, y))
    if len(points) > 1:
        cv2.polylines(canvas, [np.array(points, np.int32)], False, color, 1, cv2.LINE_AA)


def draw_signals(stream_dir: Path, output: Path | None = None) -> Path:
    """Draw `stream_dir/signals.csv` to `output` (default `stream_dir/signals.png`); returns the path."""
    track, rows = read_signals(stream_dir / "signals.csv")
    start = float(rows[0].get("captured_at") or 0.0)
    times = [float(r.get("captured_at") or start) - start for r in rows]
    span = max(times[-1], 1.0)
    blinks = [t - float(r["blink_began_s_ago"] or 0.0) for t, r in zip(times, rows, strict=True)
              if r.get("blink_duration_s") is not None]
    rate = [60.0 * sum(1 for b in blinks if t - RATE_WINDOW_S < b <= t) / min(max(t, 1.0), RATE_WINDOW_S)
            for t in times]
    canvas = np.full((3 * (PANEL + 40) + 40, WIDTH, 3), 255, np.uint8)
    tops = [40 + i * (PANEL + 40) for i in range(3)]
    _panel(canvas, tops[0], f"eye openness / own baseline (face {track}; right blue, left orange; blinks |)", 0.0, 1.5)
    _trace(canvas, tops[0], times, [r.get("openness_right") for r in rows], 0.0, 1.5, span, COLORS["right"])
    _trace(canvas, tops[0], times, [r.get("openness_left") for r in rows], 0.0, 1.5, span, COLORS["left"])
    for b in blinks:
        x = MARGIN + round((WIDTH - 20 - MARGIN) * max(b, 0.0) / span)
        cv2.line(canvas, (x, tops[0]), (x, tops[0] + PANEL), COLORS["blink"], 1)
    _panel(canvas, tops[1], "gaze vs session median, eye widths (x green, y purple)", -0.3, 0.3)
    _trace(canvas, tops[1], times, [r.get("gaze_x") for r in rows], -0.3, 0.3, span, COLORS["x"])
    _trace(canvas, tops[1], times, [r.get("gaze_y") for r in rows], -0.3, 0.3, span, COLORS["y"])
    _panel(canvas, tops[2], f"blink rate per minute ({len(blinks)} blinks in {span:.0f} s)", 0.0, 40.0)
    _trace(canvas, tops[2], times, list(rate), 0.0, 40.0, span, COLORS["rate"])
    output = output or stream_dir / "signals.png"
    if not cv2.imwrite(str(output), canvas):
        raise UserError(f"{output}: cannot write the plot there; pass -o with a writable .png path")
    return output
