"""The parity watch: proves the int8 model on this device's own kernels and frames before it masks anything.

Why: the build-time gate (`edge-mask models quantize`) measures int8 against fp32 on the build machine's
CPU; a device runs other kernels (ARM dot-product, VNNI, plain AVX2) whose rounding moves borderline scores
elsewhere. So with `precision = "auto"` the device starts masking with fp32 and, on one frame in
`detector.parity_every`, also runs int8 on the same in-memory frame and compares the faces with the gate's
rule (IoU >= 0.5, score margin; `agreement.py`) at the product's threshold. Once at least
`detector.parity_faces` fp32 faces over `detector.parity_frames` frames with faces were compared and each
model found >= 99% of the other's, int8 takes over if it is also the faster here (`precision.timing`);
fp32 then shadows it at the same low rate, and if the agreement over the last `parity_faces` faces drops
below 99% the watch falls back to fp32 (one warning, the stats say so) and int8 must prove itself again
over twice the faces. If fp32 is the faster here, the shadow stops once enough faces were compared,
whether int8 agreed or not (int8 would not run anyway); the figures stay in the verdict for `doctor`.

Fail-closed: masking only ever uses the active model's detections; the shadow's output feeds the comparison
and nothing else, and a shadow that fails is counted and skipped. The shadow runs inline on the detector
thread, after the active result is in hand, so the frame is not retained anywhere; the sampling interval
stretches with the measured shadow/active time ratio so the extra work stays near 1/parity_every of
detection. The verdict and its figures persist beside the models (`verdict.py`), so a restart resumes it.
"""

from __future__ import annotations

import logging
import math
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_mask.config import OnnxDetectorConfig
from edge_mask.core.types import Detections, Image
from edge_mask.detect.agreement import PARITY_IOU, REQUIRED_AGREEMENT, frame_agreement, margin_at, share
from edge_mask.detect.base import Detector, detection_floor
from edge_mask.detect.precision import Timing, timing
from edge_mask.detect.verdict import ParityVerdict, load_verdict, save_verdict, setup_key, utc_now

log = logging.getLogger(__name__)

SAVE_EVERY_S = 60.0
"""While figures change, persist them at most this often (a flash card wears; a restart loses at most this)."""
MAX_STRETCH = 4
"""The interval stretches with the shadow/active time ratio, up to this factor of `parity_every`."""
TIMING_SAMPLES = 31
ERROR_LOG_EVERY = 100


@dataclass(frozen=True)
class WatchSettings:
    threshold: float
    """The product's detection threshold: faces are compared there, with `margin_at(threshold)`."""
    every: int
    faces: int
    frames: int
    required: float = REQUIRED_AGREEMENT
    iou: float = PARITY_IOU
    floor: float | None = None
    """The lowest score `detect` returns (the weak-detection floor); None: the threshold."""

    @property
    def lowest(self) -> float:
        return self.threshold if self.floor is None else min(self.floor, self.threshold)


