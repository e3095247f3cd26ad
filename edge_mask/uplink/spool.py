"""Crash-safe on-disk queue between sealing and upload.

Every sealed frame is written here *before* it is published and leaves only when the broker has
acknowledged it (QoS 1 PUBACK), so neither a broker outage nor a killed device process loses a frame.

Why SQLite in WAL mode with `synchronous=FULL` (and not temp-file + fsync + rename per frame):
* a transaction is atomic: after a power cut or `kill -9` a record is either wholly present or absent,
  never torn, and SQLite's recovery of the write-ahead log needs no code of ours;
* `FULL` makes SQLite fsync the WAL at every commit, so `put()` returning means the frame is on stable
  storage (`NORMAL` in WAL mode may lose the last commits on power loss, which would break "nothing lost");
* one file holds thousands of records with cheap ordered scans, where a directory of files needs a
  listing and sort on every start, plus directory fsyncs; a commit here costs well under a millisecond.
Acknowledgements are deletes: losing one on power loss only means a frame is re-sent, and the receiver
drops it as a duplicate, so acks do not need their own fsync but get it anyway from the same connection.

Bounds: total bytes and record age. When a new frame would exceed `max_bytes`, or records are older than
`max_age_s`, the oldest records are deleted and counted (`dropped_full`, `dropped_age`); the process never
stops because the spool is full. Only sealed bytes are stored; raw or masked pixels never reach this module.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Protocol

from edge_mask.config import SpoolConfig
from edge_mask.core.errors import UserError
from edge_mask.core.registry import Registry

if TYPE_CHECKING:
    from edge_mask.seal import SealedFrame

log = logging.getLogger(__name__)

DB_NAME = "spool.sqlite3"
_AGE_CHECK_EVERY_S = 1.0


@dataclass(frozen=True)
class SpoolRecord:
    """One sealed message waiting for the broker's acknowledgement; `id` orders records oldest first."""

    id: int
    seq: int
    message: bytes


@dataclass(frozen=True)
class SpoolStats:
    """Counters since this process opened the spool, plus the current backlog."""

    pending: int
    pending_bytes: int
    oldest_age_s: float
    put: int
    acked: int
    dropped_full: int
    dropped_age: int

    def as_dict(self) -> dict[str, float | int]:
        return {
            "spool_pending": self.pending,
            "spool_pending_bytes": self.pending_bytes,
            "spool_oldest_age_s": round(self.oldest_age_s, 3),
            "spool_put": self.put,
            "spool_acked": self.acked,
            "spool_dropped_full": self.dropped_full,
            "spool_dropped_age": self.dropped_age,
        }


class Spool(Protocol):
    """What the capture pipeline (writer) and the uplink (reader/acker) share; all methods thread-safe."""

    def put(self, sealed: SealedFrame) -> int: ...

    def pending(self, limit: int, exclude: Collection[int] = ()) -> list[SpoolRecord]: ...

    def ack(self, record_id: int) -> None: ...

    def stats(self) -> SpoolStats: ...

    def close(self) -> None: ...


SPOOLS: Registry[Spool] = Registry("spool")


