"""Benchmark: sustained frames/s from the on-disk spool through a local Mosquitto, until confirmed.

What it measures is the device half after sealing: `Spool.put` (fsynced SQLite commit) in the producer
thread, and the uplink thread publishing with its in-flight window. With `confirm = "cloud"` (the
default) a frame counts when the cloud's Ack deleted it from the spool; `CloudAcker` answers in place of
the receiver with the receiver's own batching (`receiver.answers.Answers`: every 50 ms or 256 frames),
without its storage cost, in a process of its own (`AckerProcess`), as the receiver is.
With `confirm = "broker"` a frame counts on PUBACK; the acker still subscribes (silently), since a PUBACK
"no matching subscribers" is not a delivery. Frames/s = frames / (first put .. last deletion). The payload
is a real-sized 640x480 JPEG (a video frame when one is given, else a textured test image), since the
uplink never looks inside it.

`run_uplink_bench()` starts a private `mosquitto` on an ephemeral loopback port (plain TCP, anonymous,
only for the benchmark) unless a `BrokerConfig` is passed (for example a TLS broker from the tests or a
real deployment). Target on a Raspberry Pi 4 class device: >= 60 frames/s of 640x480 JPEGs.
"""

from __future__ import annotations

import json
import logging
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import paho.mqtt.client as mqtt

from edge_mask.config import BrokerConfig, SpoolConfig, UplinkConfig
from edge_mask.core.errors import MessageError, UserError
from edge_mask.receiver.answers import Answers
from edge_mask.seal import Reassembler, Refusal, ack_topic
from edge_mask.seal.wire import FrameHeader
from edge_mask.tools.broker import Mosquitto
from edge_mask.uplink.mqtt import connect, make_client
from edge_mask.uplink.mqtt_uplink import MqttUplink
from edge_mask.uplink.spool import open_spool

log = logging.getLogger(__name__)

AckMode = Literal["store", "refuse", "silent"]


@dataclass(frozen=True)
class _Blob:
    """What the spool reads from a sealed frame."""

    stream_id: bytes
    seq: int
    message: bytes


def bench_message(stream_id: bytes, seq: int, payload: bytes) -> bytes:
    """A benchmark record: stream id (16 bytes) and seq (8 bytes) in front, where `CloudAcker` reads them."""
    return stream_id + seq.to_bytes(8, "big") + payload


def frame_key(message: bytes) -> tuple[bytes, int, float | None]:
    """(stream id, seq, capture time) of a sealed frame (from its header) or of a `bench_message` (no time)."""
    try:
        header, _ = FrameHeader.unpack(message)
        return header.stream_id, header.seq, header.captured_at
    except MessageError:
        return message[:16], int.from_bytes(message[16:24], "big"), None


class CloudAcker:
    """Answers devices the way the cloud receiver does, without verifying or storing anything.

    Subscribes to every device's frames, reassembles chunks, and answers on each device's ack topic:
    `mode = "store"` confirms, `"refuse"` refuses with `reason`, `"silent"` only listens. For benchmarks
    and tests (a stand-in while the real receiver is elsewhere); `mode` may be changed while running.
    """

    def __init__(
        self,
        broker: BrokerConfig,
        client_id: str = "edge-mask-bench-cloud",
        mode: AckMode = "store",
        reason: str = "wrong_recipient",
        interval_s: float = 0.05,
        topic: str = "edge-mask/+/frames/#",
    ) -> None:
        self.mode: AckMode = mode
        self.reason = reason
        self.received: dict[tuple[bytes, int], int] = defaultdict(int)
        # (arrival, capture) wall times of sealed frames: capture -> through the broker, for `bench --live`
        self.arrivals: deque[tuple[float, float]] = deque(maxlen=200_000)
        self.acks_sent = 0
        self._broker = broker
        self._interval = interval_s
        self._topic = topic
        self._lock = threading.Lock()
        # the receiver's own batching; every frame refused (no rate limit), so tests see each refusal
        self._answers = Answers(interval_s, refusal_every_s=0.0)
        self._reassembler: Reassembler[int] = Reassembler(
            max_pending_bytes=256 << 20, timeout_s=60, max_message_bytes=64 << 20
        )
        self._stop = threading.Event()
        self._subscribed = threading.Event()
        self._client = make_client(broker, client_id, max_inflight=1000)
        self._client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self._client.on_subscribe = lambda c, u, mid, codes, p: self._subscribed.set()
        self._client.on_message = self._on_message
        self._flusher = threading.Thread(target=self._flush_loop, name="cloud-acker", daemon=True)

    def start(self, timeout: float = 10.0) -> None:
        connect(self._client, self._broker, persistent_session=False, session_expiry_s=0)
        self._client.loop_start()
        if not self._subscribed.wait(timeout):
            self.stop()
            raise UserError(f"cloud acker: no SUBACK from {self._broker.host}:{self._broker.port} for {self._topic}")
        self._flusher.start()

    def stop(self) -> None:
        self._stop.set()
        if self._flusher.is_alive():
            self._flusher.join(5)
        self._client.disconnect()
        self._client.loop_stop()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            message = self._reassembler.feed(bytes(msg.payload), time.monotonic())
        except MessageError:
            return
        if message is None:
            return
        stream, seq, captured = frame_key(message)
        key = (stream, seq)
        if captured is not None:
            self.arrivals.append((time.time(), captured))
        topic = ack_topic(msg.topic)
        now = time.monotonic()
        with self._lock:
            self.received[key] += 1
            if self.mode == "silent" or topic is None:
                return
            if self.mode == "refuse":
                refusal = Refusal(self.reason, "cloud acker refuses", stream.hex(), ((seq, seq),))
                self._answers.refuse(topic, topic, refusal, now)
            else:
                self._answers.stored(topic, stream.hex(), seq, now)
        self._flush()  # a full or refusing batch goes out at once, as the receiver's does

    def _flush_loop(self) -> None:
        while not self._stop.wait(self._interval):
            self._flush()

    def _flush(self) -> None:
        with self._lock:
            due = self._answers.due(time.monotonic())
            self.acks_sent += len(due)
        for topic, ack in due:
            self._client.publish(topic, ack.pack(), qos=1)


