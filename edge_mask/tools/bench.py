"""Frame benchmark: per-stage latency (decode, detect, track, mask) and overall frames/s.

Why a benchmark and not timed tests: speed depends on the machine and on what else runs on it, so it is
measured on purpose, on a quiet machine, and reported; tests never assert on time. The targets the project
aims for are printed beside the figures (see TARGETS).

Frames are decoded from the source in order (a video loops when it ends, a photo repeats), optionally
resized to the requested size, and fed through the real masker one after another, as the live service does.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge_mask.capture import IMAGE_SUFFIXES, MediaError, VideoReader, read_image
from edge_mask.core.errors import UserError
from edge_mask.core.types import Image, RawFrame
from edge_mask.mask import Masker
from edge_mask.mask.engine import SAMPLES, STAGES, percentiles

log = logging.getLogger(__name__)

TARGETS: dict[tuple[int, int], float] = {(640, 480): 60.0, (1280, 720): 30.0}
"""Frames/s the project aims for on a 2-core machine (1280x720 detects on a downscaled copy)."""
TARGET_NOTE = ">= 60 fps at 640x480 and >= 30 fps at 1280x720 (detection on a downscaled frame), 2 CPU cores"


@dataclass
class BenchResult:
    source: str
    width: int
    height: int
    frames: int
    seconds: float
    stages: dict[str, dict[str, float]]
    faces: int
    fail_closed: int
    target_fps: float | None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "width": self.width,
            "height": self.height,
            "frames": self.frames,
            "seconds": round(self.seconds, 3),
            "fps": round(self.fps, 2),
            "stages_ms": self.stages,
            "faces": self.faces,
            "fail_closed": self.fail_closed,
            "target_fps": self.target_fps,
            "target_note": TARGET_NOTE,
            **self.extra,
        }

    def lines(self) -> list[str]:
        out = [f"source: {self.source} at {self.width}x{self.height}, {self.frames} frames in {self.seconds:.2f} s"]
        out.append(f"{'stage':<8}{'p50 ms':>10}{'p99 ms':>10}")
        for stage, values in self.stages.items():
            if stage != "clinical" or "faces_read" in self.extra:
                out.append(f"{stage:<8}{values['p50']:>10.2f}{values['p99']:>10.2f}")
        verdict = ""
        if self.target_fps is not None:
            verdict = f" (target >= {self.target_fps:.0f}: {'met' if self.fps >= self.target_fps else 'NOT met'})"
        out.append(f"overall: {self.fps:.1f} frames/s{verdict}")
        out.append(f"faces masked: {self.faces}, frames failed closed: {self.fail_closed}")
        if "faces_read" in self.extra:
            out.append(f"clinical signals: {self.extra['faces_read']} faces read, "
                       f"{self.extra['clinical_ms_per_face']:.2f} ms per face per frame (landmark models, one thread)")
        out.append(f"targets: {TARGET_NOTE}")
        return out


class FrameSource:
    """Decoded frames in order: a video loops at its end, a photo repeats (both through the one reader)."""

    def __init__(self, source: str, size: tuple[int, int] | None) -> None:
        self.source = source
        self.size = size
        self._image: Image | None = None
        self._video: VideoReader | None = None
        self._frames: Iterator[Image] = iter(())
        try:
            if Path(source).suffix.lower() in IMAGE_SUFFIXES:
                self._image = read_image(Path(source))
            else:
                self._video = VideoReader(Path(source), loop=True)
                self._frames = iter(self._video)
        except MediaError as exc:
            raise UserError(exc.message) from None

    def read(self) -> Image:
        decoded = self._image.copy() if self._image is not None else next(self._frames, None)
        if decoded is None:
            raise UserError(f"{self.source}: no frame could be decoded")
        image: Any = decoded
        if self.size is not None and (image.shape[1], image.shape[0]) != self.size:
            image = cv2.resize(image, self.size, interpolation=cv2.INTER_LINEAR)
        frame: Image = np.ascontiguousarray(image, np.uint8)
        return frame

    def close(self) -> None:
        if self._video is not None:
            self._video.close()


def run_bench(source: str, masker: Masker, frames: int = 300, size: tuple[int, int] | None = None,
              warmup: int = 10) -> BenchResult:
    """Decode and mask `frames` frames (after `warmup` untimed ones); figures for each stage and overall."""
    reader = FrameSource(source, size)
    try:
        first = reader.read()
        height, width = first.shape[:2]
        masker.warm_up(width, height)
        clock = 0.0
        for _ in range(warmup):
            masker.process(RawFrame(reader.read(), 0, time.time(), clock))
            clock += 1 / 30
        before = masker.stats()
        skip = {s: len(v) for s, v in masker.latency_samples().items()}
        decode: list[float] = []
        started = time.perf_counter()
        for index in range(frames):
            t0 = time.perf_counter()
            image = reader.read()
            decode.append(time.perf_counter() - t0)
            masker.process(RawFrame(image, index, time.time(), clock))
            clock += 1 / 30
        seconds = time.perf_counter() - started
    finally:
        reader.close()
    after = masker.stats()
    samples = masker.latency_samples()
    stages: dict[str, dict[str, float]] = {"decode": _summary(decode)}
    for stage in STAGES:
        values = samples[stage]
        # The sample window is bounded; past it, the newest `frames` samples are the timed ones.
        stages[stage] = _summary(values[skip[stage]:] if len(values) < SAMPLES else values[-frames:])
    return BenchResult(
        source=source,
        width=width,
        height=height,
        frames=frames,
        seconds=seconds,
        stages=stages,
        faces=int(after["faces_masked"]) - int(before["faces_masked"]),
        fail_closed=int(after["fail_closed"]) - int(before["fail_closed"]),
        target_fps=TARGETS.get((width, height)),
        extra=_clinical_cost(samples["clinical"][skip["clinical"]:],
                             int(after["faces_read"]) - int(before["faces_read"])),
    )


def _clinical_cost(samples: list[float], faces_read: int) -> dict[str, Any]:
    """With clinical signals on: faces read, and the landmark models' time per face per frame (one thread)."""
    if not faces_read:
        return {}
    return {"faces_read": faces_read, "clinical_ms_per_face": round(1000 * sum(samples) / faces_read, 3)}


def _summary(values: list[float]) -> dict[str, float]:
    p50, p99 = percentiles(values)
    return {"p50": round(p50 * 1000, 3), "p99": round(p99 * 1000, 3)}
