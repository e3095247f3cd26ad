"""Mask geometry and styles; the only place a `MaskedFrame` is made.

Why the head and not the box: YuNet's box is tight around eyes, nose and mouth. Hair, ears, forehead and
jaw line identify a person too, and a detector box jitters by a few pixels from frame to frame. So each box
is padded by `padding` of its size on every side, extended further upward (forehead and hair) and a little
further down (chin), then drawn as an ellipse (or rectangle) clipped to the frame.

Why these styles: `solid` and `pixelate` cannot be undone. Pixelation averages the head into
`pixel_blocks` blocks across the face and adds random noise to every block, so neither super-resolution nor
averaging over frames recovers it. `blur` is opt-in and weaker: even a Gaussian blur of sigma 15 is still
matched by face recognition, so it blurs strongly and adds noise, and should only be used where a
reviewer needs to see a silhouette.
"""

from __future__ import annotations

import logging
import os

import cv2
import numpy as np
import numpy.typing as npt

from edge_mask.config import MaskConfig
from edge_mask.core.types import MASK_WITNESS, FloatArray, Image, MaskedFrame, RawFrame

log = logging.getLogger(__name__)

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
        _draw(canvas, box, padding, shape, 1, 0, 0)
    return canvas.astype(bool)


def _ellipse_params(box: FloatArray, padding: float) -> tuple[tuple[int, int], tuple[int, int]]:
    """Centre and semi-axes (rounded outward) of the head ellipse for one face box, unclipped."""
    x1, y1, x2, y2 = (float(v) for v in box)
    w, h = x2 - x1, y2 - y1
    left, right = x1 - padding * w, x2 + padding * w
    top, bottom = y1 - (padding + EXTRA_UP) * h, y2 + (padding + EXTRA_DOWN) * h
    centre = (round((left + right) / 2), round((top + bottom) / 2))
    axes = (int(np.ceil((right - left) / 2)) + 1, int(np.ceil((bottom - top) / 2)) + 1)
    return centre, axes


def _draw(canvas: Image | npt.NDArray[np.uint8], box: FloatArray, padding: float, shape: str,
          value: int | tuple[int, ...], ox: int, oy: int) -> None:
    """Fill the head shape of `box` into `canvas`, whose top-left is frame pixel (ox, oy)."""
    centre, axes = _ellipse_params(box, padding)
    centre = (centre[0] - ox, centre[1] - oy)
    if shape == "rect":
        cv2.rectangle(canvas, (centre[0] - axes[0], centre[1] - axes[1]), (centre[0] + axes[0], centre[1] + axes[1]),
                      value, thickness=-1)
    else:
        cv2.ellipse(canvas, centre, axes, 0, 0, 360, value, thickness=-1)


def _bounds(box: FloatArray, padding: float, width: int, height: int) -> tuple[int, int, int, int]:
    """Integer pixel bounds (x1, y1, x2, y2) of the drawn head shape, clipped to the frame."""
    centre, axes = _ellipse_params(box, padding)
    x1 = min(max(centre[0] - axes[0], 0), width)
    y1 = min(max(centre[1] - axes[1], 0), height)
    x2 = min(max(centre[0] + axes[0] + 1, 0), width)
    y2 = min(max(centre[1] + axes[1] + 1, 0), height)
    return x1, y1, x2, y2