def open_spool(cfg: SpoolConfig) -> Spool:
    """Open (creating if needed) the spool named by the config; its backlog is replayed by the uplink."""
    return SPOOLS.create(cfg)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS frames (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    stream BLOB NOT NULL,
    seq INTEGER NOT NULL,
    created REAL NOT NULL,
    size INTEGER NOT NULL,
    message BLOB NOT NULL
)
"""


class SqliteSpool:
    """The SQLite spool: one database file in the directory `cfg.path`, locked against a second process."""

    def __init__(self, cfg: SpoolConfig, clock: Callable[[], float] = time.time) -> None:
        self._cfg = cfg
        self._now = clock
        self._lock = threading.Lock()
        self._dir = Path(cfg.path)
        try:
            self._dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise UserError(
                f"spool.path = {self._dir}: cannot create the spool directory ({exc.strerror}); "
                "point spool.path at a writable directory"
            ) from None
        self._lockfile = self._take_lock()
        path = self._dir / DB_NAME
        try:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves so every put is exactly one transaction.
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise UserError(f"spool.path = {self._dir}: the file system does not support SQLite WAL mode")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(_SCHEMA)
            count, total, oldest = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(size), 0), MIN(created) FROM frames"
            ).fetchone()
        except sqlite3.DatabaseError as exc:
            self._lockfile.close()
            raise UserError(
                f"spool.path = {self._dir}: the spool database is unreadable ({exc}); "
                f"move {path} aside to start an empty spool"
            ) from None
        self._count = int(count)
        self._bytes = int(total)
        self._oldest = float(oldest) if oldest is not None else None
        self._put = self._acked = self._dropped_full = self._dropped_age = 0
        self._next_age_check = 0.0
        self._closed = False
        if self._count:
            log.info("spool %s: %d frames (%d bytes) waiting from before, replaying in order", path, count, total)
        self._expire_old()

    def _take_lock(self) -> IO[bytes]:
        """Two processes draining one spool would send every frame twice and race on acks; refuse that."""
        # Held open for the spool's lifetime; the kernel releases the lock when the process dies (kill -9).
        handle = open(self._dir / "spool.lock", "wb")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise UserError(
                f"spool.path = {self._dir}: the spool is in use by another edge-mask process; "
                "stop it or give this one its own spool.path"
            ) from None
        return handle

    # -------------------------------------------------------------------------------------------- writing

    def put(self, sealed: SealedFrame) -> int:
        """Store one sealed frame durably (fsynced) and return its record id."""
        message = getattr(sealed, "message", None)
        if not isinstance(message, (bytes, bytearray, memoryview)):
            # Only sealed bytes may touch the disk; a frame object here would be a wiring bug.
            raise TypeError(f"spool.put expects a SealedFrame, got {type(sealed).__name__}")
        message = bytes(message)
        size = len(message)
        with self._lock:
            self._check_open()
            self._expire_old()
            self._make_room(size)
            now = self._now()
            cur = self._db.execute(
                "INSERT INTO frames (stream, seq, created, size, message) VALUES (?, ?, ?, ?, ?)",
                (bytes(sealed.stream_id), int(sealed.seq), now, size, message),
            )
            record_id = cur.lastrowid
            assert record_id is not None
            self._count += 1
            self._bytes += size
            if self._oldest is None:
                self._oldest = now
            self._put += 1
            return int(record_id)

    def _make_room(self, size: int) -> None:
        """Drop the oldest records until `size` more bytes fit; a frame larger than the bound is kept alone."""
        dropped = 0
        while self._count and self._bytes + size > self._cfg.max_bytes:
            row = self._db.execute("SELECT id, size FROM frames ORDER BY id LIMIT 1").fetchone()
            if row is None:
                break
            self._db.execute("DELETE FROM frames WHERE id = ?", (row[0],))
            self._count -= 1
            self._bytes -= int(row[1])
            dropped += 1
        if dropped:
            self._dropped_full += dropped
            self._refresh_oldest()
            log.warning("spool full (max_bytes=%d): dropped the %d oldest frames", self._cfg.max_bytes, dropped)

    def _expire_old(self) -> None:
        now = self._now()
        if now < self._next_age_check or self._oldest is None:
            return
        self._next_age_check = now + _AGE_CHECK_EVERY_S
        cutoff = now - self._cfg.max_age_s
        if self._oldest >= cutoff:
            return
        count, total = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM frames WHERE created < ?", (cutoff,)
        ).fetchone()
        self._db.execute("DELETE FROM frames WHERE created < ?", (cutoff,))
        self._count -= int(count)
        self._bytes -= int(total)
        self._dropped_age += int(count)
        self._refresh_oldest()
        if count:
            log.warning("spool: dropped %d frames older than max_age_s=%g", count, self._cfg.max_age_s)

    def _refresh_oldest(self) -> None:
        row = self._db.execute("SELECT MIN(created) FROM frames").fetchone()
        self._oldest = float(row[0]) if row and row[0] is not None else None

    # -------------------------------------------------------------------------------------------- reading

    def pending(self, limit: int, exclude: Collection[int] = ()) -> list[SpoolRecord]:
        """Up to `limit` records, oldest first, skipping ids in `exclude` (those already in flight)."""
        if limit <= 0:
            return []
        with self._lock:
            self._check_open()
            self._expire_old()
            # Fetch enough rows to fill `limit` after skipping the excluded ones; exclude is the small
            # in-flight window, so this stays one short indexed scan.
            rows = self._db.execute(
                "SELECT id, seq, message FROM frames ORDER BY id LIMIT ?", (limit + len(exclude),)
            ).fetchall()
        skip = set(exclude)
        out = [SpoolRecord(int(r[0]), int(r[1]), bytes(r[2])) for r in rows if r[0] not in skip]
        return out[:limit]

    def ack(self, record_id: int) -> None:
        """Remove a record the broker acknowledged; unknown ids (already dropped for space) are ignored."""
        with self._lock:
            self._check_open()
            row = self._db.execute("SELECT size, created FROM frames WHERE id = ?", (record_id,)).fetchone()
            if row is None:
                return
            self._db.execute("DELETE FROM frames WHERE id = ?", (record_id,))
            self._count -= 1
            self._bytes -= int(row[0])
            self._acked += 1
            if self._oldest is not None and float(row[1]) <= self._oldest:
                self._refresh_oldest()

    def stats(self) -> SpoolStats:
        with self._lock:
            oldest = 0.0 if self._oldest is None else max(0.0, self._now() - self._oldest)
            return SpoolStats(
                pending=self._count,
                pending_bytes=self._bytes,
                oldest_age_s=oldest,
                put=self._put,
                acked=self._acked,
                dropped_full=self._dropped_full,
                dropped_age=self._dropped_age,
            )

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._db.close()
            self._lockfile.close()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("spool is closed")

    def __enter__(self) -> SqliteSpool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@SPOOLS.register("sqlite")
def _sqlite_spool(cfg: SpoolConfig) -> Spool:
    return SqliteSpool(cfg)

