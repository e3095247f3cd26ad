"""The spool keeps every sealed frame until it is acknowledged, survives kill -9, and stays bounded.

The records here are opaque byte strings standing in for sealed messages: the spool never looks inside
them, so these are unit tests of storage, ordering, bounds, threading and crash safety.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

from edge_mask.config import SpoolConfig
from edge_mask.core.errors import UserError
from edge_mask.uplink.spool import SqliteSpool, open_spool


@dataclass(frozen=True)
class Sealed:
    """The fields of edge_mask.seal.sealer.SealedFrame that the spool reads."""

    device_id: str
    stream_id: bytes
    seq: int
    captured_at: float
    message: bytes


def sealed(seq: int, size: int = 100) -> Sealed:
    body = hashlib.sha256(str(seq).encode()).digest() * (size // 32 + 1)
    return Sealed("dev1", b"\x01" * 8, seq, 0.0, body[:size])


def test_put_pending_ack_in_order(tmp_path: Path) -> None:
    spool = open_spool(SpoolConfig(path=tmp_path / "spool"))
    ids = [spool.put(sealed(i)) for i in range(10)]
    assert ids == sorted(ids)
    first = spool.pending(4)
    assert [r.seq for r in first] == [0, 1, 2, 3]
    assert first[0].message == sealed(0).message
    # Records in flight are skipped, the next ones come oldest first.
    more = spool.pending(3, exclude={r.id for r in first})
    assert [r.seq for r in more] == [4, 5, 6]
    for r in first:
        spool.ack(r.id)
    spool.ack(first[0].id)  # a repeated ack is harmless
    with pytest.raises(TypeError, match="expects a SealedFrame"):
        spool.put(object())  # type: ignore[arg-type]
    stats = spool.stats()
    assert (stats.pending, stats.put, stats.acked) == (6, 10, 4)
    assert stats.pending_bytes == 600
    assert [r.seq for r in spool.pending(100)] == [4, 5, 6, 7, 8, 9]
    spool.close()


def test_backlog_survives_restart_in_order(tmp_path: Path) -> None:
    cfg = SpoolConfig(path=tmp_path / "spool")
    spool = open_spool(cfg)
    for i in range(20):
        spool.put(sealed(i))
    for r in spool.pending(5):
        spool.ack(r.id)
    spool.close()
    again = open_spool(cfg)
    assert [r.seq for r in again.pending(100)] == list(range(5, 20))
    assert again.stats().pending_bytes == 15 * 100
    again.close()


def test_full_spool_drops_oldest_and_counts(tmp_path: Path) -> None:
    spool = open_spool(SpoolConfig(path=tmp_path / "spool", max_bytes=1000))
    for i in range(25):
        spool.put(sealed(i, size=100))
    stats = spool.stats()
    assert stats.pending == 10 and stats.pending_bytes == 1000
    assert stats.dropped_full == 15
    assert [r.seq for r in spool.pending(100)] == list(range(15, 25))
    spool.close()


def test_old_frames_expire_and_are_counted(tmp_path: Path) -> None:
    mono = [1000.0]
    spool = SqliteSpool(SpoolConfig(path=tmp_path / "spool", max_age_s=60), monotonic=lambda: mono[0])
    for i in range(5):
        spool.put(sealed(i))
        mono[0] += 20
    # Records were written at spool clock 0, 20, ..., 80; at 100 everything before 40 is too old.
    mono[0] = 1100.0
    assert [r.seq for r in spool.pending(10)] == [2, 3, 4]
    assert spool.stats().dropped_age == 2
    assert spool.stats().oldest_age_s == pytest.approx(60.0)
    spool.close()


def test_wall_clock_jump_of_8_days_deletes_nothing(tmp_path: Path) -> None:
    """Ages run on the spool clock (monotonic while running, persisted across restarts), not wall time."""
    cfg = SpoolConfig(path=tmp_path / "spool", max_age_s=3600)
    wall, mono = [1_700_000_000.0], [50.0]
    spool = SqliteSpool(cfg, clock=lambda: wall[0], monotonic=lambda: mono[0])
    for i in range(100):
        spool.put(sealed(i))
    mono[0] += 10
    wall[0] += 8 * 24 * 3600  # NTP steps the clock, or an RTC-less device learns the real date
    assert len(spool.pending(1000)) == 100
    assert spool.stats().dropped_age == 0 and spool.stats().oldest_age_s == pytest.approx(10.0)
    wall[0] -= 30 * 24 * 3600  # and backwards: nothing looks younger or older either
    assert spool.stats().oldest_age_s == pytest.approx(10.0)
    mono[0] += 1000
    spool.close()
    # A new process (its monotonic clock starts anywhere) continues the spool clock where it stopped.
    mono2 = [7.0]
    again = SqliteSpool(cfg, clock=lambda: wall[0] + 1e6, monotonic=lambda: mono2[0])
    assert again.stats().oldest_age_s == pytest.approx(1010.0) and again.stats().pending == 100
    mono2[0] += 2600  # 3610 s of spool time since the puts: all too old now
    assert again.pending(1000) == [] and again.stats().dropped_age == 100
    again.close()


def test_spool_without_clock_column_is_migrated(tmp_path: Path) -> None:
    """A spool written by the previous release (wall times only) opens, keeps its records and their order,
    and ages them relative to its newest record."""
    import sqlite3

    directory = tmp_path / "spool"
    directory.mkdir()
    db = sqlite3.connect(directory / "spool.sqlite3")
    db.execute("CREATE TABLE frames (id INTEGER PRIMARY KEY AUTOINCREMENT, stream BLOB NOT NULL, "
               "seq INTEGER NOT NULL, created REAL NOT NULL, size INTEGER NOT NULL, message BLOB NOT NULL)")
    for i in range(3):
        db.execute("INSERT INTO frames (stream, seq, created, size, message) VALUES (?, ?, ?, ?, ?)",
                   (b"\x01" * 8, i, 1000.0 + 100 * i, 4, b"abcd"))
    db.commit()
    db.close()
    mono = [0.0]
    spool = SqliteSpool(SpoolConfig(path=directory, max_age_s=150), monotonic=lambda: mono[0])
    # Seq 0 was written 200 s before the newest record: too old at once; seq 1 is 100 s old.
    assert spool.stats().dropped_age == 1 and spool.stats().oldest_age_s == pytest.approx(100.0)
    assert [r.seq for r in spool.pending(10)] == [1, 2]
    spool.put(sealed(3))
    assert [r.seq for r in spool.pending(10)] == [1, 2, 3]
    spool.close()


def test_delete_ranges_removes_only_the_named_frames(tmp_path: Path) -> None:
    spool = open_spool(SpoolConfig(path=tmp_path / "spool"))
    for i in range(10):
        spool.put(sealed(i))
    other = Sealed("dev1", b"\x02" * 8, 3, 0.0, b"other stream")
    spool.put(other)
    assert spool.delete_ranges(b"\x01" * 8, [(2, 4), (7, 7), (50, 2**64 - 1)]) == 4
    assert spool.delete_ranges(b"\x01" * 8, [(2, 4)]) == 0  # again: already gone, nothing else touched
    assert [(r.stream, r.seq) for r in spool.pending(100)] == [
        (b"\x01" * 8, s) for s in (0, 1, 5, 6, 8, 9)] + [(b"\x02" * 8, 3)]
    stats = spool.stats()
    assert (stats.pending, stats.acked, stats.pending_bytes) == (7, 4, 600 + len(other.message))
    spool.close()


def test_second_process_cannot_open_the_same_spool(tmp_path: Path) -> None:
    cfg = SpoolConfig(path=tmp_path / "spool")
    spool = open_spool(cfg)
    code = (
        "from edge_mask.uplink.spool import open_spool\nfrom edge_mask.config import SpoolConfig\n"
        f"open_spool(SpoolConfig(path={str(cfg.path)!r}))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "in use by another edge-mask process" in proc.stderr
    spool.close()
    with pytest.raises(UserError, match="cannot create the spool directory"):
        (tmp_path / "file").write_text("x")
        open_spool(SpoolConfig(path=tmp_path / "file" / "spool"))


def test_concurrent_writer_and_acker_lose_nothing(tmp_path: Path) -> None:
    spool = open_spool(SpoolConfig(path=tmp_path / "spool"))
    total = 400
    acked: list[int] = []
    done = threading.Event()

    def writer() -> None:
        for i in range(total):
            spool.put(sealed(i))
        done.set()

    def acker() -> None:
        inflight: set[int] = set()
        while len(acked) < total:
            batch = spool.pending(8, exclude=inflight)
            if not batch and done.is_set() and not inflight:
                break
            inflight.update(r.id for r in batch)
            for r in batch:
                acked.append(r.seq)
                spool.ack(r.id)
                inflight.discard(r.id)

    threads = [threading.Thread(target=writer), threading.Thread(target=acker)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert acked == list(range(total))
    assert spool.stats().pending == 0
    spool.close()


WRITER = textwrap.dedent(
    """
    import hashlib, sys
    from dataclasses import dataclass
    from edge_mask.config import SpoolConfig
    from edge_mask.uplink.spool import open_spool

    @dataclass
    class S:
        stream_id: bytes
        seq: int
        message: bytes

    spool = open_spool(SpoolConfig(path=sys.argv[1]))
    i = 0
    while True:
        body = hashlib.sha256(str(i).encode()).digest() * 2000
        spool.put(S(b"\\x02" * 8, i, body))
        if i % 3 == 0:
            for r in spool.pending(1):
                spool.ack(r.id)
        sys.stdout.write(f"{i}\\n")
        sys.stdout.flush()
        i += 1
    """
)


def test_kill_9_leaves_no_torn_record(tmp_path: Path) -> None:
    """A writer killed mid-stream: every put that returned is there, intact, and nothing half-written."""
    path = tmp_path / "spool"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    confirmed = -1
    for line in proc.stdout:
        confirmed = int(line)
        if confirmed >= 150:
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    spool = open_spool(SpoolConfig(path=path))
    records = spool.pending(10_000)
    seqs = [r.seq for r in records]
    assert seqs == sorted(seqs)
    for r in records:
        assert r.message == hashlib.sha256(str(r.seq).encode()).digest() * 2000
    # Acked records are the oldest (0 .. k); every confirmed put that was not acked must still be there.
    acked_upto = seqs[0] if seqs else confirmed + 1
    assert set(range(acked_upto, confirmed + 1)) <= set(seqs)
    spool.close()


def test_disk_full_drops_the_oldest_once_per_episode_and_keeps_the_newest(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """SQLITE_FULL (here: the database capped at 48 pages, as a full disk answers) drops the oldest records,
    counted, with one warning line; no exception reaches the caller and the newest frames are kept."""
    import logging

    caplog.set_level(logging.WARNING, logger="edge_mask.uplink")
    spool = SqliteSpool(SpoolConfig(path=tmp_path / "spool"), max_pages=48)
    ids = [spool.put(sealed(i, size=3000)) for i in range(150)]
    stats = spool.stats()
    kept = [r.seq for r in spool.pending(1000)]
    assert 0 < len(kept) < 150 and kept == list(range(150 - len(kept), 150)), kept  # newest, in order
    assert stats.dropped_full == 150 - len(kept) and stats.pending == len(kept) and stats.put == 150
    assert all(i > 0 for i in ids)
    full_lines = [r for r in caplog.records if "disk full" in r.getMessage()]
    assert len(full_lines) == 1, [r.getMessage() for r in caplog.records]
    # A frame that cannot fit even into an empty spool is dropped and counted, not raised.
    assert spool.put(sealed(999, size=400_000)) == -1
    assert spool.stats().dropped_full == 150 + 1 and spool.stats().pending == 0
    spool.put(sealed(1000, size=100))  # and the spool still works afterwards
    assert [r.seq for r in spool.pending(10)] == [1000]
    spool.close()


@pytest.mark.parametrize("umask", [0o000, 0o077])
def test_spool_files_are_private_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    import stat

    from edge_mask.seal import write_secret

    old = os.umask(umask)
    try:
        path = tmp_path / "state" / "edge-mask" / "spool"
        spool = open_spool(SpoolConfig(path=path))
        spool.put(sealed(1))
        write_secret(path / "cloud-status.json", b"{}", force=True)  # how the uplink writes cloud-status.json
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in path.iterdir()}
        dirs = [stat.S_IMODE(p.stat().st_mode) for p in (path, path.parent, path.parent.parent)]
        spool.close()
    finally:
        os.umask(old)
    assert dirs == [0o700, 0o700, 0o700]
    assert {"spool.sqlite3", "spool.sqlite3-wal", "spool.sqlite3-shm", "spool.lock", "cloud-status.json"} <= set(modes)
    assert set(modes.values()) == {0o600}, modes
    # An existing spool directory open to others is tightened when the spool opens it.
    os.chmod(path, 0o755)
    open_spool(SpoolConfig(path=path)).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o700
