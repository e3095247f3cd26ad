"""Regenerate tests/vectors/seal_v1.json (TEST-ONLY keys). Run: .venv/bin/python tests/vectors/generate_seal_vector.py

The keys below are derived from fixed strings and published on purpose: they are for the format's test
vector only and must never be used by a device or a receiver. HPKE encryption is randomized, so the vector
fixes the resulting message bytes; tests check that they open to the known plaintext (decrypt/verify
direction) and that the header fields pack to the known header bytes. Regenerating changes message_hex
(HPKE is randomized): copy the new header and message hex into the vector blocks of docs/format.md.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from edge_mask.seal.keys import key_id
from edge_mask.seal.sealer import hpke_suite, pack_plaintext
from edge_mask.seal.wire import FrameHeader, join_message

HERE = Path(__file__).resolve().parent
RAW = serialization.Encoding.Raw


def main() -> None:
    recipient = X25519PrivateKey.from_private_bytes(hashlib.sha256(b"edge-mask TEST-ONLY recipient").digest())
    signer = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"edge-mask TEST-ONLY device signing").digest())
    header = FrameHeader(
        device_id="exam-room-1",
        recipient_key_id=key_id(recipient.public_key()),
        stream_id=bytes(range(16)),
        seq=42,
        captured_at=1767225600.25,  # 2026-01-01T00:00:00.25Z
        width=640,
        height=480,
        content_type="image/jpeg",
        aead="chacha20-poly1305",
        fail_closed=False,
    )
    metadata = {"faces": 1, "fail_closed": False, "regions": [[10.0, 20.0, 110.0, 140.0]], "landmarks": []}
    image = b"\xff\xd8\xff\xe0 not a real JPEG: test vector payload \xff\xd9"
    header_bytes = header.pack()
    plaintext = pack_plaintext(metadata, image)
    ciphertext = hpke_suite(header.aead).encrypt(plaintext, recipient.public_key(), info=header_bytes)
    signature = signer.sign(header_bytes + ciphertext)
    message = join_message(header_bytes, ciphertext, signature)
    vector = {
        "WARNING": "TEST-ONLY keys, published on purpose; never use them for a device or a receiver",
        "recipient_private_key_hex": recipient.private_bytes(
            RAW, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        ).hex(),
        "recipient_public_key_hex": recipient.public_key().public_bytes(RAW, serialization.PublicFormat.Raw).hex(),
        "recipient_key_id_hex": header.recipient_key_id.hex(),
        "signing_private_key_hex": signer.private_bytes(
            RAW, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        ).hex(),
        "signing_public_key_hex": signer.public_key().public_bytes(RAW, serialization.PublicFormat.Raw).hex(),
        "header": {
            "device_id": header.device_id,
            "stream_id_hex": header.stream_id.hex(),
            "seq": header.seq,
            "captured_at": header.captured_at,
            "width": header.width,
            "height": header.height,
            "content_type": header.content_type,
            "aead": header.aead,
            "fail_closed": header.fail_closed,
        },
        "header_hex": header_bytes.hex(),
        "metadata": metadata,
        "image_hex": image.hex(),
        "plaintext_hex": plaintext.hex(),
        "message_hex": message.hex(),
    }
    (HERE / "seal_v1.json").write_text(json.dumps(vector, indent=2) + "\n")


if __name__ == "__main__":
    main()
