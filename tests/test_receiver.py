"""The receiver's message handling, in-process: storage, duplicates, replays, tampering, forgery, fuzzing.

Messages are real: frames of a real clip masked by the project's masker, JPEG-encoded and sealed by the
project's Sealer, wrapped in chunk envelopes exactly as the uplink publishes them. The broker is not
needed here (tests/test_e2e_mqtt.py covers the network path).
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from support.fleet import Fleet, make_fleet, masked_clip, masker_config

from edge_mask.capture import VideoReader, read_image
from edge_mask.cli import main as cli_main
from edge_mask.receiver.receiver import Receiver, topic_device
from edge_mask.seal.wire import split_message

TOPIC = "edge-mask/dev1/frames"
BIG = 1 << 20


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Fleet:
    return make_fleet(tmp_path_factory.mktemp("fleet"))


@pytest.fixture(scope="module")
def clip(shared_dir: Path) -> list[tuple[Any, bytes]]:
    """Six masked frames (every 20th frame of the clip) with their JPEGs."""
    return list(masked_clip(masker_config(shared_dir), frames=6, step=20))


@pytest.fixture(scope="module")
def sealed(fleet: Fleet, clip: list[tuple[Any, bytes]]) -> list[Any]:
    sealer = fleet.sealer("dev1")
    return [sealer.seal(masked, jpeg) for masked, jpeg in clip]


@pytest.fixture
def receiver(fleet: Fleet, tmp_path: Path) -> Iterator[Receiver]:
    rx = Receiver(fleet.receiver_config(tmp_path / "received"))
    yield rx
    rx.store.close()


def payload(message: bytes) -> bytes:
    (chunk,) = split_message(message, BIG)
    return chunk


def test_topic_names_the_device() -> None:
    from paho.mqtt.client import topic_matches_sub

    # The default filter covers the uplink's `{prefix}/frames` ('#' also matches the parent level).
    assert topic_matches_sub("edge-mask/+/frames/#", "edge-mask/dev1/frames")
    assert not topic_matches_sub("edge-mask/+/frames/#", "edge-mask/dev1/status")
    assert topic_device("edge-mask/dev1/frames") == "dev1"
    assert topic_device("edge-mask/dev1/frames/abc") == "dev1"
    assert topic_device("a/b/c/dev1/frames") == "dev1"
    assert topic_device("edge-mask/dev1/status") is None


def test_frames_are_verified_decrypted_and_stored(receiver: Receiver, sealed: list[Any], clip: list[Any]) -> None:
    for frame in sealed:
        assert receiver.handle(TOPIC, payload(frame.message)) == "stored"
    summary = receiver.summary()
    assert summary["stored"] == len(sealed) and summary["rejected_total"] == 0
    # Every 20th frame was sealed, so 19 sequence numbers are missing between neighbours.
    stream = f"dev1/{sealed[0].stream_id.hex()}"
    assert summary["gaps"] == {stream: 19 * (len(sealed) - 1)}
    assert summary["gap_ranges"][stream][0] == (sealed[0].seq + 1, sealed[1].seq - 1)
    stream_dir = receiver.cfg.output_dir / "dev1" / sealed[0].stream_id.hex()
    index = [json.loads(line) for line in (stream_dir / "index.jsonl").read_text().splitlines()]
    assert [e["seq"] for e in index] == [f.seq for f in sealed]
    for entry, (masked, jpeg) in zip(index, clip, strict=True):
        stored = (stream_dir / entry["file"]).read_bytes()
        assert stored == jpeg  # the exact masked JPEG the device encoded
        image = cv2.imdecode(np.frombuffer(stored, np.uint8), cv2.IMREAD_COLOR)
        assert image.shape == masked.image.shape
        assert entry["faces"] == masked.faces and entry["width"] == masked.width


def test_duplicates_and_replays_are_dropped_even_after_a_restart(
    fleet: Fleet, receiver: Receiver, sealed: list[Any], clip: list[Any]
) -> None:
    first = sealed[0]
    assert receiver.handle(TOPIC, payload(first.message)) == "stored"
    assert receiver.handle(TOPIC, payload(first.message)) == "duplicate"
    receiver.store.close()
    # A new receiver on the same output directory still knows the slot is taken (read from the index).
    again = Receiver(receiver.cfg)
    assert again.handle(TOPIC, payload(first.message)) == "duplicate"
    # Same (device, stream, seq), validly signed, other bytes: a replay, not a second copy of the frame.
    resealed = fleet.sealer("dev1", stream_id=first.stream_id).seal(*clip[0])
    assert resealed.seq == first.seq and resealed.message != first.message
    assert again.handle(TOPIC, payload(resealed.message)) == "replay"
    # A frame whose capture time is far from now is a replay of old material.
    assert again.handle(TOPIC, payload(sealed[1].message), now=sealed[1].captured_at + 30 * 24 * 3600) == "replay"
    summary = again.summary()
    assert summary["stored"] == 0 and summary["duplicates"] == 1 and summary["rejected"] == {"replay": 2}
    again.store.close()


def flip(message: bytes, index: int) -> bytes:
    data = bytearray(message)
    data[index] ^= 0x01
    return bytes(data)


def test_tampering_forgery_and_wrong_keys_are_rejected_with_their_reason(
    fleet: Fleet, receiver: Receiver, sealed: list[Any], clip: list[Any], tmp_path: Path
) -> None:
    from edge_mask.seal.keys import (
        generate_recipient,
        generate_signing_key,
        load_recipient_public_key,
        load_signing_key,
    )
    from edge_mask.seal.sealer import Sealer

    message = sealed[0].message
    outcomes = {
        "header": receiver.handle(TOPIC, payload(flip(message, 12))),
        "ciphertext": receiver.handle(TOPIC, payload(flip(message, len(message) // 2))),
        "signature": receiver.handle(TOPIC, payload(flip(message, len(message) - 3))),
    }
    assert set(outcomes.values()) <= {"tampered", "bad_signature"}, outcomes
    assert outcomes["signature"] == "bad_signature"
    # Forged: sealed to the real (public) recipient key, claiming dev1, signed with a key dev1 never had.
    generate_signing_key(tmp_path / "attacker.key")
    forger = Sealer("dev1", load_recipient_public_key(fleet.recipient_pub), load_signing_key(tmp_path / "attacker.key"),
                    "chacha20-poly1305")
    assert receiver.handle(TOPIC, payload(forger.seal(*clip[1]).message)) == "bad_signature"
    # Sealed by dev1 to some other cloud's key.
    _, other_pub = generate_recipient(tmp_path / "other-cloud")
    stranger = Sealer("dev1", load_recipient_public_key(other_pub), load_signing_key(fleet.signing_keys["dev1"]),
                      "chacha20-poly1305")
    assert receiver.handle(TOPIC, payload(stranger.seal(*clip[1]).message)) == "wrong_recipient"
    # dev2's frame re-published under dev1's topic; a device nobody enrolled; a payload over the limit.
    dev2 = fleet.sealer("dev2").seal(*clip[2])
    assert receiver.handle(TOPIC, payload(dev2.message)) == "topic_mismatch"
    assert receiver.handle("edge-mask/dev9/frames", payload(message)) == "unknown_device"
    assert receiver.handle(TOPIC, b"\0" * (receiver.cfg.max_message_bytes + 1)) == "oversized"
    summary = receiver.summary()
    assert summary["stored"] == 0 and summary["rejected_total"] == 8
    assert "internal_error" not in summary["rejected"]
    # The receiver is unharmed: the genuine frame is still accepted.
    assert receiver.handle(TOPIC, payload(message)) == "stored"


def test_chunked_frames_are_reassembled(receiver: Receiver, sealed: list[Any]) -> None:
    message = sealed[3].message
    # A chunk size from the message's own length, so the split does not depend on how well JPEG compressed.
    chunks = split_message(message, len(message) // 5 + 64)
    assert len(chunks) > 3
    outcomes = [receiver.handle(TOPIC, chunk) for chunk in chunks]
    assert outcomes == ["partial"] * (len(chunks) - 1) + ["stored"]


def test_fuzzed_messages_never_stop_the_receiver_or_store_anything_bogus(
    receiver: Receiver, sealed: list[Any], clip: list[Any], caplog: pytest.LogCaptureFixture
) -> None:
    rng = random.Random(20240601)
    genuine = [f.message for f in sealed]
    envelopes = [payload(m) for m in genuine]
    topics = [TOPIC, "edge-mask/dev2/frames", "edge-mask/dev9/frames", "edge-mask/frames", "x"]

    def mutate(data: bytes) -> bytes:
        buf = bytearray(data)
        kind = rng.randrange(6)
        if kind == 0:  # flip a few bits
            for _ in range(rng.randint(1, 8)):
                buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
        elif kind == 1:  # truncate
            buf = buf[: rng.randrange(len(buf))]
        elif kind == 2:  # extend with junk
            buf += rng.randbytes(rng.randint(1, 64))
        elif kind == 3:  # overwrite a window with random bytes
            start = rng.randrange(len(buf))
            buf[start : start + 16] = rng.randbytes(16)
        elif kind == 4:  # splice two messages
            other = rng.choice(envelopes)
            cut = rng.randrange(min(len(buf), len(other)))
            buf = buf[:cut] + other[cut:]
        else:  # pure noise of a random size
            buf = bytearray(rng.randbytes(rng.randint(0, 2048)))
        return bytes(buf)

    outcomes: dict[str, int] = {}
    for i in range(2400):
        if i % 3 == 0:
            data = mutate(rng.choice(envelopes))
        elif i % 3 == 1:
            broken = mutate(rng.choice(genuine))
            data = payload(broken) if broken else broken  # valid envelope around a broken message
        else:
            data = rng.randbytes(rng.randint(0, 512))
        outcome = receiver.handle(rng.choice(topics), data)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    summary = receiver.summary()
    assert summary["received"] == 2400
    assert "internal_error" not in summary["rejected"], summary
    assert summary["rejected_total"] > 2000, outcomes
    # a flood of bad messages does not flood the log: one line per reason every 10 s, the counters have the rest
    lines = [r for r in caplog.records if "rejected message on" in r.getMessage()]
    assert 0 < len(lines) <= 2 * len(summary["rejected"]), len(lines)
    # A mutation can leave a genuine message intact (e.g. a splice at a point where both inputs agree, or
    # a changed chunk id); such a frame may be stored. Anything stored must be one of the genuine frames.
    genuine_digests = {hashlib.sha256(m).hexdigest() for m in genuine}
    stored = _index(receiver)
    assert {e["digest"] for e in stored} <= genuine_digests
    assert len({e["seq"] for e in stored}) == len(stored) == summary["stored"]
    jpegs = {jpeg for _, jpeg in clip}
    assert all(p.read_bytes() in jpegs for p in receiver.cfg.output_dir.rglob("*.jpg"))
    # Afterwards every genuine frame is still accepted, exactly once.
    again = [receiver.handle(TOPIC, e) for e in envelopes]
    assert set(again) <= {"stored", "duplicate"}
    assert len(list(receiver.cfg.output_dir.rglob("*.jpg"))) == len(envelopes)


def _index(receiver: Receiver) -> list[dict[str, Any]]:
    return [
        json.loads(line)
        for index in receiver.cfg.output_dir.rglob("index.jsonl")
        for line in index.read_text().splitlines()
    ]


def test_mp4_per_stream(fleet: Fleet, sealed: list[Any], tmp_path: Path) -> None:
    rx = Receiver(fleet.receiver_config(tmp_path / "out", write_mp4=True, mp4_fps=10))
    for frame in sealed:
        assert rx.handle(TOPIC, payload(frame.message)) == "stored"
    rx.store.close()
    (video,) = (tmp_path / "out").rglob("*.mp4")
    with VideoReader(video) as reader:
        assert reader.info.frames == len(sealed)
        image = next(iter(reader), None)
    assert image is not None and image.shape == sealed_shape(rx, sealed)


def sealed_shape(rx: Receiver, sealed: list[Any]) -> tuple[int, int, int]:
    first = next((rx.cfg.output_dir / "dev1" / sealed[0].stream_id.hex() / "frames").glob("*.jpg"))
    return tuple(read_image(first).shape)  # type: ignore[return-value]


def test_receive_command_reports_a_missing_key_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "receiver.toml"
    config.write_text('recipient_private_key = "nope.key"\ndevices_dir = "devices"\n')
    assert cli_main(["receive", "--config", str(config), "--duration", "1"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope.key" in err[0] and "Traceback" not in err[0]


def test_clinical_signals_travel_sealed_and_land_in_the_streams_csv(
    fleet: Fleet, receiver: Receiver, clip: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A frame carrying signals is stored with them: one CSV row per face, in the stream's signals.csv; a
    frame whose signals are not format 1 is still stored, without them."""
    import csv
    import dataclasses

    from edge_mask.core.types import FaceSignals
    from edge_mask.seal.signals import CSV_COLUMNS

    masked, jpeg = clip[0]
    reading = FaceSignals(track_id=5, openness=(0.97, 1.01), gaze=(0.02, -0.01), pose=(3.0, 1.0, -2.0), mouth=0.05)
    with_signals = dataclasses.replace(masked, signals=(reading,))
    sealer = fleet.sealer("dev1")
    frame = sealer.seal(with_signals, jpeg)
    assert receiver.handle(TOPIC, payload(frame.message)) == "stored"
    stream_dir = receiver.cfg.output_dir / "dev1" / frame.stream_id.hex()
    rows = list(csv.DictReader((stream_dir / "signals.csv").read_text().splitlines()))
    assert list(rows[0]) == list(CSV_COLUMNS) and len(rows) == 1
    assert rows[0]["seq"] == str(frame.seq) and rows[0]["track_id"] == "5" and rows[0]["yaw"] == "3.0"
    assert rows[0]["openness_left"] == "1.01" and rows[0]["blink_duration_s"] == ""
    index = [json.loads(line) for line in (stream_dir / "index.jsonl").read_text().splitlines()]
    assert index[-1]["signals"][0]["mouth"] == 0.05
    import edge_mask.seal.sealer as sealer_module

    monkeypatch.setattr(sealer_module, "encode_signals", lambda signals, now: {"v": 9, "faces": "?"})
    odd = sealer.seal(dataclasses.replace(clip[1][0], signals=(reading,)), clip[1][1])
    assert receiver.handle(TOPIC, payload(odd.message)) == "stored"
    assert receiver.counts["signals_malformed"] == 1
    assert len(list(csv.DictReader((stream_dir / "signals.csv").read_text().splitlines()))) == 1
