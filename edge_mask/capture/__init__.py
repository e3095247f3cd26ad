"""Camera capture: one small `Camera` interface, one module per backend, and a resilient capture loop.

Why this split: a backend only knows how to open a device and block until its next image; everything
about surviving faults (unplugged cables, "frontend has timed out", silent stalls after hours) lives once
in `CaptureLoop` (edge_mask/capture/loop.py): retries with exponential backoff that never spin the CPU,
a stall detector that abandons a read stuck inside a driver, and a `health()` the service publishes.

Rule: capture/ produces `RawFrame`s only and imports only the ground (core/, config/): never detect/,
mask/, seal/, uplink/, service/ or tools/ (tests/test_architecture.py). Backends do their heavy imports
(picamera2) inside their factories. `files.py` is the one reader of video files and photos (`VideoReader`,
`read_image`), used by batch masking, evaluation, benchmarks, quantization, the demo and the tests; nothing
else decodes a file with its own `cv2.VideoCapture` loop or `cv2.imread`.

Add a camera: a module here with a `@CAMERAS.register("name")` factory, a config class in
`config/stages.py` added to `CameraConfig`, and its name in the import below.
"""

from edge_mask.capture import opencv as _opencv  # noqa: F401  (backends register on import)
from edge_mask.capture import picamera2 as _picamera2  # noqa: F401
from edge_mask.capture import synthetic as _synthetic  # noqa: F401
from edge_mask.capture.base import CAMERAS, Camera, create_camera, open_camera
from edge_mask.capture.files import (
    DEFAULT_FPS,
    IMAGE_SUFFIXES,
    MEDIA_SUFFIXES,
    VIDEO_SUFFIXES,
    MediaError,
    VideoInfo,
    VideoReader,
    kind_of,
    read_image,
)
from edge_mask.capture.loop import CaptureHealth, CaptureLoop

__all__ = [
    "CAMERAS",
    "DEFAULT_FPS",
    "IMAGE_SUFFIXES",
    "MEDIA_SUFFIXES",
    "VIDEO_SUFFIXES",
    "Camera",
    "CaptureHealth",
    "CaptureLoop",
    "MediaError",
    "VideoInfo",
    "VideoReader",
    "create_camera",
    "kind_of",
    "open_camera",
    "read_image",
]
