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
    now = [1000.0]
    spool = SqliteSpool(SpoolConfig(path=tmp_path / "spool", max_age_s=60), clock=lambda: now[0])
    for i in range(5):
        spool.put(sealed(i))
        now[0] += 20
    # Records were written at 1000, 1020, ..., 1080; at 1100 everything before 1040 is too old.
    now[0] = 1100.0
    assert [r.seq for r in spool.pending(10)] == [2, 3, 4]
    assert spool.stats().dropped_age == 2
    assert spool.stats().oldest_age_s == pytest.approx(60.0)
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
