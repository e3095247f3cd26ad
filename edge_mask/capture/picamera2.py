"""Raspberry Pi CSI cameras through picamera2 (libcamera).

picamera2 is installed with apt (`python3-picamera2`), not pip, so it is imported only in the factory and
a missing module becomes a one-line CameraError with the fix. Format "RGB888" is, despite its name, BGR
byte order in the numpy array, which is what the rest of edge_mask expects.

Known field faults ("frontend has timed out", silent stalls after hours) surface either as an exception
from `capture_request()` or as a call that never returns; the capture loop handles both by closing the
camera and reopening it with backoff.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import numpy as np

from edge_mask.capture.base import CAMERAS, Camera
from edge_mask.config import Picamera2CameraConfig
from edge_mask.core.errors import CameraError
from edge_mask.core.types import Image

log = logging.getLogger(__name__)

INSTALL_HINT = (
    "camera.type = 'picamera2' needs the picamera2 library: run `sudo apt install python3-picamera2` and "
    "create the venv with `python3 -m venv --system-site-packages` so it can see the system package"
)


class Picamera2Camera:
    """One CSI camera; `picamera2_class` is `picamera2.Picamera2` (injected so tests can fake it)."""

    def __init__(self, cfg: Picamera2CameraConfig, picamera2_class: Any) -> None:
        self.cfg = cfg
        self.name = f"picamera2:{cfg.camera_num}"
        self._class = picamera2_class
        self._cam: Any = None
        self._lock = threading.Lock()

    def open(self) -> None:
        cfg = self.cfg
        try:
            cam = self._class(cfg.camera_num)
        except (IndexError, RuntimeError, OSError) as exc:
            raise CameraError(
                f"camera.camera_num = {cfg.camera_num}: cannot open the CSI camera ({exc}); check the ribbon "
                "cable, `rpicam-hello --list-cameras`, and that no other program holds the camera"
            ) from None
        try:
            video = cam.create_video_configuration(
                main={"size": (cfg.width, cfg.height), "format": "RGB888"},
                controls={"FrameRate": cfg.fps},
                buffer_count=cfg.buffer_count,
            )
            cam.configure(video)
            cam.start()
        except Exception as exc:  # noqa: BLE001 - libcamera raises many types; all mean "cannot start"
            _close(cam)
            raise CameraError(
                f"camera {self.name}: cannot start {cfg.width}x{cfg.height} at {cfg.fps:g} fps ({exc}); "
                "try a size and rate the sensor supports"
            ) from None
        with self._lock:
            self._cam = cam
        log.info("camera %s started at %dx%d, %.1f fps", self.name, cfg.width, cfg.height, cfg.fps)

    def read(self) -> Image | None:
        with self._lock:
            cam = self._cam
        if cam is None:
            raise CameraError(f"camera {self.name} is closed")
        request = cam.capture_request()
        try:
            array = request.make_array("main")
        finally:
            request.release()  # return the buffer to libcamera, or the camera starves after buffer_count frames
        image = np.asarray(array)
        if image.ndim != 3 or image.shape[2] < 3:
            raise CameraError(f"camera {self.name}: unexpected frame shape {image.shape}")
        return np.ascontiguousarray(image[:, :, :3], dtype=np.uint8)

    def close(self) -> None:
        with self._lock:
            cam, self._cam = self._cam, None
        if cam is not None:
            _close(cam)


def _close(cam: Any) -> None:
    for method in ("stop", "close"):
        try:
            getattr(cam, method)()
        except Exception as exc:  # noqa: BLE001 - best effort on a camera that already failed
            log.debug("picamera2 %s failed: %s", method, exc)


@CAMERAS.register("picamera2")
def _picamera2_camera(cfg: Picamera2CameraConfig) -> Camera:
    try:
        from picamera2 import Picamera2
    except ImportError:
        raise CameraError(INSTALL_HINT) from None
    return Picamera2Camera(cfg, Picamera2)
