"""The face masker: detector + tracker + painter, with a deadline, failing closed.

Why a dedicated detector thread: a detector can raise, be slow, or hang inside native code where no Python
timeout reaches. Running it on its own thread lets `process` wait with a timeout and move on. While a
previous call is still running (a hang), new frames are not queued behind it: they fail closed at once as
`detector_busy`, so the pipeline keeps its frame rate and never waits on a stuck detector.

Fail-closed means: whatever goes wrong (detector error, deadline missed, detector busy, more faces than
`detector.max_faces`, a bug in tracking or painting) the frame comes back fully masked
(`mask.on_failure = "mask_frame"`) or not at all (`"drop"`), and the reason is counted. There is no path
that returns the raw pixels.

A detector that runs on threads of its own and waits within a deadline (`TimedDetector`: a batch run's
look-ahead workers) is waited on directly, with the same deadline and the same fail-closed reasons: a hung
worker costs its frame the deadline while the other workers carry on, and once every worker hangs, frames
fail closed at once as `detector_busy`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Iterable
from typing import Any

import numpy as np

from edge_mask.clinical import ClinicalReader, build_reader
from edge_mask.config import MaskConfig, MaskerConfig, TrackerConfig
from edge_mask.core.stats import percentile
from edge_mask.core.types import Detections, Image, MaskedFrame, RawFrame
from edge_mask.detect import DeadlineMissed, Detector, DetectorBusy, TimedDetector, TooManyFaces, create_detector
from edge_mask.mask.base import MASKERS, Masker, build_masker
from edge_mask.mask.paint import Painter, mask_faces, mask_whole_frame
from edge_mask.mask.scene import CutDetector
from edge_mask.mask.track import Tracker

log = logging.getLogger(__name__)

FAIL_REASONS = ("detector_error", "detector_timeout", "detector_busy", "too_many_faces", "mask_error")
STAGES = ("detect", "track", "clinical", "mask")
SAMPLES = 4096
"""Latency samples kept per stage (a sliding window) for percentiles in stats and the benchmark."""


class _Call:
    """One frame's detection: its result or error once `done` is set (by the detector thread, or by the
    masker itself for a `TimedDetector`); never set when the deadline passed first."""

    __slots__ = ("done", "error", "image", "result")

    def __init__(self, image: Image) -> None:
        self.image: Image | None = image
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None


class DetectorThread:
    """Runs `detector.detect` on one daemon thread; at most one call in flight."""

    def __init__(self, detector: Detector) -> None:
        self.detector = detector
        self._lock = threading.Lock()
        self._pending: _Call | None = None
        self._wake = threading.Condition(self._lock)
        self._busy = False
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="edge-mask-detector", daemon=True)
        self._thread.start()

    def submit(self, image: Image) -> _Call | None:
        """Start detection on `image`; None when the previous call has not finished (detector busy)."""
        with self._lock:
            if self._busy or self._closed:
                return None
            call = _Call(image)
            self._busy = True
            self._pending = call
            self._wake.notify()
            return call

    def close(self, timeout: float = 1.0) -> None:
        with self._lock:
            self._closed = True
            self._wake.notify()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("detector thread still busy at close; leaving it (daemon) behind")

    def _run(self) -> None:
        while True:
            with self._lock:
                while self._pending is None and not self._closed:
                    self._wake.wait()
                if self._closed:
                    return
                call, self._pending = self._pending, None
            assert call is not None
            try:
                assert call.image is not None
                call.result = self.detector.detect(call.image)
            except Exception as exc:  # noqa: BLE001 - handed to the caller, which logs and fails closed
                call.error = exc
            finally:
                call.image = None
                with self._lock:
                    self._busy = False
                call.done.set()


class FaceMasker:
    """Turns every `RawFrame` into a `MaskedFrame` (or None when failures drop frames)."""

    def __init__(
        self, detector: Detector, tracker: TrackerConfig, mask: MaskConfig, deadline_ms: float, sight: float = 0.0,
        clinical: ClinicalReader | None = None, in_place: bool = False,
    ) -> None:
        self.detector = detector
        self.in_place = in_place
        """Paint each frame's own pixels instead of a copy: for callers that hand over frames they will not
        read again (a batch run's decoder). Only a frame whose detection has finished is painted; a frame that
        fails closed is replaced by a new, fully masked image either way."""
        self.clinical = clinical
        """Reads the clinical signals of the faces seen (`clinical.signals`); None when off."""
        self.mask_cfg = mask
        self.deadline_s = deadline_ms / 1000.0
        self.sight = sight
        """Detections scoring below this (the detector's threshold) are masked only where they extend a held
        face (track.py); 0 masks everything the detector reports."""
        self._tracker = Tracker(tracker)
        self._cuts = CutDetector(tracker.cut_threshold)
        self._painter = Painter(mask)
        self._timed = detector if isinstance(detector, TimedDetector) else None
        self._thread = None if self._timed is not None else DetectorThread(detector)
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {
            "frames": 0, "faces_detected": 0, "faces_masked": 0, "faces_held": 0, "dropped": 0, "scene_cuts": 0,
            "faces_read": 0,
            **{f"fail_closed_{r}": 0 for r in FAIL_REASONS},
        }
        self._samples: dict[str, deque[float]] = {s: deque(maxlen=SAMPLES) for s in STAGES}

    # ---------------------------------------------------------------------------------------------- API

    def process(self, frame: RawFrame) -> MaskedFrame | None:
        """Mask one frame. Fails closed on any detector or masking failure (see module docstring)."""
        with self._lock:
            self._counts["frames"] += 1
        started = time.perf_counter()
        call = self._detect(frame.image)
        if call is None:
            return self._fail(frame, "detector_busy")
        if not call.done.is_set():
            log.warning("frame %d: detector missed its %.0f ms deadline; frame fails closed",
                        frame.seq, self.deadline_s * 1000)
            return self._fail(frame, "detector_timeout")
        detected = time.perf_counter()
        if isinstance(call.error, TooManyFaces):
            log.warning("frame %d: %s; frame fails closed (raise detector.max_faces for crowds)", frame.seq, call.error)
            return self._fail(frame, "too_many_faces")
        if call.error is not None or not isinstance(call.result, Detections):
            what = repr(call.error) if call.error is not None else f"returned {type(call.result).__name__}"
            log.warning("frame %d: detector failed (%s); frame fails closed", frame.seq, what)
            return self._fail(frame, "detector_error")
        found: Detections = call.result
        try:
            cut = self._cuts(frame.image)
            result = self._tracker.update(found.boxes, frame.monotonic, found.scores, cut, self.sight)
            tracked = time.perf_counter()
            landmarks = found.landmarks[list(result.masked_detections)]
            seen = len(result.masked_detections)
            read = self._read_clinical(frame, result.regions[:seen], result.track_ids[:seen])
            clinical = time.perf_counter()
            masked = mask_faces(frame, result.regions, landmarks, self._painter,
                                tuple(s for _, s in read), tuple(row for row, _ in read), self.in_place)
        except Exception:
            log.exception("frame %d: tracking or masking failed; frame fails closed", frame.seq)
            return self._fail(frame, "mask_error")
        done = time.perf_counter()
        with self._lock:
            self._counts["faces_detected"] += result.detected
            self._counts["faces_held"] += result.held
            self._counts["scene_cuts"] += int(bool(cut))
            self._counts["faces_masked"] += len(result.regions)
            self._counts["faces_read"] += len(masked.signals)
            self._samples["detect"].append(detected - started)
            self._samples["track"].append(tracked - detected)
            if read:
                self._samples["clinical"].append(clinical - tracked)
            self._samples["mask"].append(done - clinical)
        return masked

    def _detect(self, image: Image) -> _Call | None:
        """Detect `image` within the deadline: a finished call (result or error), an unfinished one (the
        deadline passed), or None (the detector is still busy with earlier frames: its thread, or every
        worker of a `TimedDetector`)."""
        if self._thread is not None:
            call = self._thread.submit(image)
            if call is not None:
                call.done.wait(self.deadline_s)
            return call
        assert self._timed is not None
        call = _Call(image)
        try:
            call.result = self._timed.detect_within(image, self.deadline_s)
        except DetectorBusy:
            return None
        except DeadlineMissed:
            return call
        except Exception as exc:  # noqa: BLE001 - the caller logs it and fails the frame closed
            call.error = exc
        call.done.set()
        return call

    def warm_up(self, width: int, height: int) -> None:
        """Run the detector once on a blank frame of this size, without a deadline.

        The first inference at a new input size allocates buffers and can take many times longer than
        the rest; calling this before a stream starts keeps that first frame from failing closed.
        """
        blank = np.zeros((height, width, 3), np.uint8)
        if self._timed is not None:
            try:
                self._timed.detect_within(blank, max(30.0, self.deadline_s))
            except Exception as exc:  # noqa: BLE001 - the first real frame meets the same error and fails closed
                log.debug("warm-up detection failed: %r", exc)
            return
        assert self._thread is not None
        call = self._thread.submit(blank)
        if call is not None:
            call.done.wait(max(30.0, self.deadline_s))

    def reconfigure(self, tracker: TrackerConfig | None = None, mask: MaskConfig | None = None) -> None:
        """Apply new tracker/mask settings between frames, keeping the tracked faces (no gap at the switch).

        Each attribute swap is atomic, so a frame in progress finishes with either the old or new settings.
        """
        if tracker is not None:
            self._tracker.cfg = tracker
            self._cuts.threshold = tracker.cut_threshold
        if mask is not None:
            self._painter = Painter(mask)
            self.mask_cfg = mask

    def reset(self) -> None:
        """Forget tracked faces (the next frame starts a new stream); counters are kept."""
        self._tracker.reset()
        self._cuts.reset()
        if self.clinical is not None:
            self.clinical.reset()

    def stats(self) -> dict[str, float | int]:
        """Counters and per-stage latency percentiles (ms) over the recent window."""
        with self._lock:
            out: dict[str, float | int] = dict(self._counts)
            samples = {s: list(v) for s, v in self._samples.items()}
        out["fail_closed"] = sum(int(out[f"fail_closed_{r}"]) for r in FAIL_REASONS)
        if self.clinical is not None:
            out["clinical_errors"], out["blinks"] = self.clinical.errors, self.clinical.blinks
        for stage, values in samples.items():
            p50, p99 = percentiles(values)
            out[f"{stage}_ms_p50"] = round(p50 * 1000, 3)
            out[f"{stage}_ms_p99"] = round(p99 * 1000, 3)
        return out

    def latency_samples(self) -> dict[str, list[float]]:
        """Raw per-stage latencies in seconds (successful frames only), for the benchmark."""
        with self._lock:
            return {s: list(v) for s, v in self._samples.items()}

    def close(self) -> None:
        """Stop the detector thread and release the detector."""
        if self._thread is not None:
            self._thread.close()
        self.detector.close()
        if self.clinical is not None:
            self.clinical.close()

    # ------------------------------------------------------------------------------------------ internals

    def _read_clinical(self, frame: RawFrame, boxes: Any, track_ids: tuple[int, ...]) -> list[tuple[int, Any]]:
        """The clinical readings of the faces seen, from the raw frame, read before any painting. Optional:
        an error here loses the readings of this frame, never the frame."""
        if self.clinical is None or not len(track_ids):
            return []
        try:
            return self.clinical.read(frame.image, boxes, track_ids, frame.monotonic)
        except Exception:
            self.clinical.errors += 1
            log.exception("frame %d: clinical reading failed; frame masked without its signals", frame.seq)
            return []

    def _fail(self, frame: RawFrame, reason: str) -> MaskedFrame | None:
        with self._lock:
            self._counts[f"fail_closed_{reason}"] += 1
            if self.mask_cfg.on_failure == "drop":
                self._counts["dropped"] += 1
        if self.mask_cfg.on_failure == "drop":
            return None
        return mask_whole_frame(frame, self.mask_cfg.color)


def percentiles(values: Iterable[float]) -> tuple[float, float]:
    """(p50, p99) of the values by the one percentile definition (`core.stats`); (0, 0) when there are none."""
    samples = list(values)
    return percentile(samples, 50) or 0.0, percentile(samples, 99) or 0.0


@MASKERS.register("face")
def _face_masker(cfg: MaskerConfig) -> Masker:
    """Detector from the config's detector and models sections, wrapped with its tracker and mask settings."""
    return face_masker_around(create_detector(cfg.detector, cfg.models), cfg)


def face_masker_around(detector: Detector, cfg: MaskerConfig, in_place: bool = False) -> FaceMasker:
    """The config's `FaceMasker` (tracker, mask, deadline, clinical reader) around `detector`, which it
    then owns: if anything here fails, the detector and the reader are closed before the error goes on.
    `in_place`: see `FaceMasker.in_place`."""
    clinical: ClinicalReader | None = None
    try:
        clinical = build_reader(cfg.clinical, cfg.models)
        return FaceMasker(detector, cfg.tracker, cfg.mask, cfg.detector.deadline_ms, sight=cfg.detector.threshold,
                          clinical=clinical, in_place=in_place)
    except BaseException:
        if clinical is not None:
            clinical.close()
        detector.close()
        raise


__all__ = ["FaceMasker", "build_masker", "face_masker_around"]