class ParityWatch:
    """The `Detector` protocol over an fp32 and an int8 detector: one masks, the other shadows now and then.

    Both inner detectors must report faces down to `threshold - margin` (the comparison needs the scores
    just under the threshold); `detect` returns only the active model's faces at >= the weak-detection
    floor (`WatchSettings.lowest`), which are exactly the faces a detector built at that floor returns
    (greedy NMS never lets a lower score suppress a higher one).
    """

    def __init__(
        self,
        fp32: Detector,
        int8: Detector,
        settings: WatchSettings,
        speed: Timing,
        verdict: ParityVerdict | None = None,
        save: Callable[[ParityVerdict], object] | None = None,
    ) -> None:
        self._models = {"fp32": fp32, "int8": int8}
        self.settings = settings
        self.margin = margin_at(settings.threshold)
        self.speed = speed
        self._save = save
        self._lock = threading.Lock()
        self._verdict = resume(verdict or ParityVerdict(), speed)
        self._window: deque[tuple[int, int, int, int]] = deque()
        self._window_sum = [0, 0, 0, 0]
        self._since = 0
        self._frames = 0
        self._active_ms: deque[float] = deque(maxlen=TIMING_SAMPLES)
        self._shadow_ms: deque[float] = deque(maxlen=TIMING_SAMPLES)
        self._shadow_total_s = 0.0
        self._warm_shape: tuple[int, ...] | None = None
        self._errors = 0
        self._dirty = False
        self._state_changed = False
        self._last_save = time.monotonic()
        v = self._verdict
        log.info("parity watch: %s masks (%s); %d fp32 faces compared so far, %.1f%% found, %.1f%% confirmed",
                 self.model, v.state, v.fp32_faces, 100 * v.found_share, 100 * v.confirmed_share)

    # -------------------------------------------------------------------------------------------- state

    @property
    def state(self) -> str:
        return self._verdict.state

    @property
    def model(self) -> str:
        """The model whose detections mask the frames: "int8" or "fp32"."""
        return "int8" if self._verdict.state == "int8" else "fp32"

    @property
    def shadowing(self) -> bool:
        return self._verdict.state != "fp32-slower"

    def needed_faces(self) -> int:
        """fp32 faces the current proof needs (twice as many after a fallback)."""
        return self.settings.faces * (2 if self._verdict.state == "fp32-fallback" else 1)

    def verdict(self) -> ParityVerdict:
        with self._lock:
            return ParityVerdict(**self._verdict.as_dict())

    # ------------------------------------------------------------------------------------------ detect

    def detect(self, image: Image) -> Detections:
        active = self._models[self.model]
        start = time.perf_counter()
        found = active.detect(image)
        self._active_ms.append(time.perf_counter() - start)
        self._frames += 1
        if self.shadowing:
            self._since += 1
            if image.shape != self._warm_shape:
                self._warm(image)  # the first inference at a size allocates: never time or compare it
            elif self._since >= self.interval():
                self._since = 0
                self._sample(image, found)
        return found.select(found.scores >= self.settings.lowest)

    def interval(self) -> int:
        """Frames between two comparisons: `every`, stretched by how much slower the shadow model runs.

        The ratio comes from this device's timing record (the same figures `auto` chose by), so the frames
        compared do not depend on momentary load; live medians stand in when the record has no figures.
        """
        every = self.settings.every
        ms = {"int8": self.speed.int8_ms, "fp32": self.speed.fp32_ms}
        shadow_ms, active_ms = ms["fp32" if self.model == "int8" else "int8"], ms[self.model]
        if shadow_ms is None or active_ms is None:
            if len(self._shadow_ms) < 3 or not self._active_ms:
                return every
            shadow_ms, active_ms = statistics.median(self._shadow_ms), statistics.median(self._active_ms)
        ratio = shadow_ms / max(active_ms, 1e-6)
        return max(every, min(math.ceil(every * ratio), every * MAX_STRETCH))

    def _shadow(self) -> Detector:
        return self._models["fp32" if self.model == "int8" else "int8"]

    def _warm(self, image: Image) -> None:
        start = time.perf_counter()
        try:
            self._shadow().detect(image)
        except Exception as exc:  # noqa: BLE001 - the shadow never breaks masking; counted and logged
            self._shadow_failed(exc)
        self._shadow_total_s += time.perf_counter() - start
        self._warm_shape = image.shape

    def _sample(self, image: Image, found: Detections) -> None:
        start = time.perf_counter()
        try:
            other = self._shadow().detect(image)
        except Exception as exc:  # noqa: BLE001 - the shadow never breaks masking; counted and logged
            self._shadow_failed(exc)
            return
        finally:
            elapsed = time.perf_counter() - start
            self._shadow_total_s += elapsed
        self._shadow_ms.append(elapsed)
        ref, cand = (found, other) if self.model == "fp32" else (other, found)
        counts = frame_agreement(ref, cand, self.settings.threshold, self.margin, self.settings.iou)
        with self._lock:
            self._count(counts)
            self._decide()
        self._maybe_save()

    def _shadow_failed(self, exc: Exception) -> None:
        self._errors += 1
        if self._errors % ERROR_LOG_EVERY == 1:
            log.warning("parity watch: the %s shadow failed (%r; %d failures); masking is unaffected",
                        "fp32" if self.model == "int8" else "int8", exc, self._errors)

    def _count(self, counts: tuple[int, int, int, int]) -> None:
        v = self._verdict
        n_ref, hit_ref, n_cand, hit_cand = counts
        v.fp32_faces += n_ref
        v.found += hit_ref
        v.int8_faces += n_cand
        v.confirmed += hit_cand
        v.frames += 1
        v.frames_with_faces += bool(n_ref or n_cand)
        self._dirty = True
        if v.state != "int8":
            return
        self._window.append(counts)
        self._window_sum = [a + b for a, b in zip(self._window_sum, counts, strict=True)]
        while len(self._window) > 1:
            first = self._window[0]
            rest = [a - b for a, b in zip(self._window_sum, first, strict=True)]
            if max(rest[0], rest[2]) < self.settings.faces:
                break
            self._window.popleft()
            self._window_sum = rest
        v.window_fp32_faces, v.window_found, v.window_int8_faces, v.window_confirmed = self._window_sum

    def _decide(self) -> None:
        v = self._verdict
        required = self.settings.required
        if v.state in ("proving", "fp32-fallback"):
            enough = v.fp32_faces >= self.needed_faces() and v.frames_with_faces >= self.settings.frames
            agrees = v.found_share >= required and v.confirmed_share >= required
            figures = (f"{v.fp32_faces} fp32 faces over {v.frames_with_faces} frames with faces: "
                       f"{100 * v.found_share:.2f}% found by int8, {100 * v.confirmed_share:.2f}% of int8's confirmed")
            if enough and not agrees and self.speed.chosen != "int8":
                # int8 would not run here even if it agreed: no reason to keep paying for the shadow
                log.info("parity watch: int8 does not agree on this device (%s) and fp32 is faster (fp32 %s ms, "
                         "int8 %s ms); fp32 keeps masking and the shadow stops", figures, self.speed.fp32_ms,
                         self.speed.int8_ms)
                self._set_state("fp32-slower")
                return
            if not (enough and agrees):
                return
            if self.speed.chosen == "int8":
                log.info("parity watch: int8 proven on this device (%s) and faster (int8 %s ms, fp32 %s ms); "
                         "int8 masks from now on, fp32 shadows", figures, self.speed.int8_ms, self.speed.fp32_ms)
                self._set_state("int8")
            else:
                log.info("parity watch: int8 agrees on this device (%s) but fp32 is faster (fp32 %s ms, int8 %s "
                         "ms); fp32 keeps masking and the shadow stops", figures, self.speed.fp32_ms,
                         self.speed.int8_ms)
                self._set_state("fp32-slower")
            return
        if v.state != "int8":
            return
        w_ref, w_found, w_cand, w_confirmed = self._window_sum
        if max(w_ref, w_cand) < self.settings.faces:
            return
        if share(w_found, w_ref) >= required and share(w_confirmed, w_cand) >= required:
            return
        log.warning("parity watch: int8 disagrees with fp32 on this device over the last %d fp32 / %d int8 faces "
                    "(%.2f%% found, %.2f%% confirmed, %.0f%% required); fp32 masks again and int8 must prove "
                    "itself over %d faces", w_ref, w_cand, 100 * share(w_found, w_ref),
                    100 * share(w_confirmed, w_cand), 100 * required, 2 * self.settings.faces)
        v.fallbacks += 1
        v.fp32_faces = v.found = v.int8_faces = v.confirmed = v.frames = v.frames_with_faces = 0
        self._set_state("fp32-fallback")

    def _set_state(self, state: str) -> None:
        v = self._verdict
        v.state = state
        v.decided_at = utc_now()
        v.int8_ms, v.fp32_ms = self.speed.int8_ms, self.speed.fp32_ms
        self._window.clear()
        self._window_sum = [0, 0, 0, 0]
        self._since = 0
        self._state_changed = True  # a new state is written at once

    def _maybe_save(self, force: bool = False) -> None:
        now = time.monotonic()
        force = force or self._state_changed
        if self._save is None or not self._dirty or (not force and now - self._last_save < SAVE_EVERY_S):
            return
        self._last_save = now
        self._dirty = self._state_changed = False
        self._save(self.verdict())

    # ----------------------------------------------------------------------------------------- report

    def stats(self) -> dict[str, Any]:
        """The figures the live service's stats carry (see `detector_stats`)."""
        v = self.verdict()
        frames = max(self._frames, 1)
        shadow_ms = list(self._shadow_ms)
        return {
            "detector_model": self.model,
            "parity_state": v.state,
            "parity_faces": v.fp32_faces,
            "parity_found": round(v.found_share, 4),
            "parity_confirmed": round(v.confirmed_share, 4),
            "parity_int8_faces": v.int8_faces,
            "parity_frames": v.frames,
            "parity_needed_faces": self.needed_faces(),
            "parity_window_found": round(share(v.window_found, v.window_fp32_faces), 4),
            "parity_window_confirmed": round(share(v.window_confirmed, v.window_int8_faces), 4),
            "parity_fallbacks": v.fallbacks,
            "parity_errors": self._errors,
            "parity_shadow_ms": round(statistics.median(shadow_ms) * 1e3, 2) if shadow_ms else None,
            "parity_cost_ms_per_frame": round(self._shadow_total_s * 1e3 / frames, 3),
        }

    def close(self) -> None:
        self._maybe_save(force=True)
        for detector in self._models.values():
            detector.close()


