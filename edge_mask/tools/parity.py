"""Parity of an int8 model with its fp32 source, face by face, on held-aside images.

The rule that counts a face as found (IoU >= 0.5, the score margin) lives in `edge_mask.detect` (module
`agreement.py`), because the device applies the same rule again on its own kernels and live frames (its
parity watch); this module runs the build-time gate with it. See tools/quantize.py for the gate and
models/README.md for the figures.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_mask.core.types import Detections, Image
from edge_mask.detect import (
    MARGIN_SHARE,
    PARITY_MARGIN,
    REQUIRED_AGREEMENT,
    OnnxYuNet,
    agreement,
    margin_at,
    matched,
    open_session,
)

__all__ = [
    "GATE_THRESHOLDS",
    "MARGIN_SHARE",
    "PARITY_MARGIN",
    "REQUIRED_AGREEMENT",
    "Parity",
    "agreement",
    "check_parity",
    "margin_at",
    "matched",
]

GATE_THRESHOLDS = (0.25, 0.5)
"""The product's detection threshold (config default, the headline figure) and YuNet's usual one. The
tracker's weak path (detections from `detector.weak_threshold`, 0.1, masked only where they continue a held
face; from `tracker.refresh_score`, 0.2, they restart its hold) is not gated here. Measured on the same
held-aside set (2026-11-30, x86 AVX-512 VNNI): at 0.2 int8 finds 270/270 of fp32's faces and fp32 confirms
275/277 of int8's (passes); at 0.1, 379/382 and 388/394: the safe direction (int8 finds what fp32 finds)
holds at 99.2%, the other misses 99% by 6 low-score blobs int8 reports, which could only add masking. Its
safety is measured where it matters, by the leak judge with int8 forced (tests/test_leaks.py)."""


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
