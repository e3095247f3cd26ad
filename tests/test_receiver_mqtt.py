"""The receiver's acknowledgements through a real Mosquitto (TLS, client certificates, the provisioned ACL).

* A receiver killed with SIGKILL between two chunks of a frame loses nothing: the chunks it held were never
  acknowledged, so the broker delivers them again to the next receiver, which stores every frame once, and
  the device hears "stored" on its ack topic.
* A receiver that cannot write (a file where a frames folder must go) acknowledges nothing, reconnects with
  a back-off, and after `max_storage_failures` stops with one line; the next receiver gets the frame again.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from support.broker import RECEIVER_USER, Broker, mosquitto_broker  # noqa: F401
from support.fleet import Fleet, make_fleet, masked_clip, masker_config

from edge_mask.config import ReceiverConfig
from edge_mask.receiver.receiver import Receiver
from edge_mask.receiver.store import StorageError
from edge_mask.seal import Ack, parse_ack
from edge_mask.seal.wire import split_message
from edge_mask.uplink import make_client, open_connection

REPO = Path(__file__).resolve().parents[1]
TOPIC = "edge-mask/dev1/frames"

# The receiver in a process of its own, so it can be killed with SIGKILL; it reports its held chunks.
DRIVER = """
import sys, threading, time
from edge_mask.config import ReceiverConfig
from edge_mask.receiver import Receiver
rx = Receiver(ReceiverConfig.model_validate_json(open(sys.argv[1]).read()), retry_max_s=1.0)
threading.Thread(target=rx.run, args=(threading.Event(),), daemon=True).start()
rx.connected.wait(30)
print("connected", flush=True)
last = None
while True:
    held = rx.summary()["held_chunks"]
    if held != last:
        print("held", held, flush=True)
        last = held
    time.sleep(0.02)
