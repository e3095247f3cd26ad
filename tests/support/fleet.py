"""Key material and masked frames for transport tests: a cloud recipient, enrolled devices, a real clip.

`make_fleet` writes what provisioning would: the recipient key pair, one Ed25519 signing key and one
enrollment record per device. `masked_clip` runs frames of a real video through the project's masker
(`edge_mask.mask.engine.build_masker`) and JPEG encoder, so sealed test messages carry real masked pixels.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_mask.config import BrokerConfig, EdgeConfig, OpenCVCameraConfig, ReceiverConfig


@dataclass
class Fleet:
    dir: Path
    recipient_key: Path
    recipient_pub: Path
    devices_dir: Path
    signing_keys: dict[str, Path] = field(default_factory=dict)

    def sealer(self, device_id: str, stream_id: bytes | None = None, aead: str = "chacha20-poly1305") -> Any:
        from edge_mask.seal.keys import load_recipient_public_key, load_signing_key
        from edge_mask.seal.sealer import Sealer

        return Sealer(
            device_id,
            load_recipient_public_key(self.recipient_pub),
            load_signing_key(self.signing_keys[device_id]),
            aead,
            stream_id=stream_id,
        )

    def receiver_config(self, output_dir: Path, broker: BrokerConfig | None = None, **settings: Any) -> ReceiverConfig:
        data: dict[str, Any] = {
            "recipient_private_key": self.recipient_key,
            "devices_dir": self.devices_dir,
            "output_dir": output_dir,
            **settings,
        }
        if broker is not None:
            data["broker"] = broker
        return ReceiverConfig.model_validate(data)


def make_fleet(
    directory: Path, devices: Sequence[str] = ("dev1", "dev2"), certs: dict[str, Path] | None = None
) -> Fleet:
    """Recipient key pair plus an enrolled signing key per device (fingerprint of its TLS cert if given)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    from edge_mask.seal.keys import Enrollment, generate_recipient, generate_signing_key

    directory.mkdir(parents=True, exist_ok=True)
    priv, pub = generate_recipient(directory / "cloud")
    fleet = Fleet(directory, priv, pub, directory / "devices")
    fleet.devices_dir.mkdir(exist_ok=True)
    for device in devices:
        key_path = directory / device / "device-signing.key"
        public = generate_signing_key(key_path)
        fleet.signing_keys[device] = key_path
        fingerprint = hashlib.sha256(device.encode()).hexdigest()
        if certs and device in certs:
            cert = x509.load_pem_x509_certificate(certs[device].read_bytes())
            fingerprint = cert.fingerprint(hashes.SHA256()).hex()
        Enrollment(device, public, fingerprint).save(fleet.devices_dir)
    return fleet


def masker_config(shared_dir: Path, device_id: str = "dev1", **settings: Any) -> EdgeConfig:
    """A device config whose detector is the real YuNet model from ../shared (fp32, no quantization)."""
    model = shared_dir / "models" / "face_detection_yunet_2023mar.onnx"
    data: dict[str, Any] = {
        "device_id": device_id,
        "camera": {"type": "opencv", "source": str(shared_dir / "data" / "video" / "short_hamilton_clip.mp4")},
        "detector": {"type": "onnx", "model": str(model), "precision": "fp32", "threads": 1},
        **settings,
    }
    return EdgeConfig.model_validate(data)


def masked_clip(cfg: EdgeConfig, frames: int, step: int = 1) -> Iterator[tuple[Any, bytes]]:
    """Yield (MaskedFrame, JPEG) for `frames` frames of the camera's video file (every `step`-th, looping)."""
    import time

    from edge_mask.capture import VideoReader
    from edge_mask.core.types import RawFrame
    from edge_mask.mask.engine import build_masker
    from edge_mask.seal.encode import create_encoder

    masker = build_masker(cfg)
    encoder = create_encoder(cfg.encode)
    assert isinstance(cfg.camera, OpenCVCameraConfig)
    reader = VideoReader(cfg.camera.source, loop=True)  # MediaError naming the file when it cannot be read
    try:
        produced = 0
        for seq, image in enumerate(reader):
            if produced >= frames:
                break
            if seq % step:
                continue
            masked = masker.process(RawFrame(image, seq=seq, captured_at=time.time(), monotonic=time.monotonic()))
            if masked is None:
                continue
            produced += 1
            yield masked, encoder.encode(masked)
    finally:
        reader.close()
        masker.close()


class FakeClock:
    """A clock the test moves by hand (`clock.t += 5`), for timeouts, rate limits and expiry."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t
