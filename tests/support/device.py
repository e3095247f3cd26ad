"""A minimal device process for tests: read a clip, mask, encode, seal, spool, upload.

Run as `python tests/support/device.py --config edge.toml --frames N`. It prints `spooled <stream> <seq>`
after each frame is durably in the spool (so a test that kills it with SIGKILL knows exactly which frames
must still arrive), then, when all frames are spooled, waits until the spool is drained and prints
`drained`. With `--frames 0` it only replays the spool's backlog: the restart after a crash.

It deliberately wires the stages by hand instead of using the live service, so the spool/uplink crash
semantics are tested on their own.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edge_mask.config import EdgeConfig
    from edge_mask.seal.sealer import SealedFrame


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True, type=Path)
    parser.add_argument("--frames", type=int, default=0)
    parser.add_argument("--drain-timeout", type=float, default=60.0)
    args = parser.parse_args()

    from edge_mask.config import EdgeConfig, OpenCVCameraConfig, load_config
    from edge_mask.uplink.mqtt_uplink import MqttUplink
    from edge_mask.uplink.spool import open_spool

    cfg = load_config(args.config, EdgeConfig)
    spool = open_spool(cfg.spool)
    uplink = MqttUplink(cfg.uplink, cfg.device_id, spool)
    uplink.start()
    if args.frames:
        assert isinstance(cfg.camera, OpenCVCameraConfig)
        for sealed in seal_clip(cfg, cfg.camera.source, args.frames):
            spool.put(sealed)
            print(f"spooled {sealed.stream_id.hex()} {sealed.seq}", flush=True)
    deadline = time.monotonic() + args.drain_timeout
    while spool.stats().pending and time.monotonic() < deadline:
        time.sleep(0.05)
    print("drained" if not spool.stats().pending else f"not drained: {spool.stats()}", flush=True)
    uplink.stop()
    spool.close()
    return 0


def seal_clip(cfg: EdgeConfig, source: str, frames: int) -> Iterator[SealedFrame]:
    """Yield `frames` sealed frames from a video file (looping), masked by the project's masker."""
    from edge_mask.capture import VideoReader
    from edge_mask.core.types import RawFrame
    from edge_mask.mask.engine import build_masker
    from edge_mask.seal.encode import create_encoder
    from edge_mask.seal.keys import load_recipient_public_key, load_signing_key
    from edge_mask.seal.sealer import Sealer

    masker = build_masker(cfg)
    encoder = create_encoder(cfg.encode)
    sealer = Sealer(
        cfg.device_id,
        load_recipient_public_key(cfg.seal.recipient_public_key),
        load_signing_key(cfg.seal.signing_key),
        cfg.seal.aead,
    )
    reader = VideoReader(source, loop=True, max_frames=frames)  # loops the clip; MediaError if unreadable
    try:
        for seq, image in enumerate(reader):
            raw = RawFrame(image, seq=seq, captured_at=time.time(), monotonic=time.monotonic())
            masked = masker.process(raw)
            if masked is None:
                continue
            yield sealer.seal(masked, encoder.encode(masked))
    finally:
        reader.close()
        masker.close()


if __name__ == "__main__":
    sys.exit(main())
