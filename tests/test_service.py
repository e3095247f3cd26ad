"""The live service, end to end and under faults.

* A real clip played as a 30 fps camera runs through the service, a real Mosquitto with TLS and the
  receiver: the frames arrive masked (checked with the independent CenterFace judge against the same
  frames unmasked), the stats topic reports sensible numbers, READY=1/WATCHDOG=1 reach a notify socket,
  the Prometheus endpoint answers and the retained status ends as `stopped`.
* A camera that dies mid-stream and comes back; a detector that hangs (the watchdog stops, no frame gets
  past the masker, the raw queue stays bounded); SIGTERM to `edge-mask run` mid-stream loses no spooled
  frame; SIGHUP-style reload applies mask settings live and names what needs a restart.

Tests that need no delivery point the uplink at a closed loopback port: frames then stay in the spool,
where the test reads them.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from support.broker import RECEIVER_USER, RECEIVER_USER_2, Broker, free_port, mosquitto_broker  # noqa: F401
from support.fleet import Fleet, make_fleet

from edge_mask.capture import VideoReader, read_image
from edge_mask.capture.opencv import OpenCVCamera
from edge_mask.config import EdgeConfig, OpenCVCameraConfig, SpoolConfig, validate_config
from edge_mask.core.errors import CameraError
from edge_mask.core.types import RawFrame
from edge_mask.service.live import Service
from edge_mask.service.queues import LatestQueue

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------- helpers


def to_toml(data: dict[str, Any], prefix: str = "") -> str:
    """Just enough TOML for configs: scalars first, then sub-tables."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return json.dumps(str(v))

    lines = [f"{k} = {value(v)}" for k, v in data.items() if not isinstance(v, dict)]
    for k, v in data.items():
        if isinstance(v, dict):
            lines += ["", f"[{prefix}{k}]", to_toml(v, f"{prefix}{k}.")]
    return "\n".join(lines)


def device_settings(shared_dir: Path, fleet: Fleet, tmp_path: Path, **camera: Any) -> dict[str, Any]:
    model = shared_dir / "models" / "face_detection_yunet_2023mar.onnx"
    clip = shared_dir / "data" / "video" / "short_hamilton_clip.mp4"
    return {
        "device_id": "dev1",
        "camera": {"type": "opencv", "source": str(clip), **camera},
        "detector": {"type": "onnx", "model": str(model), "precision": "fp32", "threads": 1},
        "seal": {"recipient_public_key": str(fleet.recipient_pub), "signing_key": str(fleet.signing_keys["dev1"])},
        "spool": {"path": str(tmp_path / "spool")},
        "uplink": {"broker": {"host": "127.0.0.1", "port": free_port(), "connect_timeout_s": 1.0},
                   "retry_min_s": 0.2, "retry_max_s": 1.0, "stats_interval_s": 1.0},
        "service": {"stall_s": 2.0},
    }


def with_broker(settings: dict[str, Any], broker: Broker) -> dict[str, Any]:
    cfg = broker.broker_config("dev1")
    assert cfg.tls is not None
    tls = {"ca": str(cfg.tls.ca), "cert": str(cfg.tls.cert), "key": str(cfg.tls.key)}
    settings["uplink"]["broker"] = {"host": cfg.host, "port": cfg.port, "tls": tls, "connect_timeout_s": 5.0}
    return settings


