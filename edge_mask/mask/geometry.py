"""Mask geometry: the head region a face box stands for, as an ellipse (or rectangle) clipped to the frame.

Why the head and not the box: YuNet's box is tight around eyes, nose and mouth. Hair, ears, forehead and
jaw line identify a person too, and a detector box jitters by a few pixels from frame to frame. So each box
is padded by `padding` of its size on every side, extended further upward (forehead and hair) and a little
further down (chin), then drawn as an ellipse (or rectangle) clipped to the frame.
"""

from __future__ import annotations

import cv2
import numpy as np
import numpy.typing as npt

from edge_mask.core.types import FloatArray, Image

EXTRA_UP = 0.35
"""Extra upward extension (share of the face height) for forehead and hair, on top of `padding`."""
EXTRA_DOWN = 0.10
"""Extra downward extension (share of the face height) for the chin and jaw, on top of `padding`."""


def head_regions(faces: FloatArray, width: int, height: int, padding: float) -> FloatArray:
    """Grow face boxes (N, 4) into head regions (N, 4), clipped to the frame.

    Empty regions (a box entirely outside the frame) come back with zero width or height.
    """
    faces = np.asarray(faces, np.float32).reshape(-1, 4)
    w = faces[:, 2] - faces[:, 0]
    h = faces[:, 3] - faces[:, 1]
    out = np.stack(
        [
            faces[:, 0] - padding * w,
            faces[:, 1] - (padding + EXTRA_UP) * h,
            faces[:, 2] + padding * w,
            faces[:, 3] + (padding + EXTRA_DOWN) * h,
        ],
        axis=1,
    )
    limit = np.array([width, height, width, height], np.float32)
    clipped: FloatArray = np.clip(out, 0.0, limit).astype(np.float32)
    return clipped


def region_mask(
    faces: FloatArray, width: int, height: int, padding: float, shape: str = "ellipse"
) -> npt.NDArray[np.bool_]:
    """The boolean (H, W) mask that `Painter` fills for these face boxes; for tests and evaluation."""
    canvas = np.zeros((height, width), np.uint8)
    for box in np.asarray(faces, np.float32).reshape(-1, 4):
        draw(canvas, box, padding, shape, 1, 0, 0)
    return canvas.astype(bool)


def ellipse_params(box: FloatArray, padding: float) -> tuple[tuple[int, int], tuple[int, int]]:
    """Centre and semi-axes (rounded outward) of the head ellipse for one face box, unclipped."""
    x1, y1, x2, y2 = (float(v) for v in box)
    w, h = x2 - x1, y2 - y1
    left, right = x1 - padding * w, x2 + padding * w
    top, bottom = y1 - (padding + EXTRA_UP) * h, y2 + (padding + EXTRA_DOWN) * h
    centre = (round((left + right) / 2), round((top + bottom) / 2))
    axes = (int(np.ceil((right - left) / 2)) + 1, int(np.ceil((bottom - top) / 2)) + 1)
    return centre, axes


def draw(canvas: Image | npt.NDArray[np.uint8], box: FloatArray, padding: float, shape: str,
          value: int | tuple[int, ...], ox: int, oy: int) -> None:
    """Fill the head shape of `box` into `canvas`, whose top-left is frame pixel (ox, oy)."""
    centre, axes = ellipse_params(box, padding)
    centre = (centre[0] - ox, centre[1] - oy)
    if shape == "rect":
        cv2.rectangle(canvas, (centre[0] - axes[0], centre[1] - axes[1]), (centre[0] + axes[0], centre[1] + axes[1]),
                      value, thickness=-1)
    else:
        cv2.ellipse(canvas, centre, axes, 0, 0, 360, value, thickness=-1)


def bounds(box: FloatArray, padding: float, width: int, height: int) -> tuple[int, int, int, int]:
    """Integer pixel bounds (x1, y1, x2, y2) of the drawn head shape, clipped to the frame."""
    centre, axes = ellipse_params(box, padding)
    x1 = min(max(centre[0] - axes[0], 0), width)
    y1 = min(max(centre[1] - axes[1], 0), height)
    x2 = min(max(centre[0] + axes[0] + 1, 0), width)
    y2 = min(max(centre[1] + axes[1] + 1, 0), height)
    return x1, y1, x2, y2
