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
    for expected in ("camera: opencv:", "yields 640x360 frames",
                     "faces: faces from about 10 px wide are found in 640x360", "model: ", "verified",
                     "keys: recipient public key",
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
    _cert(path, path.with_name(path.name + ".key"), days_before=30, days_after=-1)


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


def test_doctor_does_not_take_over_a_running_services_broker_session(
    shared_dir: Path, mosquitto_broker: Broker, tmp_path: Path  # noqa: F811
) -> None:
    """The broker makes the certificate's CN the client id: doctor's own connection would kick the service."""
    from edge_mask.config import EdgeConfig, load_config
    from edge_mask.uplink import open_spool

    cfg = load_config(write_config(tmp_path, shared_dir, mosquitto_broker), EdgeConfig)
    spool = open_spool(cfg.spool)  # what the running service holds
    try:
        (line,) = run_checks(cfg, ("broker",))
    finally:
        spool.close()
    assert line.ok and "the running service holds this device's connection" in line.detail, line.line()
    assert "New client connected" not in mosquitto_broker.log()
    (free,) = run_checks(cfg, ("broker",))
    assert free.ok and free.detail.startswith("connected to"), free.line()
    assert mosquitto_broker.wait_for_log("New client connected", 5)


# ------------------------------------------------------------------------ run --check-config (offline)


def _cert(path: Path, key_path: Path, days_before: int, days_after: int) -> None:
    """A self-signed client certificate valid from now - days_before to now + days_after, with its key (0600)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dev1")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=days_before)).not_valid_after(now + dt.timedelta(days=days_after))
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    os.chmod(key_path, 0o600)


def _device_toml(tmp_path: Path, **paths: Path) -> Path:
    text = f"""device_id = "dev1"
[camera]
type = "synthetic"
[seal]
recipient_public_key = "{paths['recipient']}"
signing_key = "{paths['signing_key']}"
[spool]
path = "{tmp_path / 'spool'}"
[uplink.broker.tls]
ca = "{paths['ca']}"
cert = "{paths['cert']}"
key = "{paths['key']}"
"""
    path = tmp_path / f"edge-{len(list(tmp_path.glob('edge-*.toml')))}.toml"
    path.write_text(text)
    return path


@pytest.fixture
def device_files(tmp_path: Path) -> dict[str, Path]:
    """A provisioned device's files (keys from make_fleet, TLS from the test CA), no broker running."""
    fleet = make_fleet(tmp_path / "fleet", devices=("dev1",))
    tls = Broker(tmp_path / "broker").client_tls("dev1")
    return {"recipient": fleet.recipient_pub, "signing_key": fleet.signing_keys["dev1"], "ca": tls.ca,
            "cert": tls.cert, "key": tls.key, "cloud_key": fleet.recipient_key}


def _check_config(config: Path) -> tuple[list[str], list[str]]:
    """(problem lines, warning lines) of `run --check-config`'s file checks, run in this process."""
    from edge_mask.commands.run import check_files
    from edge_mask.config import EdgeConfig, load_config
    from edge_mask.core.errors import ConfigError
    from edge_mask.service import config_checks

    cfg = load_config(config, EdgeConfig)
    warnings = [c.line() for c in config_checks(cfg) if c.ok]
    try:
        check_files(cfg)
    except ConfigError as exc:
        return exc.message.splitlines(), warnings
    return [], warnings


def test_check_config_refuses_a_cloud_private_key_on_the_device(
    device_files: dict[str, Path], tmp_path: Path
) -> None:
    healthy = _device_toml(tmp_path, **device_files)
    assert _check_config(healthy) == ([], [])
    # The cloud's recipient.key configured as the recipient "public" key, and copied under another name as
    # the signing key: both found, one line each, naming the file and the fix.
    disguised = tmp_path / "device.key"
    disguised.write_bytes(device_files["cloud_key"].read_bytes())
    os.chmod(disguised, 0o600)
    bad = _device_toml(tmp_path, **{**device_files, "recipient": device_files["cloud_key"], "signing_key": disguised})
    problems, _ = _check_config(bad)
    text = "\n".join(problems)
    assert f"seal.recipient_public_key = {device_files['cloud_key']}: names the cloud's private key file" in text
    assert f"seal.signing_key = {disguised}: holds an X25519 private key" in text
    assert text.count("must never be on a device") >= 3 and "fix: delete it from the device" in text
    # The real command: one line per problem on stderr, exit 2, no traceback.
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "edge_mask", "run", "--check-config", "--config", str(bad)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == len(problems) and all(line.startswith("edge-mask: error: keys: ") for line in lines), lines


def test_check_config_names_wrong_key_types_and_bad_certificates(
    device_files: dict[str, Path], tmp_path: Path
) -> None:
    from edge_mask.seal import generate_signing_key

    ed_public = tmp_path / "ed25519.pub"
    public = generate_signing_key(tmp_path / "other-signing.key")
    ed_public.write_bytes(public.public_bytes(serialization.Encoding.PEM,
                                              serialization.PublicFormat.SubjectPublicKeyInfo))
    wrong_types = _device_toml(tmp_path, **{**device_files, "recipient": ed_public,
                                            "signing_key": device_files["key"]})
    problems, _ = _check_config(wrong_types)
    assert any(f"{ed_public}: holds an Ed25519 public key, expected an X25519 recipient public key" in p
               for p in problems), problems
    assert any(f"{device_files['key']}: holds" in p and "expected an Ed25519 device signing key" in p
               for p in problems), problems

    expired_cert, expired_key = tmp_path / "expired.crt", tmp_path / "expired.key"
    _cert(expired_cert, expired_key, days_before=30, days_after=-1)
    problems, _ = _check_config(_device_toml(tmp_path, **{**device_files, "cert": expired_cert, "key": expired_key}))
    assert len(problems) == 1 and f"({expired_cert}) expired on" in problems[0]
    assert problems[0].endswith("fix: issue a new certificate")

    future_cert, future_key = tmp_path / "future.crt", tmp_path / "future.key"
    _cert(future_cert, future_key, days_before=-2, days_after=300)
    problems, _ = _check_config(_device_toml(tmp_path, **{**device_files, "cert": future_cert, "key": future_key}))
    assert len(problems) == 1 and "is not valid before" in problems[0]

    soon_cert, soon_key = tmp_path / "soon.crt", tmp_path / "soon.key"
    _cert(soon_cert, soon_key, days_before=300, days_after=5)
    problems, warnings = _check_config(_device_toml(tmp_path, **{**device_files, "cert": soon_cert, "key": soon_key}))
    assert problems == [] and len(warnings) == 1, (problems, warnings)
    assert warnings[0].startswith("WARN tls: client certificate") and "expires within 14 days" in warnings[0]

    # A key that is not the certificate's, and a CA file that is not a certificate.
    problems, _ = _check_config(_device_toml(tmp_path, **{**device_files, "key": soon_key}))
    assert len(problems) == 1 and f"{soon_key} does not load with {device_files['cert']}" in problems[0]
    garbage = tmp_path / "ca.pem"
    garbage.write_text("not a certificate")
    problems, _ = _check_config(_device_toml(tmp_path, **{**device_files, "ca": garbage}))
    assert len(problems) == 1 and f"CA {garbage} is not a PEM certificate" in problems[0]


def test_doctor_reads_the_clouds_refusal_from_the_spool(tmp_path: Path) -> None:
    from edge_mask.config import EdgeConfig
    from edge_mask.seal import Refusal
    from edge_mask.uplink.confirm import CloudVerdict

    cfg = EdgeConfig.model_validate({"device_id": "dev1", "spool": {"path": str(tmp_path / "spool")}})
    (quiet,) = run_checks(cfg, ("cloud",))
    assert quiet.ok and "no answer from the cloud recorded yet" in quiet.line()
    (tmp_path / "spool").mkdir()
    verdict = CloudVerdict(tmp_path / "spool")
    verdict.on_refused(Refusal("unknown_device", "dev1 is not enrolled"), 3)
    (refused,) = run_checks(cfg, ("cloud",))
    assert refused.line().startswith("FAIL cloud: cloud refuses this device's frames: unknown_device since 20")
    assert "fix: enroll the device at the cloud" in refused.line()
    verdict.on_confirmed(3)
    (stored,) = run_checks(cfg, ("cloud",))
    assert stored.ok and "the cloud stores this device's frames" in stored.line()
