"""The uplink against a real Mosquitto: QoS 1 acks drain the spool, status/LWT, chunking, ACL, bad certs.

The uplink transports opaque sealed messages, so these tests spool byte strings and check them byte for
byte at a subscriber; the sealed end-to-end path is in tests/test_e2e_mqtt.py.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from support.broker import RECEIVER_USER, Broker, mosquitto_broker  # noqa: F401

from edge_mask.config import BrokerConfig, SpoolConfig, TLSConfig, UplinkConfig
from edge_mask.core.backoff import Backoff
from edge_mask.seal.wire import Reassembler
from edge_mask.tools.uplink_bench import bench_message
from edge_mask.uplink.mqtt import connect, make_client
from edge_mask.uplink.mqtt_uplink import MqttUplink
from edge_mask.uplink.spool import Spool, open_spool


@dataclass(frozen=True)
class Blob:
    """Stands in for a SealedFrame: the spool and uplink only read these fields."""

    stream_id: bytes
    seq: int
    message: bytes


class Subscriber:
    """A receiver-side MQTT client that records every message (topic, payload, retain)."""

    def __init__(self, broker: Broker, topic: str = "edge-mask/#") -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self.lock = threading.Lock()
        self.ready = threading.Event()
        cfg = broker.broker_config(RECEIVER_USER, client_id="test-subscriber")
        self.client = make_client(cfg, "test-subscriber")
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda c, u, mid, codes, p: self.ready.set()
        self.client.on_message = self._on_message
        connect(self.client, cfg, persistent_session=False, session_expiry_s=0)
        self.client.loop_start()
        assert self.ready.wait(10), broker.log()

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))

    def on(self, suffix: str) -> list[tuple[str, bytes, bool]]:
        with self.lock:
            return [m for m in self.messages if m[0].endswith(suffix)]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def subscriber(mosquitto_broker: Broker) -> Iterator[Subscriber]:  # noqa: F811
    sub = Subscriber(mosquitto_broker)
    yield sub
    sub.close()


def blobs(n: int, size: int = 3000, stream: bytes = b"\x07" * 16) -> list[Blob]:
    """Records whose message starts with (stream, seq), where the stand-in cloud (`CloudAcker`) reads them."""
    rng = random.Random(n)
    return [Blob(stream, i, bench_message(stream, i, rng.randbytes(size))) for i in range(n)]


def uplink_for(broker: Broker, spool: Spool, device: str = "dev1", **overrides: object) -> MqttUplink:
    """An uplink with short retries. Transport tests here delete on the broker's PUBACK (`confirm = "broker"`);
    confirmation by the cloud is tested in tests/test_uplink_confirm.py."""
    settings: dict[str, object] = {
        "broker": broker.broker_config(device, protocol=str(overrides.pop("protocol", "5"))),
        "retry_min_s": 0.1,
        "retry_max_s": 0.5,
        "stats_interval_s": 0.5,
        "confirm": "broker",
    }
    settings.update(overrides)
    return MqttUplink(UplinkConfig.model_validate(settings), device, spool)


def wait_for(predicate: object, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


def test_frames_are_acked_chunked_and_reassembled(
    mosquitto_broker: Broker, subscriber: Subscriber, tmp_path: Path  # noqa: F811
) -> None:
    spool = open_spool(SpoolConfig(path=tmp_path / "spool"))
    sent = blobs(40, size=5000)
    for blob in sent:
        spool.put(blob)  # type: ignore[arg-type]
    uplink = uplink_for(mosquitto_broker, spool, max_payload=2048)
    uplink.start()
    try:
        assert wait_for(lambda: spool.stats().pending == 0), (uplink.stats(), mosquitto_broker.log())
        # Every frame was at least 3 chunks; the subscriber rebuilds them in order.
        assert wait_for(lambda: len(subscriber.on("/frames")) >= 3 * len(sent))
        uplink.publish_stats({"fps": 12.5})
        assert wait_for(lambda: any(b'"fps": 12.5' in p for _, p, _ in subscriber.on("/stats")))
        stats = json.loads(subscriber.on("/stats")[-1][1])
        assert stats["device_id"] == "dev1" and stats["spool_acked"] == len(sent) and stats["connected"]
    finally:
        uplink.stop()
    assert uplink.stats()["frames_acked"] == len(sent) and spool.stats().acked == len(sent)
    reassembler = Reassembler(max_pending_bytes=1 << 20, timeout_s=30, max_message_bytes=1 << 20)
    rebuilt = [m for _, payload, _ in subscriber.on("edge-mask/dev1/frames") if (m := reassembler.feed(payload, 0.0))]
    assert rebuilt == [b.message for b in sent]
    # Retained status: online after CONNACK, stopped on a clean exit.
    def statuses() -> list[bytes]:
        return [payload for _, payload, _ in subscriber.on("edge-mask/dev1/status")]

    assert wait_for(lambda: statuses()[-1:] == [b"stopped"], 10), statuses()
    assert statuses()[0] == b"online"
    assert not uplink.connected
    spool.close()


def test_lwt_says_offline_when_the_device_dies(mosquitto_broker: Broker, tmp_path: Path) -> None:  # noqa: F811
    spool = open_spool(SpoolConfig(path=tmp_path / "spool"))
    uplink = uplink_for(mosquitto_broker, spool, protocol="3.1.1")
    uplink.start()
    assert uplink.wait_connected(10)
    uplink.stop(clean=False)  # no DISCONNECT packet, as after kill -9
    # A subscriber arriving later sees the retained status: the broker's LWT.
    late = Subscriber(mosquitto_broker, "edge-mask/dev1/status")
    try:
        assert wait_for(lambda: bool(late.on("/status")), 10)
        assert late.on("/status")[-1][1:] == (b"offline", True)
    finally:
        late.close()
    spool.close()


def test_device_cannot_publish_to_another_devices_topic_mqtt5(
    mosquitto_broker: Broker, subscriber: Subscriber, tmp_path: Path  # noqa: F811
) -> None:
    """The ACL answers PUBACK 0x87 (not authorized); the frame is not acked and stays spooled."""
    spool = open_spool(SpoolConfig(path=tmp_path / "spool"))
    spool.put(blobs(1)[0])  # type: ignore[arg-type]
    uplink = uplink_for(mosquitto_broker, spool, topic_prefix="edge-mask/dev2")
    uplink.start()
    try:
        assert wait_for(lambda: uplink.stats()["frames_rejected"] >= 1), uplink.stats()
    finally:
        uplink.stop()
    assert spool.stats().pending == 1 and spool.stats().acked == 0
    assert subscriber.on("/frames") == []
    spool.close()


def test_device_cannot_publish_to_another_devices_topic_mqtt311(
    mosquitto_broker: Broker, subscriber: Subscriber, tmp_path: Path  # noqa: F811
) -> None:
    """MQTT 3.1.1 has no negative PUBACK: the broker acks and silently drops; nothing reaches receivers."""
    spool = open_spool(SpoolConfig(path=tmp_path / "spool"))
    for blob in blobs(3):
        spool.put(blob)  # type: ignore[arg-type]
    uplink = uplink_for(mosquitto_broker, spool, protocol="3.1.1", topic_prefix="edge-mask/dev2")
    uplink.start()
    try:
        assert wait_for(lambda: spool.stats().pending == 0)
        # A control message from the same device on its own topic proves the subscriber is listening.
        control = Blob(b"\x07" * 16, 99, b"control")
        honest = uplink_for(mosquitto_broker, open_spool(SpoolConfig(path=tmp_path / "spool2")), protocol="3.1.1")
        honest.spool.put(control)  # type: ignore[arg-type]
        honest.start()
        assert wait_for(lambda: bool(subscriber.on("edge-mask/dev1/frames")))
        honest.stop()
        honest.spool.close()
    finally:
        uplink.stop()
    assert subscriber.on("edge-mask/dev2/frames") == []
    spool.close()


def test_device_without_a_valid_certificate_cannot_connect(mosquitto_broker: Broker, tmp_path: Path) -> None:  # noqa: F811
    good = mosquitto_broker.broker_config("dev1")
    assert good.tls is not None
    # A certificate from another CA (the client trusts the real broker CA, the broker rejects the client).
    forged = good.model_copy(update={"tls": mosquitto_broker.rogue_tls("dev1")})
    spool = open_spool(SpoolConfig(path=tmp_path / "spool"))
    spool.put(blobs(1)[0])  # type: ignore[arg-type]
    uplink = MqttUplink(UplinkConfig(broker=forged, retry_min_s=0.1, retry_max_s=0.3), "dev1", spool)
    uplink.start()
    try:
        assert wait_for(lambda: uplink.stats()["connect_failures"] >= 2)
        assert not uplink.connected and uplink.stats()["connects"] == 0
    finally:
        uplink.stop()
    assert spool.stats().pending == 1
    spool.close()
    # No client certificate at all: the TLS handshake fails (require_certificate true). Control: the same
    # raw client with the broker-issued certificate gets a successful CONNACK.
    assert _raw_connack(mosquitto_broker, good.tls.ca, None, None) == []
    with_cert = _raw_connack(mosquitto_broker, good.tls.ca, good.tls.cert, good.tls.key)
    assert len(with_cert) == 1 and not with_cert[0].is_failure


def _raw_connack(broker: Broker, ca: Path, cert: Path | None, key: Path | None) -> list[Any]:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="raw", protocol=mqtt.MQTTv5)
    client.tls_set(ca_certs=str(ca), certfile=str(cert) if cert else None, keyfile=str(key) if key else None)
    connack: list[Any] = []
    client.on_connect = lambda c, u, f, rc, p: connack.append(rc)
    try:
        client.connect(broker.host, broker.port)
        for _ in range(30):
            if connack or client.loop(timeout=0.1) != mqtt.MQTT_ERR_SUCCESS:
                break
    except OSError:
        pass
    client.disconnect()
    return connack


def test_backoff_grows_with_jitter_and_resets() -> None:
    backoff = Backoff(0.5, 8.0, random.Random(1))
    delays = [backoff.next() for _ in range(12)]
    assert all(0.5 <= d <= 8.0 for d in delays)
    assert max(delays[6:]) > 2.0  # the ceiling grew
    assert len({round(d, 6) for d in delays[4:]}) == len(delays[4:])  # jittered, not a fixed ladder
    backoff.reset()
    assert backoff.next() == 0.5


def test_broker_config_for_plain_tcp_is_rejected_when_tls_files_are_missing(tmp_path: Path) -> None:
    from edge_mask.core.errors import KeyMaterialError

    cfg = BrokerConfig(tls=TLSConfig(ca=tmp_path / "ca.crt", cert=tmp_path / "d.crt", key=tmp_path / "d.key"))
    spool = open_spool(SpoolConfig(path=tmp_path / "spool"))
    with pytest.raises(KeyMaterialError, match=r"uplink\.broker\.tls\.ca"):
        MqttUplink(UplinkConfig(broker=cfg), "dev1", spool)
    spool.close()


def test_the_waker_ends_the_uplinks_wait_and_loop_once_needs_a_connection() -> None:
    """`wake()` (the pipeline, after it spooled a frame) makes the uplink's select return at once; waking
    twice before the uplink looks costs nothing, and a closed waker ignores late wakes at shutdown."""
    import select

    from edge_mask.uplink.mqtt import Waker, loop_once

    waker = Waker()
    assert select.select([waker.reader], [], [], 0)[0] == []
    waker.wake()
    waker.wake()
    assert select.select([waker.reader], [], [], 0)[0] == [waker.reader]
    waker.drain()
    assert select.select([waker.reader], [], [], 0)[0] == []
    client = make_client(BrokerConfig(host="127.0.0.1", port=1), "waker-test")
    assert loop_once(client, waker, 0.01) == mqtt.MQTT_ERR_NO_CONN  # never connected: no socket to wait on
    waker.close()
    assert waker.closed
    waker.wake()  # after close: ignored, no error


def test_a_wake_publishes_at_once_and_a_restarted_uplink_has_a_waker_of_its_own(
    mosquitto_broker: Broker, subscriber: Subscriber, tmp_path: Path, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    """With the uplink's poll stretched to a minute, a spooled frame still leaves at once when the pipeline
    wakes the uplink; after a stop and a start the new run wakes on a fresh socket pair (the old run closed
    its own), so frames keep flowing."""
    import edge_mask.uplink.mqtt_uplink as uplink_module

    monkeypatch.setattr(uplink_module, "_LOOP_TIMEOUT_S", 60.0)
    spool = open_spool(SpoolConfig(path=tmp_path / "spool"))
    uplink = uplink_for(mosquitto_broker, spool)
    sent = blobs(2)
    first_waker = None
    try:
        for run, blob in enumerate(sent):
            uplink.start()
            assert uplink.wait_connected(10), mosquitto_broker.log()
            time.sleep(0.3)  # the uplink is now waiting in select() with nothing to send
            if run == 0:
                first_waker = uplink._waker
            spool.put(blob)  # type: ignore[arg-type]
            uplink.wake()
            assert wait_for(lambda: spool.stats().pending == 0, 10), (run, uplink.stats())
            uplink.stop()
    finally:
        uplink.stop()
        spool.close()
    assert first_waker is not None and first_waker.closed and uplink._waker is not first_waker
