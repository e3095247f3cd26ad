"""The embedded broker, tested with real paho clients over mutual TLS (MQTT 3.1.1 and 5).

What matters for the demo: QoS 1 delivery with acknowledgements, the certificate CN as identity, the
per-device write ACL, `$share` round-robin, retained and will messages, persistent sessions, and that
malformed bytes close one connection without taking the broker down.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_mask.provision import pki
from edge_mask.tools.minibroker import MiniBroker
from edge_mask.tools.minibroker_codec import topic_matches, valid_filter

RECEIVER = "cloud-receiver"


@dataclass
class Env:
    dir: Path
    ca: pki.CA
    broker: MiniBroker
    certs: dict[str, pki.IssuedFiles] = field(default_factory=dict)

    def cert(self, name: str) -> pki.IssuedFiles:
        if name not in self.certs:
            self.certs[name] = pki.make_client_cert(self.ca, self.dir / name, name, "client")
        return self.certs[name]


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    ca = pki.create_ca(tmp_path / "ca")
    server = pki.make_server_cert(ca, tmp_path / "server", "localhost")
    broker = MiniBroker(cafile=ca.cert_path, certfile=server.cert, keyfile=server.key, readers=(RECEIVER,))
    broker.start()
    try:
        yield Env(tmp_path, ca, broker)
    finally:
        broker.stop()


class Client:
    """A paho client that records messages and acknowledgements."""

    def __init__(self, env: Env, name: str, client_id: str, v5: bool = True, clean: bool = True,
                 will: tuple[str, bytes] | None = None, expiry: int = 0) -> None:
        files = env.cert(name)
        kwargs = {"protocol": mqtt.MQTTv5} if v5 else {"protocol": mqtt.MQTTv311, "clean_session": clean}
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, **kwargs)  # type: ignore[arg-type]
        self.c.tls_set(ca_certs=str(env.ca.cert_path), certfile=str(files.cert), keyfile=str(files.key))
        if will:
            self.c.will_set(will[0], will[1], qos=1, retain=True)
        self.messages: list[tuple[str, bytes, bool]] = []
        self.acks: dict[int, int] = {}
        self.connected = threading.Event()
        self.connack: object = None
        self.c.on_connect = self._on_connect
        self.c.on_message = lambda c, u, m: self.messages.append((m.topic, m.payload, bool(m.retain)))
        self.c.on_publish = lambda c, u, mid, rc, p: self.acks.__setitem__(mid, getattr(rc, "value", 0))
        props = None
        if v5 and expiry:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = expiry
        if v5:
            self.c.connect("localhost", env.broker.port, keepalive=10, clean_start=clean, properties=props)
        else:
            self.c.connect("localhost", env.broker.port, keepalive=10)
        self.c.loop_start()
        assert self.connected.wait(10), "no CONNACK"

    def _on_connect(self, c: object, u: object, flags: object, rc: object, p: object) -> None:
        self.connack = rc
        self.connected.set()

    def subscribe(self, flt: str) -> None:
        done = threading.Event()
        self.c.on_subscribe = lambda *a: done.set()
        self.c.subscribe(flt, qos=1)
        assert done.wait(10)

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> int:
        info = self.c.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(10)
        return self.acks.get(info.mid, -1)

    def stop(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def wait_for(predicate: object, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.02)
    return False


@pytest.mark.parametrize("v5", [True, False], ids=["mqtt5", "mqtt311"])
def test_qos1_delivery_and_per_device_acl(env: Env, v5: bool) -> None:
    receiver = Client(env, RECEIVER, "r", v5=v5)
    receiver.subscribe("edge-mask/+/frames/#")
    device = Client(env, "cam-1", "cam-1", v5=v5)
    payloads = [bytes([i]) * (1000 + i) for i in range(20)]
    for i, p in enumerate(payloads):
        assert device.publish(f"edge-mask/cam-1/frames/main/{i}", p) == 0
    # the ACL: cam-1 may not write under cam-2; MQTT 5 says so in the PUBACK (0x87 not authorized)
    code = device.publish("edge-mask/cam-2/frames/main/0", b"forged")
    assert code == (0x87 if v5 else 0)
    assert wait_for(lambda: len(receiver.messages) >= 20)
    time.sleep(0.2)
    assert [m[1] for m in receiver.messages] == payloads
    assert all(topic.startswith("edge-mask/cam-1/") for topic, _, _ in receiver.messages)
    assert env.broker.counters["denied"] == 1
    # a device cannot read other devices' topics: its subscription to everything is refused
    device.subscribe("edge-mask/#")
    device.publish("edge-mask/cam-1/frames/main/99", b"x")
    assert wait_for(lambda: len(receiver.messages) == 21)
    assert device.messages == []
    device.stop()
    receiver.stop()


def test_certificate_from_another_ca_is_refused(env: Env, tmp_path: Path) -> None:
    other = pki.create_ca(tmp_path / "other-ca")
    rogue = pki.make_client_cert(other, tmp_path / "rogue", "cam-1", "client")
    ctx = ssl.create_default_context(cafile=str(env.ca.cert_path))
    ctx.load_cert_chain(str(rogue.cert), str(rogue.key))
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        with socket.create_connection(("127.0.0.1", env.broker.port), timeout=5) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(b"\x10\x00")  # TLS 1.3 reports the refused client certificate on first read
                if not tls.recv(1):
                    raise ConnectionError("closed by the broker")
    assert env.broker.counters["connects"] == 0


def test_shared_subscription_round_robin(env: Env) -> None:
    a = Client(env, RECEIVER, "ra")
    b = Client(env, RECEIVER, "rb", v5=False)
    a.subscribe("$share/g/edge-mask/+/frames/#")
    b.subscribe("$share/g/edge-mask/+/frames/#")
    device = Client(env, "cam-1", "cam-1")
    for i in range(10):
        device.publish(f"edge-mask/cam-1/frames/main/{i}", str(i).encode())
    assert wait_for(lambda: len(a.messages) + len(b.messages) >= 10)
    time.sleep(0.2)
    got = sorted(int(m[1]) for m in a.messages + b.messages)
    assert got == list(range(10))  # each message once, to one member
    assert a.messages and b.messages  # and both members got some
    for c in (a, b, device):
        c.stop()


def test_will_and_retained_status(env: Env) -> None:
    device = Client(env, "cam-1", "cam-1", will=("edge-mask/cam-1/status", b"offline"))
    device.publish("edge-mask/cam-1/status", b"online", retain=True)
    late = Client(env, RECEIVER, "r1")
    late.subscribe("edge-mask/+/status")
    assert wait_for(lambda: late.messages == [("edge-mask/cam-1/status", b"online", True)])
    device.c.socket().close()  # an abrupt loss: the broker publishes the will
    assert wait_for(lambda: any(m[1] == b"offline" for m in late.messages))
    device.c.loop_stop()
    again = Client(env, RECEIVER, "r2")
    again.subscribe("edge-mask/cam-1/status")
    assert wait_for(lambda: again.messages == [("edge-mask/cam-1/status", b"offline", True)])
    late.stop()
    again.stop()


def test_persistent_session_queues_while_receiver_is_away(env: Env) -> None:
    receiver = Client(env, RECEIVER, "r", clean=False, expiry=3600)
    receiver.subscribe("edge-mask/+/frames/#")
    receiver.stop()
    device = Client(env, "cam-1", "cam-1")
    for i in range(5):
        assert device.publish(f"edge-mask/cam-1/frames/main/{i}", str(i).encode()) == 0
    back = Client(env, RECEIVER, "r", clean=False, expiry=3600)
    assert wait_for(lambda: len(back.messages) >= 5)
    assert [m[1] for m in back.messages] == [b"0", b"1", b"2", b"3", b"4"]
    device.stop()
    back.stop()


def test_malformed_input_closes_one_connection_only(env: Env) -> None:
    files = env.cert("cam-9")
    ctx = ssl.create_default_context(cafile=str(env.ca.cert_path))
    ctx.load_cert_chain(str(files.cert), str(files.key))
    garbage = [
        b"\xff\xff\xff\xff\xff",  # remaining length longer than 4 bytes
        b"\x30\x04\x00\x10ab",  # PUBLISH before CONNECT (with a truncated topic)
        b"\x10\xff\xff\xff\x7f",  # a 256 MB CONNECT: refused by the size bound before reading it
        b"\x10\x0c\x00\x04MQTT\x09\x02\x00\x3c\x00\x00",  # unknown protocol level
        b"\x10\x0c\x00\x04MQTT\x05\x02\x00\x3c\x05\x99",  # MQTT 5 with a bogus property
    ]
    for data in garbage:
        with socket.create_connection(("127.0.0.1", env.broker.port), timeout=5) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(data)
                tls.settimeout(5)
                try:
                    assert tls.recv(100) == b""  # closed without an answer
                except (ConnectionError, ssl.SSLError):
                    pass
    receiver = Client(env, RECEIVER, "r")  # still serving
    receiver.subscribe("edge-mask/#")
    device = Client(env, "cam-1", "cam-1")
    assert device.publish("edge-mask/cam-1/frames/x", b"ok") == 0
    assert wait_for(lambda: receiver.messages == [("edge-mask/cam-1/frames/x", b"ok", False)])
    device.stop()
    receiver.stop()


def test_topic_matching_rules() -> None:
    assert topic_matches("edge-mask/+/frames/#", "edge-mask/cam-1/frames/main/1")
    assert topic_matches("edge-mask/#", "edge-mask")
    assert not topic_matches("edge-mask/+/frames/#", "edge-mask/cam-1/status")
    assert not topic_matches("#", "$SYS/broker")
    assert not valid_filter("edge-mask/#/x") and not valid_filter("a+/b") and valid_filter("+/+/#")
