"""Camera capture: one small `Camera` interface, one module per backend, and a resilient capture loop.

Why this split: a backend only knows how to open a device and block until its next image; everything
about surviving faults (unplugged cables, "frontend has timed out", silent stalls after hours) lives once
in `CaptureLoop` (edge_mask/capture/loop.py): retries with exponential backoff that never spin the CPU,
a stall detector that abandons a read stuck inside a driver, and a `health()` the service publishes.

Capture produces `RawFrame`s only and knows nothing of masking, sealing or the network (enforced by
tests/test_architecture.py). Backends do their heavy imports (picamera2) inside their factories.
"""

from __future__ import annotations

import importlib
from typing import Protocol

from edge_mask.config import CameraConfig
from edge_mask.registry import Registry
from edge_mask.types import Image


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

# Backend modules register themselves on import; they import no hardware library at module level.
for _module in ("opencv", "picamera2", "synthetic"):
    importlib.import_module(f"edge_mask.capture.{_module}")


def create_camera(cfg: CameraConfig) -> Camera:
    """Build the backend named by `cfg.type` without opening it."""
    return CAMERAS.create(cfg)


def open_camera(cfg: CameraConfig) -> Camera:
    """Build and open the configured camera; raises CameraError naming the device and the fix."""
    camera = create_camera(cfg)
    camera.open()
    return camera


from edge_mask.capture.loop import CaptureHealth, CaptureLoop  # noqa: E402  (needs Camera defined first)

__all__ = ["CAMERAS", "Camera", "CaptureHealth", "CaptureLoop", "create_camera", "open_camera"]
