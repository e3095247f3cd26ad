"""Batch inputs and outputs: which files a run masks, where each output goes, and writing it without metadata.

Why here and not in capture/: capture/ only reads (edge_mask/capture/files.py is the one reader of video
files and photos); deciding outputs and writing masked files is what batch masking (service/batch.py) does.

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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2

from edge_mask.capture import MEDIA_SUFFIXES, MediaError, kind_of
from edge_mask.core.types import Image

log = logging.getLogger(__name__)


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