def resume(verdict: ParityVerdict, speed: Timing) -> ParityVerdict:
    """The state to start in from the last verdict: a proven int8 runs only while it is still the faster."""
    if verdict.state in ("int8", "fp32-slower"):
        state = "int8" if speed.chosen == "int8" else "fp32-slower"
        if state != verdict.state:
            verdict.state, verdict.decided_at = state, utc_now()
    return verdict


def build_watch(
    settings: OnnxDetectorConfig, fp32_path: Path, int8_path: Path, make: Callable[[Path, float, str], Detector]
) -> ParityWatch:
    """The watch for `precision = "auto"`: both models built by `make(path, threshold, label)` at the floor
    the comparison needs, the speed verdict, and the last parity verdict for this exact setup."""
    floor = min(settings.threshold - margin_at(settings.threshold), detection_floor(settings))
    key = setup_key(int8_path, fp32_path, settings.threads, settings.providers)
    speed = timing(int8_path, fp32_path, settings.threads, settings.providers)
    cache = int8_path.parent
    fp32 = make(fp32_path, floor, "fp32")
    try:
        int8 = make(int8_path, floor, "int8")
    except BaseException:
        fp32.close()
        raise
    watch = WatchSettings(settings.threshold, settings.parity_every, settings.parity_faces, settings.parity_frames,
                          floor=detection_floor(settings))
    return ParityWatch(fp32, int8, watch, speed, load_verdict(cache, key), lambda v: save_verdict(cache, key, v))
