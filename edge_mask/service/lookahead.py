"""The look-ahead detector of a batch run: worker threads that detect the next frames while the masker
tracks and paints the current one (batch_video.py).

Detection is a pure function of one frame, so a worker computes for frame i exactly what the masker's own
detector would; the masker collects that result in frame order, within its deadline
(`LookaheadDetector.detect_within`, the `detect.TimedDetector` protocol), and fails the frame closed when it
does not come. Service room: no raw frame leaves it except to the masker.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Sequence
from concurrent import futures
from concurrent.futures import Future

from edge_mask.core.stats import usable_cpus
from edge_mask.core.types import Detections, Image
from edge_mask.detect import DeadlineMissed, Detector, DetectorBusy

log = logging.getLogger(__name__)

MAX_WORKERS = 4


class _Job:
    """One frame for a worker, and its result. A cancelled job lets go of its frame at once: while every
    worker hangs, refused frames must not pile up in the queue (a 1080p frame is 6 MB)."""

    __slots__ = ("future", "image")

    def __init__(self, image: Image) -> None:
        self.image: Image | None = image
        self.future: Future[Detections] = Future()

    def cancel(self) -> bool:
        """Cancel it unless a worker has started it; True when cancelled (its frame is dropped)."""
        if not self.future.cancel():
            return False
        self.image = None
        return True


class LookaheadDetector:
    """The `Detector` protocol over worker threads, one detector each, that work ahead on frames announced
    with `ahead()`.

    `detect(image)` returns the result computed for that very image object (waiting for it if needed, and
    raising what the worker raised); an image never announced (a warm-up frame, a photo) is queued and
    detected there and then. Workers are daemon threads, like the masker's detector thread: a detector hung
    in native code is left behind at close and never blocks the process from exiting.

    With a deadline (`detect_within`), a frame that missed it is cancelled if no worker has started it; one
    a worker is still on counts as overdue until it returns. While every worker is on an overdue frame (a
    hang), frames are neither queued nor waited for: they are refused at once (`DetectorBusy`), as the
    masker's detector thread refuses frames while it is stuck.
    """

    def __init__(self, detectors: Sequence[Detector]) -> None:
        if not detectors:
            raise ValueError("LookaheadDetector needs at least one detector")
        self._detectors = list(detectors)
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._ahead: dict[int, _Job] = {}
        self._overdue: list[Future[Detections]] = []
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._work, args=(d,), name=f"edge-mask-detect-{n}", daemon=True)
                         for n, d in enumerate(self._detectors)]
        for thread in self._threads:
            thread.start()

    @property
    def workers(self) -> int:
        return len(self._detectors)

    @property
    def pending(self) -> int:
        """Frames announced and not yet collected (0 after `forget()`: no raw frame is held)."""
        with self._lock:
            return len(self._ahead)

    def ahead(self, image: Image) -> None:
        """Start detecting `image` on the next free worker; `detect(image)` collects the result. A frame
        already announced, or announced while every worker hangs, is not queued (again)."""
        with self._lock:
            if id(image) in self._ahead or self._stuck():
                return
            job = self._ahead[id(image)] = _Job(image)
        self._jobs.put(job)

    def detect(self, image: Image) -> Detections:
        return self._collect(image).future.result()

    def detect_within(self, image: Image, timeout: float) -> Detections:
        """`detect` with a deadline (the `TimedDetector` protocol); the masker fails the frame closed on
        `DeadlineMissed` or `DetectorBusy` (see the class docstring)."""
        with self._lock:
            stuck = self._stuck()
            announced = self._ahead.pop(id(image), None) if stuck else None
        if stuck:
            if announced is not None and announced.future.done() and not announced.future.cancelled():
                return announced.future.result()  # finished just before the hang was seen: use it
            if announced is not None and not announced.cancel():
                self._late(announced.future)  # a worker took it meanwhile: it counts until it returns
            raise DetectorBusy(f"all {len(self._threads)} detector workers are still on frames past their deadline")
        job = self._collect(image)
        done, _ = futures.wait([job.future], timeout)
        if not done:
            if not job.cancel():  # already running: it holds its worker until it returns
                self._late(job.future)
            raise DeadlineMissed(f"no detections within {timeout:.3f} s")
        return job.future.result()

    def _stuck(self) -> bool:
        """Whether every worker is on an overdue frame (call with the lock held)."""
        self._overdue = [future for future in self._overdue if not future.done()]
        return len(self._overdue) >= len(self._threads)

    def _late(self, future: Future[Detections]) -> None:
        with self._lock:
            self._overdue.append(future)

    def _collect(self, image: Image) -> _Job:
        with self._lock:
            job = self._ahead.pop(id(image), None)
        if job is None or job.image is not image:
            job = _Job(image)
            self._jobs.put(job)
        return job

    def forget(self) -> None:
        """Drop every announced frame not yet collected (after an error): queued ones are cancelled, and a
        result still being computed is thrown away."""
        with self._lock:
            jobs, self._ahead = list(self._ahead.values()), {}
        for job in jobs:
            job.cancel()

    def close(self, timeout: float = 1.0) -> None:
        self.forget()
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            thread.join(timeout)
            if thread.is_alive():
                log.warning("%s still busy at close; leaving it (daemon) behind", thread.name)
        for detector in self._detectors:
            detector.close()

    def _work(self, detector: Detector) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            self._run(detector, job)
            del job  # no raw frame stays referenced while the worker waits for the next one

    @staticmethod
    def _run(detector: Detector, job: _Job) -> None:
        if not job.future.set_running_or_notify_cancel():
            return
        image = job.image
        assert image is not None  # only a cancelled job lets go of its frame
        try:
            job.future.set_result(detector.detect(image))
        except Exception as exc:  # noqa: BLE001 - raised to the masker waiting for this frame, which fails it closed
            job.future.set_exception(exc)


def plan_workers(cpus: int | None = None) -> tuple[int, int]:
    """(detector workers, onnxruntime threads each) for a batch run on `cpus` usable CPUs (default: this
    process's CPU affinity, so `taskset` sizes a batch run).

    YuNet is small: on this project's 2-core machine a second intra-op thread made one inference about 10%
    faster, while a second frame in parallel nearly doubled frames/s (and 2 workers x 1 thread beat
    1 x 2 and 3 x 1 on the whole `edge-mask mask` run). So the CPUs go to frames first, up to MAX_WORKERS,
    then to threads. The config's `detector.threads` is the live service's setting and is not used here.
    """
    if cpus is None:
        cpus = usable_cpus()
    cpus = max(1, cpus)
    workers = min(cpus, MAX_WORKERS)
    return workers, max(1, cpus // workers)
