"""The header layout and the chunk envelope: exact round trips, and hostile bytes only ever raise MessageError.

Why property tests here: these parsers read bytes from the network, so the claim is about *every* input,
not a few examples. Hypothesis explores the space; the fixed cases pin each reject reason.
"""

from __future__ import annotations

import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_mask.core.errors import MessageError
from edge_mask.seal.wire import (
    CHUNK_HEADER_LEN,
    FIXED_LEN,
    FrameHeader,
    Reassembler,
    message_id,
    split_message,
)

text = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp", "Cf", "Co", "Cn", "Zs")),
    min_size=1,
    max_size=16,
)
headers = st.builds(
    FrameHeader,
    device_id=text,
    recipient_key_id=st.binary(min_size=8, max_size=8),
    stream_id=st.binary(min_size=16, max_size=16),
    seq=st.integers(0, 2**64 - 1),
    captured_at=st.integers(0, 2**52).map(lambda us: us / 1_000_000),
    width=st.integers(1, 65535),
    height=st.integers(1, 65535),
    content_type=st.sampled_from(["image/jpeg", "image/png"]),
    aead=st.sampled_from(["chacha20-poly1305", "aes-128-gcm"]),
    fail_closed=st.booleans(),
)


@given(headers)
@settings(deadline=None)
def test_header_round_trips_exactly(header: FrameHeader) -> None:
    packed = header.pack()
    parsed, length = FrameHeader.unpack(packed + b"trailing ciphertext")
    assert length == len(packed)
    assert parsed == header
    assert parsed.pack() == packed  # one canonical encoding: it is signed and used as HPKE info


def _header(**changes: object) -> FrameHeader:
    fields: dict[str, object] = {
        "device_id": "dev1", "recipient_key_id": b"k" * 8, "stream_id": b"s" * 16, "seq": 7,
        "captured_at": 1_700_000_000.5, "width": 640, "height": 480,
    }
    fields.update(changes)
    return FrameHeader(**fields)  # type: ignore[arg-type]


def test_header_refuses_values_it_cannot_carry() -> None:
    for bad in (
        {"aead": "aes-256-gcm"}, {"recipient_key_id": b"short"}, {"stream_id": b"x"}, {"seq": -1},
        {"seq": 2**64}, {"captured_at": -1.0}, {"width": 0}, {"height": 70000}, {"device_id": ""},
        {"device_id": "d" * 65}, {"device_id": "a\nb"}, {"content_type": "x" * 65},
    ):
        with pytest.raises(ValueError):
            _header(**bad).pack()


def test_header_parse_errors_have_stable_reasons() -> None:
    good = _header().pack()

    def reason(data: bytes) -> str:
        with pytest.raises(MessageError) as exc:
            FrameHeader.unpack(data)
        return exc.value.reason

    assert reason(b"") == "malformed"
    assert reason(b"XXXX" + good[4:]) == "malformed"
    assert reason(good[:4] + b"\x02" + good[5:]) == "unsupported_version"
    assert reason(good[:10] + struct.pack(">H", 2) + good[12:]) == "unsupported_version"  # AES-256-GCM id
    assert reason(good[:5] + b"\x80" + good[6:]) == "unsupported_version"  # unknown flag bit
    assert reason(good[:52] + b"\0\0" + good[54:]) == "malformed"  # zero width
    assert reason(good[:FIXED_LEN] + b"\x00" + good[FIXED_LEN + 1 :]) == "malformed"  # empty device id
    assert reason(good[:FIXED_LEN] + b"\xff" + good[FIXED_LEN + 1 :]) == "malformed"  # device id too long
    for cut in range(len(good)):
        assert reason(good[:cut]) in {"malformed", "unsupported_version"}


@given(st.binary(max_size=200))
@settings(deadline=None)
def test_header_parser_only_raises_message_error(data: bytes) -> None:
    try:
        FrameHeader.unpack(data)
    except MessageError as exc:
        assert exc.reason in {"malformed", "unsupported_version"}


# ------------------------------------------------------------------------------------------------ chunks


