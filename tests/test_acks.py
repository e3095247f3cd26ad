"""The cloud's ack message (seal/acks.py): round trip, ranges, and hostile input never raising anything else."""

from __future__ import annotations

import json
import random

import pytest

from edge_mask.core.errors import MessageError
from edge_mask.seal import Ack, Refusal, ack_topic, parse_ack, to_ranges

STREAM = "0123456789abcdef0123456789abcdef"


def test_ranges_merge_and_sort() -> None:
    assert to_ranges([7, 1, 3, 2, 3]) == [(1, 3), (7, 7)]
    assert to_ranges([]) == []


def test_round_trip() -> None:
    ack = Ack(
        stored={STREAM: ((1, 500), (502, 502))},
        refused=(Refusal("wrong_recipient", "key id 00ff", STREAM, ((600, 601),)),),
    )
    back = parse_ack(ack.pack())
    assert back == ack
    assert back.stored_count() == 501
    assert len(ack.pack()) < 250


def test_ack_topic_replaces_the_frames_level() -> None:
    assert ack_topic("edge-mask/dev1/frames") == "edge-mask/dev1/ack"
    assert ack_topic("clinic/a/edge-mask/dev1/frames/main") == "clinic/a/edge-mask/dev1/ack"
    assert ack_topic("edge-mask/dev1/status") is None


@pytest.mark.parametrize(
    "payload",
    [
        b"", b"\xff", b"[]", b'{"v":2}', b'{"v":1,"stored":{}}', b'{"v":1,"stored":[{"stream":"zz"}]}',
        b'{"v":1,"stored":[{"stream":"' + STREAM.encode() + b'","ranges":[[5,4]]}]}',
        b'{"v":1,"stored":[{"stream":"' + STREAM.encode() + b'","ranges":[[true,4]]}]}',
        b'{"v":1,"refused":[{"reason":"DROP TABLE"}]}',
        json.dumps({"v": 1, "stored": [{"stream": STREAM, "ranges": [[i, i] for i in range(5000)]}]}).encode(),
    ],
)
def test_bad_acks_are_malformed(payload: bytes) -> None:
    with pytest.raises(MessageError):
        parse_ack(payload)


def test_fuzz_never_raises_anything_else() -> None:
    rng = random.Random(7)
    good = Ack(stored={STREAM: ((1, 9),)}, refused=(Refusal("unknown_device"),)).pack()
    for _ in range(3000):
        data = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        try:
            parse_ack(bytes(data))
        except MessageError:
            pass
