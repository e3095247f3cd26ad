"""Where the collateral comes from: mask geometry, faces the judge is unsure of, held faces, or false faces.

Why: "3% of the frame masked outside the faces" says how much picture is lost, not what to fix. Each
collateral pixel (masked, outside every head ellipse the judge needs) is charged to the painted region it
lies in, by the first that applies, in this order:

* `geometry`: the region holds the centre of a face the judge finds (> 0.5): the mask is larger than the
  judge's head ellipse or shaped differently, for a face that is there;
* `unsure`: the region holds the centre of a judge detection between the anchor's 0.2 and 0.5: most are
  real faces in poor light, at the frame edge or turned away, which the product must mask and the needed
  area does not count;
* `held`: a face held from earlier frames (not detected in this one): the tracker's share;
* `false`: a detection in this frame with no judge detection at all: a hand, fabric, or a face both judges
  miss;
* `failed`: the whole frame of a frame that failed closed (detector error, deadline, too many faces): the
  price of safety, charged apart so it is never taken for a held face.

Regions are the painted rectangles `MaskedFrame.regions`; the first `len(MaskedFrame.landmarks)` of them
are this frame's detections, the rest held faces (the masker's documented order). With the ellipse shape a
region stands for the ellipse inscribed in its rectangle (exact for an upright head, close for a turned
one), so a face's corner of rectangle does not take the pixels of a neighbour's mask. A pixel inside
several regions goes to the highest in the order above.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from edge_mask.tools.evaluation.metrics import BoolMask, as_boxes

SOURCES = ("geometry", "unsure", "held", "false", "failed")
"""Collateral sources, from the most to the least excusable."""
_RANK = {name: len(SOURCES) - i for i, name in enumerate(SOURCES)}


def collateral_sources(
    masked: BoolMask, needed: BoolMask, regions: Any, seen: int, judge_boxes: Any, judge_scores: Any,
    sure: float = 0.5, shape: str = "rect", failed: bool = False,
) -> dict[str, float]:
    """Shares of the frame that are collateral, per source (they add up to the collateral share, give or
    take pixels outside every region, which a masker that paints only its regions never has). `failed`:
    the frame failed closed, and all its collateral is charged to `failed`."""
    height, width = masked.shape
    if failed:
        share = float(np.count_nonzero(masked & ~needed)) / float(height * width)
        return {name: share if name == "failed" else 0.0 for name in SOURCES}
    label = np.zeros((height, width), np.uint8)  # by inscribed ellipse (or rectangle)
    fallback = np.zeros((height, width), np.uint8)  # by rectangle: where a turned ellipse passes its inscribed one
    boxes = as_boxes(judge_boxes)
    scores = np.asarray(judge_scores, np.float32).reshape(-1)
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2 if len(boxes) else np.zeros((0, 2), np.float32)
    for index, (x1, y1, x2, y2) in enumerate(as_boxes(regions)):
        inside = ((centres[:, 0] >= x1) & (centres[:, 0] <= x2) & (centres[:, 1] >= y1) & (centres[:, 1] <= y2))
        if np.any(inside & (scores > sure)):
            source = "geometry"
        elif np.any(inside):
            source = "unsure"
        else:
            source = "false" if index < seen else "held"
        top, bottom = max(0, int(y1)), min(height, int(np.ceil(y2)))
        left, right = max(0, int(x1)), min(width, int(np.ceil(x2)))
        if right <= left or bottom <= top:
            continue
        rect = fallback[top:bottom, left:right]
        np.maximum(rect, _RANK[source], out=rect)
        area = np.zeros((bottom - top, right - left), np.uint8)
        if shape == "ellipse":
            centre = (round((x1 + x2) / 2) - left, round((y1 + y2) / 2) - top)
            cv2.ellipse(area, centre, (int((x2 - x1) / 2), int((y2 - y1) / 2)), 0, 0, 360, 1, thickness=-1)
        else:
            area[...] = 1
        patch = label[top:bottom, left:right]
        np.maximum(patch, area * _RANK[source], out=patch)
    label = np.where(label > 0, label, fallback)
    collateral = masked & ~needed
    total = float(height * width)
    return {name: float(np.count_nonzero(collateral & (label == _RANK[name]))) / total for name in SOURCES}
