"""The cloud's answer to a device: which frames it stored, and why it refuses others (docs/format.md).

Why an answer from the cloud at all: a broker's PUBACK only says the broker took the message. A broker
that restarts without saving its queue, a session taken over, or a receiver that failed to write would
lose frames the device had already deleted. So the device keeps every frame in its spool until the
receiver says "stored" (or "already stored", for a duplicate) on `<prefix>/ack`, a topic only the
receiver may publish to (the broker's ACL), and re-sends what stays unconfirmed.

Why JSON and not the binary frame layout: an ack carries no secret and no pixel, it is read by operators
in broker logs, and it needs no canonical form (nothing signs it; the ACL on the topic is its
authentication). Sequence numbers travel as inclusive ranges per stream, so an ack for a burst of 500
frames is a few dozen bytes. Parsing never raises anything but `MessageError("malformed")`.

Layout, version 1 (every key but `v` optional):

    {"v": 1,
     "stored":  [{"stream": "<32 hex>", "ranges": [[first, last], ...]}, ...],
     "refused": [{"reason": "wrong_recipient", "detail": "...", "stream": "<32 hex>",
                  "ranges": [[first, last]]}, ...]}
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from edge_mask.core.errors import MessageError

ACK_VERSION = 1
ACK_TOPIC_LEVEL = "ack"
MAX_ACK_BYTES = 64 * 1024
MAX_RANGES = 4096
_STREAM_HEX = re.compile(r"^[0-9a-f]{32}$")
_REASON = re.compile(r"^[a-z_]{1,40}$")

Range = tuple[int, int]


def to_ranges(seqs: Iterable[int]) -> list[Range]:
    """Sorted, merged inclusive ranges: [1, 2, 3, 7] -> [(1, 3), (7, 7)]."""
    out: list[Range] = []
    for seq in sorted(set(seqs)):
        if out and seq == out[-1][1] + 1:
            out[-1] = (out[-1][0], seq)
        else:
            out.append((seq, seq))
    return out


@dataclass(frozen=True)
class Refusal:
    """The cloud will not store these frames and says why (`reason` is the receiver's reject label)."""

    reason: str
    detail: str = ""
    stream: str | None = None
    ranges: tuple[Range, ...] = ()


@dataclass(frozen=True)
class Ack:
    """One answer on a device's ack topic: stored ranges per stream (hex id), and refusals."""

    stored: Mapping[str, tuple[Range, ...]] = field(default_factory=dict)
    refused: tuple[Refusal, ...] = ()

    def stored_count(self) -> int:
        return sum(last - first + 1 for ranges in self.stored.values() for first, last in ranges)

    def pack(self) -> bytes:
        body: dict[str, object] = {"v": ACK_VERSION}
        if self.stored:
            body["stored"] = [
                {"stream": stream, "ranges": [list(r) for r in ranges]} for stream, ranges in self.stored.items()
            ]
        if self.refused:
            refused: list[dict[str, object]] = []
            for r in self.refused:
                item: dict[str, object] = {"reason": r.reason}
                if r.detail:
                    item["detail"] = r.detail[:200]
                if r.stream is not None:
                    item["stream"] = r.stream
                if r.ranges:
                    item["ranges"] = [list(x) for x in r.ranges]
                refused.append(item)
            body["refused"] = refused
        return json.dumps(body, separators=(",", ":")).encode()


def ack_topic(frames_topic: str) -> str | None:
    """`edge-mask/dev1/frames[/...]` -> `edge-mask/dev1/ack`: the level `frames` replaced by `ack`."""
    parts = frames_topic.split("/")
    for i in range(1, len(parts)):
        if parts[i] == "frames":
            return "/".join([*parts[:i], ACK_TOPIC_LEVEL])
    return None


def parse_ack(payload: bytes) -> Ack:
    """The Ack in `payload`; MessageError("malformed" or "unsupported_version") for anything else."""
    if len(payload) > MAX_ACK_BYTES:
        raise MessageError("oversized", f"ack of {len(payload)} bytes > {MAX_ACK_BYTES}")
    try:
        body = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise MessageError("malformed", "ack is not UTF-8 JSON") from None
    if not isinstance(body, dict):
        raise MessageError("malformed", "ack is not a JSON object")
    if body.get("v") != ACK_VERSION:
        raise MessageError("unsupported_version", f"ack version {body.get('v')!r}")
    stored: dict[str, tuple[Range, ...]] = {}
    budget = [MAX_RANGES]
    for item in _items(body, "stored"):
        stream = _stream(item.get("stream"))
        if stream is None:
            raise MessageError("malformed", "stored entry without a stream id")
        stored[stream] = stored.get(stream, ()) + _ranges(item.get("ranges"), budget)
    refused: list[Refusal] = []
    for item in _items(body, "refused"):
        reason = item.get("reason")
        if not isinstance(reason, str) or not _REASON.match(reason):
            raise MessageError("malformed", "refusal without a valid reason")
        detail = item.get("detail", "")
        refused.append(
            Refusal(
                reason=reason,
                detail=detail[:200] if isinstance(detail, str) else "",
                stream=_stream(item.get("stream")),
                ranges=_ranges(item.get("ranges", []), budget),
            )
        )
    return Ack(stored=stored, refused=tuple(refused))


def _items(body: dict[str, object], key: str) -> list[dict[str, object]]:
    value = body.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise MessageError("malformed", f"ack field {key!r} is not a list of objects")
    return value


def _stream(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _STREAM_HEX.match(value):
        raise MessageError("malformed", "stream id is not 32 lowercase hex digits")
    return value


def _ranges(value: object, budget: list[int]) -> tuple[Range, ...]:
    if not isinstance(value, list):
        raise MessageError("malformed", "ranges is not a list")
    out: list[Range] = []
    for pair in value:
        budget[0] -= 1
        if budget[0] < 0:
            raise MessageError("oversized", f"more than {MAX_RANGES} ranges in one ack")
        if (
            not isinstance(pair, list)
            or len(pair) != 2
            or not all(isinstance(x, int) and not isinstance(x, bool) for x in pair)
            or not 0 <= pair[0] <= pair[1] < 1 << 64
        ):
            raise MessageError("malformed", "a range is not [first, last] with 0 <= first <= last < 2**64")
        out.append((pair[0], pair[1]))
    return tuple(out)
