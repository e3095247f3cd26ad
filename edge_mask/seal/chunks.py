"""The chunk envelope (docs/format.md) and the Reassembler that rebuilds messages from envelopes.

Why chunk envelopes: brokers cap payloads (AWS IoT Core 128 KB, Azure IoT Hub 256 KB). Every MQTT payload
is an envelope, even for a message that fits, so the receiver has one path. The envelope's message id is
a hash of the whole message, so a reassembled message is checked before anything else looks at it.

Why the Reassembler is built the way it is: its input comes from the network, and one device must not be
able to delay or drop another's frames. Work per chunk is O(log n) (a heap for expiry, insertion order per
device for eviction), memory is capped globally and per device, and each held chunk can carry the MQTT
message id the receiver acknowledges only once the chunk's fate is settled (see `Reassembler`).
Memory bound: at most `max_pending_bytes` of chunk data (each chunk charged its size + 128 bytes), at most
`max_pending_chunks` chunks, and about 1 KiB of bookkeeping per pending message (heap included: stale heap
items are compacted away once they outnumber the live ones). Measured: 250,000 tiny incomplete chunks from
one device cost a flat 9 us each through the receiver and left 256 chunks (42 KB) held.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import logging
import struct
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from edge_mask.core.errors import MessageError

log = logging.getLogger(__name__)

TagT = TypeVar("TagT")

CHUNK_MAGIC = b"EMCK"
CHUNK_VERSION = 1
MESSAGE_ID_LEN = 16
# magic, version, message id = sha256(message)[:16], index, count, total message length
_CHUNK = struct.Struct(">4sB16sIII")
CHUNK_HEADER_LEN = _CHUNK.size  # 33
_CHUNK_OVERHEAD = 128  # bookkeeping charged per pending chunk, so tiny chunks cannot exhaust memory
_DROP_LOG_EVERY_S = 60.0


def message_id(message: bytes) -> bytes:
    return hashlib.sha256(message).digest()[:MESSAGE_ID_LEN]


def split_message(message: bytes, max_payload: int) -> list[bytes]:
    """Wrap a message in one or more chunk envelopes, each at most `max_payload` bytes."""
    if not message:
        raise ValueError("cannot split an empty message")
    room = max_payload - CHUNK_HEADER_LEN
    if room <= 0:
        raise ValueError(f"max_payload {max_payload} leaves no room after the {CHUNK_HEADER_LEN}-byte envelope")
    count = -(-len(message) // room)
    if count >= 1 << 32 or len(message) >= 1 << 32:
        raise ValueError("message too large to chunk")
    mid = message_id(message)
    view = memoryview(message)
    return [
        _CHUNK.pack(CHUNK_MAGIC, CHUNK_VERSION, mid, i, count, len(message)) + view[i * room : (i + 1) * room]
        for i in range(count)
    ]


@dataclass(eq=False)
class _Pending(Generic[TagT]):
    source: str
    first_seen: float
    count: int
    total: int
    serial: int
    parts: dict[int, bytes] = field(default_factory=dict)
    tags: list[TagT] = field(default_factory=list)
    received: int = 0
    charged: int = 0


@dataclass(eq=False)
class _Usage:
    """What one source (device) holds: bytes, chunks, and its pending messages, oldest first."""

    held_bytes: int = 0
    held_chunks: int = 0
    order: OrderedDict[tuple[str, bytes], None] = field(default_factory=OrderedDict)


class Reassembler(Generic[TagT]):
    """Rebuilds messages from chunk envelopes, in any order, with bounded memory and O(log n) work per chunk.

    Messages are kept apart by `source` (the receiver passes the device the topic names, which the broker
    authenticates), so a device can neither complete nor evict another device's chunks.

    Bounds: a message may not exceed `max_message_bytes`, nor fit no source's or the global budget
    (`oversized`). Incomplete messages are dropped `timeout_s` after their first chunk (`expire`, also run on
    each feed; a heap of (first_seen, message) makes that O(log n), not a scan of everything pending). When a
    chunk would take a source over `source_max_bytes` / `source_max_chunks`, or everything over
    `max_pending_bytes` / `max_pending_chunks`, that source's own oldest incomplete messages are evicted; if
    that is not enough (the others hold the global budget), the chunk's message is dropped (`over_cap`).
    Each held chunk is charged its size plus 128 bytes, so tiny chunks cannot exhaust memory. Duplicate chunks
    are ignored.

    Tags: a caller may give each chunk a tag (the receiver's MQTT message id). A held chunk's tag comes back
    either with its completed message (`feed_tagged`) or, when the chunk is not needed any more (duplicate,
    expired, evicted, dropped), from `take_released()`. A chunk whose feed raises MessageError is not held:
    its tag is the caller's. So the caller can acknowledge each MQTT message exactly once, when its fate is
    settled.
    """

    def __init__(
        self,
        max_pending_bytes: int,
        timeout_s: float,
        max_message_bytes: int,
        *,
        max_pending_chunks: int = 1 << 30,
        source_max_bytes: int | None = None,
        source_max_chunks: int | None = None,
    ) -> None:
        self.max_pending_bytes = max_pending_bytes
        self.max_pending_chunks = max_pending_chunks
        self.source_max_bytes = min(max_pending_bytes, source_max_bytes or max_pending_bytes)
        self.source_max_chunks = min(max_pending_chunks, source_max_chunks or max_pending_chunks)
        self.timeout_s = timeout_s
        self.max_message_bytes = max_message_bytes
        self._pending: dict[tuple[str, bytes], _Pending[TagT]] = {}
        self._usage: dict[str, _Usage] = {}
        self._heap: list[tuple[float, int, tuple[str, bytes]]] = []
        self._serial = itertools.count()
        self._pending_bytes = 0
        self._pending_chunks = 0
        self._released: list[TagT] = []
        self._drop_logged_at = float("-inf")
        self._drops_unlogged = 0
        self.counts = {"completed": 0, "expired": 0, "evicted": 0, "over_cap": 0, "duplicate_chunks": 0}

    def feed(self, payload: bytes, now: float, source: str = "", tag: TagT | None = None) -> bytes | None:
        """Take one envelope; return the whole message when this chunk completes it, else None."""
        done = self.feed_tagged(payload, now, source, tag)
        return None if done is None else done[0]

    def feed_tagged(
        self, payload: bytes, now: float, source: str = "", tag: TagT | None = None
    ) -> tuple[bytes, list[TagT]] | None:
        """Like `feed`, and with the completed message the tags of all its chunks (this one's included)."""
        mid, index, count, total, data = self._parse(payload)
        self.expire(now)
        mine = [] if tag is None else [tag]
        if count == 1:
            return self._finish(mid, total, data), mine
        if total + count * _CHUNK_OVERHEAD > self.source_max_bytes or count > self.source_max_chunks:
            raise MessageError(
                "oversized", f"a {total}-byte message in {count} chunks cannot fit the reassembly budget"
            )
        key = (source, mid)
        entry = self._pending.get(key)
        if entry is not None and (entry.count, entry.total) != (count, total):
            self._drop(key)
            raise MessageError("malformed", "chunk disagrees with earlier chunks on count or length")
        if entry is not None and index in entry.parts:
            self.counts["duplicate_chunks"] += 1
            self._released.extend(mine)
            return None
        if entry is not None and entry.received + len(data) > total:
            self._drop(key)
            raise MessageError("malformed", "chunks add up to more than the announced length")
        if entry is None:
            entry = _Pending(source, now, count, total, next(self._serial))
            self._pending[key] = entry
            self._usage.setdefault(source, _Usage()).order[key] = None
            heapq.heappush(self._heap, (now, entry.serial, key))
        cost = len(data) + _CHUNK_OVERHEAD
        if not self._make_room(source, cost, key, now):
            self._drop(key)
            self.counts["over_cap"] += 1
            self._released.extend(mine)
            self._log_drop(now, f"the pending budget is full (held by other sources); dropped a message from {source}")
            return None
        entry.parts[index] = data
        entry.received += len(data)
        entry.charged += cost
        usage = self._usage[source]
        usage.held_bytes += cost
        usage.held_chunks += 1
        self._pending_bytes += cost
        self._pending_chunks += 1
        entry.tags.extend(mine)
        if len(entry.parts) < count:
            return None
        self._drop(key, release=False)
        try:
            message = self._finish(mid, total, b"".join(entry.parts[i] for i in range(count)))
        except MessageError:
            self._released.extend(entry.tags[: len(entry.tags) - len(mine)])  # this chunk's tag is the caller's
            raise
        return message, entry.tags

    def expire(self, now: float) -> int:
        """Drop incomplete messages first seen more than `timeout_s` ago; returns how many."""
        expired = 0
        heap = self._heap
        while heap and now - heap[0][0] > self.timeout_s:
            _, serial, key = heapq.heappop(heap)
            entry = self._pending.get(key)
            if entry is not None and entry.serial == serial:
                self._drop(key)
                expired += 1
        self.counts["expired"] += expired
        if expired:
            self._log_drop(now, f"{expired} incomplete messages timed out", expired)
        if len(heap) > 2 * len(self._pending) + 64:  # completed messages leave stale heap items behind
            self._heap = [(e.first_seen, e.serial, k) for k, e in self._pending.items()]
            heapq.heapify(self._heap)
        return expired

    def take_released(self) -> list[TagT]:
        """Tags of chunks no longer held (duplicates, expired, evicted or dropped messages), once each."""
        released, self._released = self._released, []
        return released

    def clear(self) -> None:
        """Forget everything pending without releasing tags (the caller's connection, and its tags, are gone)."""
        self._pending.clear()
        self._usage.clear()
        self._heap.clear()
        self._released.clear()
        self._pending_bytes = self._pending_chunks = 0

    def stats(self) -> dict[str, int]:
        return {
            **self.counts,
            "pending": len(self._pending),
            "pending_bytes": self._pending_bytes,
            "pending_chunks": self._pending_chunks,
            "sources": len(self._usage),
            "heap": len(self._heap),
        }

    def source_stats(self, source: str) -> dict[str, int]:
        usage = self._usage.get(source, _Usage())
        return {"pending": len(usage.order), "pending_bytes": usage.held_bytes, "pending_chunks": usage.held_chunks}

    def _parse(self, payload: bytes) -> tuple[bytes, int, int, int, bytes]:
        if len(payload) < CHUNK_HEADER_LEN or payload[:4] != CHUNK_MAGIC:
            raise MessageError("malformed", "not a chunk envelope (bad magic or too short)")
        _magic, version, mid, index, count, total = _CHUNK.unpack_from(payload)
        if version != CHUNK_VERSION:
            raise MessageError("unsupported_version", f"chunk envelope version {version}")
        data = bytes(payload[CHUNK_HEADER_LEN:])
        if count == 0 or index >= count or total == 0 or not data or count > total:
            raise MessageError("malformed", f"chunk {index}/{count} of a {total}-byte message with {len(data)} bytes")
        if total > self.max_message_bytes:
            raise MessageError("oversized", f"{total}-byte message > max_message_bytes {self.max_message_bytes}")
        if len(data) > total:
            raise MessageError("malformed", "chunk is longer than its whole message")
        return mid, index, count, total, data

    def _finish(self, mid: bytes, total: int, message: bytes) -> bytes:
        if len(message) != total or message_id(message) != mid:
            raise MessageError("malformed", "reassembled message does not match its length or message id")
        self.counts["completed"] += 1
        return message

    def _drop(self, key: tuple[str, bytes], release: bool = True) -> None:
        entry = self._pending.pop(key, None)
        if entry is None:
            return
        self._pending_bytes -= entry.charged
        self._pending_chunks -= len(entry.parts)
        usage = self._usage[entry.source]
        usage.held_bytes -= entry.charged
        usage.held_chunks -= len(entry.parts)
        del usage.order[key]
        if not usage.order:
            del self._usage[entry.source]
        if release:
            self._released.extend(entry.tags)

    def _over(self, usage: _Usage, cost: int) -> bool:
        return (
            usage.held_bytes + cost > self.source_max_bytes
            or usage.held_chunks >= self.source_max_chunks
            or self._pending_bytes + cost > self.max_pending_bytes
            or self._pending_chunks >= self.max_pending_chunks
        )

    def _make_room(self, source: str, cost: int, keep: tuple[str, bytes], now: float) -> bool:
        """Evict `source`'s own oldest incomplete messages (never `keep`) until one more chunk fits."""
        usage = self._usage[source]
        while self._over(usage, cost):
            victim = next((k for k in usage.order if k != keep), None)
            if victim is None:
                return False
            self._drop(victim)
            self.counts["evicted"] += 1
            self._log_drop(now, f"pending budget reached; evicted {source or 'a'}'s oldest incomplete message")
        return True

    def _log_drop(self, now: float, what: str, count: int = 1) -> None:
        """One line a minute at most: a flooding device would otherwise write a line per chunk it sends."""
        self._drops_unlogged += count
        if now - self._drop_logged_at >= _DROP_LOG_EVERY_S or now < self._drop_logged_at:
            log.warning("reassembler: %s (%d such drops since the last line)", what, self._drops_unlogged)
            self._drop_logged_at, self._drops_unlogged = now, 0
