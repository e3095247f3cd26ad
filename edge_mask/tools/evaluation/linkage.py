"""Can the signals that leave the device link a person's recordings? (issue 13)

The attack: an observer at the cloud holds the signal streams of several recordings and wants to tell which
belong to the same person. Each clip is cut into a first and a second half; each half is summarised by its
signals (means and spreads of what the tier sends), and every first half is linked to the nearest second
half (Euclidean, features standardised over all halves). A tier that keeps identity out links no better than
chance (1 in the number of clips).

Standard tier features: relative openness (per eye, mean and spread), relative gaze (mean and spread), mouth
opening, spread of the relative pose, blink rate, from the stepped values that tier sends
(`clinical.standard_tier`). Ophthalmic adds absolute per-eye openness and its
left-right difference, which is why it is opt-in.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edge_mask.clinical import standard_tier
from edge_mask.config import EdgeConfig
from edge_mask.core.types import FaceSignals
from edge_mask.tools.evaluation.pipeline import MaskedClip, build_detector

log = logging.getLogger(__name__)

MARGIN = 0.10
"""Issue 13's bound: a tier may link halves at most this much more often than chance."""


def target(result: dict[str, Any]) -> float:
    """The highest share of linked halves the bound allows for one `link_halves` result."""
    return float(result["chance"]) + MARGIN


def within_target(result: dict[str, Any]) -> bool:
    return float(result["share"]) <= target(result) + 1e-9


def clip_signals(path: Path, cfg: EdgeConfig, detector: Any, max_frames: int | None = None) -> list[FaceSignals]:
    """The readings of the clip's main face (the track read most often), in frame order."""
    per_frame: list[tuple[FaceSignals, ...]] = [masked.signals for _, _, _, masked in
                                                MaskedClip(path, cfg, detector, max_frames) if masked is not None]
    counts = Counter(s.track_id for frame in per_frame for s in frame)
    if not counts:
        return []
    main = counts.most_common(1)[0][0]
    return [s for frame in per_frame for s in frame if s.track_id == main]


def _stats(values: Sequence[float | None]) -> list[float]:
    present = [v for v in values if v is not None]
    return [float(np.mean(present)), float(np.std(present))] if present else [0.0, 0.0]


def features(readings: Sequence[FaceSignals], tier: str) -> list[float]:
    """One half of a clip as numbers (see module docstring)."""
    out: list[float] = []
    for eye in (0, 1):
        out += _stats([r.openness[eye] for r in readings])
    for axis in (0, 1):
        out += _stats([r.gaze[axis] if r.gaze else None for r in readings])
    out += _stats([r.mouth for r in readings])
    for axis in (0, 1, 2):
        out.append(_stats([r.pose[axis] if r.pose else None for r in readings])[1])
    out.append(sum(r.blink_onset is not None for r in readings) / max(len(readings), 1))
    if tier == "ophthalmic":
        right = [r.absolute_openness[0] if r.absolute_openness else None for r in readings]
        left = [r.absolute_openness[1] if r.absolute_openness else None for r in readings]
        out += _stats(right) + _stats(left)
        both = [a - b for a, b in zip(right, left, strict=True) if a is not None and b is not None]
        out += _stats(both)
    return out


def link_halves(streams: dict[str, list[FaceSignals]], tier: str) -> dict[str, Any]:
    """Nearest-neighbour linkage of first halves to second halves; the share linked to their own clip."""
    names = [name for name, readings in streams.items() if len(readings) >= 10]
    if len(names) < 2:
        return {"clips": len(names), "linked": 0, "share": 0.0, "chance": 1.0}
    first = np.array([features(streams[n][: len(streams[n]) // 2], tier) for n in names])
    second = np.array([features(streams[n][len(streams[n]) // 2 :], tier) for n in names])
    both = np.vstack([first, second])
    scale = both.std(axis=0)
    scale[scale == 0] = 1.0
    first, second = (first - both.mean(axis=0)) / scale, (second - both.mean(axis=0)) / scale
    distances = np.linalg.norm(first[:, None, :] - second[None, :, :], axis=2)
    linked = int(np.sum(distances.argmin(axis=1) == np.arange(len(names))))
    return {"clips": len(names), "linked": linked, "share": linked / len(names), "chance": 1.0 / len(names),
            "pairs": {n: names[int(j)] for n, j in zip(names, distances.argmin(axis=1), strict=True)}}


def run_linkage(clips: Sequence[Path], cfg: EdgeConfig, tiers: Sequence[str] = ("standard", "ophthalmic"),
                max_frames: int | None = None) -> dict[str, Any]:
    """Both tiers' linkage over `clips` (the ophthalmic readings are a superset, so one pass reads both)."""
    ophthalmic = cfg.model_copy(update={"clinical": cfg.clinical.model_copy(update={"signals": "ophthalmic"})})
    detector = build_detector(ophthalmic)
    try:
        streams = {clip.name: clip_signals(clip, ophthalmic, detector, max_frames) for clip in clips}
    finally:
        detector.close()
    # the standard tier sends these readings stepped, without absolute openness, as its device would
    standard = {name: [standard_tier(r) for r in readings] for name, readings in streams.items()}
    report = {tier: link_halves(standard if tier == "standard" else streams, tier) for tier in tiers}
    for tier, result in report.items():
        log.info("linkage %s: %d of %d clips linked to themselves (chance %.0f%%)", tier, result["linked"],
                 result["clips"], 100 * result["chance"])
    return report
