"""`eval detect --gt DIR`: detector recall and mask coverage on annotated photos.

Two questions, kept apart because they fail differently:

* recall: does YuNet find each annotated face (one-to-one match at IoU >= 0.5 by default)? Annotation
  boxes (dlib's imglab) are tighter than YuNet's, so recall at IoU 0.5 can miss a face the mask still hides.
* coverage: what share of each annotated face box is hidden by the product's mask (the real masker, with
  padding, shape and tracker)? This is the privacy figure: target every face >= 90% covered.

False positives: masked regions that hide no annotated face (no box with half its area inside), as a
count and as a share of the image area. Coverage is measured with a solid magenta fill so that "pixel
changed or equals the fill" is exact.

Ground truth formats, any mix in DIR:
* dlib imglab XML (`<image file=...><box top= left= width= height= [ignore='1']/>`), e.g. faces-dlib/*.xml;
* JSON: `{"images": [{"file": "a.jpg", "boxes": [[left, top, width, height], ...]}]}` (paths relative to
  the JSON file).
"""

from __future__ import annotations

import json
import logging
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_mask.capture import read_image
from edge_mask.config import EdgeConfig
from edge_mask.core.errors import UserError
from edge_mask.core.types import FloatArray
from edge_mask.tools.evaluation.metrics import (
    box_coverage,
    false_positive_regions,
    masked_pixels,
    recall_at_iou,
    region_area_fraction,
)
from edge_mask.tools.evaluation.pipeline import (
    COVERAGE_COLOR,
    EVAL_DEADLINE_MS,
    build_detector,
    mask_still,
    with_detector,
    with_mask,
)

log = logging.getLogger(__name__)

DEFAULT_THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
COVERED = 0.9


@dataclass(frozen=True)
class Annotated:
    """One photo and its face boxes (x1, y1, x2, y2)."""

    path: Path
    boxes: FloatArray


def _xywh(rows: Sequence[Sequence[float]]) -> FloatArray:
    boxes = np.asarray(rows, np.float32).reshape(-1, 4)
    boxes[:, 2:] += boxes[:, :2]
    return boxes


def load_imglab(path: Path) -> list[Annotated]:
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise UserError(f"{path}: not valid imglab XML ({exc}); fix or remove the file") from None
    found = []
    for image in root.iter("image"):
        rows = [
            [float(box.get(k, "0")) for k in ("left", "top", "width", "height")]
            for box in image.iter("box")
            if box.get("ignore", "0") != "1"
        ]
        found.append(Annotated(path.parent / str(image.get("file")), _xywh(rows)))
    return found


def load_json(path: Path) -> list[Annotated]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return [Annotated(path.parent / item["file"], _xywh(item["boxes"])) for item in data["images"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(
            f"{path}: expected {{\"images\": [{{\"file\": ..., \"boxes\": [[left, top, width, height]]}}]}} ({exc})"
        ) from None


def load_ground_truth(directory: Path) -> list[Annotated]:
    """Every annotated image from the XML and JSON files in `directory` (sorted by file name)."""
    if not directory.is_dir():
        raise UserError(f"{directory}: ground-truth directory not found; pass --gt with a folder of .xml/.json")
    items: list[Annotated] = []
    for path in sorted(directory.iterdir()):
        if path.suffix.lower() == ".xml":
            items.extend(load_imglab(path))
        elif path.suffix.lower() == ".json":
            items.extend(load_json(path))
    if not items:
        raise UserError(f"{directory}: no imglab .xml or .json annotations found; add some or point --gt elsewhere")
    return sorted(items, key=lambda item: item.path.name)


def evaluate_threshold(
    items: Sequence[Annotated], cfg: EdgeConfig, threshold: float, iou: float, deadline_ms: float
) -> dict[str, Any]:
    """Recall, per-face coverage and false-positive area at one detector threshold."""
    cfg = with_mask(with_detector(cfg, threshold=threshold), style="solid", color=COVERAGE_COLOR)
    detector = build_detector(cfg)
    faces: list[dict[str, Any]] = []
    matched = total = fp_regions = fail_closed = 0
    fp_area = 0.0
    try:
        for number, item in enumerate(items):
            image = read_image(item.path)
            hit, count = recall_at_iou(item.boxes, detector.detect(image).boxes, iou)
            matched, total = matched + hit, total + count
            masked = mask_still(cfg, detector, image, number, deadline_ms)
            if masked is None:
                raise UserError("mask.on_failure = 'drop' dropped a photo; evaluate with on_failure = 'mask_frame'")
            fail_closed += int(masked.fail_closed)
            hidden = masked_pixels(image, masked.image, COVERAGE_COLOR)
            for box in item.boxes:
                faces.append({"file": item.path.name, "box": [round(float(v), 1) for v in box],
                              "coverage": round(box_coverage(box, hidden), 4)})
            false_flags = false_positive_regions(masked.regions, item.boxes)
            fp_regions += int(false_flags.sum())
            fp_area += region_area_fraction(masked.regions[false_flags], *image.shape[:2])
    finally:
        detector.release()
    coverage = np.array([face["coverage"] for face in faces], np.float64)
    return {
        "threshold": threshold,
        "faces": total,
        "recall": matched / total if total else 0.0,
        "matched": matched,
        "covered": int((coverage >= COVERED).sum()),
        "mean_coverage": float(coverage.mean()) if coverage.size else 0.0,
        "min_coverage": float(coverage.min()) if coverage.size else 0.0,
        "false_positive_regions": fp_regions,
        "false_positive_area": fp_area / max(len(items), 1),
        "fail_closed_images": fail_closed,
        "per_face": faces,
    }


def evaluate_detection(
    gt_dir: Path,
    cfg: EdgeConfig,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    iou: float = 0.5,
    deadline_ms: float = EVAL_DEADLINE_MS,
) -> dict[str, Any]:
    """All thresholds plus the configured one; the configured threshold's row is the headline."""
    items = load_ground_truth(gt_dir)
    default = float(cfg.detector.threshold)
    wanted = sorted({round(float(t), 3) for t in (*thresholds, default)})
    rows = [evaluate_threshold(items, cfg, t, iou, deadline_ms) for t in wanted]
    for row in rows:
        log.info("threshold %.2f: recall %.3f, %d/%d faces >= %.0f%% covered, %d false-positive regions",
                 row["threshold"], row["recall"], row["covered"], row["faces"], COVERED * 100,
                 row["false_positive_regions"])
    return {
        "gt": str(gt_dir),
        "images": len(items),
        "faces": int(sum(len(item.boxes) for item in items)),
        "iou": iou,
        "covered_at": COVERED,
        "default_threshold": default,
        "style": cfg.mask.style,
        "shape": cfg.mask.shape,
        "padding": cfg.mask.padding,
        "rows": rows,
    }
