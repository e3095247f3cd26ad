"""Reading photos and videos, and writing masked outputs that carry no metadata.

Why re-encode instead of copying containers: a photo's EXIF can hold GPS position, camera serial and time,
and a video container can hold the original file name as its title. Masked images are encoded from pixels
with `cv2.imencode` (a JPEG gets a bare JFIF header, a PNG only its image chunks) and videos are written
by `cv2.VideoWriter` (mp4v in an .mp4), so nothing from the input file but its pixels, size and frame rate
reaches the output. Outputs are written under a temporary name and renamed, so an interrupted run never
leaves a half-written file under the final name.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
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


def expand_inputs(inputs: Sequence[str | Path]) -> tuple[list[Path], list[str]]:
    """Files to process and one-line problems, in the order given; directories expand to their media files.

    A directory is not searched recursively: outputs keep only the base name, so files from nested
    folders could overwrite each other.
    """
    files: list[Path] = []
    problems: list[str] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in MEDIA_SUFFIXES)
            if not found:
                problems.append(f"{path}: directory holds no media files "
                                f"({', '.join(s.lstrip('.') for s in MEDIA_SUFFIXES)})")
            files.extend(found)
        elif not path.exists():
            problems.append(f"{path}: no such file")
        else:
            try:
                kind_of(path)
            except MediaError as exc:
                problems.append(exc.message)
                continue
            files.append(path)
    return files, problems


def output_path(path: Path, outdir: Path) -> Path:
    """Images keep their name and extension; videos keep their base name and become .mp4."""
    if kind_of(path) == "image":
        return outdir / path.name
    return outdir / f"{path.stem}.mp4"


# ------------------------------------------------------------------------------------------------ images


def read_image(path: Path) -> Image:
    """Decode a photo as 3-channel BGR (grey and alpha images are converted)."""
    try:
        data = np.fromfile(str(path), np.uint8)
    except OSError as exc:
        raise MediaError(f"{path}: cannot read ({exc.strerror})") from None
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise MediaError(f"{path}: not a readable image (corrupt or not really {path.suffix.lstrip('.')})")
    return np.ascontiguousarray(image, np.uint8)


def encode_image(image: Image, suffix: str, jpeg_quality: int = 92) -> bytes:
    """Encode pixels only: no EXIF, GPS, ICC or text chunks."""
    params = [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality] if suffix.lower() in (".jpg", ".jpeg") else []
    ok, buffer = cv2.imencode(suffix.lower(), image, params)
    if not ok:
        raise MediaError(f"cannot encode a {suffix} image")
    return bytes(buffer.tobytes())


def write_image(path: Path, image: Image) -> None:
    """Write a masked image atomically (temporary file, fsync, rename)."""
    data = encode_image(image, path.suffix)
    tmp = path.with_name(f".{path.name}.partial")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------------ videos


@dataclass(frozen=True)
class VideoInfo:
    width: int
    height: int
    fps: float
    frames: int
    """Frame count from the container; 0 when unknown (it is only a hint for the progress bar)."""


class VideoReader:
    """Frames of a video file in order, through OpenCV (falls back to imageio for GIFs it cannot read)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._cap: Any = cv2.VideoCapture(str(path))
        self._first: Image | None = None
        self._frames: Iterator[Image] | None = None
        self._gif_fps = DEFAULT_FPS
        if self._cap.isOpened():
            ok, frame = self._cap.read()
            if ok and frame is not None:
                self._first = _bgr(frame)
        if self._first is None:
            self._cap.release()
            self._cap = None
            if path.suffix.lower() == ".gif":
                self._open_gif_with_imageio()
        if self._first is None:
            raise MediaError(f"{path}: cannot decode any video frame (corrupt, truncated or unsupported codec)")
        fps = float(self._cap.get(cv2.CAP_PROP_FPS)) if self._cap is not None else self._gif_fps
        count = int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT)) if self._cap is not None else 0
        if not (0 < fps < 1000):
            log.warning("%s: frame rate unknown, writing at %.0f fps", path, DEFAULT_FPS)
            fps = DEFAULT_FPS
        height, width = self._first.shape[:2]
        self.info = VideoInfo(width, height, fps, max(count, 0))

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
        self._gif_fps = 1000.0 / duration_ms if duration_ms > 0 else DEFAULT_FPS
        self._first = _rgb_to_bgr(first)
        self._frames = (_rgb_to_bgr(f) for f in frames)

    def __iter__(self) -> Iterator[Image]:
        if self._first is None:
            return
        first, self._first = self._first, None
        yield first
        if self._frames is not None:
            yield from self._frames
            return
        while self._cap is not None:
            ok, frame = self._cap.read()
            if not ok or frame is None:
                break
            yield _bgr(frame)

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class VideoWriter:
    """An mp4v .mp4 written under a temporary name and renamed by `commit()`; `abort()` removes it."""

    def __init__(self, path: Path, width: int, height: int, fps: float) -> None:
        self.path = path
        self._tmp = path.with_name(f".{path.stem}.partial.mp4")
        self._size = (width, height)
        self._writer: Any = cv2.VideoWriter(str(self._tmp), cv2.VideoWriter.fourcc(*"mp4v"), fps, (width, height))
        if not self._writer.isOpened():
            raise MediaError(f"{path}: cannot open an mp4 writer here (check the folder is writable)")

    def write(self, image: Image) -> None:
        if (image.shape[1], image.shape[0]) != self._size:
            raise MediaError(f"{self.path}: frame size changed mid-video "
                             f"({image.shape[1]}x{image.shape[0]} after {self._size[0]}x{self._size[1]})")
        self._writer.write(image)

    def commit(self) -> None:
        self._writer.release()
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        self._writer.release()
        self._tmp.unlink(missing_ok=True)


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
