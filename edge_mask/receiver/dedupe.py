"""Which (device, stream, seq) slots are taken, durably, with bounded memory: SQLite plus a small window.

Why: a frame counts as stored only once the receiver can prove it after a crash, and a re-delivered or
replayed message must be recognised whenever it comes back. Keeping every slot in memory (as the index
files once were) grows about 190 bytes per frame forever: 460 MiB per device-day at 30 fps. Here the slots
live in one SQLite file, `<output_dir>/dedupe.sqlite3` (WAL, synchronous=FULL: a committed slot survives a
power cut), written in the step that makes a frame count. `index.jsonl` per stream stays the human-readable
record; it is written (and fsynced) just before the slots' commit (one transaction per batch of frames), so a
crash between the two leaves at most the last lines of a stream's index without their slots, and
`open_stream` adds them back from the index tail on the stream's first touch after a restart. A stream from
before this file existed is imported from its index once.

In memory: the digests of the last `window` slots written or looked up (most lookups are for recent frames:
QoS 1 re-deliveries), and per stream in use its count and lowest and highest seq, for the gap summary and so
that a seq above the highest needs no query (the common case: a new frame). At most `max_streams` streams are
kept (least recently used first out). Bound: about 250 bytes per window slot and 500 bytes per stream, i.e.
about 1 MiB + 8 MiB at the defaults (4,096 slots, 16,384 streams), whatever the number of frames (measured:
6.1 MiB for the whole receiver after 10,000 streams, and no growth over 20,000 more frames in one stream).

Sequence numbers are unsigned 64-bit on the wire and signed in SQLite, so they are stored shifted by 2**63
(order is kept). One receiver per output_dir: the in-memory ranges assume no other process adds slots (a
receiver that finds a slot taken behind its back fails that save, forgets the stream, and sees the slot as
taken when the broker delivers the message again).
"""

from __future__ import annotations

import logging
import sqlite3
from collections import OrderedDict
from collections.abc import Callable, Iterable
from pathlib import Path

log = logging.getLogger(__name__)

FILE_NAME = "dedupe.sqlite3"
WINDOW = 4096
MAX_STREAMS = 16384
_SHIFT = 1 << 63