@given(st.binary(min_size=1, max_size=5000), st.integers(CHUNK_HEADER_LEN + 1, 2000), st.randoms())
@settings(max_examples=150, deadline=None)
def test_chunks_respect_max_payload_and_reassemble_in_any_order(
    message: bytes, max_payload: int, rnd: random.Random
) -> None:
    chunks = split_message(message, max_payload)
    assert all(len(c) <= max_payload for c in chunks)
    assert len(chunks) == -(-len(message) // (max_payload - CHUNK_HEADER_LEN))
    rnd.shuffle(chunks)
    reassembler = Reassembler(max_pending_bytes=1 << 24, timeout_s=30, max_message_bytes=1 << 20)
    outputs = [reassembler.feed(c, 0.0) for c in chunks]
    assert outputs[-1] == message and not any(outputs[:-1])
    assert reassembler.stats()["pending"] == 0 and reassembler.stats()["pending_bytes"] == 0


def test_split_message_refuses_impossible_requests() -> None:
    with pytest.raises(ValueError):
        split_message(b"", 1024)
    with pytest.raises(ValueError):
        split_message(b"abc", CHUNK_HEADER_LEN)


def test_duplicate_chunks_are_ignored_and_interleaved_messages_complete() -> None:
    a, b = bytes(range(256)) * 40, bytes(reversed(range(256))) * 30
    ca, cb = split_message(a, 1000), split_message(b, 1000)
    r = Reassembler(max_pending_bytes=1 << 20, timeout_s=30, max_message_bytes=1 << 20)
    done = []
    for x, y in zip(ca, cb + [cb[0]] * (len(ca) - len(cb)), strict=True):
        for chunk in (x, x, y):  # every chunk of `a` twice; `b`'s first chunk repeated at the end
            if (out := r.feed(chunk, 1.0)) is not None:
                done.append(out)
    assert done == [b, a]
    assert r.stats()["duplicate_chunks"] >= len(ca)
    # Duplicates arriving after completion (a's last chunk, b's first) wait alone until their timeout.
    assert r.stats()["pending"] == 2
    assert r.expire(100.0) == 2 and r.stats()["pending_bytes"] == 0


def test_incomplete_messages_time_out_and_memory_stays_bounded() -> None:
    r = Reassembler(max_pending_bytes=20_000, timeout_s=5, max_message_bytes=100_000)
    first = split_message(b"a" * 9000, 1000)
    for chunk in first[:-1]:
        assert r.feed(chunk, 0.0) is None
    assert r.expire(4.0) == 0 and r.expire(6.0) == 1
    assert r.feed(first[-1], 6.0) is None  # its siblings are gone; it waits alone
    # Three big incomplete messages: the oldest are evicted to stay under max_pending_bytes.
    for n in range(3):
        for chunk in split_message(bytes([n]) * 15_000, 1000)[:-1]:
            r.feed(chunk, 7.0 + n)
            assert r.stats()["pending_bytes"] <= 20_000
    assert r.stats()["evicted"] >= 2
    with pytest.raises(MessageError) as exc:
        r.feed(split_message(b"x" * 30_000, 1000)[0], 8.0)  # could never fit max_pending_bytes
    assert exc.value.reason == "oversized"
    with pytest.raises(MessageError) as exc:
        r.feed(split_message(b"x" * 200_000, 100_000)[0], 8.0)  # above max_message_bytes
    assert exc.value.reason == "oversized"


def test_inconsistent_chunks_are_malformed() -> None:
    message = b"m" * 3000
    chunks = split_message(message, 1000)
    mid = message_id(message)
    r = Reassembler(max_pending_bytes=1 << 20, timeout_s=30, max_message_bytes=1 << 20)

    def reason(payload: bytes) -> str:
        with pytest.raises(MessageError) as exc:
            r.feed(payload, 0.0)
        return exc.value.reason

    def envelope(index: int, count: int, total: int, data: bytes, version: int = 1, ident: bytes = mid) -> bytes:
        return struct.pack(">4sB16sIII", b"EMCK", version, ident, index, count, total) + data

    assert reason(b"") == "malformed"
    assert reason(b"NOPE" + chunks[0][4:]) == "malformed"
    assert reason(envelope(0, 1, 3, b"abc", version=2)) == "unsupported_version"
    assert reason(envelope(3, 3, 3000, b"x")) == "malformed"  # index beyond count
    assert reason(envelope(0, 0, 3000, b"x")) == "malformed"  # no chunks
    assert reason(envelope(0, 1, 4, b"abc")) == "malformed"  # single chunk, wrong length
    assert reason(envelope(0, 1, 3, b"abc")) == "malformed"  # id is not this content's hash
    assert reason(envelope(0, 2, 3, b"")) == "malformed"  # empty data
    r.feed(chunks[0], 0.0)
    assert len(chunks) == 4
    assert reason(envelope(1, 5, 3000, b"x")) == "malformed"  # disagrees with the first chunk's count
    r.feed(chunks[0], 0.0)
    r.feed(chunks[1], 0.0)
    assert r.feed(envelope(2, 4, 3000, b"y" * 967), 0.0) is None
    assert reason(envelope(3, 4, 3000, b"y" * 99)) == "malformed"  # completes, but not to this hash
    assert r.stats()["pending"] == 0
    for c in chunks:
        out = r.feed(c, 0.0)
    assert out == message  # the reassembler recovers after every rejection


@given(st.lists(st.binary(max_size=300), max_size=30))
@settings(max_examples=200, deadline=None)
def test_reassembler_only_raises_message_error(payloads: list[bytes]) -> None:
    r = Reassembler(max_pending_bytes=4096, timeout_s=1, max_message_bytes=2048)
    for i, p in enumerate(payloads):
        try:
            r.feed(p, float(i))
        except MessageError as exc:
            assert exc.reason in {"malformed", "oversized", "unsupported_version"}
        assert r.stats()["pending_bytes"] <= 4096
