"""Painting masks and wrapping the result: the only place a `MaskedFrame` is made.

The geometry (which pixels a face box stands for) lives in `geometry.py`, the styles (what those pixels
become) in `styles.py`; `Painter` applies one `MaskConfig`'s style to every face of a frame.
"""

from __future__ import annotations

import logging

import numpy as np

from edge_mask.config import MaskConfig
from edge_mask.core.types import MASK_WITNESS, FaceSignals, FloatArray, Image, MaskedFrame, RawFrame
from edge_mask.mask.geometry import EXTRA_DOWN, EXTRA_UP, bounds, head_regions, region_mask, shapes_for
from edge_mask.mask.styles import STYLES, Noise, color_of

log = logging.getLogger(__name__)

__all__ = ["EXTRA_DOWN", "EXTRA_UP", "Painter", "head_regions", "mask_faces", "mask_whole_frame", "region_mask"]


class Painter:
    """Applies one `MaskConfig` to frames. Its style's noise comes from a generator of its own (`Noise`)."""

    def __init__(self, cfg: MaskConfig) -> None:
        self.cfg = cfg
        self.color = color_of(cfg.color)
        self._style = STYLES.create_named(cfg.style, cfg, Noise(cfg.noise))

    def paint(self, image: Image, faces: FloatArray, landmarks: FloatArray | None = None,
              signals: dict[int, FaceSignals] | None = None) -> FloatArray:
        """Mask the head of every face box (N, 4) in `image`, in place; `landmarks` (M, 5, 2) belong to the
        first M boxes (faces seen this frame) and turn their heads with the face (`geometry.head_shape`);
        `signals` maps a box's index to its clinical reading (drawn by the `clinical` style).
        Returns the painted head rectangles (x1, y1, x2, y2), clipped to the frame."""
        boxes = np.asarray(faces, np.float32).reshape(-1, 4)
        height, width = image.shape[:2]
        readings = signals or {}
        out = []
        for index, (box, head) in enumerate(zip(boxes, shapes_for(boxes, self.cfg.padding, landmarks), strict=True)):
            self._style.paint(image, head, float(box[2] - box[0]), readings.get(index))
            out.append(bounds(head, width, height))
        return np.array(out, np.float32).reshape(-1, 4)


def masked_frame(
    raw: RawFrame, image: Image, regions: FloatArray, landmarks: FloatArray, fail_closed: bool = False,
    signals: tuple[FaceSignals, ...] = (),
) -> MaskedFrame:
    """Wrap a masked image. The caller guarantees every face region of `raw` is painted in `image`."""
    return MaskedFrame(
        image=image,
        seq=raw.seq,
        captured_at=raw.captured_at,
        monotonic=raw.monotonic,
        faces=len(regions) if not fail_closed else 0,
        fail_closed=fail_closed,
        regions=np.asarray(regions, np.float32).reshape(-1, 4),
        landmarks=np.asarray(landmarks, np.float32).reshape(-1, 5, 2),
        witness=MASK_WITNESS,
        signals=signals,
    )


def mask_faces(raw: RawFrame, faces: FloatArray, landmarks: FloatArray, painter: Painter,
               signals: tuple[FaceSignals, ...] = (), signal_rows: tuple[int, ...] = (),
               in_place: bool = False) -> MaskedFrame:
    """Paint every face box's head region on a copy of the raw image (with `in_place`, on the raw image
    itself: its owner will not use the unmasked pixels again) and wrap it as a `MaskedFrame`; `signals` are
    the clinical readings of the boxes at `signal_rows`."""
    image = raw.image if in_place else raw.image.copy()
    regions = painter.paint(image, faces, landmarks, dict(zip(signal_rows, signals, strict=True)))
    return masked_frame(raw, image, regions, landmarks, signals=signals)


def mask_whole_frame(raw: RawFrame, color: tuple[int, ...] = (0, 0, 0)) -> MaskedFrame:
    """Fail-closed: every pixel replaced by the solid colour (never a style that keeps image content)."""
    image = np.empty_like(raw.image)
    image[...] = np.asarray(color_of(color), np.uint8)
    whole = np.array([[0, 0, raw.width, raw.height]], np.float32)
    return masked_frame(raw, image, whole, np.zeros((0, 5, 2), np.float32), fail_closed=True)
