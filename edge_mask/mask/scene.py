"""Hard scene cuts, so that the tracker ends the held faces of the old shot.

Why: edited footage (the press clip has three cuts) jumps to another shot where the held boxes of the old
one cover nothing but picture, for a whole hold. A cut is a frame whose 32x18 grey thumbnail differs from
the previous frame's by more than `threshold` (mean absolute difference, 0..1). On the shared clips the
three cuts of the press clip measure 0.10-0.12, the largest other change 0.05 (a camera pan), and the ASL
clips, with hands moving in front of the face, at most 0.025; the default threshold is 0.08.

A missed cut only keeps masks a little longer. A false cut shortens the old shot's holds to the tracker's
`CUT_GRACE_S` (0.1 s), but a face the detector still sees where it was, even weakly, continues its track
and stays masked.
"""

from __future__ import annotations

import cv2
import numpy as np
import numpy.typing as npt

from edge_mask.core.types import Image

THUMB = (32, 18)


class CutDetector:
    """Compares each frame with the one before it; `__call__` says whether this frame starts a new shot."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self._previous: npt.NDArray[np.float32] | None = None

    def __call__(self, image: Image) -> bool:
        if self.threshold <= 0:
            return False
        # Every n-th pixel, keeping at least 4 per thumbnail pixel each way, is plenty for a 32x18 thumbnail and
        # keeps this off the frame budget (0.13 ms at 640x480, not 0.6); fewer would make noise look like a cut.
        step = max(1, min(image.shape[1] // (4 * THUMB[0]), image.shape[0] // (4 * THUMB[1])))
        sampled = cv2.resize(image, (image.shape[1] // step, image.shape[0] // step), interpolation=cv2.INTER_NEAREST)
        small = cv2.resize(sampled, THUMB, interpolation=cv2.INTER_AREA)
        thumb = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY).astype(np.float32) / 255.0
        previous, self._previous = self._previous, thumb
        if previous is None:
            return False
        return float(np.abs(thumb - previous).mean()) > self.threshold

    def reset(self) -> None:
        self._previous = None
