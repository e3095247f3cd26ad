"""The `Camera` protocol and its `type`-keyed registry (backends register in their own modules)."""

from __future__ import annotations

from typing import Protocol

from edge_mask.config import CameraConfig
from edge_mask.core.registry import Registry
from edge_mask.core.types import Image


class Camera(Protocol):
    """A source of BGR images.

    `open()` acquires the device (raises CameraError when it cannot); `read()` blocks until the next
    image and returns it, returns None at the end of a finite source (a file without `loop`), and raises
    (CameraError or OSError) on a fault; `close()` releases the device and must be safe to call twice
    and from another thread (the stall detector calls it to unblock a stuck read).
    """

    name: str

    def open(self) -> None: ...

    def read(self) -> Image | None: ...

    def close(self) -> None: ...


CAMERAS: Registry[Camera] = Registry("camera")

def create_camera(cfg: CameraConfig) -> Camera:
    """Build the backend named by `cfg.type` without opening it."""
    return CAMERAS.create(cfg)


def open_camera(cfg: CameraConfig) -> Camera:
    """Build and open the configured camera; raises CameraError naming the device and the fix."""
    camera = create_camera(cfg)
    camera.open()
    return camera
