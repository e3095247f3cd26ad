"""Face-by-face agreement of two detectors' results: the one rule the build-time gate and the device share.

Why here and not in tools/: the int8 model is judged twice, once when it is built (`tools/parity.py`, on
held-aside images) and again on the device's own kernels and live frames (`shadow.py`). Both must count a
face the same way, or a model could pass one and fail the other for bookkeeping reasons.

Why a margin: quantization moves a face's score by up to about 0.1 (99th percentile over faces both
models find), and a hard cut at the threshold counts faces both models see as disagreements, a count that
changes with the CPU's kernels.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from edge_mask.core.boxes import iou_matrix
from edge_mask.core.types import Detections

log = logging.getLogger(__name__)

REQUIRED_AGREEMENT = 0.99
"""Share of one model's faces the other must find, in both directions."""
PARITY_MARGIN = 0.1
"""A face scored >= threshold by one model counts as found by the other if it scores >= threshold - margin."""
MARGIN_SHARE = 0.4
"""Below 0.25 the margin shrinks with the threshold (at most this share of it), so it never reaches 0."""
PARITY_IOU = 0.5
"""Two boxes are the same face at IoU >= this."""


def margin_at(threshold: float, margin: float = PARITY_MARGIN) -> float:
    """The score margin used at `threshold`: `margin`, or less for thresholds under 0.25."""
    return min(margin, MARGIN_SHARE * threshold)


def found_count(a: Detections, b: Detections, threshold: float, floor: float, iou: float) -> tuple[int, int]:
    """(faces of `a` scoring >= threshold, how many of them `b` has at IoU >= iou with score >= floor)."""
    mine = a.boxes[a.scores >= threshold]
    theirs = b.boxes[b.scores >= floor]
    if len(mine) == 0 or len(theirs) == 0:
        return len(mine), 0
    return len(mine), int((iou_matrix(mine, theirs).max(axis=1) >= iou).sum())


def frame_agreement(
    ref: Detections, cand: Detections, threshold: float, margin: float, iou: float = PARITY_IOU
) -> tuple[int, int, int, int]:
    """(fp32 faces, of them found by int8, int8 faces, of them confirmed by fp32) on one frame."""
    n_ref, hit_ref = found_count(ref, cand, threshold, threshold - margin, iou)
    n_cand, hit_cand = found_count(cand, ref, threshold, threshold - margin, iou)
    return n_ref, hit_ref, n_cand, hit_cand


def agreement(
    ref: Sequence[Detections], cand: Sequence[Detections], threshold: float, margin: float, iou: float
) -> tuple[int, int, int, int]:
    """(fp32 faces, of them found by int8, int8 faces, of them found by fp32) over paired results."""
    n_ref = hit_ref = n_cand = hit_cand = 0
    for a, b in zip(ref, cand, strict=True):
        n, hit, m, confirmed = frame_agreement(a, b, threshold, margin, iou)
        n_ref, hit_ref, n_cand, hit_cand = n_ref + n, hit_ref + hit, n_cand + m, hit_cand + confirmed
    return n_ref, hit_ref, n_cand, hit_cand


def matched(ref: Sequence[Detections], cand: Sequence[Detections], threshold: float, iou: float) -> tuple[
        list[float], list[float]]:
    """IoUs and absolute score shifts of fp32 faces (>= threshold) and their best int8 match."""
    ious: list[float] = []
    shifts: list[float] = []
    for a, b in zip(ref, cand, strict=True):
        keep = a.scores >= threshold
        if not keep.any() or len(b) == 0:
            continue
        matrix = iou_matrix(a.boxes[keep], b.boxes)
        best, which = matrix.max(axis=1), matrix.argmax(axis=1)
        ok = best >= iou
        ious.extend(best[ok].tolist())
        shifts.extend(np.abs(b.scores[which] - a.scores[keep])[ok].tolist())
    return ious, shifts


def share(hits: int, total: int) -> float:
    """hits / total, or 1.0 when there was nothing to find (no face cannot disagree)."""
    return hits / total if total else 1.0
