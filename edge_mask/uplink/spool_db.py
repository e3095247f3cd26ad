"""The spool's SQLite layout, its migration, its clock, and files created private whatever the umask.

Why a spool clock and not the wall clock: a device without a real-time clock, or one whose NTP steps the
time, can see its wall clock jump days forward; ageing records by wall time then deletes the whole backlog
as "too old" (100 of 100 pending frames were lost that way). The spool clock only moves with the
monotonic clock while the process runs, and its reading is persisted in the database (`meta` table, at
most every `CLOCK_PERSIST_S` and on close), so record ages survive restarts and ignore clock steps. Each
record keeps its wall time too (`created`), for display only. Time while the device is off does not age
records: a spool that sat on a shelf for a month still holds its frames.

Why explicit modes: `mkdir(mode=0o700)` and SQLite's file creation are both masked by the process umask,
and a umask of 000 (a misconfigured unit) would leave the spool world-writable. Directories are chmod'ed
after creation and files are created 0600 before SQLite opens them (SQLite gives its -wal and -shm files
the database file's mode).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sqlite3
import stat
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

CLOCK_PERSIST_S = 5.0
LOCK_NAME = "spool.lock"
SQLITE_FULL = 13
DISK_SLACK = 256 << 10

SCHEMA = """
CREATE TABLE IF NOT EXISTS frames (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    stream BLOB NOT NULL,
    seq INTEGER NOT NULL,
    created REAL NOT NULL,
    size INTEGER NOT NULL,
    clock REAL NOT NULL DEFAULT 0,
    message BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value REAL NOT NULL);
"""
# Indexes after the migration (an old table has no `clock` column until it is added).
INDEXES = """
CREATE INDEX IF NOT EXISTS frames_stream_seq ON frames (stream, seq);
CREATE INDEX IF NOT EXISTS frames_clock ON frames (clock);
"""


def create_schema(db: sqlite3.Connection) -> None:
    """Create the tables, add the `clock` column to a spool written before it existed, then the indexes.

    Migrated records get spool-clock times relative to the newest one (`created - max(created)`, so <= 0):
    their ages stay as they were among themselves, and the spool clock starts at 0 on top of them.
    """
    db.executescript(SCHEMA)
    columns = {row[1] for row in db.execute("PRAGMA table_info(frames)")}
    if "clock" not in columns:
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("ALTER TABLE frames ADD COLUMN clock REAL NOT NULL DEFAULT 0")
            db.execute("UPDATE frames SET clock = created - (SELECT MAX(created) FROM frames)")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        log.info("spool: migrated the database to the spool clock (record ages kept relative to the newest)")
    db.executescript(INDEXES)


class SpoolClock:
    """Seconds on the spool's own clock: the persisted reading plus monotonic time since this process opened."""

    def __init__(self, db: sqlite3.Connection, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._db = db
        self._monotonic = monotonic
        row = db.execute("SELECT value FROM meta WHERE key = 'clock'").fetchone()
        stored = float(row[0]) if row else 0.0
        newest = db.execute("SELECT MAX(clock) FROM frames").fetchone()[0]
        # Records written after the last persisted reading (then kill -9) must not look younger than zero.
        self._base = max(stored, float(newest) if newest is not None else 0.0)
        self._start = monotonic()
        self._persisted_at = self._start

    def now(self) -> float:
        return self._base + (self._monotonic() - self._start)

    def maybe_persist(self) -> None:
        """Store the reading when `CLOCK_PERSIST_S` passed since the last time (called under the spool lock)."""
        if self._monotonic() - self._persisted_at >= CLOCK_PERSIST_S:
            self.persist()

    def persist(self) -> None:
        with contextlib.suppress(sqlite3.Error):  # a full disk must not stop the spool; retried next time
            self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('clock', ?)", (self.now(),))
            self._persisted_at = self._monotonic()


class FullEpisode:
    """One warning when the disk runs full, one line when it is over (no drop for `END_S`): a full disk
    must not log (or raise) once per frame."""

    END_S = 60.0

    def __init__(self, directory: Path, clock: SpoolClock) -> None:
        self._dir = directory
        self._clock = clock
        self.since: float | None = None  # spool clock of the last drop in this episode
        self.oldest = self.new = 0  # oldest records dropped, new frames not stored, in this episode

    def start(self, why: str) -> None:
        if self.since is None:
            log.warning("spool %s: disk full (%s); dropping the oldest frames to make room (counted in "
                        "spool_dropped_full) until space is freed", self._dir, why)
        self.since = self._clock.now()

    def maybe_end(self) -> None:
        if self.since is None or self._clock.now() - self.since < self.END_S:
            return
        log.info("spool %s: disk-full episode over: %d oldest frames dropped, %d new frames not stored",
                 self._dir, self.oldest, self.new)
        self.since = None
        self.oldest = self.new = 0


def is_full(exc: sqlite3.Error) -> bool:
    """SQLITE_FULL: the disk (or the database's page limit) has no room for the write."""
    code = getattr(exc, "sqlite_errorcode", None)  # Python >= 3.11
    return code == SQLITE_FULL or "database or disk is full" in str(exc)


def disk_spare(directory: Path, wal_name: str, wal_bytes: int) -> int | None:
    """Free bytes on the spool's disk beyond the headroom SQLite needs: the write-ahead log may still grow
    to its checkpoint mark (`wal_bytes`, plus the commit that passes it), and a checkpoint grows the
    database file by what the log holds. None when the file system cannot say."""
    try:
        st = os.statvfs(directory)
    except OSError:
        return None
    try:
        wal = os.stat(directory / wal_name).st_size
    except OSError:
        wal = 0
    mark = wal_bytes + (64 << 10)
    return int(st.f_bavail * st.f_frsize) - max(0, mark - wal) - mark - DISK_SLACK


def make_private_dir(path: Path) -> None:
    """`mkdir -p` with every directory it creates set to 0700, and `path` itself tightened to 0700 if it
    already exists with group or other access (the spool directory is this service's alone)."""
    missing: list[Path] = []
    probe = path
    while not probe.exists():
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):
            directory.mkdir(mode=0o700)
            os.chmod(directory, 0o700)  # mkdir's mode was masked by the umask
    st = path.stat()
    if stat.S_IMODE(st.st_mode) & 0o077 and st.st_uid == os.geteuid():
        log.info("spool: %s had mode %04o; setting 0700", path, stat.S_IMODE(st.st_mode))
        os.chmod(path, 0o700)


def open_private_file(path: Path, flags: int = os.O_RDWR | os.O_CREAT) -> int:
    """Open (creating) `path` with mode 0600 whatever the umask; an existing file is tightened to 0600."""
    fd = os.open(path, flags | os.O_CLOEXEC, 0o600)
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) != 0o600:
            os.fchmod(fd, 0o600)
    except OSError:
        os.close(fd)
        raise
    return fd


def spool_in_use(directory: Path) -> bool:
    """True while a process holds the spool in `directory` (the running service flocks its lock file).

    `edge-mask doctor` asks before it connects to the broker: the broker ties the client id to the
    device's certificate, so a second connection with the same certificate would take over the running
    service's session.
    """
    try:
        fd = os.open(directory / LOCK_NAME, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)
