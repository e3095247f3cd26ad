"""`edge-mask doctor`: check a device end to end before (or instead of) reading logs.

Why: on an exam-room device the first question is always "camera, model, keys, broker, disk, cloud or
clock?".
Each check does the real thing (opens the camera and reads a frame, hashes the model, parses the keys and
certificates, completes a TLS MQTT handshake, reads what the cloud last answered) and returns one line: OK,
WARN or FAIL with the fix. `config_checks` is the offline part (keys, certificates) for `run --check-config`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import shutil
import stat
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_mask.config import EdgeConfig
from edge_mask.core.errors import UserError

log = logging.getLogger(__name__)

MIN_SANE_YEAR = 2025
CERT_WARN_DAYS = 14


@dataclass(frozen=True)
class Check:
    """One result line. `warn` marks a passing check that needs attention soon (a certificate expiring)."""

    name: str
    ok: bool
    detail: str
    fix: str = ""
    warn: bool = False

    def line(self) -> str:
        text = f"{('WARN' if self.warn else 'OK  ') if self.ok else 'FAIL'} {self.name}: {self.detail}"
        return text if (self.ok and not self.warn) or not self.fix else f"{text} -> fix: {self.fix}"


def run_checks(cfg: EdgeConfig, checks: tuple[str, ...] | None = None) -> list[Check]:
    """Run the named checks (all by default), never raising: a crash becomes a FAIL line."""
    table: dict[str, Callable[[EdgeConfig], Iterator[Check]]] = {
        "camera": check_camera,
        "model": check_model,
        "keys": check_keys,
        "broker": check_broker,
        "spool": check_spool,
        "cloud": check_cloud,
        "clock": check_clock,
    }
    results: list[Check] = []
    for name, func in table.items():
        if checks is not None and name not in checks:
            continue
        try:
            results.extend(func(cfg))
        except UserError as exc:
            results.append(Check(name, False, exc.message))
        except Exception as exc:
            log.debug("check %s crashed", name, exc_info=True)
            results.append(Check(name, False, f"{type(exc).__name__}: {exc}", "run with -vv for details"))
    return results


# ------------------------------------------------------------------------------------------------ camera


def check_camera(cfg: EdgeConfig) -> Iterator[Check]:
    from edge_mask.capture import open_camera

    camera = open_camera(cfg.camera)
    timeout = float(getattr(cfg.camera, "read_timeout_s", 5.0))
    box: dict[str, Any] = {}

    def read() -> None:
        try:
            box["image"] = camera.read()
        except Exception as exc:  # noqa: BLE001 - reported below
            box["error"] = exc

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout)
    camera.close()
    if reader.is_alive():
        yield Check("camera", False, f"{camera.name} opened but gave no frame in {timeout:g} s",
                    "check the camera cable/stream; see `journalctl -k` for driver errors")
    elif "error" in box or box.get("image") is None:
        yield Check("camera", False, f"{camera.name} opened but reading failed: {box.get('error', 'no frame')}",
                    "check the camera cable/stream")
    else:
        h, w = box["image"].shape[:2]
        yield Check("camera", True, f"{camera.name} yields {w}x{h} frames")
        from edge_mask.detect import coverage_line

        yield Check("faces", True, coverage_line(cfg.detector, w, h))


# ------------------------------------------------------------------------------------------------- model


def check_model(cfg: EdgeConfig) -> Iterator[Check]:
    from edge_mask.detect import parity_summary, resolve_model

    precision = getattr(cfg.detector, "precision", "fp32")
    threads = getattr(cfg.detector, "threads", 2)
    providers = getattr(cfg.detector, "providers", ("CPUExecutionProvider",))
    # verifies the manifest sha256; the same setup (threads, providers) as the service, so the same verdicts
    path = Path(resolve_model(cfg.detector.model, cfg.models, precision, threads=threads, providers=providers))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    yield Check("model", True, f"{cfg.detector.model} ({precision}) at {path}, sha256 {digest[:16]}... verified")
    if cfg.detector.type == "onnx" and precision == "auto" and "/" not in cfg.detector.model \
            and not cfg.detector.model.endswith(".onnx"):
        # which model masks and why: speed here, and the int8 model's parity on this device's own frames
        yield Check("precision", True, parity_summary(cfg.detector, cfg.models))
    elif cfg.detector.type == "onnx" and precision != "auto":
        yield Check("precision", True, f"{precision} runs: forced by detector.precision (no on-device parity watch)")


# -------------------------------------------------------------------------------------------------- keys


def check_keys(cfg: EdgeConfig) -> Iterator[Check]:
    """Key and certificate files: types, modes, no cloud private key, certificate dates, TLS key pair."""
    yield from _key_checks(cfg, tls_required=True)


def config_checks(cfg: EdgeConfig) -> list[Check]:
    """What `edge-mask run --check-config` checks without the network: `check_keys`, with a missing TLS
    section only a warning (a lab broker may run without it). FAIL and WARN lines name the file and fix."""
    return [c for c in _key_checks(cfg, tls_required=False) if not c.ok or c.warn]


def _key_checks(cfg: EdgeConfig, tls_required: bool) -> Iterator[Check]:
    from edge_mask.seal import load_recipient_public_key, load_signing_key

    def recipient() -> Check:
        key = load_recipient_public_key(cfg.seal.recipient_public_key)
        return Check("keys", True, f"recipient public key {key.key_id.hex()} loads")

    def signing() -> Check:
        load_signing_key(cfg.seal.signing_key)
        return Check("keys", True, f"signing key {cfg.seal.signing_key} loads")

    yield from _no_cloud_private_key(cfg)
    yield _guard("keys", recipient)
    mode = _private_file("keys", cfg.seal.signing_key)
    yield mode
    if mode.ok:
        yield _guard("keys", signing)
    tls = cfg.uplink.broker.tls
    if tls is None:
        yield Check("tls", not tls_required, "uplink.broker.tls is not set: frames would travel without TLS",
                    "provision the device certificate and set [uplink.broker.tls]", warn=not tls_required)
        return
    key_mode = _private_file("tls", tls.key)
    yield key_mode
    certs = [_certificate(what, Path(path)) for what, path in (("CA", tls.ca), ("client certificate", tls.cert))]
    yield from certs
    if key_mode.ok and all(c.ok for c in certs):
        yield _tls_pair(Path(tls.ca), Path(tls.cert), Path(tls.key))


# The cloud's private key file, as `edge-mask provision recipient` names it (seal.keys.RECIPIENT_KEY_NAME).
CLOUD_KEY_NAME = "recipient.key"


def _no_cloud_private_key(cfg: EdgeConfig) -> Iterator[Check]:
    """The recipient private key opens every frame of every device: it must never sit on a device. Caught
    by its file name, or by its type (X25519 private) in any key file the config names."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    named = {"seal.recipient_public_key": cfg.seal.recipient_public_key, "seal.signing_key": cfg.seal.signing_key}
    if cfg.uplink.broker.tls is not None:
        named["uplink.broker.tls.key"] = cfg.uplink.broker.tls.key
    fix = "delete it from the device (shred -u) and give the device only the cloud's recipient.pub"
    found = False
    for key, path in named.items():
        path = Path(path)
        if path.name == CLOUD_KEY_NAME:
            found = True
            yield Check("keys", False, f"{key} = {path}: names the cloud's private key file ({CLOUD_KEY_NAME}); "
                        "the cloud's private key must never be on a device", fix)
            continue
        try:
            data = path.read_bytes()
            is_cloud = b"PRIVATE KEY" in data and isinstance(load_pem_private_key(data, None), X25519PrivateKey)
        except (OSError, ValueError, TypeError, UnsupportedAlgorithm):
            continue  # unreadable or not a plain private key: the loaders below say why
        if is_cloud:
            found = True
            yield Check("keys", False, f"{key} = {path}: holds an X25519 private key, the cloud's recipient key "
                        "type; the cloud's private key must never be on a device", fix)
    if not found:
        yield Check("keys", True, "no cloud (recipient) private key among the configured files")


