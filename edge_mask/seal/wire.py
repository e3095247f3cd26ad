"""Byte layouts on the wire: the sealed-frame header and message (docs/format.md).

Why a hand-rolled binary layout and not JSON or protobuf: the header is HPKE `info` and part of the signed
bytes, so it must have exactly one encoding; fixed big-endian fields with two length-prefixed strings have
that property and parse in a few bounds-checked steps. Every parsing problem raises MessageError with a
stable reason, never IndexError or struct.error, because these bytes come from the network.

The chunk envelope (every MQTT payload) and its Reassembler live in `chunks.py` and are re-exported here.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass

from edge_mask.core.errors import MessageError
from edge_mask.seal.chunks import (  # the chunk envelope lives in chunks.py; re-exported for old imports
    CHUNK_HEADER_LEN,
    CHUNK_MAGIC,
    CHUNK_VERSION,
    MESSAGE_ID_LEN,
    Reassembler,
    message_id,
    split_message,
)

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


__all__ = [
    "CHUNK_HEADER_LEN",
    "CHUNK_MAGIC",
    "CHUNK_VERSION",
    "MESSAGE_ID_LEN",
    "FrameHeader",
    "MessageParts",
    "Reassembler",
    "join_message",
    "message_id",
    "split_message",
    "split_parts",
]