"""


@pytest.fixture(scope="module")
def clip(shared_dir: Path) -> list[tuple[Any, bytes]]:
    return list(masked_clip(masker_config(shared_dir), frames=3, step=10))


@pytest.fixture
def fleet(mosquitto_broker: Broker, tmp_path: Path) -> Fleet:  # noqa: F811
    return make_fleet(tmp_path / "fleet", devices=("dev1",))


class Device:
    """dev1's certificate: publishes chunks QoS 1 and collects the cloud's answers on its ack topic."""

    def __init__(self, broker: Broker) -> None:
        cfg = broker.broker_config("dev1")
        self.client = make_client(cfg, "dev1")
        self.answers: queue.Queue[Ack] = queue.Queue()
        self.client.on_message = lambda c, u, m: self.answers.put(parse_ack(m.payload))
        assert open_connection(self.client, cfg, persistent_session=False, session_expiry_s=0) is None
        self.client.subscribe("edge-mask/dev1/ack", qos=1)
        self.client.loop_start()

    def publish(self, payload: bytes) -> None:
        info = self.client.publish(TOPIC, payload, qos=1)
        info.wait_for_publish(10)
        assert info.is_published()

    def confirmed(self, want: set[int], timeout: float = 20.0) -> set[int]:
        got: set[int] = set()
        deadline = time.monotonic() + timeout
        while not want <= got and time.monotonic() < deadline:
            try:
                ack = self.answers.get(timeout=0.2)
            except queue.Empty:
                continue
            got |= {seq for ranges in ack.stored.values() for a, b in ranges for seq in range(a, b + 1)}
        return got

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class InProcess:
    def __init__(self, receiver: Receiver) -> None:
        self.receiver = receiver
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.receiver.run(self.stop)
        except BaseException as exc:  # handed to the test thread
            self.error = exc

    def wait_stored(self, count: int, timeout: float = 30.0) -> int:
        deadline = time.monotonic() + timeout
        while self.receiver.summary()["stored"] < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return int(self.receiver.summary()["stored"])

    def join(self) -> None:
        self.stop.set()
        self.thread.join(15)


def receiver_config(fleet: Fleet, broker: Broker, output: Path, **settings: Any) -> ReceiverConfig:
    return fleet.receiver_config(output, broker=broker.broker_config(RECEIVER_USER, client_id="cloud-1"), **settings)


def test_a_receiver_killed_between_two_chunks_loses_nothing(
    mosquitto_broker: Broker, fleet: Fleet, clip: list[Any], tmp_path: Path  # noqa: F811
) -> None:
    cfg = receiver_config(fleet, mosquitto_broker, tmp_path / "received")
    config = tmp_path / "receiver.json"
    config.write_text(cfg.model_dump_json())
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, str(config)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x.strip()) for x in proc.stdout or []], daemon=True).start()

    def wait_line(text: str, timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if lines.get(timeout=0.2) == text:
                    return True
            except queue.Empty:
                pass
        return False

    device = Device(mosquitto_broker)
    sealer = fleet.sealer("dev1")
    frames = [sealer.seal(masked, jpeg) for masked, jpeg in clip]
    chunked = [split_message(f.message, 8192) for f in frames]
    assert all(len(c) >= 2 for c in chunked)
    second = None
    try:
        assert wait_line("connected"), proc.stderr.read() if proc.stderr else ""
        for chunks in chunked:  # every chunk but the last of each frame: three frames half there
            for chunk in chunks[:-1]:
                device.publish(chunk)
        held = sum(len(c) - 1 for c in chunked)
        assert wait_line(f"held {held}"), "the receiver did not hold the chunks"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        second = InProcess(Receiver(cfg, retry_max_s=1.0))
        assert second.receiver.connected.wait(15)
        for chunks in chunked:
            device.publish(chunks[-1])
        assert second.wait_stored(len(frames)) == len(frames), second.receiver.summary()
        seqs = {f.seq for f in frames}
        assert device.confirmed(seqs) >= seqs  # the device hears "stored" for each (the ACL lets the receiver)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if second is not None:
            second.join()
        device.close()
    (index,) = (tmp_path / "received").glob("dev1/*/index.jsonl")
    stored = [json.loads(line)["seq"] for line in index.read_text().splitlines()]
    assert sorted(stored) == sorted(f.seq for f in frames)  # each frame once


def test_a_storage_failure_is_not_acknowledged_and_stops_the_receiver_after_repeated_failures(
    mosquitto_broker: Broker, fleet: Fleet, clip: list[Any], tmp_path: Path  # noqa: F811
) -> None:
    cfg = receiver_config(fleet, mosquitto_broker, tmp_path / "received", max_storage_failures=2)
    frame = fleet.sealer("dev1").seal(*clip[0])
    blocker = cfg.output_dir / "dev1" / frame.stream_id.hex() / "frames"
    blocker.parent.mkdir(parents=True)
    blocker.write_bytes(b"")  # every write below the frames folder fails
    device = Device(mosquitto_broker)
    first = InProcess(Receiver(cfg, retry_max_s=0.5))
    try:
        assert first.receiver.connected.wait(15)
        device.publish(split_message(frame.message, 1 << 20)[0])
        first.thread.join(30)
        assert not first.thread.is_alive() and isinstance(first.error, StorageError), first.error
        assert "output_dir" in str(first.error) and "\n" not in str(first.error)
        assert first.receiver.counts["storage_errors"] == 2  # delivered again after the reconnect
        blocker.unlink()
        second = InProcess(Receiver(cfg, retry_max_s=0.5))
        try:
            assert second.wait_stored(1) == 1, second.receiver.summary()
            assert frame.seq in device.confirmed({frame.seq})
        finally:
            second.join()
    finally:
        first.join()
        device.close()


def test_the_receiver_asks_for_a_receive_maximum_above_what_it_holds(
    mosquitto_broker: Broker, fleet: Fleet, tmp_path: Path  # noqa: F811
) -> None:
    cfg = receiver_config(fleet, mosquitto_broker, tmp_path / "received")
    sent: list[Any] = []
    client = make_client(cfg.broker, "cloud-1")
    client.on_log = lambda c, u, level, text: sent.append(text)
    assert open_connection(client, cfg.broker, persistent_session=True, session_expiry_s=60,
                           receive_maximum=cfg.receive_maximum) is None
    client.disconnect()
    assert cfg.max_pending_chunks < cfg.receive_maximum
    connect = [line for line in sent if line.startswith("Sending CONNECT")]
    assert connect and "ReceiveMaximum" in connect[0] and str(cfg.receive_maximum) in connect[0], sent
