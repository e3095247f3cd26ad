"""Sealing masked frames for the cloud, and opening them there (format: docs/format.md, layout: wire.py).

Device side, `Sealer`: the plaintext (optional metadata JSON + JPEG) is sealed with HPKE base mode
(RFC 9180: DHKEM-X25519, HKDF-SHA256, ChaCha20-Poly1305 or AES-128-GCM) to the recipient's PUBLIC key,
with the frame header as HPKE `info`, so header and ciphertext cannot be recombined. Then the device signs
header || ciphertext with its Ed25519 key, so the cloud can prove which enrolled device made the frame
even if the broker is compromised. A Sealer holds no recipient private key, so the device cannot read
what it sent: each seal uses a fresh ephemeral key that is discarded inside `encrypt`.

Cloud side, `Opener`, in this order, each failure a MessageError with a stable reason:
parse header (malformed, unsupported_version, oversized) -> look up the enrolled device (unknown_device)
-> verify the signature FIRST, before any decryption work on attacker bytes (bad_signature) -> recipient
key id (wrong_recipient) -> HPKE open with info = header (tampered) -> plaintext layout (malformed).
"""

from __future__ import annotations

import json
import logging
import math
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_mask.core.errors import MessageError
from edge_mask.core.types import MaskedFrame
from edge_mask.seal.keys import Enrollment, RecipientPrivateKey, RecipientPublicKey
from edge_mask.seal.signals import encode as encode_signals
from edge_mask.seal.wire import (
    STREAM_ID_LEN,
    FrameHeader,
    join_message,
    split_parts,
)

log = logging.getLogger(__name__)

_AEADS = {"chacha20-poly1305": hpke.AEAD.CHACHA20_POLY1305, "aes-128-gcm": hpke.AEAD.AES_128_GCM}
_META_LEN = struct.Struct(">I")
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_METADATA_BYTES = 1024 * 1024


def hpke_suite(aead: str) -> hpke.Suite:
    """The HPKE suite for an AEAD name from the config (`chacha20-poly1305` or `aes-128-gcm`)."""
    try:
        return hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, _AEADS[aead])
    except KeyError:
        raise ValueError(f"aead {aead!r}: expected one of {sorted(_AEADS)}") from None


@dataclass(frozen=True)
class SealedFrame:
    """What the spool stores and the uplink publishes: the message plus the fields used to order it."""

    device_id: str
    stream_id: bytes
    seq: int
    captured_at: float
    message: bytes


@dataclass(frozen=True)
class OpenedFrame:
    """A verified, decrypted frame: its header, the image bytes and the sealed metadata ({} if none)."""

    header: FrameHeader
    image: bytes
    metadata: dict[str, Any]


def frame_metadata(frame: MaskedFrame) -> dict[str, Any]:
    """What travels sealed beside the image: face count, fail-closed flag, masked regions, and the clinical
    signals when the device reads them (`signals.py`). No point of a face: the detector's five landmarks
    (eyes, nose, mouth corners) say something of its shape, so they stay on the device."""
    metadata: dict[str, Any] = {
        "faces": int(frame.faces),
        "fail_closed": bool(frame.fail_closed),
        "regions": [[round(float(v), 1) for v in row] for row in frame.regions.reshape(-1, 4)],
    }
    if frame.signals:
        metadata["signals"] = encode_signals(frame.signals, frame.monotonic)
    return metadata


def pack_plaintext(metadata: Mapping[str, Any] | None, image: bytes) -> bytes:
    """u32 metadata length || metadata (compact UTF-8 JSON, may be empty) || image."""
    meta = b"" if metadata is None else json.dumps(metadata, separators=(",", ":"), allow_nan=False).encode()
    return b"".join((_META_LEN.pack(len(meta)), meta, image))


