"""The receiver's answers to devices, in-process: batched acks for stored and duplicate frames, refusals the
receiver can attribute (rate limited), silence for forged or damaged messages, capture-time bounds, the
enrollment registry reloading on change, and the ack test vector in docs/format.md.

Messages are real frames of a real clip, masked, JPEG-encoded and sealed by the project's code. The clock the
receiver batches and rate-limits with is a fake one the tests move, so nothing here waits on time.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.fleet import FakeClock, Fleet, make_fleet, masked_clip, masker_config

from edge_mask.receiver.receiver import Receiver
from edge_mask.seal import Ack, Refusal, parse_ack, to_ranges
from edge_mask.seal.wire import split_message

TOPIC = "edge-mask/dev1/frames"
ACK_TOPIC = "edge-mask/dev1/ack"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Fleet:
    return make_fleet(tmp_path_factory.mktemp("fleet"))


@pytest.fixture(scope="module")
def clip(shared_dir: Path) -> list[tuple[Any, bytes]]:
    return list(masked_clip(masker_config(shared_dir), frames=4, step=20))


@pytest.fixture(scope="module")
def sealed(fleet: Fleet, clip: list[tuple[Any, bytes]]) -> list[Any]:
    sealer = fleet.sealer("dev1")
    return [sealer.seal(masked, jpeg) for masked, jpeg in clip]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def receiver(fleet: Fleet, tmp_path: Path, clock: FakeClock) -> Iterator[Receiver]:
    rx = Receiver(fleet.receiver_config(tmp_path / "received"), clock=clock)
    yield rx
    rx.store.close()


def one(message: bytes) -> bytes:
    (chunk,) = split_message(message, 1 << 20)
    return chunk


def test_stored_and_duplicate_frames_are_confirmed_in_one_batch_per_device(
    receiver: Receiver, sealed: list[Any], clock: FakeClock
) -> None:
    first, *rest = sealed
    chunks = split_message(first.message, len(first.message) // 3 + 64)
    assert [receiver.handle(TOPIC, c) for c in chunks] == ["partial"] * (len(chunks) - 1) + ["stored"]
    for frame in rest:
        assert receiver.handle(TOPIC, one(frame.message)) == "stored"
    assert receiver.handle(TOPIC, one(first.message)) == "duplicate"  # "the cloud has it": confirmed again
    assert receiver.take_answers(force=False) == []  # not due before ack_interval_s
    clock.t += receiver.cfg.ack_interval_s + 0.001
    ((topic, ack),) = receiver.take_answers(force=False)
    assert topic == ACK_TOPIC and ack.refused == ()
    stream = first.stream_id.hex()
    assert ack.stored == {stream: tuple(to_ranges(f.seq for f in sealed))}
    assert parse_ack(ack.pack()) == ack
    assert receiver.take_answers() == []  # each answer handed out once
    # A frame that is not stored is not confirmed (a replay of the slot with other content).
    resealed = receiver.handle(TOPIC, one(first.message[:-1] + bytes([first.message[-1] ^ 1])))
    assert resealed == "bad_signature" and receiver.take_answers() == []


def test_a_full_batch_is_due_at_once() -> None:
    from edge_mask.receiver.answers import Answers

    answers = Answers(interval_s=10.0, max_waiting=256)
    stream = "ab" * 16
    for seq in range(255):
        answers.stored(ACK_TOPIC, stream, seq, now=0.0)
    assert answers.due(now=0.0) == []
    answers.stored(ACK_TOPIC, stream, 255, now=0.0)
    ((_, ack),) = answers.due(now=0.0)
    assert ack.stored == {stream: ((0, 255),)} and ack.stored_count() == 256 and answers.waiting() == 0


def test_refusals_go_only_to_attributable_rejections_at_most_once_a_second(
    fleet: Fleet, receiver: Receiver, sealed: list[Any], clip: list[Any], clock: FakeClock, tmp_path: Path
) -> None:
    from edge_mask.seal.keys import (
        generate_recipient,
        generate_signing_key,
        load_recipient_public_key,
        load_signing_key,
    )
    from edge_mask.seal.sealer import Sealer

    message = sealed[0].message
    # Forged, damaged and malformed messages: counted, never answered.
    generate_signing_key(tmp_path / "attacker.key")
    forger = Sealer("dev1", load_recipient_public_key(fleet.recipient_pub), load_signing_key(tmp_path / "attacker.key"),
                    "chacha20-poly1305")
    silent = {
        "forged": receiver.handle(TOPIC, one(forger.seal(*clip[1]).message)),
        "flipped": receiver.handle(TOPIC, one(message[:40] + bytes([message[40] ^ 4]) + message[41:])),
        "noise": receiver.handle(TOPIC, b"EMCK" + bytes(64)),
    }
    assert set(silent.values()) <= {"bad_signature", "tampered", "malformed", "unsupported_version"}, silent
    clock.t += 5
    assert receiver.take_answers() == []
    # Sealed by dev1 to another cloud's key: the device hears why, once per second however often it sends.
    _, other_pub = generate_recipient(tmp_path / "other-cloud")

    def stranger() -> bytes:  # a new stream each time, so the same frame can be sealed again
        sealer = Sealer("dev1", load_recipient_public_key(other_pub), load_signing_key(fleet.signing_keys["dev1"]),
                        "chacha20-poly1305")
        return one(sealer.seal(*clip[1]).message)

    for _ in range(5):
        assert receiver.handle(TOPIC, stranger()) == "wrong_recipient"
    ((topic, ack),) = receiver.take_answers()
    assert topic == ACK_TOPIC and [r.reason for r in ack.refused] == ["wrong_recipient"] and not ack.stored
    clock.t += 1.0
    assert receiver.handle(TOPIC, stranger()) == "wrong_recipient"
    assert [r.reason for _, a in receiver.take_answers() for r in a.refused] == ["wrong_recipient"]
    # Not enrolled (device named by the topic), and another device's frame on dev1's topic.
    assert receiver.handle("edge-mask/dev9/frames", one(message)) == "unknown_device"
    dev2 = fleet.sealer("dev2").seal(*clip[2])
    clock.t += 1.0
    assert receiver.handle(TOPIC, one(dev2.message)) == "topic_mismatch"
    answers = dict(receiver.take_answers())
    assert [r.reason for r in answers["edge-mask/dev9/ack"].refused] == ["unknown_device"]
    (mismatch,) = answers[ACK_TOPIC].refused
    assert mismatch.reason == "topic_mismatch" and mismatch.ranges == ((dev2.seq, dev2.seq),)
    summary = receiver.summary()
    assert summary["refusals_sent"] == 4 and summary["refusals_suppressed"] == 4 and summary["stored"] == 0


def test_capture_times_beyond_the_skew_bounds_are_refused_as_clock_skew(
    receiver: Receiver, sealed: list[Any]
) -> None:
    future, past, fine = sealed[0], sealed[1], sealed[2]
    assert receiver.cfg.max_future_skew_s == 300
    assert receiver.handle(TOPIC, one(future.message), now=future.captured_at - 301) == "replay"
    assert receiver.handle(TOPIC, one(past.message), now=past.captured_at + 8 * 24 * 3600) == "replay"
    assert receiver.handle(TOPIC, one(fine.message), now=fine.captured_at - 299) == "stored"
    ((_, ack),) = receiver.take_answers()
    (refusal,) = ack.refused  # the second refusal fell within the same second
    assert refusal.reason == "clock_skew" and "future" in refusal.detail
    assert refusal.stream == future.stream_id.hex() and refusal.ranges == ((future.seq, future.seq),)
    assert ack.stored == {fine.stream_id.hex(): ((fine.seq, fine.seq),)}
    assert receiver.summary()["rejected"] == {"replay": 2}
    # The refused frame is not stored: once the clocks agree it is accepted.
    assert receiver.handle(TOPIC, one(future.message), now=future.captured_at) == "stored"


def test_registry_reloads_revocation_renewal_and_skips_a_corrupt_record(
    tmp_path: Path, clip: list[Any], caplog: pytest.LogCaptureFixture
) -> None:
    from edge_mask.seal.keys import Enrollment, generate_signing_key, load_recipient_public_key, load_signing_key
    from edge_mask.seal.sealer import Sealer

    fleet = make_fleet(tmp_path / "fleet")
    clock = FakeClock()
    rx = Receiver(fleet.receiver_config(tmp_path / "received"), clock=clock)
    dev1, dev2 = fleet.sealer("dev1"), fleet.sealer("dev2")
    renewed_key = tmp_path / "renewed.key"

    def renewed(frame: tuple[Any, bytes]) -> bytes:
        sealer = Sealer("dev1", load_recipient_public_key(fleet.recipient_pub), load_signing_key(renewed_key),
                        "chacha20-poly1305")
        return one(sealer.seal(*frame).message)
    try:
        assert rx.handle(TOPIC, one(dev1.seal(*clip[0]).message)) == "stored"
        # Revoked: the record removed. Seen on the next poll, at most registry_poll_s later.
        (fleet.devices_dir / "dev1.json").unlink()
        clock.t += rx.cfg.registry_poll_s
        assert rx.handle(TOPIC, one(dev1.seal(*clip[1]).message)) == "unknown_device"
        # Renewed: a new signing key enrolled under the same id; the old key is refused, the new one accepted.
        public = generate_signing_key(renewed_key)
        Enrollment("dev1", public, "0" * 64).save(fleet.devices_dir)
        assert rx.poll_registry()
        assert rx.handle(TOPIC, renewed(clip[2])) == "stored"
        assert rx.handle(TOPIC, one(dev1.seal(*clip[3]).message)) == "bad_signature"
        # A corrupt record is skipped with one warning; every other device keeps working.
        caplog.set_level(logging.WARNING, logger="edge_mask.receiver")
        (fleet.devices_dir / "dev2.json").write_text('{"format": "edge-mask-enrollment/1", "device_id": "dev2"')
        for _ in range(3):
            clock.t += rx.cfg.registry_poll_s
            (fleet.devices_dir / "dev3.json").write_text("not json either")  # more changes: no repeated warning
            assert rx.handle(TOPIC, renewed(clip[0])) == "stored"
        warnings = [r.getMessage() for r in caplog.records if "skipping enrollment record" in r.getMessage()]
        assert sum("dev2.json" in w for w in warnings) == 1, warnings
        assert rx.handle("edge-mask/dev2/frames", one(dev2.seal(*clip[1]).message)) == "unknown_device"
    finally:
        rx.store.close()


def test_the_ack_vector_in_the_format_document() -> None:
    stream = "000102030405060708090a0b0c0d0e0f"
    ack = Ack(
        stored={stream: ((40, 42), (44, 44))},
        refused=(Refusal("clock_skew", "captured_at is 600 s in the future of the receiver's clock; check the "
                         "device's clock (NTP)", stream, ((45, 45),)),),
    )
    doc = (REPO / "docs" / "format.md").read_text(encoding="utf-8")
    block = re.search(r"<!-- vector:ack -->\n```\n(.+)\n```", doc)
    assert block, "docs/format.md lacks the ack vector block"
    assert ack.pack() == block.group(1).encode("utf-8")
    assert len(ack.pack()) == 292 and parse_ack(block.group(1).encode()) == ack
