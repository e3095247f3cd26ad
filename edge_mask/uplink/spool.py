"""Crash-safe on-disk queue between sealing and upload.

Every sealed frame is written here *before* it is published and leaves only when the far side confirmed
it: the cloud's Ack naming its (stream, seq) (`delete_ranges`), or, for an uplink configured to trust the
broker, the broker's PUBACK (`ack`). Neither a broker outage, a lost broker queue nor a killed device
process loses a frame.

Why SQLite in WAL mode with `synchronous=FULL` (and not temp-file + fsync + rename per frame):
* a transaction is atomic: after a power cut or `kill -9` a record is either wholly present or absent,
  never torn, and SQLite's recovery of the write-ahead log needs no code of ours;
* `FULL` makes SQLite fsync the WAL at every commit, so `put()` returning means the frame is on stable
  storage (`NORMAL` in WAL mode may lose the last commits on power loss, which would break "nothing lost");
* one file holds thousands of records with cheap ordered scans, where a directory of files needs a
  listing and sort on every start, plus directory fsyncs; a commit here costs well under a millisecond.
A delete lost to a power cut only means a frame is re-sent; the receiver answers it as stored again.

Bounds: bytes, age and disk. Over `max_bytes`, past `max_age_s` on the spool clock (`spool_db.SpoolClock`,
immune to wall-clock jumps), or short of disk (kept with headroom for SQLite's log; SQLITE_FULL as last
resort), the oldest records are deleted and counted (`dropped_full`, `dropped_age`), with one warning per
episode and no exception: the capture pipeline keeps running. Only if an emptied spool still has no room is
the new frame dropped (counted too). Only sealed bytes are stored, never raw or masked pixels.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterable
from pathlib import Path
from typing import IO, TYPE_CHECKING

from edge_mask.config import SpoolConfig
from edge_mask.core.errors import UserError
from edge_mask.core.registry import Registry
from edge_mask.uplink.base import Range, Spool, SpoolRecord, SpoolStats
from edge_mask.uplink.spool_db import (
    LOCK_NAME,
    FullEpisode,
    SpoolClock,
    create_schema,
    disk_spare,
    is_full,
    make_private_dir,
    open_private_file,
)

if TYPE_CHECKING:
    from edge_mask.seal import SealedFrame

__all__ = ["SPOOLS", "Spool", "SpoolRecord", "SpoolStats", "SqliteSpool", "open_spool"]
log = logging.getLogger(__name__)

DB_NAME = "spool.sqlite3"
_AGE_CHECK_EVERY_S = 1.0
_FULL_RETRIES = 10
_WAL_PAGES = 128  # checkpoint the write-ahead log every 128 pages (512 KiB): twice that is kept free on disk
_MAX_SQLITE_INT = (1 << 63) - 1


SPOOLS: Registry[Spool] = Registry("spool")


def open_spool(cfg: SpoolConfig) -> Spool:
    """Open (creating if needed) the spool named by the config; its backlog is replayed by the uplink."""
    return SPOOLS.create(cfg)


class SqliteSpool:
    """The SQLite spool: one database file in the directory `cfg.path`, locked against a second process.

    `clock` is the wall clock (display only), `monotonic` drives the spool clock; `max_pages` caps the
    database at that many pages, a test hook that makes SQLite answer "disk full" without filling a disk.
    """

    def __init__(
        self,
        cfg: SpoolConfig,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        max_pages: int | None = None,
    ) -> None:
        self._cfg = cfg
        self._wall = clock
        self._lock = threading.Lock()
        self._dir = Path(cfg.path)
        try:
            make_private_dir(self._dir)
        except OSError as exc:
            raise UserError(
                f"spool.path = {self._dir}: cannot create the spool directory ({exc.strerror}); "
                "point spool.path at a writable directory"
            ) from None
        self._lockfile = self._take_lock()
        path = self._dir / DB_NAME
        try:
            os.close(open_private_file(path))  # 0600 before SQLite opens it; its -wal/-shm copy the mode
            # isolation_level=None: we issue BEGIN/COMMIT ourselves so every put is exactly one transaction.
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise UserError(f"spool.path = {self._dir}: the file system does not support SQLite WAL mode")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(f"PRAGMA wal_autocheckpoint={_WAL_PAGES}")
            if max_pages is not None:
                self._db.execute(f"PRAGMA max_page_count={int(max_pages)}")
            create_schema(self._db)
            self._clock = SpoolClock(self._db, monotonic)
            count, total, oldest = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(size), 0), MIN(clock) FROM frames"
            ).fetchone()
        except (sqlite3.DatabaseError, OSError) as exc:
            self._lockfile.close()
            raise UserError(
                f"spool.path = {self._dir}: the spool database is unreadable ({exc}); "
                f"move {path} aside to start an empty spool"
            ) from None
        self._count = int(count)
        self._bytes = int(total)
        self._oldest = float(oldest) if oldest is not None else None
        self._put = self._acked = self._dropped_full = self._dropped_age = 0
        self._full = FullEpisode(self._dir, self._clock)
        self._disk_checked, self._disk_budget = 0.0, 0  # when the disk was asked, bytes to write until next
        self._next_age_check = 0.0
        self._closed = False
        if self._count:
            log.info("spool %s: %d frames (%d bytes) waiting from before, replaying in order", path, count, total)
        self._expire_old()

    @property
    def directory(self) -> Path:
        return self._dir

    def _take_lock(self) -> IO[bytes]:
        """Two processes draining one spool would send every frame twice and race on acks; refuse that."""
        # Held open for the spool's lifetime; the kernel releases the lock when the process dies (kill -9).
        handle = os.fdopen(open_private_file(self._dir / LOCK_NAME, os.O_WRONLY | os.O_CREAT), "wb")
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
        """Store one sealed frame durably (fsynced) and return its record id (-1: dropped, disk full)."""
        message = getattr(sealed, "message", None)
        if not isinstance(message, (bytes, bytearray, memoryview)):
            # Only sealed bytes may touch the disk; a frame object here would be a wiring bug.
            raise TypeError(f"spool.put expects a SealedFrame, got {type(sealed).__name__}")
        row = (bytes(sealed.stream_id), int(sealed.seq), bytes(message))
        with self._lock:
            self._check_open()
            self._expire_old()
            self._clock.maybe_persist()
            self._make_room(len(row[2]))
            try:
                self._keep_disk_headroom(len(row[2]))
                record_id = self._insert(row)
            except sqlite3.OperationalError as exc:
                if not is_full(exc):
                    raise
                record_id = self._insert_when_full(row)
            self._full.maybe_end()
            return record_id

    def _insert(self, row: tuple[bytes, int, bytes]) -> int:
        stream, seq, message = row
        now = self._clock.now()
        cur = self._db.execute(
            "INSERT INTO frames (stream, seq, created, size, clock, message) VALUES (?, ?, ?, ?, ?, ?)",
            (stream, seq, self._wall(), len(message), now, message),
        )
        record_id = cur.lastrowid
        assert record_id is not None
        self._count += 1
        self._bytes += len(message)
        if self._oldest is None:
            self._oldest = now
        self._put += 1
        return int(record_id)

    def _keep_disk_headroom(self, size: int) -> None:
        """Drop the oldest records before the disk is full, not after: on a full disk SQLite can neither
        checkpoint its log nor log the deletes that would make room. Room for a frame is the database's
        free pages (deletes leave them behind) plus the disk's room beyond what the log needs."""
        need = size + size // 8 + 8192
        now = self._clock.now()
        if self._disk_budget >= need and now < self._disk_checked + 1.0:
            self._disk_budget -= need  # statvfs costs as much as the insert: ask the disk once a second
            return
        spare = disk_spare(self._dir, f"{DB_NAME}-wal", _WAL_PAGES * 4096)
        self._disk_checked, self._disk_budget = now, (spare - need) // 2 if spare is not None else 1 << 62
        if spare is None or spare >= need or not self._count:
            return
        page = int(self._db.execute("PRAGMA page_size").fetchone()[0])
        shortfall = need - max(0, spare) - int(self._db.execute("PRAGMA freelist_count").fetchone()[0]) * page
        if shortfall > 0:
            self._full.start("little room left on the disk")
            self._full.oldest += self._drop_oldest(shortfall)

    def _insert_when_full(self, row: tuple[bytes, int, bytes]) -> int:
        """SQLITE_FULL: drop the oldest records (more each try) and retry; else drop the new frame."""
        self._full.start("SQLite: database or disk is full")
        want = 2 * len(row[2]) + (64 << 10)
        for attempt in range(_FULL_RETRIES):
            self._rollback()
            if not self._count:
                break
            try:
                # Copy the log into the database and cut it to zero: its disk space is what the deletes
                # (which must be logged too) and the retried insert can use.
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
                self._full.oldest += self._drop_oldest(want << attempt)
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
                return self._insert(row)
            except sqlite3.OperationalError as exc:
                if not is_full(exc):
                    raise
        self._rollback()
        self._dropped_full += 1
        self._full.new += 1
        return -1

    def _rollback(self) -> None:
        if self._db.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")

    def _make_room(self, size: int) -> None:
        """Drop the oldest records until `size` more bytes fit; a frame larger than the bound is kept alone."""
        excess = self._bytes + size - self._cfg.max_bytes
        if self._count and excess > 0:
            dropped = self._drop_oldest(excess)
            log.warning("spool full (max_bytes=%d): dropped the %d oldest frames", self._cfg.max_bytes, dropped)

    def _drop_oldest(self, nbytes: int) -> int:
        """Delete the oldest records holding at least `nbytes` (at least one), in one transaction; counted."""
        last_id, freed, count = 0, 0, 0
        while freed < nbytes:  # batches of fetched rows: no read statement stays open across the delete
            rows = self._db.execute(
                "SELECT id, size FROM frames WHERE id > ? ORDER BY id LIMIT 256", (last_id,)
            ).fetchall()
            for record_id, size in rows:
                last_id, freed, count = int(record_id), freed + int(size), count + 1
                if freed >= nbytes:
                    break
            if not rows:
                break
        if not count:
            return 0
        self._db.execute("DELETE FROM frames WHERE id <= ?", (last_id,))
        self._count -= count
        self._bytes -= freed
        self._dropped_full += count
        self._refresh_oldest()
        return count

    def _expire_old(self) -> None:
        now = self._clock.now()
        if now < self._next_age_check or self._oldest is None:
            return
        self._next_age_check = now + _AGE_CHECK_EVERY_S
        cutoff = now - self._cfg.max_age_s
        if self._oldest >= cutoff:
            return
        count, total = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM frames WHERE clock < ?", (cutoff,)
        ).fetchone()
        with contextlib.suppress(sqlite3.OperationalError):  # disk full: expiry waits for the next check
            self._db.execute("DELETE FROM frames WHERE clock < ?", (cutoff,))
            self._count -= int(count)
            self._bytes -= int(total)
            self._dropped_age += int(count)
            self._refresh_oldest()
            if count:
                log.warning("spool: dropped %d frames older than max_age_s=%g", count, self._cfg.max_age_s)

    def _refresh_oldest(self) -> None:
        row = self._db.execute("SELECT MIN(clock) FROM frames").fetchone()
        self._oldest = float(row[0]) if row and row[0] is not None else None

    # --------------------------------------------------------------------------------- reading, deleting

    def pending(self, limit: int, exclude: Collection[int] = ()) -> list[SpoolRecord]:
        """Up to `limit` records, oldest first, skipping ids in `exclude` (those already sent)."""
        if limit <= 0:
            return []
        skip = set(exclude)
        with self._lock:
            self._check_open()
            self._expire_old()
            self._clock.maybe_persist()  # the uplink calls this even while no frame comes in
            # Pick the ids from the narrow columns first (stream, seq come before the message), then read
            # only the chosen messages: `exclude` may hold a thousand records waiting for the cloud.
            rows = self._db.execute(
                "SELECT id, stream, seq FROM frames ORDER BY id LIMIT ?", (limit + len(skip),)
            ).fetchall()
            chosen = [r for r in rows if r[0] not in skip][:limit]
            if not chosen:
                return []
            marks = ",".join("?" * len(chosen))
            messages = dict(
                self._db.execute(f"SELECT id, message FROM frames WHERE id IN ({marks})", [r[0] for r in chosen])
            )
        return [SpoolRecord(int(i), int(seq), bytes(messages[i]), bytes(stream)) for i, stream, seq in chosen]

    def ack(self, record_id: int) -> None:
        """Remove a confirmed record; unknown ids (already dropped for space) are ignored."""
        with self._lock:
            self._check_open()
            row = self._db.execute("SELECT size, clock FROM frames WHERE id = ?", (record_id,)).fetchone()
            if row is None:
                return
            self._db.execute("DELETE FROM frames WHERE id = ?", (record_id,))
            self._count -= 1
            self._bytes -= int(row[0])
            self._acked += 1
            if self._oldest is not None and float(row[1]) <= self._oldest:
                self._refresh_oldest()

    def delete_ranges(self, stream_id: bytes, ranges: Iterable[Range]) -> int:
        """Remove the records the cloud confirmed, in one transaction; frames not (or no longer) here are
        ignored. Seqs above SQLite's signed 64-bit range cannot be stored, so they cannot match either."""
        bounds = [(first, min(last, _MAX_SQLITE_INT)) for first, last in ranges if first <= _MAX_SQLITE_INT]
        if not bounds:
            return 0
        stream = bytes(stream_id)
        with self._lock:
            self._check_open()
            self._db.execute("BEGIN IMMEDIATE")
            try:
                count = total = 0
                for first, last in bounds:
                    where = "stream = ? AND seq BETWEEN ? AND ?"
                    n, size = self._db.execute(
                        f"SELECT COUNT(*), COALESCE(SUM(size), 0) FROM frames WHERE {where}", (stream, first, last)
                    ).fetchone()
                    if n:
                        self._db.execute(f"DELETE FROM frames WHERE {where}", (stream, first, last))
                        count, total = count + int(n), total + int(size)
                self._db.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
            self._count -= count
            self._bytes -= total
            self._acked += count
            if count:
                self._refresh_oldest()
            self._clock.maybe_persist()
            return count

    def stats(self) -> SpoolStats:
        with self._lock:
            oldest = 0.0 if self._oldest is None else max(0.0, self._clock.now() - self._oldest)
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
            self._clock.persist()
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
