"""Byte layouts on the wire: the sealed-frame header and message, and the chunk envelope (docs/format.md).

Why a hand-rolled binary layout and not JSON or protobuf: the header is HPKE `info` and part of the signed
bytes, so it must have exactly one encoding; fixed big-endian fields with two length-prefixed strings have
that property and parse in a few bounds-checked steps. Every parsing problem raises MessageError with a
stable reason, never IndexError or struct.error, because these bytes come from the network.

Why chunk envelopes: brokers cap payloads (AWS IoT Core 128 KB, Azure IoT Hub 256 KB). Every MQTT payload
is an envelope, even for a message that fits, so the receiver has one path. The envelope's message id is
a hash of the whole message, so a reassembled message is checked before anything else looks at it.
"""

from __future__ import annotations

import hashlib
import logging
import struct
from dataclasses import dataclass, field

from edge_mask.core.errors import MessageError

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------- frame header v1

MAGIC = b"EMSF"
VERSION = 1
FLAG_FAIL_CLOSED = 0x01
KNOWN_FLAGS = FLAG_FAIL_CLOSED
KEY_ID_LEN = 8
STREAM_ID_LEN = 16
SIGNATURE_LEN = 64
MAX_TEXT = 64

# RFC 9180 registry ids: KEM DHKEM(X25519, HKDF-SHA256) = 0x0020, KDF HKDF-SHA256 = 0x0001,
# AEAD AES-128-GCM = 0x0001, ChaCha20-Poly1305 = 0x0003.
KEM_X25519 = 0x0020
KDF_HKDF_SHA256 = 0x0001
AEAD_IDS = {"aes-128-gcm": 0x0001, "chacha20-poly1305": 0x0003}
AEAD_NAMES = {v: k for k, v in AEAD_IDS.items()}
HPKE_ENC_LEN = 32  # X25519 encapsulated key
AEAD_TAG_LEN = 16

# magic, version, flags, kem, kdf, aead, recipient key id, stream id, seq, captured_at_us, width, height
_FIXED = struct.Struct(">4sBBHHH8s16sQQHH")
FIXED_LEN = _FIXED.size  # 56; then u8 len + device id, u8 len + content type
MIN_HEADER_LEN = FIXED_LEN + 2 + 1 + 1
MIN_MESSAGE_LEN = MIN_HEADER_LEN + HPKE_ENC_LEN + AEAD_TAG_LEN + SIGNATURE_LEN


