"""Running the product's own masker for evaluation.

Why this exists: every figure in the report must come from the same code path the device runs
(`edge_mask.mask.engine.FaceMasker` with the configured detector, tracker and mask), not from a re-implementation.
The only evaluation-specific choices live here, in one place, so the report can state them:

* the detector deadline is generous by default (`EVAL_DEADLINE_MS`): on a shared machine a missed deadline
  masks the whole frame, which is safe but would hide detector misses and flatter coverage. Fail-closed
  frames are still counted and reported.
* still images get a fresh masker each (no tracker state carried from one photo to the next), while the
  detector is built once per setting and shared.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_mask import capture
from edge_mask.config import EdgeConfig, load_config, validate_config
from edge_mask.core.types import Image, RawFrame

if TYPE_CHECKING:
    from edge_mask.core.types import MaskedFrame
    from edge_mask.detect import Detector

log = logging.getLogger(__name__)

EVAL_DEADLINE_MS = 5000.0
EVAL_DEFAULT_FPS = 30.0
"""Frame rate assumed for a video whose container states none (timestamps drive the tracker's hold)."""
COVERAGE_COLOR = (255, 0, 255)
"""Magenta fill for coverage measurement: rare in photos, so "pixel equals the fill" cannot flatter."""


def eval_config(config: Path | None = None, model_cache: Path | None = None) -> EdgeConfig:
    """The device config to evaluate (defaults when no file is given); `model_cache` overrides the cache."""
    cfg = load_config(config) if config is not None else validate_config({"device_id": "eval"}, EdgeConfig)
    if model_cache is not None:
        cfg = cfg.model_copy(update={"models": cfg.models.model_copy(update={"cache_dir": model_cache})})
    return cfg


def with_detector(cfg: EdgeConfig, **changes: Any) -> EdgeConfig:
    return cfg.model_copy(update={"detector": cfg.detector.model_copy(update=changes)})


def with_mask(cfg: EdgeConfig, **changes: Any) -> EdgeConfig:
    return cfg.model_copy(update={"mask": cfg.mask.model_copy(update=changes)})


class SharedDetector:
    """Lets several maskers use one detector; `close()` from a masker is ignored, `release()` closes it."""

    def __init__(self, inner: Detector) -> None:
        self.inner = inner

    def detect(self, image: Image) -> Any:
        return self.inner.detect(image)

    def close(self) -> None:
        """Ignored: the owner calls `release()`."""

    def release(self) -> None:
        self.inner.close()


def build_detector(cfg: EdgeConfig) -> SharedDetector:
    from edge_mask.detect import create_detector

    return SharedDetector(create_detector(cfg.detector, cfg.models))


def new_masker(cfg: EdgeConfig, detector: SharedDetector, deadline_ms: float = EVAL_DEADLINE_MS) -> Any:
    """A fresh `FaceMasker` (fresh tracker) over a shared detector, masking as the product does: on sight
    from the detector's threshold, weaker detections only where they extend a held face; with the config's
    clinical signals read (and drawn by the clinical style) when they are on."""
    from edge_mask.clinical import build_reader
    from edge_mask.mask.engine import FaceMasker

    return FaceMasker(detector, cfg.tracker, cfg.mask, deadline_ms, sight=cfg.detector.threshold,
                      clinical=build_reader(cfg.clinical, cfg.models))


def mask_still(
    cfg: EdgeConfig, detector: SharedDetector, image: Image, seq: int = 0, deadline_ms: float = EVAL_DEADLINE_MS
) -> MaskedFrame | None:
    """Mask one photo with a fresh masker (fresh tracker); the original array is not modified."""
    masker = new_masker(cfg, detector, deadline_ms)
    try:
        raw = RawFrame(image=image.copy(), seq=seq, captured_at=time.time(), monotonic=time.monotonic())
        result: MaskedFrame | None = masker.process(raw)
    finally:
        masker.close()
    return result


def iter_video(path: Path) -> Iterator[tuple[int, float, Image]]:
    """(index, timestamp in seconds from the file's frame rate, BGR frame) for every frame of a video.

    A thin generator over the one reader (`edge_mask.capture.VideoReader`); a container without a frame
    rate is taken as 30 fps, as evaluation always has. MediaError (a UserError) when the file is missing
    or no frame decodes.
    """
    with capture.VideoReader(path, default_fps=EVAL_DEFAULT_FPS) as reader:
        yield from reader.timed()


class MaskedClip:
    """Every frame of a clip, in order, through a fresh product masker (the tracker needs them all).

    Iterating yields (index, timestamp, original frame, masked frame or None when dropped) and counts
    `frames`, `dropped` and `fail_closed` as it goes; the leak and utility evaluations judge what they
    need of each frame.
    """

    def __init__(
        self, path: Path, cfg: EdgeConfig, detector: SharedDetector, max_frames: int | None = None,
        deadline_ms: float = EVAL_DEADLINE_MS,
    ) -> None:
        self.path, self.cfg, self.detector = path, cfg, detector
        self.max_frames, self.deadline_ms = max_frames, deadline_ms
        self.frames = self.dropped = self.fail_closed = 0

    def __iter__(self) -> Iterator[tuple[int, float, Image, MaskedFrame | None]]:
        masker = new_masker(self.cfg, self.detector, self.deadline_ms)
        start = time.monotonic()
        try:
            for index, timestamp, image in iter_video(self.path):
                if self.max_frames is not None and index >= self.max_frames:
                    break
                self.frames += 1
                masked = masker.process(video_raw_frame(image, index, timestamp, start))
                if masked is None:
                    self.dropped += 1
                elif masked.fail_closed:
                    self.fail_closed += 1
                yield index, timestamp, image, masked
        finally:
            masker.close()


def video_raw_frame(image: Image, index: int, timestamp: float, start: float) -> RawFrame:
    """A camera-like frame whose clocks follow the file's timeline, so the tracker's hold time means
    the same thing as on a live camera at that frame rate."""
    return RawFrame(image=image.copy(), seq=index, captured_at=start + timestamp, monotonic=start + timestamp)
