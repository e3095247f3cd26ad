"""The `clinical` mask style: the head masked solid, and on it one schematic face, the same for everyone,
moved only by the face's standard-tier signals (issue 13). A region with no reading this frame (a face held
from earlier frames, a hand the detector took for a face, signals off) stays plain solid: the template
means "a face, read".

Why a template and not a reconstruction: no shape of the person is drawn. The outline, eyes, irises and
mouth sit at fixed places of the head shape; the signals (relative openness, relative gaze, pose relative
to the session's start, mouth opening) only open and close the lids, move the irises, shift the features
as the head turns and open the mouth. A reviewer sees that the patient blinks, looks left or turns; nobody
sees who it is. A reading with gated values (head turned, an eye occluded) draws those parts at rest: eyes
open, looking ahead.

Every pixel of the head region is replaced first (the solid fill), then the template is drawn inside it.
"""

from __future__ import annotations

import logging
import math

import cv2
import numpy as np

from edge_mask.config import MaskConfig
from edge_mask.core.types import FaceSignals, Image
from edge_mask.mask.geometry import HeadShape, draw

log = logging.getLogger(__name__)

SKIN = (176, 176, 176)
"""The template's face: a neutral grey, the same for everyone."""
INK = (40, 40, 40)
WHITE = (235, 235, 235)
EYE_AT = (0.36, -0.12)
"""Eye centres across and down the head shape, as shares of its semi-axes (mirrored for the other eye)."""
EYE_SIZE = (0.2, 0.11)
MOUTH_AT = 0.42
MAX_SHIFT = 0.25
"""How far the features move for a turn of 90 degrees (share of the semi-axis)."""


class ClinicalTemplate:
    """Solid head plus the schematic face (see module docstring)."""

    def __init__(self, cfg: MaskConfig, color: tuple[int, int, int]) -> None:
        self.cfg = cfg
        self.color = color
        """The head's fill (`mask.color` as BGR), around the template."""

    def paint(self, image: Image, head: HeadShape, face_w: float, signals: FaceSignals | None = None) -> None:
        draw(image, head, self.cfg.shape, self.color, 0, 0)
        if signals is None:
            return
        try:  # the head is already replaced: a drawing error costs the template, never the frame
            self._draw(image, head, signals)
        except (ValueError, OverflowError, cv2.error):
            log.warning("clinical style: the template could not be drawn from %s; plain solid", signals)

    def _draw(self, image: Image, head: HeadShape, signals: FaceSignals) -> None:
        inner = HeadShape(head.cx, head.cy, head.a * 0.86, head.b * 0.9, head.angle)
        draw(image, inner, "ellipse", SKIN, 0, 0)
        theta = math.radians(head.angle)
        across, down = (math.cos(theta), math.sin(theta)), (-math.sin(theta), math.cos(theta))
        yaw, pitch = (_finite(signals.pose[0], 90), _finite(signals.pose[1], 90)) if signals.pose else (0.0, 0.0)
        shift_u = MAX_SHIFT * math.sin(math.radians(max(-90.0, min(90.0, yaw))))
        shift_v = MAX_SHIFT * math.sin(math.radians(max(-90.0, min(90.0, pitch))))

        def at(u: float, v: float) -> tuple[int, int]:
            x = head.cx + (u + shift_u) * inner.a * across[0] + (v + shift_v) * inner.b * down[0]
            y = head.cy + (u + shift_u) * inner.a * across[1] + (v + shift_v) * inner.b * down[1]
            return round(x), round(y)

        gaze = (_finite(signals.gaze[0], 1.0), _finite(signals.gaze[1], 1.0)) if signals.gaze else (0.0, 0.0)
        openness = signals.openness
        thick = max(1, round(inner.a * 0.03))
        for side, value in ((-1.0, openness[0]), (1.0, openness[1])):
            centre = at(side * EYE_AT[0], EYE_AT[1])
            axes = (max(1, round(EYE_SIZE[0] * inner.a)), round(EYE_SIZE[1] * inner.b * _open(value)))
            if axes[1] >= 1:
                cv2.ellipse(image, centre, axes, head.angle, 0, 360, WHITE, thickness=-1)
                iris = (centre[0] + round(gaze[0] * 2 * axes[0] * across[0] + gaze[1] * 2 * axes[1] * down[0]),
                        centre[1] + round(gaze[0] * 2 * axes[0] * across[1] + gaze[1] * 2 * axes[1] * down[1]))
                cv2.circle(image, iris, max(1, min(axes[1], round(0.45 * axes[0]))), INK, thickness=-1)
            cv2.ellipse(image, centre, (axes[0], max(1, axes[1])), head.angle, 0, 360, INK, thickness=thick)
        mouth = max(0.0, _finite(signals.mouth, 1.0)) if signals.mouth is not None else 0.0
        mouth_axes = (max(1, round(0.28 * inner.a)), max(1, round(min(mouth, 1.0) * 0.28 * inner.a)))
        cv2.ellipse(image, at(0.0, MOUTH_AT), mouth_axes, head.angle, 0, 360, INK, thickness=-1)


def _finite(value: float, limit: float) -> float:
    """`value` clamped to +-`limit`; 0 when it is not a finite number (a gated or broken reading)."""
    return max(-limit, min(limit, float(value))) if math.isfinite(value) else 0.0


def _open(value: float | None) -> float:
    """Relative openness as the drawn lid gap (1 at rest, 0 closed, a little wider when wide open)."""
    return 1.0 if value is None or not np.isfinite(value) else max(0.0, min(1.3, float(value)))
