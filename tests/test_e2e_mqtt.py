"""Device to cloud through a real Mosquitto (TLS, client certificates, per-device ACL): nothing lost.

* 300 frames of a real clip, masked, sealed, spooled and uploaded, are received by `edge-mask receive`
  (the real command, as a subprocess), verified, decrypted and stored; the stored JPEGs decode.
* The broker is stopped for 10 s mid-stream and restarted: 0 frames lost, index in order.
* The device process is killed with SIGKILL mid-stream (with a backlog in its spool) and restarted:
  every frame that reached the spool is delivered.
* Two receivers sharing a subscription store every frame exactly once between them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from support.broker import RECEIVER_USER, RECEIVER_USER_2, Broker, mosquitto_broker  # noqa: F401
from support.fleet import Fleet, make_fleet, masked_clip, masker_config

from edge_mask.config import OpenCVCameraConfig, SpoolConfig, UplinkConfig
from edge_mask.receiver.receiver import Receiver
from edge_mask.uplink.mqtt_uplink import MqttUplink
from edge_mask.uplink.spool import open_spool

REPO = Path(__file__).resolve().parents[1]
FRAMES = 300


@pytest.fixture(scope="module")
def clip_frames(shared_dir: Path) -> list[tuple[Any, bytes]]:
    """300 consecutive frames of the 640x360 clip (it loops after 275), masked and JPEG-encoded once."""
    return list(masked_clip(masker_config(shared_dir), frames=FRAMES))


@pytest.fixture
def fleet(mosquitto_broker: Broker, tmp_path: Path) -> Fleet:  # noqa: F811
    return make_fleet(tmp_path / "fleet", devices=("dev1",))


def read_index(output: Path) -> list[dict[str, Any]]:
    (index,) = output.glob("dev1/*/index.jsonl")
    return [json.loads(line) for line in index.read_text().splitlines()]


class ReceiverThread:
    def __init__(self, receiver: Receiver, max_frames: int | None = None) -> None:
        self.receiver = receiver
        self.stop = threading.Event()
        self.summary: dict[str, Any] = {}
        self.thread = threading.Thread(target=self._run, args=(max_frames,), daemon=True)
        self.thread.start()
        assert receiver.connected.wait(15), "receiver did not subscribe"

    def _run(self, max_frames: int | None) -> None:
        self.summary = self.receiver.run(self.stop, max_frames=max_frames)

    def join(self, timeout: float) -> dict[str, Any]:
        self.thread.join(timeout)
        if self.thread.is_alive():
            self.stop.set()
            self.thread.join(10)
        return self.summary


def device_uplink(broker: Broker, spool: Any, **settings: Any) -> MqttUplink:
    cfg = UplinkConfig.model_validate(
        {"broker": broker.broker_config("dev1"), "retry_min_s": 0.2, "retry_max_s": 1.0, **settings}
    )
    return MqttUplink(cfg, "dev1", spool)


def test_300_frames_end_to_end_through_the_receive_command(
    mosquitto_broker: Broker, fleet: Fleet, clip_frames: list[Any], tmp_path: Path  # noqa: F811
) -> None:
    broker_cfg = mosquitto_broker.broker_config(RECEIVER_USER, client_id="cloud-1")
    tls = broker_cfg.tls
    assert tls is not None
    output = tmp_path / "received"
    config = tmp_path / "receiver.toml"
    config.write_text(
        "\n".join(
            [
                f'recipient_private_key = "{fleet.recipient_key}"',
                f'devices_dir = "{fleet.devices_dir}"',
                f'output_dir = "{output}"',
                "[broker]",
                f'host = "{broker_cfg.host}"',
                f"port = {broker_cfg.port}",
                'client_id = "cloud-1"',
                "[broker.tls]",
                f'ca = "{tls.ca}"',
                f'cert = "{tls.cert}"',
                f'key = "{tls.key}"',
                "",
            ]
        )
    )
    command = [sys.executable, "-m", "edge_mask", "receive", "--config", str(config), "--json",
               "--max-frames", str(FRAMES), "--duration", "240"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        # The receiver's persistent session must exist before the device publishes: wait for its SUBSCRIBE.
        # The broker names a client by its certificate CN, whatever client id it sent (`cloud-1` here).
        assert mosquitto_broker.wait_for_log(f"{RECEIVER_USER} 1 edge-mask/+/frames/#", 60), mosquitto_broker.log()
        spool = open_spool(SpoolConfig(path=tmp_path / "spool"))
        uplink = device_uplink(mosquitto_broker, spool)
        uplink.start()
        sealer = fleet.sealer("dev1")
        for masked, jpeg in clip_frames:
            spool.put(sealer.seal(masked, jpeg))
        out, err = proc.communicate(timeout=240)
        uplink.stop()
        spool.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err + mosquitto_broker.log()
    summary = json.loads(out)
    assert summary["stored"] == FRAMES and summary["rejected_total"] == 0 and summary["gaps_total"] == 0, summary
    index = read_index(output)
    assert [e["seq"] for e in index] == [m.seq for m, _ in clip_frames]
    stream_dir = next(output.glob("dev1/*"))
    for entry, (masked, jpeg) in zip(index[::25], clip_frames[::25], strict=True):
        data = (stream_dir / entry["file"]).read_bytes()
        assert data == jpeg
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        assert image is not None and image.shape == (360, 640, 3)
        assert entry["faces"] == masked.faces
    assert sum(e["faces"] for e in index) > FRAMES  # a clip with real faces (about 1.8 per frame)


def test_broker_down_for_10_seconds_loses_nothing(
    mosquitto_broker: Broker, fleet: Fleet, clip_frames: list[Any], tmp_path: Path  # noqa: F811
) -> None:
    receiver = Receiver(
        fleet.receiver_config(
            tmp_path / "received", broker=mosquitto_broker.broker_config(RECEIVER_USER)
        ),
        retry_max_s=1.0,
    )
    rx = ReceiverThread(receiver, max_frames=FRAMES)
    spool = open_spool(SpoolConfig(path=tmp_path / "spool"))
    uplink = device_uplink(mosquitto_broker, spool)
    uplink.start()
    sealer = fleet.sealer("dev1")
    outage_done = False
    try:
        for i, (masked, jpeg) in enumerate(clip_frames):
            spool.put(sealer.seal(masked, jpeg))
            time.sleep(1 / 60)  # a live camera, not a burst
            if i == 100:
                assert receiver.summary()["stored"] > 0  # traffic was flowing before the outage
                mosquitto_broker.stop()
                outage_start = time.monotonic()
            if i > 100 and not outage_done and time.monotonic() - outage_start >= 10:
                mosquitto_broker.start()
                outage_done = True
        if not outage_done:
            time.sleep(max(0.0, 10 - (time.monotonic() - outage_start)))
            mosquitto_broker.start()
        summary = rx.join(timeout=120)
    finally:
        rx.stop.set()
        uplink.stop()
    assert uplink.stats()["disconnects"] >= 1 and uplink.stats()["connects"] >= 2
    assert spool.stats().pending == 0
    spool.close()
    assert summary["stored"] == FRAMES and summary["gaps_total"] == 0, (summary, mosquitto_broker.log()[-3000:])
    assert [e["seq"] for e in read_index(tmp_path / "received")] == [m.seq for m, _ in clip_frames]


def _device_config(path: Path, shared_dir: Path, broker: Broker, fleet: Fleet, spool: Path) -> None:
    tls = broker.client_tls("dev1")
    cfg = masker_config(shared_dir)
    assert isinstance(cfg.camera, OpenCVCameraConfig)
    clip = cfg.camera.source
    detector = cfg.detector
    path.write_text(
        "\n".join(
            [
                'device_id = "dev1"',
                "[camera]",
                'type = "opencv"',
                f'source = "{clip}"',
                "[detector]",
                'type = "onnx"',
                f'model = "{detector.model}"',
                'precision = "fp32"',
                "threads = 1",
                "[seal]",
                f'recipient_public_key = "{fleet.recipient_pub}"',
                f'signing_key = "{fleet.signing_keys["dev1"]}"',
                "[spool]",
                f'path = "{spool}"',
                "[uplink]",
                "retry_min_s = 0.2",
                "retry_max_s = 1.0",
                "[uplink.broker]",
                f'host = "{broker.host}"',
                f"port = {broker.port}",
                "[uplink.broker.tls]",
                f'ca = "{tls.ca}"',
                f'cert = "{tls.cert}"',
                f'key = "{tls.key}"',
                "",
            ]
        )
    )


def test_device_killed_with_sigkill_delivers_every_spooled_frame_after_restart(
    mosquitto_broker: Broker, fleet: Fleet, shared_dir: Path, tmp_path: Path  # noqa: F811
) -> None:
    config = tmp_path / "edge.toml"
    _device_config(config, shared_dir, mosquitto_broker, fleet, tmp_path / "spool")
    receiver = Receiver(
        fleet.receiver_config(
            tmp_path / "received", broker=mosquitto_broker.broker_config(RECEIVER_USER)
        ),
        retry_max_s=1.0,
    )
    rx = ReceiverThread(receiver)
    script = str(REPO / "tests" / "support" / "device.py")
    device = subprocess.Popen(
        [sys.executable, script, "--config", str(config), "--frames", "400"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
    )
    spooled: list[tuple[str, int]] = []
    try:
        assert device.stdout is not None
        for line in device.stdout:
            if line.startswith("spooled "):
                _, stream, seq = line.split()
                spooled.append((stream, int(seq)))
            if len(spooled) == 30:
                mosquitto_broker.stop()  # from now on frames pile up in the spool
            if len(spooled) >= 60:
                break
        os.kill(device.pid, signal.SIGKILL)
        device.wait(timeout=30)
        assert len(spooled) >= 60, device.stderr.read() if device.stderr else ""
        mosquitto_broker.start()
        restarted = subprocess.run(
            [sys.executable, script, "--config", str(config), "--frames", "0"],
            capture_output=True, text=True, timeout=120, cwd=REPO,
        )
        assert "drained" in restarted.stdout.splitlines(), restarted.stdout + restarted.stderr
        deadline = time.monotonic() + 30
        while receiver.summary()["stored"] < len(spooled) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        if device.poll() is None:
            device.kill()
            device.wait()
        rx.stop.set()
        summary = rx.join(timeout=30)
    stored = {(e_stream, e["seq"]) for e_stream, e in _stored_entries(tmp_path / "received")}
    assert set(spooled) <= stored, (sorted(set(spooled) - stored), summary)
    assert summary["rejected_total"] == 0


def _stored_entries(output: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    for index in output.glob("dev1/*/index.jsonl"):
        for line in index.read_text().splitlines():
            yield index.parent.name, json.loads(line)


def test_two_receivers_sharing_a_subscription_store_each_frame_once(
    mosquitto_broker: Broker, fleet: Fleet, clip_frames: list[Any], tmp_path: Path  # noqa: F811
) -> None:
    frames = clip_frames[:120]
    # Two identities: the broker makes the certificate CN the client id, so two receivers with one
    # certificate would take each other's session instead of sharing the load.
    receivers = [
        ReceiverThread(
            Receiver(
                fleet.receiver_config(
                    tmp_path / f"received-{n}",
                    # MQTT 3.1.1 here (5 elsewhere): shared subscriptions and sessions work on both.
                    broker=mosquitto_broker.broker_config(name, protocol="3.1.1"),
                    share_group="cloud",
                )
            )
        )
        for n, name in ((1, RECEIVER_USER), (2, RECEIVER_USER_2))
    ]
    spool = open_spool(SpoolConfig(path=tmp_path / "spool"))
    uplink = device_uplink(mosquitto_broker, spool)
    uplink.start()
    sealer = fleet.sealer("dev1")
    try:
        for masked, jpeg in frames:
            spool.put(sealer.seal(masked, jpeg))
        deadline = time.monotonic() + 60
        while (
            sum(r.receiver.summary()["stored"] for r in receivers) < len(frames) and time.monotonic() < deadline
        ):
            time.sleep(0.1)
        time.sleep(0.5)  # let any stray duplicate arrive before counting
    finally:
        uplink.stop()
        spool.close()
        summaries = []
        for r in receivers:
            r.stop.set()
            summaries.append(r.join(timeout=30))
    seqs = [[e["seq"] for _, e in _stored_entries(tmp_path / f"received-{n}")] for n in (1, 2)]
    assert all(seqs), f"the broker did not split the load: {[len(s) for s in seqs]}"
    assert not set(seqs[0]) & set(seqs[1])
    assert sorted(seqs[0] + seqs[1]) == [m.seq for m, _ in frames]
    assert all(s["rejected_total"] == 0 for s in summaries)
