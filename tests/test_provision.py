"""`edge-mask provision`: bundles that load, chain to the CA, keep secrets secret, and work with real Mosquitto."""

from __future__ import annotations

import os
import shutil
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

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
    assert "reserved for the receiver" in error(
        ["provision", "device", "cloud-receiver", "--ca", "ca", "--recipient", "cloud/recipient.pub"])
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
            messages: list[tuple[str, bytes]] | None = None) -> tuple[mqtt.Client, object]:
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
    client.connect("localhost", port, keepalive=10)
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
