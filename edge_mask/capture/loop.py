"""The resilient capture loop: read frames, survive faults, report health, never spin.

Why a supervisor plus a reader thread: camera reads block inside drivers (cv2 on a dead RTSP stream,
libcamera after "frontend has timed out") and Python cannot interrupt them. The reader thread does the
blocking read; the supervisor watches its progress and, when no frame arrived for `read_timeout_s`,
declares a stall, closes the camera from outside (which unblocks most drivers), abandons the stuck reader
(a generation number makes any late frame from it be discarded) and reopens with exponential backoff
(`edge_mask.core.backoff`, the same jittered policy as the uplink's reconnects).
Every wait is an `Event.wait`, so a dead camera costs no CPU.

Frames get a sequence number that keeps counting across reconnects: the seal binds (stream, seq), and a
restart of the numbering would look like a replay to the receiver.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from edge_mask.core.backoff import Backoff
from edge_mask.core.types import RawFrame

if TYPE_CHECKING:
    from edge_mask.capture.base import Camera

log = logging.getLogger(__name__)

FrameSink = Callable[[RawFrame], None]
StateListener = Callable[[str, "str | None"], None]
_POLL_S = 0.05


@dataclass
class CaptureHealth:
    """What the service publishes about the camera (state is one of the `CaptureLoop` states)."""

    state: str = "starting"
    frames: int = 0
    errors: int = 0
    reconnects: int = 0
    stalls: int = 0
    last_error: str | None = None
    last_frame_monotonic: float | None = None

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        last = out.pop("last_frame_monotonic")
        out["last_frame_age_s"] = None if last is None else round(time.monotonic() - last, 3)
        return out


class CaptureLoop:
    """Runs a camera in background threads and hands each frame to `sink` (which must not block).

    States: starting -> running; on a fault `retrying` (open or read failed) or `stalled` (no frame for
    `read_timeout_s`), then back to running; `ended` when a finite source ran out; `stopped` after stop().
    `on_state(state, detail)` is called on every change (from a capture thread).
    """

    def __init__(
        self,
        factory: Callable[[], Camera],
        sink: FrameSink,
        *,
        read_timeout_s: float,
        retry_min_s: float,
        retry_max_s: float,
        on_state: StateListener | None = None,
        first_seq: int = 0,
        wait: Callable[[threading.Event, float], bool] | None = None,
    ) -> None:
        self._factory = factory
        self._sink = sink
        self._read_timeout_s = read_timeout_s
        self._backoff = Backoff(retry_min_s, retry_max_s)
        self._on_state = on_state
        self._seq = first_seq
        self._wait = wait or (lambda event, delay: event.wait(delay))
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._health = CaptureHealth()
        self._thread: threading.Thread | None = None
        self._camera: Camera | None = None
        self._generation = 0
        self._progress = 0.0  # monotonic time of the last frame (or of the open) of the current reader
        self._reader_done: threading.Event = threading.Event()
        self._reader_error: BaseException | None = None
        self._reader_eof = False
        self.delays: list[float] = []  # backoff delays taken, for health and tests

    # ------------------------------------------------------------------------------------------ public

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("capture loop already started")
        self._thread = threading.Thread(target=self._supervise, name="edge-mask-capture", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 3.0) -> None:
        """Stop reading and release the camera; a reader stuck in a driver is abandoned (daemon)."""
        self._stop.set()
        self._close_camera()
        if self._thread is not None:
            self._thread.join(timeout)
        self._set_state("stopped", None)

    def health(self) -> dict[str, Any]:
        with self._lock:
            return self._health.as_dict()

    @property
    def state(self) -> str:
        with self._lock:
            return self._health.state

    @property
    def ended(self) -> bool:
        return self.state in ("ended", "stopped")

    # -------------------------------------------------------------------------------------- supervisor

    def _supervise(self) -> None:
        first = True
        while not self._stop.is_set():
            if not first:
                delay = self._backoff.next()
                self.delays.append(delay)
                log.info("camera: retrying in %.1f s", delay)
                if self._wait(self._stop, delay):
                    break
                with self._lock:
                    self._health.reconnects += 1
            first = False
            if not self._open():
                continue
            outcome = self._watch_reader()
            self._close_camera()
            if outcome == "eof":
                self._set_state("ended", "end of stream")
                return
            if outcome == "stop":
                break

    def _open(self) -> bool:
        try:
            camera = self._factory()
            camera.open()
        except Exception as exc:  # noqa: BLE001 - any driver failure is a camera fault to retry
            self._fault("retrying", f"open failed: {exc}")
            return False
        with self._lock:
            self._camera = camera
            self._generation += 1
            generation = self._generation
        self._progress = time.monotonic()
        self._reader_done = threading.Event()
        self._reader_error, self._reader_eof = None, False
        threading.Thread(
            target=self._read_frames, args=(camera, generation, self._reader_done), name="edge-mask-camera-read",
            daemon=True,
        ).start()
        return True

    def _watch_reader(self) -> str:
        """Wait for the reader to finish, fail or stall; returns 'eof', 'error', 'stall' or 'stop'."""
        done = self._reader_done
        while not self._stop.is_set():
            if done.wait(_POLL_S):
                if self._stop.is_set():
                    return "stop"
                if self._reader_eof:
                    return "eof"
                self._fault("retrying", f"read failed: {self._reader_error}")
                return "error"
            if time.monotonic() - self._progress > self._read_timeout_s:
                with self._lock:
                    self._health.stalls += 1
                    self._generation += 1  # whatever the stuck reader returns later is discarded
                self._fault("stalled", f"no frame for {self._read_timeout_s:g} s")
                return "stall"
        return "stop"

    def _fault(self, state: str, detail: str) -> None:
        with self._lock:
            self._health.errors += 1
            self._health.last_error = detail
        log.warning("camera: %s (%s)", detail, state)
        self._set_state(state, detail)

    def _close_camera(self) -> None:
        with self._lock:
            camera, self._camera = self._camera, None
        if camera is None:
            return
        # close() may itself block in a wedged driver: do it off the supervisor thread.
        closer = threading.Thread(target=_quiet_close, args=(camera,), name="edge-mask-camera-close", daemon=True)
        closer.start()
        closer.join(1.0)

    # ------------------------------------------------------------------------------------------ reader

    def _read_frames(self, camera: Camera, generation: int, done: threading.Event) -> None:
        try:
            while not self._stop.is_set():
                image = camera.read()
                if generation != self._generation or self._stop.is_set():
                    return  # abandoned after a stall, or stopping: never deliver
                if image is None:
                    self._reader_eof = True
                    return
                now_wall, now_mono = time.time(), time.monotonic()
                frame = RawFrame(image=image, seq=self._seq, captured_at=now_wall, monotonic=now_mono)
                self._seq += 1
                self._progress = now_mono
                with self._lock:
                    self._health.frames += 1
                    self._health.last_frame_monotonic = now_mono
                    running = self._health.state == "running"
                if not running:
                    self._backoff.reset()
                    self._set_state("running", None)
                self._sink(frame)
        except Exception as exc:  # noqa: BLE001 - reported to the supervisor, which retries
            if generation == self._generation:
                self._reader_error = exc
        finally:
            done.set()

    def _set_state(self, state: str, detail: str | None) -> None:
        with self._lock:
            if self._health.state == state or (self._health.state == "stopped"):
                return
            self._health.state = state
        if self._on_state is not None:
            self._on_state(state, detail)


def _quiet_close(camera: Camera) -> None:
    try:
        camera.close()
    except Exception as exc:  # noqa: BLE001 - closing a broken device may fail; nothing else to do
        log.debug("camera close failed: %s", exc)