StreamKey = tuple[str, str]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS seen (
    device TEXT NOT NULL, stream TEXT NOT NULL, seq INTEGER NOT NULL, digest BLOB NOT NULL,
    PRIMARY KEY (device, stream, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS streams (
    device TEXT NOT NULL, stream TEXT NOT NULL, PRIMARY KEY (device, stream)) WITHOUT ROWID;
"""


class StreamStats:
    """Count and range of the stored sequence numbers of one stream."""

    __slots__ = ("count", "hi", "key", "lo")

    def __init__(self, key: StreamKey, count: int = 0, lo: int = 0, hi: int = -1) -> None:
        self.key = key  # the one tuple of this stream's names, shared by its window entries
        self.count, self.lo, self.hi = count, lo, hi

    def add(self, seq: int) -> None:
        if self.count == 0:
            self.lo = self.hi = seq
        else:
            self.lo, self.hi = min(self.lo, seq), max(self.hi, seq)
        self.count += 1

    def missing(self) -> int:
        """Sequence numbers absent between the lowest and highest stored ones (lost or not yet arrived)."""
        return 0 if self.count == 0 else self.hi - self.lo + 1 - self.count


class Dedupe:
    """The durable slot index (see the module docstring). Not thread-safe: the receiver serialises calls."""

    def __init__(self, directory: Path, window: int = WINDOW, max_streams: int = MAX_STREAMS) -> None:
        self.path = Path(directory) / FILE_NAME
        self.window = window
        self.max_streams = max_streams
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._closed = False
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._streams: OrderedDict[StreamKey, StreamStats] = OrderedDict()
        self._recent: OrderedDict[tuple[StreamKey, int], bytes] = OrderedDict()
        self._staged: dict[tuple[StreamKey, int], bytes] = {}

    def open_stream(
        self,
        device: str,
        stream: str,
        index_entries: Callable[[], Iterable[tuple[int, bytes]]],
        index_tail: Callable[[], Iterable[tuple[int, bytes]]],
    ) -> StreamKey:
        """Make a stream ready for lookups (first touch this run); returns its key. See the module docstring."""
        key = (device, stream)
        stats = self._streams.get(key)
        if stats is not None:
            self._streams.move_to_end(key)
            return stats.key
        known = self._db.execute("SELECT 1 FROM streams WHERE device=? AND stream=?", key).fetchone()
        if known is None:
            rows = [(device, stream, seq - _SHIFT, digest) for seq, digest in index_entries()]
            with self._db:
                self._db.execute("BEGIN")
                self._db.executemany("INSERT OR IGNORE INTO seen VALUES (?, ?, ?, ?)", rows)
                self._db.execute("INSERT OR IGNORE INTO streams VALUES (?, ?)", key)
            if rows:
                log.info("dedupe: imported %d slots of %s/%s from its index", len(rows), device, stream)
        else:
            lost = [(seq, digest) for seq, digest in index_tail() if self._query(device, stream, seq) is None]
            if lost:
                self._db.executemany("INSERT OR IGNORE INTO seen VALUES (?, ?, ?, ?)",
                                     [(device, stream, seq - _SHIFT, digest) for seq, digest in lost])
                log.info("dedupe: %d slots of %s/%s were in the index but not committed; added", len(lost), device,
                         stream)
        count, lo, hi = self._db.execute(
            "SELECT COUNT(*), MIN(seq), MAX(seq) FROM seen WHERE device=? AND stream=?", key
        ).fetchone()
        self._streams[key] = StreamStats(key, count, lo + _SHIFT, hi + _SHIFT) if count else StreamStats(key)
        while len(self._streams) > self.max_streams:
            self._streams.popitem(last=False)
        return key

    def forget(self, key: StreamKey) -> None:
        """Drop what memory holds about a stream (after a failed write), so it is re-read on next touch."""
        self._streams.pop(key, None)

    def lookup(self, key: StreamKey, seq: int) -> bytes | None:
        """The digest of the message stored (or staged) in this slot, or None when it is free."""
        found = self._staged.get((key, seq))
        if found is not None:
            return found
        found = self._recent.get((key, seq))
        if found is not None:
            self._recent.move_to_end((key, seq))
            return found
        stats = self._streams.get(key)
        if stats is not None and (stats.count == 0 or not stats.lo <= seq <= stats.hi):
            return None
        found = self._query(key[0], key[1], seq)
        if found is not None:
            self._remember(key, seq, found)
        return found

    def stage(self, key: StreamKey, seq: int, digest: bytes) -> None:
        """Hold a slot as taken until `commit` (or `unstage`), so a copy arriving meanwhile is a duplicate."""
        self._staged[(key, seq)] = digest

    def unstage(self) -> None:
        self._staged.clear()

    def commit(self) -> int:
        """Commit every staged slot in one transaction (durable when this returns); sqlite3.Error on failure."""
        if not self._staged:
            return 0
        rows = [(k[0], k[1], seq - _SHIFT, digest) for (k, seq), digest in self._staged.items()]
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT INTO seen VALUES (?, ?, ?, ?)", rows)
        for (key, seq), digest in self._staged.items():
            stats = self._streams.get(key)
            if stats is not None:
                stats.add(seq)
            self._remember(key, seq, digest)
        self._staged.clear()
        return len(rows)

    def streams(self) -> list[tuple[StreamKey, StreamStats]]:
        """The streams in memory (used this run, most recent last)."""
        return list(self._streams.items())

    def missing_ranges(self, key: StreamKey, limit: int = 20) -> list[tuple[int, int]]:
        if self._closed:
            return []  # a summary asked for after the receiver stopped
        rows = self._db.execute(
            "SELECT seq, nxt FROM (SELECT seq, LEAD(seq) OVER (ORDER BY seq) AS nxt FROM seen "
            "WHERE device=? AND stream=?) WHERE nxt > seq + 1 LIMIT ?",
            (*key, limit),
        ).fetchall()
        return [(a + _SHIFT + 1, b + _SHIFT - 1) for a, b in rows]

    def memory(self) -> dict[str, int]:
        return {"streams": len(self._streams), "window": len(self._recent)}

    def close(self) -> None:
        self._closed = True
        self._db.close()

    def _query(self, device: str, stream: str, seq: int) -> bytes | None:
        row = self._db.execute(
            "SELECT digest FROM seen WHERE device=? AND stream=? AND seq=?", (device, stream, seq - _SHIFT)
        ).fetchone()
        return None if row is None else bytes(row[0])

    def _remember(self, key: StreamKey, seq: int, digest: bytes) -> None:
        self._recent[(key, seq)] = digest
        self._recent.move_to_end((key, seq))
        while len(self._recent) > self.window:
            self._recent.popitem(last=False)
