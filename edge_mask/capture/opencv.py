"""OpenCV capture: V4L2 devices, RTSP/HTTP streams, GStreamer pipelines (Jetson CSI) and video files.

The source string decides the mode: a pipeline contains "!", a URL contains "://", a device is a number
or a /dev path, anything else is a video file. A file is played at its own frame rate as if it were a
camera (frames the consumer is too slow for are lost, exactly as with a live camera), optionally looping;
`realtime = false` reads as fast as the consumer takes frames.

Why `close()` may defer the release: the capture loop closes a stalled camera from another thread, and
releasing a `cv2.VideoCapture` while a read is running inside FFmpeg can crash the process. So a close
during a read only marks the camera closed; the reading thread releases it when (if ever) the read returns.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from edge_mask.capture.base import CAMERAS, Camera
from edge_mask.config import OpenCVCameraConfig
from edge_mask.core.errors import CameraError
from edge_mask.core.types import Image

log = logging.getLogger(__name__)

GSTREAMER_HINT = (
    "this OpenCV build has no GStreamer support (the PyPI opencv-python wheels never do); "
    "use the system OpenCV instead: on Jetson `sudo apt install python3-opencv`, create the venv with "
    "--system-site-packages and `pip uninstall opencv-python-headless`"
)


def source_kind(source: str) -> str:
    """'gstreamer', 'url', 'device' or 'file' for a configured `camera.source`."""
    if "!" in source:
        return "gstreamer"
    if "://" in source:
        return "url"
    if source.isdigit() or source.startswith("/dev/"):
        return "device"
    return "file"


def has_gstreamer(build_info: str) -> bool:
    """Whether `cv2.getBuildInformation()` reports GStreamer support."""
    match = re.search(r"GStreamer:\s*(\S+)", build_info)
    return match is not None and match.group(1).upper() != "NO"


class OpenCVCamera:
    """One `cv2.VideoCapture` (see module docstring)."""

    def __init__(self, cfg: OpenCVCameraConfig) -> None:
        self.cfg = cfg
        self.kind = source_kind(cfg.source)
        self.name = f"opencv:{cfg.source if self.kind != 'gstreamer' else 'gstreamer pipeline'}"
        self._cap: Any = None
        self._lock = threading.Lock()
        self._reading = False
        self._closed = False
        self._fps = 0.0
        self._next_due = 0.0

    @property
    def fps(self) -> float:
        """The playback rate of a file (its own rate unless camera.fps overrides it)."""
        return self._fps

    def open(self) -> None:
        import cv2

        cfg, source = self.cfg, self.cfg.source
        if self.kind == "gstreamer":
            if not has_gstreamer(cv2.getBuildInformation()):
                raise CameraError(f"camera.source is a GStreamer pipeline but {GSTREAMER_HINT}")
            cap = cv2.VideoCapture(source, cv2.CAP_GSTREAMER)
        elif self.kind == "url":
            ms = int(cfg.read_timeout_s * 1000)
            params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms]
            cap = cv2.VideoCapture(source, cv2.CAP_FFMPEG, params)
        elif self.kind == "device":
            self._check_device(source)
            cap = cv2.VideoCapture(int(source) if source.isdigit() else source, cv2.CAP_V4L2)
            if cfg.width and cfg.height:
                cap.set(cv2.CAP_PROP_FRAME_WIDTH, cfg.width)
                cap.set(cv2.CAP_PROP_FRAME_HEIGHT, cfg.height)
            if cfg.fps:
                cap.set(cv2.CAP_PROP_FPS, cfg.fps)
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # latest frame, not a stale driver queue
        else:
            if not Path(source).is_file():
                raise CameraError(f"camera.source = {source!r}: no such video file; fix the path in the config")
            cap = cv2.VideoCapture(source)
        if not cap.isOpened():
            cap.release()
            raise CameraError(f"camera.source = {self._shown()}: cannot open it ({self._open_hint()})")
        native = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self._fps = float(cfg.fps or (native if 0 < native < 1000 else 30.0))
        with self._lock:
            self._cap, self._closed = cap, False
        self._next_due = time.monotonic()
        log.info("camera %s opened (%s, %.1f fps)", self._shown(), self.kind, self._fps)

    def read(self) -> Image | None:
        with self._lock:
            if self._closed or self._cap is None:
                raise CameraError(f"camera {self._shown()} is closed")
            cap, self._reading = self._cap, True
        try:
            image = self._read_one(cap)
        finally:
            with self._lock:
                self._reading = False
                release = self._closed and self._cap is cap
                if release:
                    self._cap = None
            if release:
                cap.release()
        if image is None:
            return None
        return self._normalize(image)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            cap, reading = self._cap, self._reading
            if not reading:
                self._cap = None
        if cap is not None and not reading:
            cap.release()

    # ---------------------------------------------------------------------------------------- helpers

    def _read_one(self, cap: Any) -> Image | None:
        if self.kind == "file" and self.cfg.realtime:
            self._pace()
        ok, image = cap.read()
        if ok:
            return image  # type: ignore[no-any-return]
        if self.kind == "file":
            if not self.cfg.loop:
                return None
            import cv2

            cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, image = cap.read()
            if ok:
                return image  # type: ignore[no-any-return]
        raise CameraError(f"camera {self._shown()}: read failed (unplugged, stream lost or timed out)")

    def _pace(self) -> None:
        """Sleep until the next frame is due at the file's rate; never burst to catch up."""
        now = time.monotonic()
        if self._next_due > now:
            time.sleep(self._next_due - now)
            now = self._next_due
        self._next_due = now + 1.0 / self._fps

    def _normalize(self, image: Any) -> Image:
        import cv2

        if image.ndim == 2:
            image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
        elif image.shape[2] == 4:
            image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
        width, height = self.cfg.width, self.cfg.height
        if width and height and (image.shape[1], image.shape[0]) != (width, height):
            image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
        return np.ascontiguousarray(image, dtype=np.uint8)

    def _check_device(self, source: str) -> None:
        path = f"/dev/video{source}" if source.isdigit() else source
        if not os.path.exists(path):
            raise CameraError(
                f"camera.source = {source!r}: {path} does not exist; check the cable and `v4l2-ctl --list-devices`"
            )
        if not os.access(path, os.R_OK | os.W_OK):
            raise CameraError(
                f"camera.source = {source!r}: no permission on {path}; add the user to the 'video' group"
            )

    def _open_hint(self) -> str:
        return {
            "url": "check the URL, credentials and that the camera is reachable",
            "device": "is another program using it? is it a capture node (see `v4l2-ctl --list-formats`)?",
            "gstreamer": "check the pipeline with gst-launch-1.0; it must end in appsink",
            "file": "is it a video format this OpenCV can decode?",
        }[self.kind]

    def _shown(self) -> str:
        source = self.cfg.source
        return re.sub(r"//[^/@]*@", "//***@", source) if self.kind == "url" else repr(source)


@CAMERAS.register("opencv")
def _opencv_camera(cfg: OpenCVCameraConfig) -> Camera:
    return OpenCVCamera(cfg)
