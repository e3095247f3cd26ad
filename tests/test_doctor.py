"""`edge-mask doctor`: one line per check, real checks, non-zero exit when anything fails.

A healthy device (real clip as the camera, the real model, provisioned keys, a real TLS Mosquitto) passes
every check; then each fault a technician meets in the field is introduced and must show up as a FAIL
line with its fix: a world-readable private key, an expired certificate, a broker that is down, a camera
that is not there.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from support.broker import Broker, free_port, mosquitto_broker  # noqa: F401
from support.fleet import make_fleet

from edge_mask.cli import main
from edge_mask.service.doctor import Check, run_checks


def write_config(tmp_path: Path, shared_dir: Path, broker: Broker, **overrides: Any) -> Path:
    fleet = make_fleet(tmp_path / "fleet", devices=("dev1",))
    tls = broker.client_tls("dev1")
    settings: dict[str, Any] = {
        "camera_source": shared_dir / "data" / "video" / "short_hamilton_clip.mp4",
        "model": shared_dir / "models" / "face_detection_yunet_2023mar.onnx",
        "port": broker.port,
        "ca": tls.ca,
        "cert": tls.cert,
        "key": tls.key,
        "signing_key": fleet.signing_keys["dev1"],
        "recipient": fleet.recipient_pub,
        **overrides,
    }
    path = tmp_path / "edge.toml"
    path.write_text(
        f"""device_id = "dev1"
[camera]
type = "opencv"
source = "{settings['camera_source']}"
[detector]
type = "onnx"
model = "{settings['model']}"
precision = "fp32"
[seal]
recipient_public_key = "{settings['recipient']}"
signing_key = "{settings['signing_key']}"
[spool]
path = "{tmp_path / 'spool'}"
max_bytes = 1048576
[uplink.broker]
host = "127.0.0.1"
port = {settings['port']}
connect_timeout_s = 3.0
[uplink.broker.tls]
ca = "{settings['ca']}"
cert = "{settings['cert']}"
key = "{settings['key']}"
"""
    )
    return path


def test_healthy_device_passes_every_check(
    shared_dir: Path, mosquitto_broker: Broker, tmp_path: Path, capsys: pytest.CaptureFixture[str]  # noqa: F811
) -> None:
    config = write_config(tmp_path, shared_dir, mosquitto_broker)
    assert main(["doctor", "--config", str(config)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert all(line.startswith("OK") for line in lines[:-1]), lines
    text = "\n".join(lines)
    for expected in ("camera: opencv:", "yields 640x360 frames", "model: ", "verified", "keys: recipient public key",
                     "mode 0600", "tls: client certificate", "broker: connected to 127.0.0.1", "over TLS",
                     "spool: ", "clock: "):
        assert expected in text, (expected, text)
    assert lines[-1].endswith(" 0 FAIL")


def test_faults_are_reported_one_line_each_with_the_fix(
    shared_dir: Path, mosquitto_broker: Broker, tmp_path: Path, capsys: pytest.CaptureFixture[str]  # noqa: F811
) -> None:
    expired = tmp_path / "expired.crt"
    _write_expired_cert(expired)
    config = write_config(
        tmp_path, shared_dir, mosquitto_broker, cert=expired, camera_source=tmp_path / "gone.mp4", port=free_port()
    )
    from edge_mask.config import EdgeConfig, load_config

    cfg = load_config(config, EdgeConfig)
    os.chmod(cfg.seal.signing_key, 0o644)
    assert main(["doctor", "--config", str(config)]) == 1
    out = capsys.readouterr().out
    fails = [line for line in out.splitlines() if line.startswith("FAIL")]
    assert any("camera:" in f and "no such video file" in f for f in fails), out
    assert any("keys:" in f and "mode 0644" in f and f"chmod 600 {cfg.seal.signing_key}" in f for f in fails), out
    assert any("tls:" in f and "expired on" in f and "issue a new certificate" in f for f in fails), out
    assert any("broker:" in f and "fix:" in f for f in fails), out
    assert "model: " in out and "clock: " in out  # the other checks still ran
    assert "Traceback" not in out


def test_a_crashing_check_becomes_a_fail_line(shared_dir: Path, tmp_path: Path) -> None:
    from edge_mask.config import EdgeConfig, validate_config

    cfg = validate_config({"device_id": "dev1", "detector": {"model": "no-such-model-id"},
                           "models": {"cache_dir": str(tmp_path)}}, EdgeConfig)
    (result,) = run_checks(cfg, ("model",))
    assert isinstance(result, Check) and not result.ok and result.line().startswith("FAIL model:")


def _write_expired_cert(path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dev1")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=30)).not_valid_after(now - dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def test_broker_down_is_a_fail_line(
    shared_dir: Path, mosquitto_broker: Broker, tmp_path: Path  # noqa: F811
) -> None:
    from edge_mask.config import EdgeConfig, load_config

    cfg = load_config(write_config(tmp_path, shared_dir, mosquitto_broker), EdgeConfig)
    (up,) = run_checks(cfg, ("broker",))
    mosquitto_broker.stop()
    (down,) = run_checks(cfg, ("broker",))
    assert up.ok and not down.ok
    assert down.line().startswith("FAIL broker: cannot reach 127.0.0.1:") and "fix: check uplink.broker" in down.line()
