"""`edge-mask provision`: bundles that load, chain to the CA, keep secrets secret, and work with real Mosquitto."""

from __future__ import annotations

import os
import shutil
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_mask.cli import main
from edge_mask.config import EdgeConfig, ReceiverConfig, load_config
from edge_mask.provision import pki
from edge_mask.provision.enroll import mosquitto_path
from edge_mask.seal import keys
from edge_mask.tools.broker import Mosquitto, free_port


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def clinic(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Path:
    """A CA, a recipient/receiver bundle, one device and a broker bundle, made through the CLI."""
    monkeypatch.chdir(tmp_path)
    port = free_port()
    user = pki_user()
    assert main(["provision", "ca", "ca"]) == 0
    assert main(["provision", "recipient", "cloud", "--ca", "ca", "--broker-host", "127.0.0.1",
                 "--broker-port", str(port)]) == 0
    assert main(["provision", "device", "cam-01", "--ca", "ca", "--recipient", "cloud/recipient.pub",
                 "--devices", "cloud/devices", "--broker-host", "127.0.0.1", "--broker-port", str(port)]) == 0
    assert main(["provision", "broker", "--ca", "ca", "--host", "localhost", "--port", str(port),
                 "--bind", "127.0.0.1", "--user", user]) == 0
    out = capsys.readouterr().out
    for secret in ("ca/ca.key", "cloud/recipient.key", "cloud/receiver.key", "cam-01/device.key",
                   "cam-01/device-signing.key", "broker/broker.key"):
        pem = (tmp_path / secret).read_text()
        body = "".join(pem.splitlines()[1:-1])
        assert body[:40] not in out, f"{secret} was printed"
        assert _mode(tmp_path / secret) == 0o600, secret
    return tmp_path


def pki_user() -> str:
    import pwd

    return pwd.getpwuid(os.geteuid()).pw_name


def test_bundles_load_and_chain(clinic: Path) -> None:
    for folder in ("ca", "cloud", "cam-01", "broker", "cloud/devices"):
        assert _mode(clinic / folder) == 0o700, folder
    cfg = load_config(clinic / "cam-01" / "config.toml", EdgeConfig)
    assert cfg.device_id == "cam-01"
    assert cfg.uplink.broker.tls is not None
    assert cfg.uplink.broker.tls.cert == clinic / "cam-01" / "device.crt"  # relative paths, resolved to the bundle
    assert cfg.seal.signing_key == clinic / "cam-01" / "device-signing.key"
    for cert in ("cam-01/device.crt", "cloud/receiver.crt", "broker/broker.crt"):
        pki.verify_issued_by(clinic / cert, clinic / "ca" / "ca.crt")
    # the enrollment record names the device's certificate and signing key
    registry = keys.load_device_registry(clinic / "cloud" / "devices")
    record = registry["cam-01"]
    assert record.cert_fingerprint_sha256 == pki.fingerprint(pki.load_certificate(clinic / "cam-01" / "device.crt"))
    signing = keys.load_signing_key(clinic / "cam-01" / "device-signing.key")
    assert record.signing_public_key.public_bytes_raw() == signing.public_key().public_bytes_raw()
    # the device got the recipient's public key only
    assert (clinic / "cam-01" / "recipient.pub").read_bytes() == (clinic / "cloud" / "recipient.pub").read_bytes()
    assert not (clinic / "cam-01" / "recipient.key").exists()
    rcfg = load_config(clinic / "cloud" / "receiver.toml", ReceiverConfig)
    assert rcfg.recipient_private_key == clinic / "cloud" / "recipient.key"
    assert rcfg.devices_dir == clinic / "cloud" / "devices"


def test_refuses_to_overwrite_and_force_replaces(clinic: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = (clinic / "cam-01" / "device.crt").read_bytes()
    key_before = (clinic / "cam-01" / "device.key").read_bytes()
    args = ["provision", "device", "cam-01", "--ca", "ca", "--recipient", "cloud/recipient.pub",
            "--devices", "cloud/devices"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "already exists; pass --force" in err and err.count("\n") == 1
    assert (clinic / "cam-01" / "device.crt").read_bytes() == before
    assert (clinic / "cam-01" / "device.key").read_bytes() == key_before
    assert main(["provision", "recipient", "cloud"]) == 2
    assert main(["provision", "ca", "ca"]) == 2
    assert main([*args, "--force"]) == 0
    assert (clinic / "cam-01" / "device.crt").read_bytes() != before
    assert _mode(clinic / "cam-01" / "device.key") == 0o600


def test_clear_errors(clinic: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def error(args: list[str]) -> str:
        assert main(args) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1, lines
        return lines[0]

    assert "CA directory not found; create it with `edge-mask provision ca" in error(
        ["provision", "device", "cam-02", "--ca", "missing", "--recipient", "cloud/recipient.pub"])
    assert "expected the recipient public key" in error(
        ["provision", "device", "cam-02", "--ca", "ca", "--recipient", "cloud/recipient.key"])
    assert "reserved for receivers" in error(
        ["provision", "device", "cloud-receiver", "--ca", "ca", "--recipient", "cloud/recipient.pub"])
    assert "reserved for receivers" in error(
        ["provision", "device", "cloud-receiver-2", "--ca", "ca", "--recipient", "cloud/recipient.pub"])
    # one CN, one role: a receiver named like an enrolled device would hand the device a receiver's rights
    assert "already issued by this CA as a device" in error(
        ["provision", "recipient", "cloud-2", "--ca", "ca", "--name", "cam-01"])
    # a CA whose key is not ECDSA P-256
    shutil.copytree(clinic / "ca", clinic / "bad-ca")
    shutil.copy(clinic / "cam-01" / "device-signing.key", clinic / "bad-ca" / "ca.key")
    assert "wrong key type (Ed25519)" in error(["provision", "broker", "--ca", "bad-ca", "--host", "x"])
    assert not (clinic / "cam-02").exists()  # nothing half-written after an error


def test_expired_ca_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    ca = pki.create_ca(tmp_path / "ca")
    past = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=400)
    old = (
        x509.CertificateBuilder().subject_name(ca.cert.subject).issuer_name(ca.cert.subject)
        .public_key(ca.key.public_key()).serial_number(7).not_valid_before(past)
        .not_valid_after(past + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca.key, hashes.SHA256())
    )
    ca.cert_path.write_bytes(old.public_bytes(serialization.Encoding.PEM))
    assert main(["provision", "broker", "--ca", str(tmp_path / "ca"), "--host", "x", "--out",
                 str(tmp_path / "b")]) == 2
    assert "certificate expired on" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ real Mosquitto


@pytest.fixture
def mosquitto(clinic: Path) -> Iterator[int]:
    """The broker exactly as `edge-mask provision broker` configured it, on the port the device was given."""
    if mosquitto_path() is None:
        pytest.skip("mosquitto is not installed (apt-get install -y mosquitto)")
    port = load_config(clinic / "cam-01" / "config.toml", EdgeConfig).uplink.broker.port
    with Mosquitto(clinic / "broker" / "mosquitto.conf", port):
        yield port


def _client(clinic: Path, port: int, cert: str, key: str, client_id: str,
            messages: list[tuple[str, bytes]] | None = None, *, disconnects: list[object] | None = None,
            persistent: bool = False) -> tuple[mqtt.Client, object]:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    client.tls_set(ca_certs=str(clinic / "ca" / "ca.crt"), certfile=str(clinic / cert), keyfile=str(clinic / key))
    result: dict[str, object] = {}
    done = threading.Event()

    def on_connect(c: object, u: object, flags: object, rc: object, props: object) -> None:
        result["rc"] = rc
        done.set()

    client.on_connect = on_connect
    if messages is not None:
        client.on_message = lambda c, u, m: messages.append((m.topic, m.payload))
    if disconnects is not None:
        client.on_disconnect = lambda c, u, flags, rc, props: disconnects.append(rc)
    props = None
    if persistent:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 3600
    client.connect("localhost", port, keepalive=10, clean_start=not persistent, properties=props)
    client.loop_start()
    assert done.wait(10), "no CONNACK"
    return client, result["rc"]


def test_provisioned_device_works_with_real_mosquitto(clinic: Path, mosquitto: int) -> None:
    received: list[tuple[str, bytes]] = []
    receiver, rc = _client(clinic, mosquitto, "cloud/receiver.crt", "cloud/receiver.key", "rx", received)
    assert not getattr(rc, "is_failure", True)
    subscribed = threading.Event()
    receiver.on_subscribe = lambda *a: subscribed.set()
    # a shared subscription: Mosquitto checks its ACL against the filter without `$share/<group>/`
    receiver.subscribe("$share/receivers/edge-mask/+/frames/#", qos=1)
    assert subscribed.wait(10)
    device, rc = _client(clinic, mosquitto, "cam-01/device.crt", "cam-01/device.key", "cam-01")
    assert not getattr(rc, "is_failure", True)
    device.publish("edge-mask/cam-02/frames/main/1", b"forged", qos=1).wait_for_publish(10)
    device.publish("edge-mask/cam-01/frames/main/1", b"genuine", qos=1).wait_for_publish(10)
    deadline = time.monotonic() + 10
    while not received and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    assert received == [("edge-mask/cam-01/frames/main/1", b"genuine")]  # the forged one never arrived
    for c in (device, receiver):
        c.disconnect()
        c.loop_stop()


def test_device_signed_by_another_ca_is_refused_by_mosquitto(clinic: Path, mosquitto: int) -> None:
    other = pki.create_ca(clinic / "other-ca")
    rogue = pki.make_device_cert(other, clinic / "rogue", "cam-01")
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="cam-01", protocol=mqtt.MQTTv5)
    client.tls_set(ca_certs=str(clinic / "ca" / "ca.crt"), certfile=str(rogue.cert), keyfile=str(rogue.key))
    connected = threading.Event()
    client.on_connect = lambda *a: connected.set()
    try:
        client.connect("localhost", mosquitto, keepalive=10)
        client.loop_start()
        refused = not connected.wait(3)
    except (OSError, ValueError):
        refused = True
    finally:
        client.loop_stop()
    assert refused


def _wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.05)
    return predicate()


def _subscribe(client: mqtt.Client, topic: str) -> object:
    """Subscribe and return the SUBACK reason code (0x87 when the ACL refuses the filter)."""
    codes: list[object] = []
    client.on_subscribe = lambda c, u, mid, rcs, props: codes.extend(rcs)
    client.subscribe(topic, qos=1)
    assert _wait_for(lambda: bool(codes)), f"no SUBACK for {topic}"
    return codes[0]


def _stop(*clients: mqtt.Client) -> None:
    for c in clients:
        c.disconnect()
        c.loop_stop()


def _second_device(clinic: Path) -> tuple[str, str]:
    issued = pki.make_device_cert(pki.load_ca(clinic / "ca"), clinic / "cam-02", "cam-02")
    return str(issued.cert.relative_to(clinic)), str(issued.key.relative_to(clinic))


def test_client_id_is_the_certificate_cn_so_no_device_takes_another_session(clinic: Path, mosquitto: int) -> None:
    """`use_username_as_clientid`: whatever id a client asks for, Mosquitto names it by its certificate CN."""
    log_file = clinic / "broker" / "mosquitto.log"
    cam02_cert, cam02_key = _second_device(clinic)
    # The receiver holds a persistent session and goes away: the broker queues frames for it.
    received: list[tuple[str, bytes]] = []
    rx_drops: list[object] = []
    receiver, _ = _client(clinic, mosquitto, "cloud/receiver.crt", "cloud/receiver.key", "anything", received,
                          disconnects=rx_drops, persistent=True)
    assert not getattr(_subscribe(receiver, "edge-mask/+/frames/#"), "is_failure", True)
    _stop(receiver)
    cam02_drops: list[object] = []
    cam02, _ = _client(clinic, mosquitto, cam02_cert, cam02_key, "cam-02", disconnects=cam02_drops)
    cam02.publish("edge-mask/cam-02/frames/main/1", b"queued", qos=1).wait_for_publish(10)
    # cam-01 asks for the receiver's id (to drain its queue) and then for cam-02's (to kick it off).
    stolen: list[tuple[str, bytes]] = []
    thief, _ = _client(clinic, mosquitto, "cam-01/device.crt", "cam-01/device.key", "cloud-receiver", stolen,
                       persistent=True)
    _subscribe(thief, "edge-mask/+/frames/#")  # Mosquitto grants a wildcard and filters each message by ACL
    thief2, _ = _client(clinic, mosquitto, "cam-01/device.crt", "cam-01/device.key", "cam-02")
    time.sleep(0.5)
    assert stolen == [] and cam02_drops == [] and cam02.is_connected()
    # The receiver comes back to its own session: the queued frame is there, and it keeps receiving.
    receiver, _ = _client(clinic, mosquitto, "cloud/receiver.crt", "cloud/receiver.key", "cloud-receiver", received,
                          disconnects=rx_drops, persistent=True)
    assert _wait_for(lambda: len(received) == 1), received
    thief3, _ = _client(clinic, mosquitto, "cam-01/device.crt", "cam-01/device.key", "cloud-receiver")
    cam02.publish("edge-mask/cam-02/frames/main/2", b"live", qos=1).wait_for_publish(10)
    assert _wait_for(lambda: len(received) == 2), received
    time.sleep(0.3)
    assert [p for _, p in received] == [b"queued", b"live"]
    assert len(rx_drops) == 1, rx_drops  # only our own disconnect above; no takeover of the live session
    assert cam02_drops == [] and stolen == []
    broker_log = log_file.read_text()
    assert broker_log.count(" as cloud-receiver (") == 2, broker_log  # our two connections, no third
    # every cam-01 connection is named by its CN (3 or more: each takes over the last cam-01 session, and
    # paho's loop reconnects a client that was taken over)
    assert broker_log.count(" as cam-01 (") >= 3, broker_log
    assert "Client cloud-receiver already connected" not in broker_log
    assert "Client cam-02 already connected" not in broker_log
    _stop(receiver, cam02, thief, thief2, thief3)


def test_only_the_receiver_may_write_ack_topics(clinic: Path, mosquitto: int) -> None:
    """A device cannot forge an ack (its own or another's); the receiver's ack reaches that device only."""
    cam02_cert, cam02_key = _second_device(clinic)
    at_receiver: list[tuple[str, bytes]] = []
    at_cam01: list[tuple[str, bytes]] = []
    at_cam02: list[tuple[str, bytes]] = []
    receiver, _ = _client(clinic, mosquitto, "cloud/receiver.crt", "cloud/receiver.key", "rx", at_receiver)
    assert not getattr(_subscribe(receiver, "edge-mask/+/ack"), "is_failure", True)
    cam01, _ = _client(clinic, mosquitto, "cam-01/device.crt", "cam-01/device.key", "cam-01", at_cam01)
    assert not getattr(_subscribe(cam01, "edge-mask/cam-01/ack"), "is_failure", True)
    cam02, _ = _client(clinic, mosquitto, cam02_cert, cam02_key, "cam-02", at_cam02)
    assert not getattr(_subscribe(cam02, "edge-mask/cam-02/#"), "is_failure", True)
    # Mosquitto 2.0 grants these subscriptions and applies the read ACL to each message it would deliver.
    _subscribe(cam02, "edge-mask/cam-01/ack")
    _subscribe(cam02, "edge-mask/+/ack")
    pubacks: list[object] = []
    cam02.on_publish = lambda c, u, mid, rc, props: pubacks.append(rc)
    for topic in ("edge-mask/cam-02/ack", "edge-mask/cam-01/ack"):  # its own ack, then another device's
        cam02.publish(topic, b'{"v":1}', qos=1).wait_for_publish(10)
    cam01.publish("edge-mask/cam-01/status", b"online", qos=1).wait_for_publish(10)  # a device's own topics
    cam01.publish("edge-mask/cam-01/stats", b"{}", qos=1).wait_for_publish(10)
    receiver.publish("edge-mask/cam-01/ack", b"stored", qos=1).wait_for_publish(10)
    assert _wait_for(lambda: len(at_cam01) == 1 and len(at_receiver) == 1), (at_cam01, at_receiver)
    time.sleep(0.5)  # let anything forged or misrouted arrive before counting
    assert at_cam01 == [("edge-mask/cam-01/ack", b"stored")]
    assert at_receiver == [("edge-mask/cam-01/ack", b"stored")]  # nothing cam-02 wrote got through
    assert at_cam02 == []  # cam-02 sees neither its own forged ack nor cam-01's real one
    assert [getattr(rc, "value", rc) for rc in pubacks] == [0x87, 0x87]  # MQTT 5: not authorized
    _stop(receiver, cam01, cam02)