class Painter:
    """Applies one `MaskConfig` to frames. Holds its own random generator for the noise."""

    def __init__(self, cfg: MaskConfig) -> None:
        self.cfg = cfg
        self.color = _color(cfg.color)
        self._rng = np.random.default_rng(int.from_bytes(os.urandom(16), "little"))

    def regions(self, faces: FloatArray, width: int, height: int) -> FloatArray:
        """The head rectangles (x1, y1, x2, y2) actually painted for these face boxes."""
        out = [_bounds(b, self.cfg.padding, width, height) for b in np.asarray(faces, np.float32).reshape(-1, 4)]
        return np.array(out, np.float32).reshape(-1, 4)

    def paint(self, image: Image, faces: FloatArray) -> None:
        """Mask the head of every face box (N, 4) in `image`, in place."""
        height, width = image.shape[:2]
        style, shape, padding = self.cfg.style, self.cfg.shape, self.cfg.padding
        for box in np.asarray(faces, np.float32).reshape(-1, 4):
            if style == "solid":
                _draw(image, box, padding, shape, self.color, 0, 0)
                continue
            x1, y1, x2, y2 = _bounds(box, padding, width, height)
            if x2 <= x1 or y2 <= y1:
                continue
            roi = image[y1:y2, x1:x2]
            face_w = float(box[2] - box[0])
            styled = self._pixelate(roi, face_w) if style == "pixelate" else self._blur(roi)
            if shape == "rect":
                roi[...] = styled
                continue
            stencil = np.zeros(roi.shape[:2], np.uint8)
            _draw(stencil, box, padding, shape, 255, x1, y1)
            np.copyto(roi, styled, where=stencil[..., None].astype(bool))

    def _noise(self, shape: tuple[int, ...]) -> npt.NDArray[np.int16]:
        amplitude = round(self.cfg.noise)
        if amplitude <= 0:
            return np.zeros(shape, np.int16)
        return self._rng.integers(-amplitude, amplitude + 1, size=shape, dtype=np.int16)

    def _pixelate(self, roi: Image, face_w: float) -> Image:
        """Average into blocks `face_w / pixel_blocks` wide, add noise per block, and scale back up."""
        block = max(2.0, face_w / self.cfg.pixel_blocks)
        h, w = roi.shape[:2]
        small_w, small_h = max(1, round(w / block)), max(1, round(h / block))
        small = cv2.resize(roi, (small_w, small_h), interpolation=cv2.INTER_AREA)
        noisy = np.clip(small.astype(np.int16) + self._noise(small.shape), 0, 255).astype(np.uint8)
        big: Image = cv2.resize(noisy, (w, h), interpolation=cv2.INTER_NEAREST)
        return big

    def _blur(self, roi: Image) -> Image:
        """Strong Gaussian blur plus noise. Blurred on a 4x smaller copy: same look, 16x less work."""
        h, w = roi.shape[:2]
        factor = 4
        small = cv2.resize(roi, (max(1, w // factor), max(1, h // factor)), interpolation=cv2.INTER_AREA)
        sigma = self.cfg.blur_sigma / factor
        blurred = cv2.GaussianBlur(small, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REPLICATE)
        big = cv2.resize(blurred, (w, h), interpolation=cv2.INTER_LINEAR)
        noisy: Image = np.clip(big.astype(np.int16) + self._noise(big.shape), 0, 255).astype(np.uint8)
        return noisy


def _color(color: tuple[int, ...]) -> tuple[int, int, int]:
    """Config colours are BGR; a single value is grey, fewer than three repeat the last."""
    if not color:
        return (0, 0, 0)
    values = [int(c) for c in color[:3]]
    while len(values) < 3:
        values.append(values[-1])
    return (values[0], values[1], values[2])


def masked_frame(
    raw: RawFrame, image: Image, regions: FloatArray, landmarks: FloatArray, fail_closed: bool = False
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
    )


def mask_faces(raw: RawFrame, faces: FloatArray, landmarks: FloatArray, painter: Painter) -> MaskedFrame:
    """Copy the raw image, paint every face box's head region, and wrap it as a `MaskedFrame`."""
    image = raw.image.copy()
    painter.paint(image, faces)
    return masked_frame(raw, image, painter.regions(faces, raw.width, raw.height), landmarks)


def mask_whole_frame(raw: RawFrame, color: tuple[int, ...] = (0, 0, 0)) -> MaskedFrame:
    """Fail-closed: every pixel replaced by the solid colour (never a style that keeps image content)."""
    image = np.empty_like(raw.image)
    image[...] = np.asarray(_color(color), np.uint8)
    whole = np.array([[0, 0, raw.width, raw.height]], np.float32)
    return masked_frame(raw, image, whole, np.zeros((0, 5, 2), np.float32), fail_closed=True)
