"""The two queue-like pieces between service stages.

`LatestQueue` is the only place the live pipeline drops frames: raw frames waiting for the masker, oldest
first, so the device always masks the most recent picture and never sends stale or unmasked ones.
`TimedSpool` wraps the spool the uplink drains, to time each frame from capture to its confirmation.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Collection, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from edge_mask.core.types import RawFrame
from edge_mask.uplink import ids_in_ranges

if TYPE_CHECKING:
    from edge_mask.seal import SealedFrame
    from edge_mask.uplink import Spool, SpoolRecord, SpoolStats


class LatestQueue:
    """A bounded queue of raw frames that drops the oldest on overflow (and counts it)."""

    def __init__(self, size: int, on_drop: Callable[[], None]) -> None:
        self._items: collections.deque[RawFrame] = collections.deque()
        self._size = size
        self._on_drop = on_drop
        self._cond = threading.Condition()
        self._closed = False

    def put(self, frame: RawFrame, block: bool = False, stop: threading.Event | None = None) -> None:
        """Non-blocking (live camera): evict the oldest when full. Blocking (file at consumer pace)."""
        with self._cond:
            while block and len(self._items) >= self._size and not self._closed and not (stop and stop.is_set()):
                self._cond.wait(0.1)
            if self._closed:
                return
            if len(self._items) >= self._size:
                self._items.popleft()
                self._on_drop()
            self._items.append(frame)
            self._cond.notify_all()

    def get(self, timeout: float) -> RawFrame | None:
        with self._cond:
            if not self._items and not self._closed:
                self._cond.wait(timeout)
            if self._items:
                frame = self._items.popleft()
                self._cond.notify_all()
                return frame
            return None

    def close(self, discard: bool) -> int:
        """No more frames; with `discard` the waiting raw frames are forgotten (returns how many)."""
        with self._cond:
            self._closed = True
            dropped = len(self._items) if discard else 0
            if discard:
                self._items.clear()
            self._cond.notify_all()
            return dropped

    @property
    def drained(self) -> bool:
        with self._cond:
            return self._closed and not self._items

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)


class TimedSpool:
    """Wraps the spool handed to the uplink to time capture -> confirmation (the cloud's Ack, or the
    broker's PUBACK with `uplink.confirm = "broker"`) per frame."""

    def __init__(self, inner: Spool, on_ack: Callable[[float], None]) -> None:
        self.inner = inner
        self._captured: dict[int, tuple[tuple[bytes, int], float]] = {}
        self._ids: dict[tuple[bytes, int], int] = {}
        self._lock = threading.Lock()
        self._on_ack = on_ack

    @property
    def directory(self) -> Path | None:
        return self.inner.directory

    def put_timed(self, sealed: SealedFrame, captured_monotonic: float) -> int:
        record_id = self.inner.put(sealed)
        if record_id >= 0:
            key = (bytes(sealed.stream_id), int(sealed.seq))
            with self._lock:
                self._captured[record_id] = (key, captured_monotonic)
                self._ids[key] = record_id
        return record_id

    def put(self, sealed: SealedFrame) -> int:
        return self.inner.put(sealed)

    def pending(self, limit: int, exclude: Collection[int] = ()) -> list[SpoolRecord]:
        return self.inner.pending(limit, exclude)

    def ack(self, record_id: int) -> None:
        self.inner.ack(record_id)
        self._done([record_id])

    def delete_ranges(self, stream_id: bytes, ranges: Iterable[tuple[int, int]]) -> int:
        spans = list(ranges)
        deleted = self.inner.delete_ranges(stream_id, spans)
        if deleted:
            with self._lock:
                ids = ids_in_ranges(self._ids, stream_id, spans)
            self._done(ids)
        return deleted

    def _done(self, record_ids: list[int]) -> None:
        now = time.monotonic()
        with self._lock:
            found = [self._captured.pop(rid, None) for rid in record_ids]
            for item in found:
                if item is not None:
                    self._ids.pop(item[0], None)
        for item in found:
            if item is not None:
                self._on_ack(now - item[1])

    def stats(self) -> SpoolStats:
        return self.inner.stats()

    def close(self) -> None:
        self.inner.close()