def unpack_plaintext(
    plaintext: bytes, max_metadata_bytes: int = DEFAULT_MAX_METADATA_BYTES
) -> tuple[dict[str, Any], bytes]:
    if len(plaintext) < _META_LEN.size:
        raise MessageError("malformed", "plaintext shorter than its metadata length")
    (size,) = _META_LEN.unpack_from(plaintext)
    if size > max_metadata_bytes:
        raise MessageError("oversized", f"metadata of {size} bytes > {max_metadata_bytes}")
    end = _META_LEN.size + size
    if end >= len(plaintext):
        raise MessageError("malformed", "no image after the metadata")
    metadata: Any = {}
    if size:
        try:
            metadata = json.loads(plaintext[_META_LEN.size : end].decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise MessageError("malformed", "metadata is not UTF-8 JSON") from None
        if not isinstance(metadata, dict):
            raise MessageError("malformed", "metadata is not a JSON object")
    return metadata, plaintext[end:]


class Sealer:
    """Seals a device's masked frames: one random stream id per Sealer, sequence numbers strictly increasing."""

    def __init__(
        self,
        device_id: str,
        recipient: RecipientPublicKey,
        signing_key: Ed25519PrivateKey,
        aead: str = "chacha20-poly1305",
        stream_id: bytes | None = None,
        include_metadata: bool = True,
    ) -> None:
        if not isinstance(recipient, RecipientPublicKey):
            # Never accept private recipient material: the device must not be able to open its own frames.
            raise TypeError(f"Sealer needs a RecipientPublicKey, got {type(recipient).__name__}")
        if not isinstance(signing_key, Ed25519PrivateKey):
            raise TypeError(f"Sealer needs an Ed25519PrivateKey, got {type(signing_key).__name__}")
        if stream_id is not None and len(stream_id) != STREAM_ID_LEN:
            raise ValueError(f"stream_id must be {STREAM_ID_LEN} bytes")
        self.device_id = device_id
        self.recipient = recipient
        self.aead = aead
        self.stream_id = os.urandom(STREAM_ID_LEN) if stream_id is None else bytes(stream_id)
        self.include_metadata = include_metadata
        self._suite = hpke_suite(aead)
        self._signing_key = signing_key
        self._last_seq: int | None = None
        # Fail at start, not on the first frame, if the device id cannot be carried.
        FrameHeader(device_id, recipient.key_id, self.stream_id, 0, 0.0, 1, 1, aead=aead).pack()

    def seal(self, frame: MaskedFrame, image: bytes, content_type: str = "image/jpeg") -> SealedFrame:
        """Seal one encoded masked frame; `image` must be the encoding of `frame` (e.g. Encoder.encode(frame))."""
        if not isinstance(frame, MaskedFrame):
            raise TypeError(f"only a MaskedFrame can be sealed, got {type(frame).__name__}")
        if not image:
            raise ValueError("cannot seal an empty image")
        if self._last_seq is not None and frame.seq <= self._last_seq:
            raise ValueError(
                f"seq {frame.seq} after {self._last_seq}: sequence numbers must increase within a stream "
                "(start a new Sealer for a new stream)"
            )
        if not math.isfinite(frame.captured_at):
            raise ValueError(f"captured_at {frame.captured_at} is not a time")
        header = FrameHeader(
            device_id=self.device_id,
            recipient_key_id=self.recipient.key_id,
            stream_id=self.stream_id,
            seq=frame.seq,
            captured_at=frame.captured_at,
            width=frame.width,
            height=frame.height,
            content_type=content_type,
            aead=self.aead,
            fail_closed=frame.fail_closed,
        )
        header_bytes = header.pack()
        metadata = frame_metadata(frame) if self.include_metadata else None
        ciphertext = self._suite.encrypt(pack_plaintext(metadata, image), self.recipient.key, info=header_bytes)
        signature = self._signing_key.sign(header_bytes + ciphertext)
        self._last_seq = frame.seq
        message = join_message(header_bytes, ciphertext, signature)
        return SealedFrame(self.device_id, self.stream_id, frame.seq, header.captured_at, message)


class Opener:
    """Verifies and opens sealed frames in the cloud (see the module docstring for the order of checks)."""

    def __init__(
        self,
        recipient: RecipientPrivateKey,
        devices: Mapping[str, Enrollment],
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        max_metadata_bytes: int = DEFAULT_MAX_METADATA_BYTES,
    ) -> None:
        self.recipient = recipient
        self.devices = devices
        self.max_message_bytes = max_message_bytes
        self.max_metadata_bytes = max_metadata_bytes
        self._suites = {name: hpke_suite(name) for name in _AEADS}

    def open(self, message: bytes) -> OpenedFrame:
        """Return the verified frame or raise MessageError(reason); never anything else for bytes input."""
        if not isinstance(message, (bytes, bytearray, memoryview)):
            raise TypeError(f"Opener.open takes bytes, got {type(message).__name__}")
        message = bytes(message)
        if len(message) > self.max_message_bytes:
            raise MessageError("oversized", f"{len(message)} bytes > max_message_bytes {self.max_message_bytes}")
        parts = split_parts(message)
        header = parts.header
        device = self.devices.get(header.device_id)
        if device is None:
            raise MessageError("unknown_device", f"device {header.device_id!r} is not enrolled")
        try:
            device.signing_public_key.verify(parts.signature, parts.signed)
        except InvalidSignature:
            raise MessageError("bad_signature", f"signature does not verify with {header.device_id}'s key") from None
        if header.recipient_key_id != self.recipient.key_id:
            raise MessageError(
                "wrong_recipient",
                f"sealed to key id {header.recipient_key_id.hex()}, this receiver holds {self.recipient.key_id.hex()}",
            )
        try:
            plaintext = self._suites[header.aead].decrypt(parts.ciphertext, self.recipient.key, info=parts.header_bytes)
        except (InvalidTag, ValueError):
            raise MessageError("tampered", "validly signed but does not decrypt with info = header") from None
        metadata, image = unpack_plaintext(plaintext, self.max_metadata_bytes)
        return OpenedFrame(header, image, metadata)
