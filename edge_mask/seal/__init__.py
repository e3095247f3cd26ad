"""Sealing room: JPEG encoding, HPKE seal + Ed25519 signature, the wire format and key files.

Rule: seal/ takes a `MaskedFrame` only (never a `RawFrame`), imports the ground (core/, config/) and
nothing of capture/, detect/, mask/, uplink/, service/, receiver/ or tools/. It opens no connection.

Add an encoder: a factory registered in `encode.py`'s `ENCODERS` and its name in `EncodeConfig.type`.
"""

from edge_mask.seal.acks import Ack, Refusal, ack_topic, parse_ack, to_ranges
from edge_mask.seal.encode import ENCODERS, Encoder, create_encoder
from edge_mask.seal.keys import (
    Enrollment,
    fsync_dir,
    generate_recipient,
    generate_signing_key,
    load_device_registry,
    load_recipient_private_key,
    load_recipient_public_key,
    load_signing_key,
    write_public,
    write_secret,
)
from edge_mask.seal.sealer import Opener, SealedFrame, Sealer
from edge_mask.seal.signals import CSV_COLUMNS as SIGNAL_COLUMNS
from edge_mask.seal.signals import SignalsError
from edge_mask.seal.signals import decode as decode_signals
from edge_mask.seal.wire import Reassembler, split_message

__all__ = [
    "ENCODERS",
    "SIGNAL_COLUMNS",
    "Ack",
    "Encoder",
    "Enrollment",
    "Opener",
    "Reassembler",
    "Refusal",
    "SealedFrame",
    "Sealer",
    "SignalsError",
    "ack_topic",
    "create_encoder",
    "decode_signals",
    "fsync_dir",
    "generate_recipient",
    "generate_signing_key",
    "load_device_registry",
    "load_recipient_private_key",
    "load_recipient_public_key",
    "load_signing_key",
    "parse_ack",
    "split_message",
    "to_ranges",
    "write_public",
    "write_secret",
]