def _tls_pair(ca: Path, cert: Path, key: Path) -> Check:
    """The TLS key must parse and belong to the certificate (as the TLS library will require at connect)."""
    import ssl

    try:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(cafile=str(ca))
        context.load_cert_chain(certfile=str(cert), keyfile=str(key))
    except (ssl.SSLError, OSError) as exc:
        return Check("tls", False, f"{key} does not load with {cert} ({exc})",
                     "re-provision the device: the certificate and key must be a pair")
    return Check("tls", True, f"{key} is the private key of {cert.name}")


def _guard(name: str, check: Callable[[], Check]) -> Check:
    try:
        return check()
    except UserError as exc:
        return Check(name, False, exc.message)


def _private_file(name: str, path: Path) -> Check:
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return Check(name, False, f"{path} not found", "provision the device (edge-mask provision device)")
    if mode & 0o077:
        return Check(name, False, f"{path} has mode {mode:04o}; a private key must not be readable by others",
                     f"chmod 600 {path}")
    return Check(name, True, f"{path} mode {mode:04o}")


def _certificate(what: str, path: Path) -> Check:
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except FileNotFoundError:
        return Check("tls", False, f"{what} {path} not found", "provision the device or fix the path")
    except ValueError as exc:
        return Check("tls", False, f"{what} {path} is not a PEM certificate ({exc})", "re-provision it")
    now = dt.datetime.now(dt.timezone.utc)
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    subject = cert.subject.rfc4514_string()
    if now < start:
        return Check("tls", False, f"{what} {subject} ({path}) is not valid before {start:%Y-%m-%d}",
                     "check the clock (see the clock check)")
    if now > end:
        return Check("tls", False, f"{what} {subject} ({path}) expired on {end:%Y-%m-%d}", "issue a new certificate")
    days = (end - now).days
    detail = f"{what} {subject} ({path}) valid until {end:%Y-%m-%d} ({days} days)"
    if days < CERT_WARN_DAYS:
        return Check("tls", True, f"{detail}; expires within {CERT_WARN_DAYS} days", "issue a new certificate",
                     warn=True)
    return Check("tls", True, detail)


