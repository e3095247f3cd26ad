"""Scene cuts, so that the tracker ends the held faces of the old shot.

Why: edited footage (the press clip has three cuts) jumps to another shot where the held boxes of the old
one cover nothing but picture, for a whole hold. A cut is a frame whose 32x18 grey thumbnail differs from
the previous frame's by more than `threshold` (mean absolute difference, 0..1). On the shared clips the
three cuts of the press clip measure 0.10-0.12, the largest other change 0.05 (a camera pan), and the ASL
clips, with hands moving in front of the face, at most 0.025; the default threshold is 0.08.

A cut is `HARD` when the picture's structure changed too: the two thumbnails, each less its mean, correlate
less than `SAME_PICTURE`. A light switched on or an exposure jump changes brightness and contrast but keeps
the correlation near 1; the press clip's cuts correlate 0.01-0.26, its other frames 0.57 or more (0.72 or
more where the difference passes 0.04). A thumbnail with almost no contrast (`FLAT`: a black or white frame,
a lens cap) has no structure to compare, so a jump from or to one is a `SOFT` cut. The camera moving by a
tenth of the frame at once (knocked, a whip pan) or a zoom step also reads as hard: there the old masks,
left where the faces were, would not cover the moved faces either.

The tracker ends the masks of the old shot's held faces at once after a hard cut and `CUT_GRACE_S` (0.1 s)
after a soft one. A face the detector still finds where it was, even weakly, continues its track and stays
masked, so a cut found in error costs nothing for a face the detector keeps finding; a face it misses on the
frames right after a false hard cut loses its old mask (the grace only protects brightness jumps). A missed
cut only keeps masks a little longer.
"""

from __future__ import annotations

from enum import IntEnum

import cv2
import numpy as np
import numpy.typing as npt

from edge_mask.core.types import Image

THUMB = (32, 18)
SAME_PICTURE = 0.5
"""Below this correlation of the two thumbnails (each less its mean) a cut is hard: another picture."""
FLAT = 0.02
"""A thumbnail whose grey levels vary less than this (standard deviation, 0..1) has no structure to compare."""


class Cut(IntEnum):
    """What changed between a frame and the one before it (false for `NONE`, so `if cut:` reads well)."""

    NONE = 0
    SOFT = 1
    """The picture jumped but may be the same scene (brightness, exposure, a black frame)."""
    HARD = 2
    """Another picture: the structure changed too."""


class CutDetector:
    """Compares each frame with the one before it; `__call__` says whether this frame starts a new shot."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self._previous: npt.NDArray[np.float32] | None = None

    def __call__(self, image: Image) -> Cut:
        if self.threshold <= 0:
            return Cut.NONE
        # Every n-th pixel, keeping at least 4 per thumbnail pixel each way, is plenty for a 32x18 thumbnail and
        # keeps this off the frame budget (0.13 ms at 640x480, not 0.6); fewer would make noise look like a cut.
        step = max(1, min(image.shape[1] // (4 * THUMB[0]), image.shape[0] // (4 * THUMB[1])))
        sampled = cv2.resize(image, (image.shape[1] // step, image.shape[0] // step), interpolation=cv2.INTER_NEAREST)
        small = cv2.resize(sampled, THUMB, interpolation=cv2.INTER_AREA)
        thumb = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY).astype(np.float32) / 255.0
        previous, self._previous = self._previous, thumb
        if previous is None or float(np.abs(thumb - previous).mean()) <= self.threshold:
            return Cut.NONE
        return Cut.HARD if _correlation(thumb, previous) < SAME_PICTURE else Cut.SOFT

    def reset(self) -> None:
        self._previous = None


def _correlation(a: npt.NDArray[np.float32], b: npt.NDArray[np.float32]) -> float:
    """Pearson correlation of two thumbnails; 1.0 (the same picture, as far as anyone can tell) when either is
    `FLAT`."""
    da, db = a - a.mean(), b - b.mean()
    sa, sb = float(np.sqrt((da * da).mean())), float(np.sqrt((db * db).mean()))
    if sa < FLAT or sb < FLAT:
        return 1.0
    return float((da * db).mean()) / (sa * sb)
