"""Parity of an int8 model with its fp32 source, face by face, on held-aside images.

Why a margin: quantization moves a face's score by up to about 0.1 (99th percentile over faces both
models find), and a hard cut at the threshold counts faces both models see as disagreements, a count that
changes with the CPU's kernels. See tools/quantize.py for the gate that uses this and models/README.md for
the figures.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_mask.core.boxes import iou_matrix
from edge_mask.core.types import Detections, Image
from edge_mask.detect import OnnxYuNet, open_session

REQUIRED_AGREEMENT = 0.99
PARITY_MARGIN = 0.1
"""A face scored >= threshold by one model counts as found by the other if it scores >= threshold - margin."""
MARGIN_SHARE = 0.4
"""Below 0.25 the margin shrinks with the threshold (at most this share of it), so it never reaches 0."""
GATE_THRESHOLDS = (0.25, 0.5)
"""The product's detection threshold (config default, the headline figure) and YuNet's usual one. The
tracker's weak path (detections from `weak_threshold`, 0.07, that extend a tracked face) is not gated here:
at 0.07 int8 and fp32 agree on 98.4% / 96.3% of detections even with a margin (low-score blobs change
their boxes, not only their scores), from 0.2 up they pass. Its safety is measured where it matters, by
the leak judge with int8 forced (tests/test_leaks.py)."""


def margin_at(threshold: float, margin: float = PARITY_MARGIN) -> float:
    """The score margin used at `threshold`: `margin`, or less for thresholds under 0.25."""
    return min(margin, MARGIN_SHARE * threshold)


@dataclass
class Parity:
    """How an int8 model agrees with fp32 on held-aside images at one threshold (same detection size).

    A face either model scores >= `threshold` counts as found by the other when the other scores a box at
    IoU >= `iou` with at least `threshold - margin`; the `strict_*` shares use no margin.
    """

    images: int
    fp32_faces: int
    int8_faces: int
    fp32_found_by_int8: int
    int8_found_by_fp32: int
    recall: float
    """Share of fp32 faces that int8 also finds at IoU >= `iou`."""
    precision: float
    """Share of int8 faces that fp32 also finds."""
    strict_recall: float
    strict_precision: float
    mean_iou: float
    score_shift_p99: float
    """99th percentile of |int8 score - fp32 score| over faces both find."""
    threshold: float
    margin: float
    iou: float
    required: float
    fp32_ms: float
    int8_ms: float
    passed: bool


def _run_all(detector: OnnxYuNet, images: Sequence[Image]) -> tuple[list[Detections], float]:
    detector.detect(images[0])  # warm-up, so the first allocation does not count in the timing
    start = time.perf_counter()
    found = [detector.detect(image) for image in images]
    return found, (time.perf_counter() - start) * 1e3 / max(len(images), 1)


def _found(a: Detections, b: Detections, threshold: float, floor: float, iou: float) -> tuple[int, int]:
    """(faces of `a` scoring >= threshold, how many of them `b` has at IoU >= iou with score >= floor)."""
    mine = a.boxes[a.scores >= threshold]
    theirs = b.boxes[b.scores >= floor]
    if len(mine) == 0 or len(theirs) == 0:
        return len(mine), 0
    return len(mine), int((iou_matrix(mine, theirs).max(axis=1) >= iou).sum())


def agreement(
    ref: Sequence[Detections], cand: Sequence[Detections], threshold: float, margin: float, iou: float
) -> tuple[int, int, int, int]:
    """(fp32 faces, of them found by int8, int8 faces, of them found by fp32) over paired results."""
    n_ref = hit_ref = n_cand = hit_cand = 0
    for a, b in zip(ref, cand, strict=True):
        n, hit = _found(a, b, threshold, threshold - margin, iou)
        n_ref, hit_ref = n_ref + n, hit_ref + hit
        n, hit = _found(b, a, threshold, threshold - margin, iou)
        n_cand, hit_cand = n_cand + n, hit_cand + hit
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


def check_parity(
    fp32: Path,
    int8: Path,
    images: Sequence[Image],
    thresholds: Sequence[float] = GATE_THRESHOLDS,
    margin: float = PARITY_MARGIN,
    iou: float = 0.5,
    detect_width: int = 640,
    threads: int = 2,
    required: float = REQUIRED_AGREEMENT,
) -> list[Parity]:
    """Compare two models face by face on `images` at each threshold; `passed` when both shares >= `required`."""
    floor = max(min(t - margin_at(t, margin) for t in thresholds), 0.01)
    results = []
    for path in (fp32, int8):
        detector = OnnxYuNet(open_session(path, threads), floor, 0.3, detect_width, 200)
        results.append(_run_all(detector, images))
    (ref, ref_ms), (cand, cand_ms) = results
    out: list[Parity] = []
    for threshold in thresholds:
        n_ref, hit_ref, n_cand, hit_cand = agreement(ref, cand, threshold, margin_at(threshold, margin), iou)
        s_ref, s_hit_ref, s_cand, s_hit_cand = agreement(ref, cand, threshold, 0.0, iou)
        ious, shifts = matched(ref, cand, threshold, iou)
        recall = hit_ref / n_ref if n_ref else 1.0
        precision = hit_cand / n_cand if n_cand else 1.0
        out.append(Parity(
            images=len(images), fp32_faces=n_ref, int8_faces=n_cand, fp32_found_by_int8=hit_ref,
            int8_found_by_fp32=hit_cand, recall=round(recall, 4), precision=round(precision, 4),
            strict_recall=round(s_hit_ref / s_ref if s_ref else 1.0, 4),
            strict_precision=round(s_hit_cand / s_cand if s_cand else 1.0, 4),
            mean_iou=round(float(np.mean(ious)) if ious else 0.0, 4),
            score_shift_p99=round(float(np.percentile(shifts, 99)) if shifts else 0.0, 4),
            threshold=threshold, margin=margin_at(threshold, margin), iou=iou, required=required,
            fp32_ms=round(ref_ms, 2), int8_ms=round(cand_ms, 2),
            passed=bool(n_ref > 0 and recall >= required and precision >= required),
        ))
    return out
