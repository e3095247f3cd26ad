"""Per-frame cost of JPEG encode + HPKE seal + Ed25519 sign, for `edge-mask bench` (pure code, no asserts).

Why real frames: JPEG size, and so encode, seal and sign time, depends on image content; a flat test
pattern compresses to almost nothing and flatters every figure. Frames are masked through the project's
masker functions (fixed head boxes), resized to each benchmark size, then encoded and sealed with
throwaway in-memory keys. An optional `sink` (e.g. `spool.put`) is timed too, so sealing + spooling can
be reported as one figure.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edge_mask.capture import VideoReader
from edge_mask.config import EncodeConfig, MaskConfig
from edge_mask.core.types import Image, MaskedFrame, RawFrame
from edge_mask.mask.paint import Painter, mask_faces
from edge_mask.seal.encode import create_encoder
from edge_mask.seal.keys import RecipientPublicKey
from edge_mask.seal.sealer import SealedFrame, Sealer

log = logging.getLogger(__name__)

DEFAULT_SIZES: tuple[tuple[int, int], ...] = ((640, 480), (1280, 720))


def read_clip(path: str | Path, count: int = 60) -> list[Image]:
    """Up to `count` BGR frames from a video file (looping if it is shorter), through the one reader;
    MediaError (a UserError) naming the file when it is missing or no frame decodes."""
    with VideoReader(path, loop=True, max_frames=count) as reader:
        return list(reader)


def _masked(images: Sequence[Image], size: tuple[int, int]) -> list[MaskedFrame]:
    import cv2

    painter = Painter(MaskConfig())
    width, height = size
    # Two head-sized boxes, scaled with the frame, so the JPEG has the masked areas a real scene has.
    boxes = np.array([[0.15, 0.1, 0.3, 0.4], [0.6, 0.15, 0.72, 0.45]], np.float32) * [width, height, width, height]
    landmarks = np.zeros((2, 5, 2), np.float32)
    start = time.time()
    out = []
    for seq, image in enumerate(images):
        resized = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
        raw = RawFrame(np.ascontiguousarray(resized), seq=seq, captured_at=start + seq / 30, monotonic=seq / 30)
        out.append(mask_faces(raw, boxes.astype(np.float32), landmarks, painter))
    return out


def _summary(values_ms: list[float]) -> dict[str, float]:
    ordered = sorted(values_ms)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {"mean": round(statistics.fmean(ordered), 3), "median": round(statistics.median(ordered), 3),
            "p95": round(p95, 3)}


def bench_seal(
    frames: Sequence[Image],
    sizes: Sequence[tuple[int, int]] = DEFAULT_SIZES,
    encode: EncodeConfig | None = None,
    aeads: Sequence[str] = ("chacha20-poly1305", "aes-128-gcm"),
    warmup: int = 3,
    sink: Callable[[SealedFrame], Any] | None = None,
) -> dict[str, Any]:
    """Time encode, seal (HPKE + Ed25519 sign + framing) and optionally `sink` per frame, per size and AEAD.

    Returns {"encoder": name, "frames": n, "results": [{size, aead, jpeg_bytes, encode_ms, seal_ms,
    sink_ms?, total_ms}]} with mean/median/p95 in milliseconds.
    """
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    if not frames:
        raise ValueError("bench_seal needs at least one frame")
    encoder = create_encoder(encode or EncodeConfig())
    recipient = RecipientPublicKey.from_key(X25519PrivateKey.generate().public_key())
    signing = Ed25519PrivateKey.generate()
    results = []
    for size in sizes:
        masked = _masked(frames, size)
        for aead in aeads:
            sealer = Sealer("bench", recipient, signing, aead)
            warm = Sealer("bench", recipient, signing, aead)
            for frame in masked[:warmup]:
                warm.seal(frame, encoder.encode(frame))
            enc_ms, seal_ms, sink_ms, total_ms, sizes_b = [], [], [], [], []
            for frame in masked:
                t0 = time.perf_counter()
                data = encoder.encode(frame)
                t1 = time.perf_counter()
                sealed = sealer.seal(frame, data)
                t2 = time.perf_counter()
                if sink is not None:
                    sink(sealed)
                t3 = time.perf_counter()
                enc_ms.append((t1 - t0) * 1000)
                seal_ms.append((t2 - t1) * 1000)
                sink_ms.append((t3 - t2) * 1000)
                total_ms.append((t3 - t0) * 1000)
                sizes_b.append(len(data))
            row: dict[str, Any] = {
                "size": f"{size[0]}x{size[1]}",
                "aead": aead,
                "jpeg_bytes": round(statistics.fmean(sizes_b)),
                "message_overhead_bytes": len(sealed.message) - len(data),
                "encode_ms": _summary(enc_ms),
                "seal_ms": _summary(seal_ms),
                "total_ms": _summary(total_ms),
            }
            if sink is not None:
                row["sink_ms"] = _summary(sink_ms)
            results.append(row)
            log.info("bench seal %s %s: encode %.2f ms, seal %.2f ms (median)", row["size"], aead,
                     row["encode_ms"]["median"], row["seal_ms"]["median"])
    return {"encoder": encoder.name, "frames": len(frames), "results": results}