class NotifySocket:
    """A stand-in for systemd's notify socket that records every datagram."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except OSError:
                continue

    def count(self, text: str) -> int:
        return sum(text in m for m in list(self.messages))

    def wait_for(self, text: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.count(text):
                return True
            time.sleep(0.05)
        return False

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(tmp_path / "notify.sock")
    yield sock
    sock.close()


def notifier_for(sock: NotifySocket) -> Any:
    from edge_mask.service.notify import Notifier

    return Notifier({"NOTIFY_SOCKET": str(sock.path), "WATCHDOG_USEC": "2000000"})


def run_in_thread(service: Service) -> tuple[threading.Thread, dict[str, int]]:
    result: dict[str, int] = {}
    thread = threading.Thread(target=lambda: result.setdefault("rc", service.run()), daemon=True)
    thread.start()
    return thread, result


def wait_until(predicate: Any, timeout: float, what: str, detail: Any = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}" + (f": {detail()}" if detail else ""))


def spooled_seqs(path: Path) -> list[int]:
    from edge_mask.uplink.spool import open_spool

    spool = open_spool(SpoolConfig(path=path))
    try:
        return [r.seq for r in spool.pending(limit=100000)]
    finally:
        spool.close()


class TopicWatcher:
    """Collects the stats and status messages of dev1 as the receiver user."""

    def __init__(self, cfg: Any) -> None:
        """`cfg`: a receiver identity other than the receiver's (the broker forces client id = CN)."""
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        assert cfg.tls is not None
        self.stats: list[dict[str, Any]] = []
        self.status: list[str] = []
        self.subscribed = threading.Event()
        client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="watcher")
        client.tls_set(ca_certs=str(cfg.tls.ca), certfile=str(cfg.tls.cert), keyfile=str(cfg.tls.key))
        client.on_connect = lambda c, *a: c.subscribe([("edge-mask/dev1/stats", 1), ("edge-mask/dev1/status", 1)])
        client.on_subscribe = lambda *a: self.subscribed.set()
        client.on_message = self._on_message
        client.connect(cfg.host, cfg.port)
        client.loop_start()
        self.client = client
        assert self.subscribed.wait(15)

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        if message.topic.endswith("/stats"):
            self.stats.append(json.loads(message.payload))
        else:
            self.status.append(message.payload.decode())

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


# ------------------------------------------------------------------------------------------- unit tests


def test_latest_raw_frame_wins() -> None:
    drops: list[int] = []
    q = LatestQueue(2, lambda: drops.append(1))
    frames = [RawFrame(np.zeros((2, 2, 3), np.uint8), seq=i, captured_at=0.0, monotonic=0.0) for i in range(5)]
    for frame in frames:
        q.put(frame)
    assert len(q) == 2 and len(drops) == 3
    got = [q.get(0.1), q.get(0.1)]
    assert [f.seq for f in got if f is not None] == [3, 4]  # the newest survive, the oldest were dropped
    q.put(frames[0])
    assert q.close(discard=True) == 1 and q.drained and q.get(0.01) is None


# ------------------------------------------------------------------------------------------ end to end


