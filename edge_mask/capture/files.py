"""The one reader of video files and photos: `VideoReader` for videos, `read_image` for photos.

Why one reader: batch masking, evaluation, the benchmarks, int8 calibration, the demo and the tests all
decode files, and each used to carry its own `cv2.VideoCapture` loop or `cv2.imread` wrapper with its own
idea of colour channels, frame rate fallbacks and errors. Here every caller gets the same thing: frames as
contiguous 3-channel BGR uint8 (grey and alpha converted), GIFs OpenCV cannot decode read through imageio,
and a one-line `MediaError` (a UserError) naming the file when it cannot be read. A fix to decoding lands
everywhere at once.

Live cameras are not files: they are `Camera` backends (opencv.py, picamera2.py) behind the resilient
`CaptureLoop`. Writing masked outputs is the service room's business (edge_mask/service/outputs.py).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge_mask.core.errors import UserError
from edge_mask.core.types import Image

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
VIDEO_SUFFIXES = (".mp4", ".mkv", ".avi", ".gif")
MEDIA_SUFFIXES = IMAGE_SUFFIXES + VIDEO_SUFFIXES
DEFAULT_FPS = 25.0
"""Frame rate assumed when a container does not state a plausible one."""


class MediaError(UserError):
    """An input file is missing, unreadable or of an unsupported type (one line naming the file)."""


def kind_of(path: Path) -> str:
    """'image' or 'video' by file suffix; MediaError for anything else."""
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return "image"
    if suffix in VIDEO_SUFFIXES:
        return "video"
    raise MediaError(f"{path}: unsupported file type '{suffix or '(none)'}'; "
                     f"supported: {', '.join(s.lstrip('.') for s in MEDIA_SUFFIXES)}")


# ------------------------------------------------------------------------------------------------ images


def read_image(path: Path | str) -> Image:
    """Decode a photo as 3-channel BGR (grey and alpha images are converted).

    Decoded from the file's bytes (`cv2.imdecode`) rather than `cv2.imread`, so a non-ASCII path works on
    every platform and a missing file is told apart from a corrupt one.
    """
    path = Path(path)
    try:
        data = np.fromfile(str(path), np.uint8)
    except OSError as exc:
        raise MediaError(f"{path}: cannot read ({exc.strerror or 'no such file'})") from None
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise MediaError(f"{path}: not a readable image (corrupt or not really {path.suffix.lstrip('.')})")
    return np.ascontiguousarray(image, np.uint8)


# ------------------------------------------------------------------------------------------------ videos


@dataclass(frozen=True)
class VideoInfo:
    width: int
    height: int
    fps: float
    """The container's frame rate, or the reader's `default_fps` when it states none plausible."""
    frames: int
    """Frame count from the container; 0 when unknown. Only a hint: `VideoReader.count()` decodes for the truth."""


class VideoReader:
    """Frames of a video file in order, through OpenCV (falls back to imageio for GIFs it cannot read).

    Iterate it for BGR frames; `timed()` adds each frame's index and time in the video; `sample(indices)`
    yields only the frames at those indices; `count()` decodes to the end for a true frame count.
    `loop=True` starts again at the first frame when the file ends (benchmarks that need more frames than
    a clip has); `max_frames` ends an iteration after that many frames. The first frame is decoded when the
    reader is built, so a file that cannot be played fails there, with a MediaError naming it.

    Frames are always read sequentially, never by seeking: seeking is unreliable in some codecs.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        loop: bool = False,
        max_frames: int | None = None,
        default_fps: float = DEFAULT_FPS,
    ) -> None:
        self.path = Path(path)
        self.loop = loop
        self.max_frames = max_frames
        self._cap: Any = None
        self._first: Image | None = None
        self._frames: Iterator[Image] | None = None
        self._gif_fps = default_fps
        self._closed = False
        if not self.path.is_file():
            raise MediaError(f"{self.path}: no such video file")
        first = self._open()
        fps = float(self._cap.get(cv2.CAP_PROP_FPS)) if self._cap is not None else self._gif_fps
        count = int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT)) if self._cap is not None else 0
        if not (0 < fps < 1000):
            log.warning("%s: frame rate unknown, assuming %.0f fps", self.path, default_fps)
            fps = default_fps
        height, width = first.shape[:2]
        self.info = VideoInfo(width, height, fps, max(count, 0))

    def _open(self) -> Image:
        """(Re)open the file and decode its first frame (returned, and kept for the first `_next`);
        MediaError when no frame decodes."""
        self._release()
        self._cap = cv2.VideoCapture(str(self.path))
        if self._cap.isOpened():
            ok, frame = self._cap.read()
            if ok and frame is not None:
                self._first = _bgr(frame)
        if self._first is None:
            self._release()
            if self.path.suffix.lower() == ".gif":
                self._open_gif_with_imageio()
        if self._first is None:
            raise MediaError(f"{self.path}: cannot decode any video frame (corrupt, truncated or unsupported codec)")
        return self._first

    def _open_gif_with_imageio(self) -> None:
        try:
            import imageio.v3 as iio
        except ImportError:
            raise MediaError(f"{self.path}: OpenCV cannot read this GIF and imageio is not installed; "
                             "install imageio or convert the GIF to mp4") from None
        try:
            meta = iio.immeta(self.path)
            frames = iter(iio.imiter(self.path))
            first = next(frames)
        except (OSError, ValueError, StopIteration) as exc:
            raise MediaError(f"{self.path}: cannot decode this GIF ({exc})") from None
        duration_ms = float(meta.get("duration", 0) or 0)
        if duration_ms > 0:
            self._gif_fps = 1000.0 / duration_ms
        self._first = _rgb_to_bgr(first)
        self._frames = (_rgb_to_bgr(f) for f in frames)

    def _next(self) -> Image | None:
        """The next frame of the current pass through the file, or None at its end."""
        if self._first is not None:
            first, self._first = self._first, None
            return first
        if self._frames is not None:
            return next(self._frames, None)
        if self._cap is not None:
            ok, frame = self._cap.read()
            if ok and frame is not None:
                return _bgr(frame)
        return None

    def __iter__(self) -> Iterator[Image]:
        produced = 0
        while self.max_frames is None or produced < self.max_frames:
            image = self._next()
            if image is None and self.loop and not self._closed:
                self._open()  # a fresh pass always has a first frame, so looping cannot spin
                image = self._next()
            if image is None:
                return
            produced += 1
            yield image

    def timed(self) -> Iterator[tuple[int, float, Image]]:
        """(index, seconds into the video at `info.fps`, frame) for each frame: the file's own timeline,
        so a tracker's hold time means the same as on a live camera at that rate."""
        for index, image in enumerate(self):
            yield index, index / self.info.fps, image

    def sample(self, indices: Iterable[int]) -> Iterator[Image]:
        """The frames at `indices` (0-based), in file order, decoding no further than the last one wanted."""
        wanted = set(indices)
        if not wanted:
            return
        last = max(wanted)
        for index, image in enumerate(self):
            if index in wanted:
                yield image
            if index >= last:
                return

    def count(self) -> int:
        """Frames still to come, counted by decoding (`grab()`, no colour conversion, so it stays cheap);
        on a fresh reader that is the file's true length. Uses the reader up; ignores `loop`."""
        total = 0
        if self._first is not None:
            self._first = None
            total = 1
        if self._frames is not None:
            total += sum(1 for _ in self._frames)
        elif self._cap is not None:
            while self._cap.grab():
                total += 1
        return total

    def close(self) -> None:
        """Release the file; iterating afterwards yields nothing (a looping reader does not reopen)."""
        self._closed = True
        self._release()

    def _release(self) -> None:
        self._first = None
        self._frames = None
        if self._cap is not None:
            self._cap.release()
            self._cap = None

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _bgr(frame: Any) -> Image:
    array = np.asarray(frame)
    if array.ndim == 2:
        array = cv2.cvtColor(array, cv2.COLOR_GRAY2BGR)
    elif array.shape[2] == 4:
        array = cv2.cvtColor(array, cv2.COLOR_BGRA2BGR)
    return np.ascontiguousarray(array, np.uint8)


def _rgb_to_bgr(frame: Any) -> Image:
    array = np.asarray(frame)
    if array.ndim == 2:
        return _bgr(array)
    if array.shape[2] == 4:
        return np.ascontiguousarray(cv2.cvtColor(array, cv2.COLOR_RGBA2BGR), np.uint8)
    return np.ascontiguousarray(cv2.cvtColor(array, cv2.COLOR_RGB2BGR), np.uint8)