@dataclass(frozen=True)
class FrameHeader:
    """The clear, signed, HPKE-bound part of a sealed frame. `captured_at` travels as integer microseconds."""

    device_id: str
    recipient_key_id: bytes
    stream_id: bytes
    seq: int
    captured_at: float
    width: int
    height: int
    content_type: str = "image/jpeg"
    aead: str = "chacha20-poly1305"
    fail_closed: bool = False
    version: int = VERSION

    def pack(self) -> bytes:
        """The one canonical encoding; ValueError for values the format cannot carry (a caller bug)."""
        if self.aead not in AEAD_IDS:
            raise ValueError(f"aead {self.aead!r}: expected one of {sorted(AEAD_IDS)}")
        if len(self.recipient_key_id) != KEY_ID_LEN or len(self.stream_id) != STREAM_ID_LEN:
            raise ValueError("recipient_key_id must be 8 bytes and stream_id 16 bytes")
        if not 0 <= self.seq < 1 << 64:
            raise ValueError(f"seq {self.seq} does not fit an unsigned 64-bit integer")
        micros = round(self.captured_at * 1_000_000)
        if not 0 <= micros < 1 << 64:
            raise ValueError(f"captured_at {self.captured_at} is not a time after 1970")
        if not (0 < self.width < 1 << 16 and 0 < self.height < 1 << 16):
            raise ValueError(f"frame size {self.width}x{self.height} must be 1..65535 on each side")
        device = _text(self.device_id, "device_id")
        content = _text(self.content_type, "content_type")
        flags = FLAG_FAIL_CLOSED if self.fail_closed else 0
        fixed = _FIXED.pack(
            MAGIC, VERSION, flags, KEM_X25519, KDF_HKDF_SHA256, AEAD_IDS[self.aead], self.recipient_key_id,
            self.stream_id, self.seq, micros, self.width, self.height,
        )
        return b"".join((fixed, bytes((len(device),)), device, bytes((len(content),)), content))

    @classmethod
    def unpack(cls, data: bytes) -> tuple[FrameHeader, int]:
        """Parse a header at the start of `data`; returns it and its length in bytes."""
        if len(data) < 5 or data[:4] != MAGIC:
            raise MessageError("malformed", "not a sealed edge-mask frame (bad magic)")
        if data[4] != VERSION:
            raise MessageError("unsupported_version", f"frame format version {data[4]}, this receiver reads {VERSION}")
        if len(data) < MIN_HEADER_LEN:
            raise MessageError("malformed", f"{len(data)} bytes is shorter than a header")
        _, _, flags, kem, kdf, aead, key_id, stream, seq, micros, width, height = _FIXED.unpack_from(data)
        if kem != KEM_X25519 or kdf != KDF_HKDF_SHA256 or aead not in AEAD_NAMES:
            raise MessageError("unsupported_version", f"HPKE suite kem={kem:#06x} kdf={kdf:#06x} aead={aead:#06x}")
        if flags & ~KNOWN_FLAGS:
            raise MessageError("unsupported_version", f"unknown header flags {flags:#04x}")
        if width == 0 or height == 0:
            raise MessageError("malformed", f"frame size {width}x{height}")
        offset = FIXED_LEN
        device, offset = _read_text(data, offset, "device id")
        content, offset = _read_text(data, offset, "content type")
        header = cls(
            device_id=device, recipient_key_id=key_id, stream_id=stream, seq=seq, captured_at=micros / 1_000_000,
            width=width, height=height, content_type=content, aead=AEAD_NAMES[aead],
            fail_closed=bool(flags & FLAG_FAIL_CLOSED),
        )
        return header, offset


def _text(value: str, name: str) -> bytes:
    raw = value.encode("utf-8")
    if not 0 < len(raw) <= MAX_TEXT or not value.isprintable():
        raise ValueError(f"{name} {value!r}: expected 1..{MAX_TEXT} bytes of printable UTF-8")
    return raw


def _read_text(data: bytes, offset: int, what: str) -> tuple[str, int]:
    if offset >= len(data):
        raise MessageError("malformed", f"header ends before the {what}")
    size = data[offset]
    end = offset + 1 + size
    if size == 0 or size > MAX_TEXT or end > len(data):
        raise MessageError("malformed", f"{what} length {size} is invalid")
    try:
        text = data[offset + 1 : end].decode("utf-8")
    except UnicodeDecodeError:
        raise MessageError("malformed", f"{what} is not UTF-8") from None
    if not text.isprintable():
        raise MessageError("malformed", f"{what} has control characters")
    return text, end


@dataclass(frozen=True)
class MessageParts:
    """A sealed message cut into its parts: header || ciphertext || signature (signature over the first two)."""

    header: FrameHeader
    header_bytes: bytes
    ciphertext: bytes
    signed: bytes
    signature: bytes


def join_message(header_bytes: bytes, ciphertext: bytes, signature: bytes) -> bytes:
    if len(signature) != SIGNATURE_LEN:
        raise ValueError("an Ed25519 signature is 64 bytes")
    return b"".join((header_bytes, ciphertext, signature))


def split_parts(message: bytes) -> MessageParts:
    """Cut a message into parts (no cryptography here; see seal.Opener for the checks)."""
    header, header_len = FrameHeader.unpack(message)
    if len(message) < header_len + HPKE_ENC_LEN + AEAD_TAG_LEN + SIGNATURE_LEN:
        raise MessageError("malformed", f"{len(message)} bytes is too short for a sealed frame")
    signed = message[:-SIGNATURE_LEN]
    return MessageParts(header, message[:header_len], signed[header_len:], signed, message[-SIGNATURE_LEN:])