def acker_main(argv: list[str]) -> None:
    """Child process body: a `CloudAcker` (argv: broker config JSON, mode) until its stdin closes."""
    acker = CloudAcker(BrokerConfig.model_validate_json(argv[0]), mode=argv[1])  # type: ignore[arg-type]
    acker.start()
    print("ready", flush=True)
    sys.stdin.read()
    acker.stop()
    print(json.dumps(list(acker.arrivals)), flush=True)


class AckerProcess:
    """A `CloudAcker` in its own process, so that the benchmark measures the device's work only: the real
    receiver runs elsewhere, and an in-process acker would compete for this interpreter's lock."""

    def __init__(self, broker: BrokerConfig, mode: AckMode) -> None:
        code = "import sys; from edge_mask.tools.uplink_bench import acker_main; acker_main(sys.argv[1:])"
        self._args = [sys.executable, "-c", code, broker.model_dump_json(), mode]
        self._process: subprocess.Popen[str] | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self) -> None:
        self._process = subprocess.Popen(self._args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self._process.stdout is not None
        if self._process.stdout.readline().strip() != "ready":  # empty when the child failed (it logs why)
            self.stop()
            raise UserError("uplink benchmark: the stand-in cloud did not subscribe to the broker")

    def stop(self) -> list[tuple[float, float]]:
        """Stop the child; the (arrival, capture) wall times of the sealed frames it saw."""
        process, self._process = self._process, None
        if process is None:
            return []
        try:
            out, _ = process.communicate("", timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
            return []
        try:
            return [(float(a), float(c)) for a, c in json.loads(out.splitlines()[-1])]
        except (IndexError, ValueError, TypeError):
            return []


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
    confirm: Literal["cloud", "broker"] = "cloud",
) -> dict[str, Any]:
    """Push `frames` JPEG-sized records through spool + uplink + broker; returns figures for `edge-mask bench`."""
    payload = bench_jpeg(width, height, quality, video)
    stream = bytes(range(16))
    with tempfile.TemporaryDirectory(prefix="edge-mask-bench-", dir=work_dir) as tmp:
        tmp_dir = Path(tmp)
        local = None
        if broker is None:
            local = Mosquitto.plain(tmp_dir)
            local.start()
            broker = BrokerConfig(host="127.0.0.1", port=local.port, tls=None, client_id="edge-mask-bench")
        acker = AckerProcess(broker, "store" if confirm == "cloud" else "silent")
        spool = open_spool(SpoolConfig(path=tmp_dir / "spool"))
        cfg = UplinkConfig(broker=broker, inflight=inflight, stats_interval_s=3600, confirm=confirm)
        uplink = MqttUplink(cfg, "bench", spool)
        try:
            acker.start()
            uplink.start()
            if not uplink.wait_connected(broker.connect_timeout_s):
                raise UserError(f"uplink benchmark: cannot connect to the broker at {broker.host}:{broker.port}")
            put_ms: list[float] = []
            done = threading.Event()

            def produce() -> None:
                for seq in range(frames):
                    t0 = time.perf_counter()
                    spool.put(_Blob(stream, seq, bench_message(stream, seq, payload)))  # type: ignore[arg-type]
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
            resent = uplink.stats()["frames_resent"]
        finally:
            uplink.stop()
            acker.stop()
            spool.close()
            if local is not None:
                local.stop()
    acked = stats.acked
    put_sorted = sorted(put_ms)
    return {
        "frames": frames,
        "frames_acked": acked,
        "confirm": confirm,
        "frames_resent": resent,
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
