"""Benchmark: sustained frames/s from the on-disk spool through a local Mosquitto (QoS 1, acked).

What it measures is the device half after sealing: `Spool.put` (fsynced SQLite commit) in the producer
thread, and the uplink thread publishing with its in-flight window and deleting each record on PUBACK.
Frames/s = frames / (first put .. last acknowledgement). The payload is a real-sized 640x480 JPEG (a
video frame when one is given, else a textured test image), since the uplink never looks inside it.

`run_uplink_bench()` starts a private `mosquitto` on an ephemeral loopback port (plain TCP, anonymous,
only for the benchmark) unless a `BrokerConfig` is passed (for example a TLS broker from the tests or a
real deployment). Target on a Raspberry Pi 4 class device: >= 60 frames/s of 640x480 JPEGs.
"""

from __future__ import annotations

import logging
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_mask.config import BrokerConfig, SpoolConfig, UplinkConfig
from edge_mask.core.errors import UserError
from edge_mask.tools.broker import Mosquitto
from edge_mask.uplink.mqtt_uplink import MqttUplink
from edge_mask.uplink.spool import open_spool

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Blob:
    """What the spool reads from a sealed frame."""

    stream_id: bytes
    seq: int
    message: bytes


def bench_jpeg(width: int = 640, height: int = 480, quality: int = 80, video: Path | None = None) -> bytes:
    """A JPEG of the given size: a frame of `video` when given, else a textured synthetic image."""
    import cv2
    import numpy as np

    from edge_mask.capture import MediaError, VideoReader

    image: Any = None
    if video is not None:
        try:
            with VideoReader(video, max_frames=30) as reader:
                for frame in reader:
                    image = frame  # the 30th frame, or the last of a shorter clip
        except MediaError as exc:
            log.warning("uplink bench: %s; using a synthetic image", exc.message)
    if image is None:
        rng = np.random.default_rng(0)
        yy, xx = np.mgrid[0:height, 0:width]
        base = np.stack([(xx * 255 // width), (yy * 255 // height), ((xx + yy) % 256)], axis=-1)
        image = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    image = cv2.resize(image, (width, height))
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("OpenCV could not encode the benchmark JPEG")
    return bytes(data.tobytes())


def run_uplink_bench(
    frames: int = 600,
    width: int = 640,
    height: int = 480,
    quality: int = 80,
    inflight: int = 16,
    broker: BrokerConfig | None = None,
    video: Path | None = None,
    work_dir: Path | None = None,
    timeout_s: float = 120.0,
) -> dict[str, Any]:
    """Push `frames` JPEG-sized records through spool + uplink + broker; returns figures for `edge-mask bench`."""
    payload = bench_jpeg(width, height, quality, video)
    with tempfile.TemporaryDirectory(prefix="edge-mask-bench-", dir=work_dir) as tmp:
        tmp_dir = Path(tmp)
        local = None
        if broker is None:
            local = Mosquitto.plain(tmp_dir)
            local.start()
            broker = BrokerConfig(host="127.0.0.1", port=local.port, tls=None, client_id="edge-mask-bench")
        spool = open_spool(SpoolConfig(path=tmp_dir / "spool"))
        uplink = MqttUplink(UplinkConfig(broker=broker, inflight=inflight, stats_interval_s=3600), "bench", spool)
        try:
            uplink.start()
            if not uplink.wait_connected(broker.connect_timeout_s):
                raise UserError(f"uplink benchmark: cannot connect to the broker at {broker.host}:{broker.port}")
            put_ms: list[float] = []
            done = threading.Event()

            def produce() -> None:
                for seq in range(frames):
                    t0 = time.perf_counter()
                    spool.put(_Blob(b"\x00" * 8, seq, payload))  # type: ignore[arg-type]
                    put_ms.append((time.perf_counter() - t0) * 1000)
                done.set()

            start = time.perf_counter()
            producer = threading.Thread(target=produce, name="bench-producer")
            producer.start()
            deadline = time.monotonic() + timeout_s
            while (not done.is_set() or spool.stats().pending) and time.monotonic() < deadline:
                time.sleep(0.002)
            elapsed = time.perf_counter() - start
            producer.join()
            stats = spool.stats()
        finally:
            uplink.stop()
            spool.close()
            if local is not None:
                local.stop()
    acked = stats.acked
    put_sorted = sorted(put_ms)
    return {
        "frames": frames,
        "frames_acked": acked,
        "width": width,
        "height": height,
        "jpeg_bytes": len(payload),
        "inflight": inflight,
        "transport": "tls" if broker.tls is not None else "tcp",
        "seconds": round(elapsed, 3),
        "frames_per_s": round(acked / elapsed, 1) if elapsed > 0 else 0.0,
        "mbit_per_s": round(acked * len(payload) * 8 / elapsed / 1e6, 1) if elapsed > 0 else 0.0,
        "spool_put_ms_mean": round(statistics.fmean(put_ms), 3) if put_ms else None,
        "spool_put_ms_p99": round(put_sorted[int(0.99 * (len(put_sorted) - 1))], 3) if put_ms else None,
        "target_frames_per_s": 60,
    }
