"""Mask styles, each behind the `Style` protocol and registered by name in `STYLES` (the config's `mask.style`).

Why these styles: `solid` and `pixelate` cannot be undone. Pixelation averages the head into
`pixel_blocks` blocks across the face and adds random noise to every block, so neither super-resolution nor
averaging over frames recovers it. `blur` is opt-in and weaker: even a Gaussian blur of sigma 15 is still
matched by face recognition, so it blurs strongly and adds noise, and should only be used where a
reviewer needs to see a silhouette. `clinical` is solid with a schematic face drawn on it, moved only by
the face's clinical signals (`template.py`).

Every style replaces every pixel of the head region it paints (the leak judge relies on it: a region that
still holds original pixels is a face showing).
"""

from __future__ import annotations

import os
from typing import Protocol

import cv2
import numpy as np
import numpy.typing as npt

from edge_mask.config import MaskConfig
from edge_mask.core.registry import Registry
from edge_mask.core.types import FaceSignals, Image
from edge_mask.mask.geometry import HeadShape, bounds, draw


class Style(Protocol):
    """Paints one head shape into a frame, in place; `face_w` is the face box's width (block sizes) and
    `signals` the face's clinical reading when there is one (only the `clinical` style draws it)."""

    def paint(self, image: Image, head: HeadShape, face_w: float, signals: FaceSignals | None = None) -> None: ...


STYLES: Registry[Style] = Registry("mask.style")


def color_of(color: tuple[int, ...]) -> tuple[int, int, int]:
    """Config colours are BGR; a single value is grey, fewer than three repeat the last."""
    if not color:
        return (0, 0, 0)
    values = [int(c) for c in color[:3]]
    while len(values) < 3:
        values.append(values[-1])
    return (values[0], values[1], values[2])


class Noise:
    """Uniform integer noise of +-`amplitude`, from the painter's own random generator.

    Without `rng`, a generator seeded from the OS is made on first use: the solid style never draws noise,
    and importing numpy's random module cost 6 ms of every `edge-mask mask` start.
    """

    def __init__(self, amplitude: float, rng: np.random.Generator | None = None) -> None:
        self.amplitude = round(amplitude)
        self._rng = rng

    @property
    def rng(self) -> np.random.Generator:
        if self._rng is None:
            self._rng = np.random.default_rng(int.from_bytes(os.urandom(16), "little"))
        return self._rng

    def __call__(self, shape: tuple[int, ...]) -> npt.NDArray[np.int16]:
        if self.amplitude <= 0:
            return np.zeros(shape, np.int16)
        return self.rng.integers(-self.amplitude, self.amplitude + 1, size=shape, dtype=np.int16)


class Solid:
    """An opaque fill of the head shape in `mask.color`."""

    def __init__(self, cfg: MaskConfig) -> None:
        self.cfg = cfg
        self.color = color_of(cfg.color)

    def paint(self, image: Image, head: HeadShape, face_w: float, signals: FaceSignals | None = None) -> None:
        draw(image, head, self.cfg.shape, self.color, 0, 0)


class _Stenciled:
    """A style that computes a replacement for the head's bounding rectangle, pasted through the shape."""

    def __init__(self, cfg: MaskConfig) -> None:
        self.cfg = cfg

    def replace(self, roi: Image, face_w: float) -> Image:
        raise NotImplementedError

    def paint(self, image: Image, head: HeadShape, face_w: float, signals: FaceSignals | None = None) -> None:
        height, width = image.shape[:2]
        x1, y1, x2, y2 = bounds(head, width, height)
        if x2 <= x1 or y2 <= y1:
            return
        roi = image[y1:y2, x1:x2]
        styled = self.replace(roi, face_w)
        if self.cfg.shape == "rect":
            roi[...] = styled
            return
        stencil = np.zeros(roi.shape[:2], np.uint8)
        draw(stencil, head, self.cfg.shape, 255, x1, y1)
        np.copyto(roi, styled, where=stencil[..., None].astype(bool))


class Pixelate(_Stenciled):
    """Average into blocks `face_w / pixel_blocks` wide, add noise per block, and scale back up."""

    def __init__(self, cfg: MaskConfig, noise: Noise) -> None:
        super().__init__(cfg)
        self.noise = noise

    def replace(self, roi: Image, face_w: float) -> Image:
        block = max(2.0, face_w / self.cfg.pixel_blocks)
        h, w = roi.shape[:2]
        small_w, small_h = max(1, round(w / block)), max(1, round(h / block))
        small = cv2.resize(roi, (small_w, small_h), interpolation=cv2.INTER_AREA)
        noisy = np.clip(small.astype(np.int16) + self.noise(small.shape), 0, 255).astype(np.uint8)
        big: Image = cv2.resize(noisy, (w, h), interpolation=cv2.INTER_NEAREST)
        return big


class Blur(_Stenciled):
    """Strong Gaussian blur plus noise. Blurred on a 4x smaller copy: same look, 16x less work."""

    def __init__(self, cfg: MaskConfig, noise: Noise) -> None:
        super().__init__(cfg)
        self.noise = noise

    def replace(self, roi: Image, face_w: float) -> Image:
        h, w = roi.shape[:2]
        factor = 4
        small = cv2.resize(roi, (max(1, w // factor), max(1, h // factor)), interpolation=cv2.INTER_AREA)
        sigma = self.cfg.blur_sigma / factor
        blurred = cv2.GaussianBlur(small, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REPLICATE)
        big = cv2.resize(blurred, (w, h), interpolation=cv2.INTER_LINEAR)
        noisy: Image = np.clip(big.astype(np.int16) + self.noise(big.shape), 0, 255).astype(np.uint8)
        return noisy


@STYLES.register("solid")
def _solid(cfg: MaskConfig, noise: Noise) -> Style:
    return Solid(cfg)


@STYLES.register("pixelate")
def _pixelate(cfg: MaskConfig, noise: Noise) -> Style:
    return Pixelate(cfg, noise)


@STYLES.register("blur")
def _blur(cfg: MaskConfig, noise: Noise) -> Style:
    return Blur(cfg, noise)


@STYLES.register("clinical")
def _clinical(cfg: MaskConfig, noise: Noise) -> Style:
    from edge_mask.mask.template import ClinicalTemplate

    return ClinicalTemplate(cfg, color_of(cfg.color))