# ------------------------------------------------------------------------------------------ chunk envelope

CHUNK_MAGIC = b"EMCK"
CHUNK_VERSION = 1
MESSAGE_ID_LEN = 16
# magic, version, message id = sha256(message)[:16], index, count, total message length
_CHUNK = struct.Struct(">4sB16sIII")
CHUNK_HEADER_LEN = _CHUNK.size  # 33
_CHUNK_OVERHEAD = 128  # bookkeeping charged per pending chunk, so tiny chunks cannot exhaust memory


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


@dataclass
class _Pending:
    first_seen: float
    count: int
    total: int
    parts: dict[int, bytes] = field(default_factory=dict)
    received: int = 0
    charged: int = 0


class Reassembler:
    """Rebuilds messages from chunk envelopes, in any order, with bounded memory.

    Bounds: a message may not exceed `max_message_bytes` (oversized); incomplete messages are dropped after
    `timeout_s` (`expire`, also run on each feed); when pending chunks would exceed `max_pending_bytes`,
    the oldest incomplete messages are evicted. Duplicate chunks are ignored. One Reassembler per device
    (the receiver does this) keeps one device from evicting another's chunks.
    """

    def __init__(self, max_pending_bytes: int, timeout_s: float, max_message_bytes: int) -> None:
        self.max_pending_bytes = max_pending_bytes
        self.timeout_s = timeout_s
        self.max_message_bytes = max_message_bytes
        self._pending: dict[bytes, _Pending] = {}
        self._pending_bytes = 0
        self.counts = {"completed": 0, "expired": 0, "evicted": 0, "duplicate_chunks": 0}

    def feed(self, payload: bytes, now: float) -> bytes | None:
        """Take one envelope; return the whole message when this chunk completes it, else None."""
        mid, index, count, total, data = self._parse(payload)
        self.expire(now)
        if count == 1:
            return self._finish(mid, total, data)
        entry = self._pending.get(mid)
        if entry is None:
            entry = _Pending(now, count, total)
        elif (entry.count, entry.total) != (count, total):
            self._drop(mid)
            raise MessageError("malformed", "chunk disagrees with earlier chunks on count or length")
        if index in entry.parts:
            self.counts["duplicate_chunks"] += 1
            return None
        cost = len(data) + _CHUNK_OVERHEAD
        if entry.received + len(data) > total:
            self._drop(mid)
            raise MessageError("malformed", "chunks add up to more than the announced length")
        if total + count * _CHUNK_OVERHEAD > self.max_pending_bytes:
            raise MessageError("oversized", f"a {total}-byte message cannot fit max_pending_bytes")
        self._pending[mid] = entry
        self._make_room(cost, keep=mid)
        entry.parts[index] = data
        entry.received += len(data)
        entry.charged += cost
        self._pending_bytes += cost
        if len(entry.parts) < count:
            return None
        self._drop(mid)
        return self._finish(mid, total, b"".join(entry.parts[i] for i in range(count)))

    def expire(self, now: float) -> int:
        """Drop incomplete messages first seen more than `timeout_s` ago; returns how many."""
        stale = [mid for mid, e in self._pending.items() if now - e.first_seen > self.timeout_s]
        for mid in stale:
            self._drop(mid)
        self.counts["expired"] += len(stale)
        if stale:
            log.info("reassembler: %d incomplete messages timed out", len(stale))
        return len(stale)

    def stats(self) -> dict[str, int]:
        return {**self.counts, "pending": len(self._pending), "pending_bytes": self._pending_bytes}

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

    def _drop(self, mid: bytes) -> None:
        entry = self._pending.pop(mid, None)
        if entry is not None:
            self._pending_bytes -= entry.charged

    def _make_room(self, cost: int, keep: bytes) -> None:
        while self._pending_bytes + cost > self.max_pending_bytes:
            oldest = next((m for m in self._pending if m != keep), None)
            if oldest is None:
                break
            self._drop(oldest)
            self.counts["evicted"] += 1
            log.warning("reassembler: max_pending_bytes reached; evicted the oldest incomplete message")