# ------------------------------------------------------------------------------------------------ broker


def check_broker(cfg: EdgeConfig) -> Iterator[Check]:
    """Connect once the way the service does (same client setup, same CONNACK wait) and report the answer."""
    from edge_mask.uplink import connect, make_client, reason_failed, spool_in_use, wait_for_connack

    broker = cfg.uplink.broker
    where = f"{broker.host}:{broker.port}"
    if broker.tls is not None and spool_in_use(Path(cfg.spool.path)):
        # The provisioned broker makes the certificate's CN the client id whatever id we send, so a second
        # connection would take over the running service's session; the service's own answers say more.
        yield Check("broker", True, f"not connecting to {where}: the running service holds this device's "
                    "connection (its certificate is its client id); see the cloud line and the service's stats")
        return
    try:
        client = make_client(broker, f"{broker.client_id or cfg.device_id}-doctor")
    except (OSError, ValueError) as exc:
        yield Check("broker", False, f"cannot load the TLS CA/certificate/key ({exc})",
                    "check that uplink.broker.tls cert and key belong together (re-provision the device)")
        return
    try:
        connect(client, broker, persistent_session=False, session_expiry_s=0)
    except OSError as exc:
        yield Check("broker", False, f"cannot reach {where} ({exc})",
                    "check uplink.broker.host/port, the network and the CA/certificate")
        return
    code = wait_for_connack(client, broker.connect_timeout_s)
    client.disconnect()
    tls = "over TLS" if broker.tls is not None else "WITHOUT TLS"
    if code is None:
        yield Check("broker", False, f"no CONNACK from {where} within {broker.connect_timeout_s:g} s",
                    "the TLS handshake or the broker failed; check the broker log and the certificates")
    elif reason_failed(code) or (isinstance(code, int) and code != 0):
        yield Check("broker", False, f"{where} refused the connection ({code})",
                    "check that the broker knows this device's certificate and ACL")
    else:
        yield Check("broker", True, f"connected to {where} {tls}")


# ------------------------------------------------------------------------------------------ spool, clock


def check_spool(cfg: EdgeConfig) -> Iterator[Check]:
    path = Path(cfg.spool.path)
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not os.access(probe, os.W_OK):
        yield Check("spool", False, f"{probe} is not writable", f"create {path} writable by the service user")
        return
    usage = shutil.disk_usage(probe)
    used = sum(f.stat().st_size for f in path.glob("*") if f.is_file()) if path.is_dir() else 0
    room = usage.free + used
    gib = 1 << 30
    if room < cfg.spool.max_bytes:
        yield Check("spool", False,
                    f"{usage.free / gib:.2f} GiB free at {probe}, less than spool.max_bytes "
                    f"({cfg.spool.max_bytes / gib:.2f} GiB)", "lower spool.max_bytes or free disk space")
    else:
        yield Check("spool", True, f"{path}: {usage.free / gib:.2f} GiB free, {used / gib:.3f} GiB spooled")


def check_cloud(cfg: EdgeConfig) -> Iterator[Check]:
    """What the cloud last said about this device's frames (the uplink's cloud-status.json in the spool)."""
    from edge_mask.uplink import fix_for, read_cloud_status

    if cfg.uplink.confirm == "broker":
        yield Check("cloud", True, "uplink.confirm = broker: frames leave the spool on the broker's PUBACK, "
                    "without the cloud's confirmation")
        return
    status = read_cloud_status(Path(cfg.spool.path))
    if status is None:
        yield Check("cloud", True, f"no answer from the cloud recorded yet in {cfg.spool.path}")
    elif status.refused is not None:
        detail = f" ({status.detail})" if status.detail else ""
        yield Check("cloud", False, f"cloud refuses this device's frames: {status.refused} since {status.since}"
                    f"{detail}; they stay spooled", fix_for(status.refused))
    else:
        yield Check("cloud", True, f"the cloud stores this device's frames (last confirmed {status.last_confirmed_at})")


def check_clock(cfg: EdgeConfig) -> Iterator[Check]:
    now = dt.datetime.now(dt.timezone.utc)
    if now.year < MIN_SANE_YEAR or now.year > 2100:
        yield Check("clock", False, f"system time is {now:%Y-%m-%d %H:%M} UTC",
                    "enable time sync (timedatectl set-ntp true) or fit an RTC; seals and TLS need the real time")
        return
    synced = _ntp_synchronized()
    note = "" if synced is None else (", NTP synchronized" if synced else ", NOT NTP synchronized")
    yield Check("clock", True, f"{now:%Y-%m-%d %H:%M:%S} UTC{note}")


def _ntp_synchronized() -> bool | None:
    """From systemd-timesyncd's flag file or adjtimex state; None when unknown."""
    flag = Path("/run/systemd/timesync/synchronized")
    if flag.exists():
        return True
    return None
