"""The receiver's state stays bounded whatever devices send, and an MQTT message is acknowledged only when
its fate is settled: reassembly caps per device and globally, expiry by heap, the per-device rate limit, a
flood that leaves another device's frames untouched, the durable dedupe window across restarts, MP4 writers
closing, and storage failures that acknowledge nothing.

Sizes are asserted (counts and bytes), never time: speed lives in measurements (see the receiver's
docstrings). Real sealed frames of a real clip where frames are stored; bare chunk envelopes for the floods.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.fleet import FakeClock, Fleet, make_fleet, masked_clip, masker_config

from edge_mask.core.errors import MessageError
from edge_mask.receiver.dedupe import Dedupe
from edge_mask.receiver.limits import DeviceLimiter
from edge_mask.receiver.receiver import Receiver
from edge_mask.seal.wire import Reassembler, split_message

TOPIC = "edge-mask/dev1/frames"
FLOOD_TOPIC = "edge-mask/dev2/frames"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Fleet:
    return make_fleet(tmp_path_factory.mktemp("fleet"))


@pytest.fixture(scope="module")
def clip(shared_dir: Path) -> list[tuple[Any, bytes]]:
    return list(masked_clip(masker_config(shared_dir), frames=10, step=5))


def one(message: bytes) -> bytes:
    (chunk,) = split_message(message, 1 << 20)
    return chunk


def first_chunk(n: int, size: int = 60) -> bytes:
    """The first of two chunks of a distinct tiny message: held until its sibling comes (it never does)."""
    return split_message(n.to_bytes(8, "big") * (size // 8), size // 2 + 40)[0]


# ------------------------------------------------------------------------------------------ reassembly


def test_a_device_evicts_only_its_own_chunks_and_the_global_cap_holds() -> None:
    r: Reassembler[int] = Reassembler(max_pending_bytes=1 << 20, timeout_s=30, max_message_bytes=1 << 16,
                                      max_pending_chunks=60, source_max_bytes=1 << 18, source_max_chunks=20)
    honest = split_message(b"h" * 3000, 1000)
    assert r.feed(honest[0], 0.0, "dev1", tag=1) is None
    before = r.source_stats("dev1")
    for n in range(1000):
        assert r.feed(first_chunk(n), 1.0, "dev2", tag=100 + n) is None
        assert r.source_stats("dev2")["pending_chunks"] <= 20
    assert r.source_stats("dev1") == before  # dev2's flood did not touch dev1's message
    released = r.take_released()
    assert sorted(released) == list(range(100, 1080))  # every evicted chunk's tag, once (20 still held)
    # dev1's frame completes, with the tags of all its chunks.
    done = [r.feed_tagged(c, 3.0, "dev1", tag=i) for i, c in enumerate(honest[1:], start=2)]
    assert done[:-1] == [None, None] and done[-1] == (b"h" * 3000, [1, 2, 3, 4])
    # Three flooders fill the global budget (60 chunks); a fourth device's new message has nothing of its own
    # to evict, so it is dropped (over_cap), not anyone else's.
    for source in ("dev3", "dev4"):
        for n in range(20):
            r.feed(first_chunk(n), 4.0, source, tag=5000 + n)
    assert r.stats()["pending_chunks"] == 60 and r.take_released() == []
    assert r.feed(first_chunk(7), 5.0, "dev5", tag=9999) is None
    assert r.stats()["over_cap"] == 1 and r.take_released() == [9999]
    assert r.stats()["pending_chunks"] == 60
    # A message that could never fit one device's budget is oversized, whoever sends it.
    with pytest.raises(MessageError) as exc:
        r.feed(split_message(b"x" * 30_000, 1000)[0], 3.0, "dev1", tag=1)
    assert exc.value.reason == "oversized"


def test_expiry_by_heap_drops_exactly_the_old_messages_and_the_heap_stays_small() -> None:
    r: Reassembler[int] = Reassembler(max_pending_bytes=1 << 26, timeout_s=100, max_message_bytes=1 << 16)
    for n in range(5000):
        r.feed(first_chunk(n), n * 0.01, "dev1", tag=n)  # first seen at 0 .. 49.99 s
    assert r.stats()["pending"] == 5000
    assert r.expire(120.0) == 2000  # those first seen before 20 s
    assert sorted(r.take_released()) == list(range(2000))
    # Messages that complete leave stale heap items; the heap is rebuilt before it outgrows what is pending.
    for n in range(20_000, 24_000):
        for chunk in split_message(n.to_bytes(8, "big") * 8, 64):
            r.feed(chunk, 120.0, "dev2", tag=n)
        stats = r.stats()
        assert stats["heap"] <= 2 * stats["pending"] + 64 + 1
    assert r.stats()["pending"] == 3000 and r.stats()["completed"] == 4000


def test_the_rate_limit_is_per_device() -> None:
    limiter = DeviceLimiter(chunks_per_s=100, bytes_per_s=1 << 20, burst_s=1.0)
    passed = sum(limiter.allow("flood", 100, now=0.0) for _ in range(1000))
    assert passed == 100  # the burst, then nothing until tokens refill
    assert limiter.allow("honest", 100, now=0.0)  # another device has its own buckets
    assert limiter.allow("flood", 100, now=0.01) and not limiter.allow("flood", 100, now=0.01)
    assert not limiter.allow("big", (1 << 20) + 1, now=0.0)  # more bytes than a burst holds
    limiter.retain({"honest"})
    assert len(limiter) == 1


def test_a_flood_leaves_state_bounded_and_another_devices_frames_flow(
    fleet: Fleet, clip: list[Any], tmp_path: Path
) -> None:
    clock = FakeClock()
    cfg = fleet.receiver_config(
        tmp_path / "received", max_pending_chunks=256, receive_maximum=512, device_max_pending_chunks=64,
        device_rate_chunks_per_s=500, device_rate_burst_s=1.0,
    )
    rx = Receiver(cfg, clock=clock)
    sealer = fleet.sealer("dev1")
    honest = [sealer.seal(masked, jpeg) for masked, jpeg in clip]
    tag, fed, outcomes = 0, 0, {}
    try:
        for n in range(20_000):
            tag += 1
            out = rx.handle(FLOOD_TOPIC, first_chunk(n), tag=tag)
            outcomes[out] = outcomes.get(out, 0) + 1
            clock.t += 0.0005  # 2,000 chunks a second: four times the flooder's limit
            if n % 2000 == 1999:
                frame = honest[n // 2000]
                for chunk in split_message(frame.message, len(frame.message) // 3 + 64):
                    tag += 1
                    last = rx.handle(TOPIC, chunk, tag=tag)
                assert last == "stored"
            memory = rx.memory()
            assert memory["pending_chunks"] <= 256 and memory["pending_bytes"] <= cfg.max_pending_bytes
        fed = tag
        summary = rx.summary()
        assert summary["stored"] == len(honest) and summary["rejected_total"] == 0
        assert outcomes["rate_limited"] > 10_000 and outcomes["partial"] > 1000
        memory = rx.memory()
        assert memory["pending_chunks"] <= 64  # the flooder's share; dev1 holds nothing
        # Every MQTT message is acknowledged exactly once, or still held (its frame may yet complete).
        acked = rx.take_mqtt_acks()
        assert len(acked) == len(set(acked)) and len(acked) + memory["pending_chunks"] == fed
        clock.t += cfg.chunk_timeout_s + 1
        rx.expire()
        assert rx.memory()["pending_chunks"] == 0 and len(rx.take_mqtt_acks()) == memory["pending_chunks"]
        assert rx.memory()["reassembly_heap"] <= 64
    finally:
        rx.store.close()


# --------------------------------------------------------------------------------------------- dedupe


def test_dedupe_memory_is_bounded_and_the_slots_survive_a_restart(tmp_path: Path) -> None:
    dedupe = Dedupe(tmp_path, window=8, max_streams=4)
    digest = {(s, q): bytes([s, q % 256]) * 16 for s in range(10) for q in range(0, 100, 2)}
    for s in range(10):
        key = dedupe.open_stream("dev1", f"{s:032x}", lambda: [], lambda: [])
        for q in range(0, 100, 2):
            assert dedupe.lookup(key, q) is None
            dedupe.stage(key, q, digest[(s, q)])
            assert dedupe.lookup(key, q) == digest[(s, q)]  # taken while staged
            if q % 10 == 8:
                dedupe.commit()  # batches of five
        dedupe.commit()
        assert dedupe.memory()["streams"] <= 4 and dedupe.memory()["window"] <= 8
    key = dedupe.open_stream("dev1", f"{3:032x}", lambda: [], lambda: [])
    assert dedupe.lookup(key, 10) == digest[(3, 10)] and dedupe.lookup(key, 11) is None
    assert dedupe.missing_ranges(key, limit=2) == [(1, 1), (3, 3)]
    dedupe.close()
    again = Dedupe(tmp_path, window=8, max_streams=4)
    for s in range(10):
        key = again.open_stream("dev1", f"{s:032x}", lambda: [], lambda: [])
        assert all(again.lookup(key, q) == digest[(s, q)] for q in range(0, 100, 2))
        assert again.lookup(key, 101) is None and again.lookup(key, 1 << 63) is None
    assert again.memory() == {"streams": 4, "window": 8}
    again.close()


def test_a_restart_recognises_duplicates_from_the_database_the_index_tail_and_an_old_index(
    fleet: Fleet, clip: list[Any], tmp_path: Path
) -> None:
    cfg = fleet.receiver_config(tmp_path / "received")
    sealer = fleet.sealer("dev1")
    frames = [sealer.seal(masked, jpeg) for masked, jpeg in clip[:4]]
    rx = Receiver(cfg)
    assert [rx.handle(TOPIC, one(f.message)) for f in frames[:3]] == ["stored"] * 3
    rx.store.close()
    stream = frames[0].stream_id.hex()
    database = cfg.output_dir / "dedupe.sqlite3"
    # A crash after the index lines were fsynced but before their slots were committed: the index tail
    # restores them (a whole batch).
    with sqlite3.connect(database) as db:
        db.executemany("DELETE FROM seen WHERE seq = ?", [(f.seq - (1 << 63),) for f in frames[1:3]])
    rx = Receiver(cfg)
    assert [rx.handle(TOPIC, one(f.message)) for f in frames[:3]] == ["duplicate"] * 3
    rx.store.close()
    # A torn last line (crash mid-write) is ended, so the next frame's line is whole.
    index = cfg.output_dir / "dev1" / stream / "index.jsonl"
    with open(index, "a", encoding="utf-8") as fh:
        fh.write('{"seq": 99, "fi')
    rx = Receiver(cfg)
    assert rx.handle(TOPIC, one(frames[3].message)) == "stored"
    rx.store.close()
    lines = index.read_text().splitlines()
    assert lines[-2] == '{"seq": 99, "fi' and json.loads(lines[-1])["seq"] == frames[3].seq
    # An output directory from before the database: the index is imported on the stream's first touch.
    for path in cfg.output_dir.glob("dedupe.sqlite3*"):
        path.unlink()
    rx = Receiver(cfg)
    assert [rx.handle(TOPIC, one(f.message)) for f in frames] == ["duplicate"] * 4
    resealed = fleet.sealer("dev1", stream_id=frames[0].stream_id).seal(*clip[0])
    assert rx.handle(TOPIC, one(resealed.message)) == "replay"
    rx.store.close()


# ------------------------------------------------------------------------------------------ MP4 writers


def test_mp4_writers_are_capped_and_close_when_idle(fleet: Fleet, clip: list[Any], tmp_path: Path) -> None:
    clock = FakeClock()
    cfg = fleet.receiver_config(tmp_path / "received", write_mp4=True, max_open_writers=2, writer_idle_s=30)
    rx = Receiver(cfg, clock=clock)
    fds = len(os.listdir("/proc/self/fd"))
    sealers = [fleet.sealer("dev1") for _ in range(6)]  # six streams (six device restarts)
    try:
        for sealer in sealers:
            assert rx.handle(TOPIC, one(sealer.seal(*clip[0]).message)) == "stored"
            assert rx.store.open_writers() <= 2
        assert len(os.listdir("/proc/self/fd")) <= fds + 2
        clock.t += 31
        rx.expire()
        assert rx.store.open_writers() == 0 and len(os.listdir("/proc/self/fd")) <= fds
        # A stream that comes back gets a new file next to its first one.
        assert rx.handle(TOPIC, one(sealers[0].seal(*clip[1]).message)) == "stored"
        stream_dir = cfg.output_dir / "dev1" / sealers[0].stream_id.hex()
        assert rx.store.open_writers() == 1
    finally:
        rx.store.close()
    assert sorted(p.name for p in stream_dir.glob("*.mp4")) == ["video-1.mp4", "video.mp4"]


# ------------------------------------------------------------------------------------ storage failures


@pytest.fixture
def blocked(fleet: Fleet, tmp_path: Path) -> Iterator[tuple[Receiver, Any]]:
    rx = Receiver(fleet.receiver_config(tmp_path / "received"))
    yield rx, fleet.sealer("dev1")
    rx.store.close()


def test_a_storage_failure_acknowledges_and_answers_nothing(blocked: tuple[Receiver, Any], clip: list[Any]) -> None:
    rx, sealer = blocked
    frame = sealer.seal(*clip[0])
    frames_path = rx.cfg.output_dir / "dev1" / frame.stream_id.hex() / "frames"
    frames_path.parent.mkdir(parents=True)
    frames_path.write_bytes(b"")  # a file where the frames folder must go: every write below it fails
    chunks = split_message(frame.message, len(frame.message) // 3 + 64)
    outcomes = [rx.handle(TOPIC, c, tag=n) for n, c in enumerate(chunks, start=1)]
    assert outcomes[-1] == "storage_error" and rx.storage_failure is not None
    assert rx.take_mqtt_acks() == [] and rx.take_answers() == []  # the broker will deliver all chunks again
    assert rx.summary()["storage_errors"] == 1 and rx.summary()["stored"] == 0
    frames_path.unlink()
    outcomes = [rx.handle(TOPIC, c, tag=n) for n, c in enumerate(chunks, start=11)]
    assert outcomes[-1] == "stored"
    assert sorted(rx.take_mqtt_acks()) == list(range(11, 11 + len(chunks)))
    ((_, ack),) = rx.take_answers()
    assert ack.stored == {frame.stream_id.hex(): ((frame.seq, frame.seq),)}


def test_group_commit_acknowledges_a_batch_only_once_it_is_durable(
    blocked: tuple[Receiver, Any], clip: list[Any]
) -> None:
    rx, sealer = blocked
    rx.group_commit = True  # what the MQTT session does
    frames = [sealer.seal(masked, jpeg) for masked, jpeg in clip[:4]]
    assert [rx.handle(TOPIC, one(f.message), tag=n) for n, f in enumerate(frames[:3], start=1)] == ["stored"] * 3
    assert rx.handle(TOPIC, one(frames[0].message), tag=4) == "duplicate"  # a copy of a frame not yet committed
    assert rx.summary()["stored"] == 0 and rx.take_mqtt_acks() == [] and rx.take_answers() == []
    rx.commit_if_due(idle=True)
    assert rx.summary()["stored"] == 3 and sorted(rx.take_mqtt_acks()) == [1, 2, 3, 4]
    ((_, ack),) = rx.take_answers()
    assert ack.stored == {frames[0].stream_id.hex(): ((frames[0].seq, frames[0].seq), (frames[1].seq, frames[1].seq),
                                                       (frames[2].seq, frames[2].seq))}
    # A batch whose commit fails counts nothing and acknowledges nothing (here: the index cannot be written).
    index = rx.cfg.output_dir / "dev1" / frames[0].stream_id.hex() / "index.jsonl"
    index.rename(index.with_name("index.jsonl.saved"))
    index.mkdir()
    assert rx.handle(TOPIC, one(frames[3].message), tag=5) == "stored"
    rx.commit_if_due(idle=True)
    assert rx.summary()["stored"] == 3 and rx.summary()["storage_errors"] == 1 and rx.storage_failure is not None
    assert rx.take_mqtt_acks() == [] and rx.take_answers() == []
    index.rmdir()
    index.with_name("index.jsonl.saved").rename(index)
    assert rx.handle(TOPIC, one(frames[3].message), tag=6) == "stored"  # delivered again after the reconnect
    rx.commit_if_due(idle=True)
    assert rx.summary()["stored"] == 4 and rx.take_mqtt_acks() == [6]