@pytest.mark.slow
def test_clip_as_camera_through_tls_broker_to_receiver(
    shared_dir: Path, mosquitto_broker: Broker, tmp_path: Path, notify_socket: NotifySocket  # noqa: F811
) -> None:
    from edge_mask.receiver.receiver import Receiver
    from edge_mask.tools.evaluation.judge import CenterFaceJudge

    fleet = make_fleet(tmp_path / "fleet", devices=("dev1",))
    settings = with_broker(device_settings(shared_dir, fleet, tmp_path, fps=30.0), mosquitto_broker)
    metrics_port = free_port()
    settings["service"].update(prometheus_port=metrics_port)
    cfg = validate_config(settings, EdgeConfig)
    output = tmp_path / "received"
    cloud_broker = mosquitto_broker.broker_config(RECEIVER_USER, client_id="cloud-1")
    receiver_cfg = fleet.receiver_config(output, cloud_broker)
    receiver = Receiver(receiver_cfg)
    stop_receiver = threading.Event()
    receiver_thread = threading.Thread(target=receiver.run, args=(stop_receiver,), daemon=True)
    receiver_thread.start()
    watcher = TopicWatcher(mosquitto_broker.broker_config(RECEIVER_USER_2))  # own CN: ids are forced to the CN
    try:
        assert receiver.connected.wait(15)
        service = Service(cfg, notifier=notifier_for(notify_socket))
        thread, result = run_in_thread(service)
        assert notify_socket.wait_for("READY=1", 120), "never ready"
        scrape = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
        thread.join(240)  # the clip ends after 275 frames; the service drains its spool and stops
        assert not thread.is_alive() and result["rc"] == 0
        spooled = service.metrics.snapshot()["frames_spooled"]
        wait_until(lambda: receiver.summary()["stored"] >= spooled, 60, "all frames at the receiver",
                   lambda: (spooled, receiver.summary()))
        wait_until(lambda: "stopped" in watcher.status, 10, "status 'stopped'")
    finally:
        stop_receiver.set()
        receiver_thread.join(10)
        watcher.close()

    # Every frame the service spooled was received (dropped ones are counted, never sent raw).
    snapshot = service.metrics.snapshot()
    summary = receiver.summary()
    assert summary["stored"] == snapshot["frames_spooled"] > 100 and summary["rejected_total"] == 0
    assert snapshot["frames_captured"] == 275
    assert snapshot["frames_spooled"] + snapshot["dropped_total"] == 275
    assert "edge_mask_frames_spooled" in scrape and "edge_mask_fps" in scrape
    assert notify_socket.count("WATCHDOG=1") >= 1 and notify_socket.count("STATUS=") >= 1

    # Stats topic: sensible numbers.
    assert watcher.stats, "no stats message"
    last = watcher.stats[-1]
    assert last["device_id"] == "dev1" and last["broker"] == "connected"
    # A 30 fps camera: the windowed rate may overshoot a little when a late frame catches up.
    assert 1 <= max(s["fps"] for s in watcher.stats) <= 36
    assert 0 < last["latency_capture_to_spooled_p50_ms"] <= last["latency_capture_to_spooled_p99_ms"]
    assert last["faces_masked"] > 0 and isinstance(last["dropped"], dict)
    assert "spool_pending" in last and "spool_pending_bytes" in last
    assert last["camera"]["state"] in ("running", "ended")

    # Masked: faces the independent judge finds in the original frames are gone in the received ones.
    index = [json.loads(line) for line in next(output.glob("dev1/*/index.jsonl")).read_text().splitlines()]
    stream_dir = next(output.glob("dev1/*"))
    with VideoReader(shared_dir / "data" / "video" / "short_hamilton_clip.mp4") as reader:
        originals = list(reader)
    judge = CenterFaceJudge(threshold=0.5)
    faces_before = faces_after = 0
    for entry in index[:: max(1, len(index) // 10)]:
        received = read_image(stream_dir / entry["file"])
        before = judge.detect(originals[entry["seq"]])
        after = judge.detect(received)
        faces_before += len(before)
        faces_after += sum(_overlaps(box, before.boxes) for box in after.boxes)
    judge.close()
    assert faces_before >= 5, "the judge should see the clip's faces in the originals"
    assert faces_after == 0, f"{faces_after} faces visible after masking"


def _overlaps(box: np.ndarray, boxes: np.ndarray) -> bool:
    for other in boxes:
        ix = max(0.0, min(box[2], other[2]) - max(box[0], other[0]))
        iy = max(0.0, min(box[3], other[3]) - max(box[1], other[1]))
        union = (box[2] - box[0]) * (box[3] - box[1]) + (other[2] - other[0]) * (other[3] - other[1]) - ix * iy
        if union > 0 and ix * iy / union > 0.3:
            return True
    return False


# ---------------------------------------------------------------------------------------------- faults


class FlakyCamera:
    """A real clip camera that is 'unplugged' after `fail_after` frames and refuses to open `refusals` times."""

    opened = 0

    def __init__(self, cfg: OpenCVCameraConfig, fail_after: int, refusals: int) -> None:
        self.inner = OpenCVCamera(cfg)
        self.name = "flaky"
        self.fail_after, self.refusals, self.frames = fail_after, refusals, 0

    def open(self) -> None:
        FlakyCamera.opened += 1
        if 1 < FlakyCamera.opened <= 1 + self.refusals:
            raise CameraError("/dev/video0 does not exist (unplugged)")
        self.inner.open()

    def read(self) -> Any:
        self.frames += 1
        if FlakyCamera.opened == 1 and self.frames > self.fail_after:
            raise CameraError("read failed (unplugged)")
        return self.inner.read()

    def close(self) -> None:
        self.inner.close()


def test_camera_that_dies_mid_stream_and_comes_back(shared_dir: Path, tmp_path: Path) -> None:
    fleet = make_fleet(tmp_path / "fleet", devices=("dev1",))
    settings = device_settings(shared_dir, fleet, tmp_path, realtime=False, retry_min_s=0.1, retry_max_s=0.5)
    cfg = validate_config(settings, EdgeConfig)
    assert isinstance(cfg.camera, OpenCVCameraConfig)
    camera_cfg = cfg.camera.model_copy(update={"width": 320, "height": 180})
    FlakyCamera.opened = 0
    service = Service(cfg, camera_factory=lambda: FlakyCamera(camera_cfg, fail_after=12, refusals=2))
    thread, _ = run_in_thread(service)
    try:
        wait_until(lambda: service.metrics.snapshot()["frames_spooled"] >= 30, 120, "frames after the reconnect")
        health = service.stats()["camera"]
    finally:
        service.request_stop()
        thread.join(15)
    assert not thread.is_alive()
    assert health["state"] == "running" and health["errors"] == 3 and health["reconnects"] == 3
    assert service.metrics.snapshot()["frames_captured"] > 12
    seqs = spooled_seqs(tmp_path / "spool")
    assert seqs == sorted(set(seqs)) and len(seqs) >= 30  # numbering continues across the reconnect


class HangingMasker:
    """The real masker, until frame `hang_at`: then detection never returns (a wedged accelerator)."""

    def __init__(self, inner: Any, hang_at: int) -> None:
        self.inner, self.hang_at = inner, hang_at
        self.release = threading.Event()
        self.seen: list[int] = []

    def process(self, frame: RawFrame) -> Any:
        self.seen.append(frame.seq)
        if len(self.seen) > self.hang_at:
            self.release.wait(60)
            return None
        return self.inner.process(frame)

    def warm_up(self, width: int, height: int) -> None:
        self.inner.warm_up(width, height)

    def reconfigure(self, tracker: Any = None, mask: Any = None) -> None:
        self.inner.reconfigure(tracker, mask)

    def reset(self) -> None:
        self.inner.reset()

    def stats(self) -> dict[str, Any]:
        return dict(self.inner.stats())

    def latency_samples(self) -> dict[str, list[float]]:
        return dict(self.inner.latency_samples())

    def close(self) -> None:
        self.inner.close()


class HangingDetector:
    """The real detector until call `hang_at`; then `detect` never returns (e.g. a wedged NPU driver)."""

    def __init__(self, inner: Any, hang_at: int) -> None:
        self.inner, self.hang_at, self.calls = inner, hang_at, 0
        self.release = threading.Event()

    def detect(self, image: Any) -> Any:
        self.calls += 1
        if self.calls > self.hang_at:
            self.release.wait(60)
        return self.inner.detect(image)

    def close(self) -> None:
        self.release.set()
        self.inner.close()


def test_hung_detector_fails_closed_and_stops_the_watchdog(
    shared_dir: Path, tmp_path: Path, notify_socket: NotifySocket
) -> None:
    """The masker's detector deadline turns a hung detector into fully masked frames (never raw ones);
    the service withholds WATCHDOG=1 because no frame with a working detection flows any more."""
    from edge_mask.detect import create_detector
    from edge_mask.mask.engine import FaceMasker
    from edge_mask.seal.keys import load_device_registry, load_recipient_private_key
    from edge_mask.seal.sealer import Opener

    fleet = make_fleet(tmp_path / "fleet", devices=("dev1",))
    settings = device_settings(shared_dir, fleet, tmp_path, fps=30.0, loop=True)
    settings["service"].update(stall_s=1.0)
    settings["detector"]["deadline_ms"] = 200.0
    cfg = validate_config(settings, EdgeConfig)
    detector = HangingDetector(create_detector(cfg.detector, cfg.models), hang_at=12)  # 1 warm-up call + 11 frames
    masker = FaceMasker(detector, cfg.tracker, cfg.mask, cfg.detector.deadline_ms)  # type: ignore[arg-type]
    service = Service(cfg, notifier=notifier_for(notify_socket), masker=masker)
    thread, result = run_in_thread(service)
    try:
        assert notify_socket.wait_for("READY=1", 60)
        wait_until(lambda: detector.calls > 12, 30, "the detector to hang")
        wait_until(lambda: not service.flowing(), 10, "the pipeline to be declared stalled")
        pings = notify_socket.count("WATCHDOG=1")
        wait_until(lambda: service.metrics.snapshot()["fail_closed"] >= 10, 30, "fail-closed frames")
        assert notify_socket.count("WATCHDOG=1") == pings, "watchdog pinged while the detector was hung"
    finally:
        service.request_stop()
        thread.join(15)
    assert not thread.is_alive() and result["rc"] == 0
    opener = Opener(load_recipient_private_key(fleet.recipient_key), load_device_registry(fleet.devices_dir))
    from edge_mask.uplink.spool import open_spool

    spool = open_spool(SpoolConfig(path=tmp_path / "spool"))
    records = spool.pending(limit=100000)
    spool.close()
    opened = [opener.open(r.message) for r in records]
    failed = [o for o in opened if o.metadata["fail_closed"]]
    assert len(failed) >= 10 and len(opened) - len(failed) <= 11
    for frame in failed:
        image = cv2.imdecode(np.frombuffer(frame.image, np.uint8), cv2.IMREAD_COLOR)
        assert image is not None and image.std() < 3 and image.mean() < 5  # nothing but the fill colour


def test_hung_detector_stops_the_watchdog_and_leaks_no_frame(
    shared_dir: Path, tmp_path: Path, notify_socket: NotifySocket
) -> None:
    from edge_mask.mask.engine import build_masker

    fleet = make_fleet(tmp_path / "fleet", devices=("dev1",))
    settings = device_settings(shared_dir, fleet, tmp_path, fps=30.0, loop=True)
    settings["service"].update(stall_s=1.0, raw_queue=2)
    cfg = validate_config(settings, EdgeConfig)
    masker = HangingMasker(build_masker(cfg), hang_at=10)
    service = Service(cfg, notifier=notifier_for(notify_socket), masker=masker)  # type: ignore[arg-type]
    thread, result = run_in_thread(service)
    try:
        assert notify_socket.wait_for("READY=1", 60)
        wait_until(lambda: len(masker.seen) > 10, 30, "the detector to hang")
        wait_until(lambda: not service.flowing(), 10, "the pipeline to be declared stalled")
        pings = notify_socket.count("WATCHDOG=1")
        wait_until(lambda: service.metrics.snapshot()["dropped"].get("masking_behind", 0) > 30, 30, "raw drops")
        assert notify_socket.count("WATCHDOG=1") == pings, "watchdog pinged while no frame flowed"
        assert len(service._raw) <= 2  # bounded: the camera keeps running, old raw frames are dropped
    finally:
        service.request_stop()
        thread.join(15)
        masker.release.set()
    assert not thread.is_alive() and result["rc"] == 1  # a stage had to be abandoned: not a clean stop
    snapshot = service.metrics.snapshot()
    assert snapshot["frames_masked"] == snapshot["frames_spooled"] == 10
    assert spooled_seqs(tmp_path / "spool") == masker.seen[:10]  # nothing after the hang reached the disk


def test_reload_applies_mask_settings_and_names_what_needs_a_restart(shared_dir: Path, tmp_path: Path) -> None:
    fleet = make_fleet(tmp_path / "fleet", devices=("dev1",))
    settings = device_settings(shared_dir, fleet, tmp_path)
    path = tmp_path / "edge.toml"
    path.write_text(to_toml(settings))
    service = Service(validate_config(settings, EdgeConfig), config_path=path)
    from edge_mask.mask.engine import build_masker

    service._masker = build_masker(service.cfg)
    try:
        settings["mask"] = {"style": "pixelate"}
        settings["service"]["log_level"] = "DEBUG"
        before = service.cfg.detector.threshold
        settings["detector"]["threshold"] = 0.7
        path.write_text(to_toml(settings))
        assert service.reload() == ["detector"]
        assert service.cfg.mask.style == "pixelate" and service.cfg.service.log_level == "DEBUG"
        assert service.cfg.detector.threshold == before != 0.7  # not applied live
        path.write_text("device_id = ")  # a broken file is rejected and the running config kept
        assert service.reload() == [] and service.cfg.mask.style == "pixelate"
    finally:
        service._masker.close()


# ------------------------------------------------------------------------------------------------ SIGTERM

# The main thread of `edge-mask run` lives in `stop.wait(...)`, which holds the event's lock for a moment on
# every wake-up; a signal handler that took that lock itself waited for its own thread forever (seen once in
# CI: SIGTERM ignored). The race is forced here: the main thread holds the lock when the signal arrives.
_SIGNAL_WHILE_LOCKED = """
import signal, threading
from edge_mask.commands.interrupts import handle_signals
stop, reload = threading.Event(), threading.Event()
with handle_signals({signal.SIGTERM: stop.set, signal.SIGHUP: reload.set}):
    with stop._cond:  # what Event.wait() holds between its checks
        signal.raise_signal(signal.SIGTERM)
    print("stopped" if stop.wait(10) else "not stopped", flush=True)
    for _ in range(100_000):  # more wake-ups than the pipe holds (64 KiB): none may be lost
        signal.raise_signal(signal.SIGHUP)
    print("reloaded" if reload.wait(10) else "not reloaded", flush=True)
    reload.clear()
    with reload._cond:
        signal.raise_signal(signal.SIGHUP)
        signal.raise_signal(signal.SIGTERM)
    print("again" if reload.wait(10) else "not again", flush=True)
print("left", threading.active_count(), flush=True)
"""


def test_a_signal_arriving_while_the_main_loop_holds_its_lock_still_stops_it() -> None:
    proc = subprocess.Popen([sys.executable, "-c", _SIGNAL_WHILE_LOCKED], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"deadlocked on a signal: {out!r} {err[-500:]!r}")
    assert out.split() == ["stopped", "reloaded", "again", "left", "1"], (out, err)
    assert proc.returncode == 0, err


def test_signal_handlers_are_refused_off_the_main_thread_and_restored_on_exit() -> None:
    from edge_mask.commands.interrupts import handle_signals

    errors: list[BaseException] = []

    def install() -> None:
        try:
            with handle_signals({signal.SIGHUP: lambda: None}):
                pass
        except RuntimeError as exc:
            errors.append(exc)

    before = signal.getsignal(signal.SIGHUP)
    thread = threading.Thread(target=install)
    thread.start()
    thread.join()
    assert len(errors) == 1 and "main thread" in str(errors[0])
    with handle_signals({signal.SIGHUP: lambda: None}):
        assert signal.getsignal(signal.SIGHUP) is not before
        assert any(t.name == "edge-mask-signals" for t in threading.enumerate())
    assert signal.getsignal(signal.SIGHUP) is before
    assert not any(t.name == "edge-mask-signals" for t in threading.enumerate()), "the helper thread ended"


@pytest.mark.slow
def test_sigterm_mid_stream_loses_no_spooled_frame(
    shared_dir: Path, mosquitto_broker: Broker, tmp_path: Path, notify_socket: NotifySocket  # noqa: F811
) -> None:
    from edge_mask.receiver.receiver import Receiver

    fleet = make_fleet(tmp_path / "fleet", devices=("dev1",))
    settings = with_broker(device_settings(shared_dir, fleet, tmp_path, fps=30.0, loop=True), mosquitto_broker)
    config = tmp_path / "edge.toml"
    config.write_text(to_toml(settings))
    receiver = Receiver(
        fleet.receiver_config(tmp_path / "received", mosquitto_broker.broker_config(RECEIVER_USER, client_id="cloud"))
    )
    stop_receiver = threading.Event()
    receiver_thread = threading.Thread(target=receiver.run, args=(stop_receiver,), daemon=True)
    receiver_thread.start()
    env = {**os.environ, "NOTIFY_SOCKET": str(notify_socket.path)}
    proc = subprocess.Popen([sys.executable, "-m", "edge_mask", "run", "--config", str(config)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert receiver.connected.wait(15)
        assert notify_socket.wait_for("READY=1", 120), "service never ready"
        time.sleep(2.0)  # mid-stream: frames in every stage
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert notify_socket.count("STOPPING=1") == 1
        match = re.search(r"'frames_spooled': (\d+)", err)
        assert match, err
        spooled = int(match.group(1))
        backlog = spooled_seqs(tmp_path / "spool")
        # Whatever was not acknowledged is still on disk; replay it (as the next start would) and count.
        drain = subprocess.run([sys.executable, "tests/support/device.py", "--config", str(config), "--frames", "0"],
                               cwd=REPO, capture_output=True, text=True, timeout=120)
        assert "drained" in drain.stdout, drain.stdout + drain.stderr
        wait_until(lambda: receiver.summary()["stored"] >= spooled, 60, "every spooled frame at the receiver",
                   lambda: (spooled, receiver.summary()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        stop_receiver.set()
        receiver_thread.join(10)
    assert spooled > 0
    assert receiver.summary()["stored"] == spooled, (receiver.summary(), spooled, len(backlog))
