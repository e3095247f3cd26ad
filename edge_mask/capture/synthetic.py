"""A moving test pattern without faces, for smoke tests of the plumbing (never for masking quality)."""

from __future__ import annotations

import time

import numpy as np

from edge_mask.capture.base import CAMERAS, Camera
from edge_mask.config import SyntheticCameraConfig
from edge_mask.core.errors import CameraError
from edge_mask.core.types import Image


class SyntheticCamera:
    """Gradient background with a bright square that moves one step per frame."""

    def __init__(self, cfg: SyntheticCameraConfig) -> None:
        self.cfg = cfg
        self.name = "synthetic"
        self._count = 0
        self._open = False
        self._next_due = 0.0
        h, w = cfg.height, cfg.width
        ramp = np.linspace(0, 255, w, dtype=np.float32)[None, :].repeat(h, axis=0)
        self._background = np.stack([ramp, ramp[::-1, ::-1], np.full_like(ramp, 96.0)], axis=2).astype(np.uint8)

    def open(self) -> None:
        self._open, self._count, self._next_due = True, 0, time.monotonic()

    def read(self) -> Image | None:
        if not self._open:
            raise CameraError("synthetic camera is closed")
        if self.cfg.frames is not None and self._count >= self.cfg.frames:
            return None
        if self.cfg.realtime:
            now = time.monotonic()
            if self._next_due > now:
                time.sleep(self._next_due - now)
                now = self._next_due
            self._next_due = now + 1.0 / self.cfg.fps
        image = self._background.copy()
        h, w = image.shape[:2]
        side = max(4, min(h, w) // 6)
        x = (self._count * 7) % max(1, w - side)
        y = (self._count * 3) % max(1, h - side)
        image[y : y + side, x : x + side] = 255
        self._count += 1
        return image

    def close(self) -> None:
        self._open = False


@CAMERAS.register("synthetic")
def _synthetic_camera(cfg: SyntheticCameraConfig) -> Camera:
    return SyntheticCamera(cfg)
