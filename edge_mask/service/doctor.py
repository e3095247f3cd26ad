"""`edge-mask doctor`: check a device end to end before (or instead of) reading logs.

Why: on an exam-room device the first question is always "camera, model, keys, broker, disk or clock?".
Each check does the real thing (opens the camera and reads a frame, hashes the model, parses the keys and
certificates, completes a TLS MQTT handshake) and returns one line: OK or FAIL with the fix.
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
    name: str
    ok: bool
    detail: str
    fix: str = ""

    def line(self) -> str:
        text = f"{'OK  ' if self.ok else 'FAIL'} {self.name}: {self.detail}"
        return text if self.ok or not self.fix else f"{text} -> fix: {self.fix}"


def run_checks(cfg: EdgeConfig, checks: tuple[str, ...] | None = None) -> list[Check]:
    """Run the named checks (all by default), never raising: a crash becomes a FAIL line."""
    table: dict[str, Callable[[EdgeConfig], Iterator[Check]]] = {
        "camera": check_camera,
        "model": check_model,
        "keys": check_keys,
        "broker": check_broker,
        "spool": check_spool,
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


# ------------------------------------------------------------------------------------------------- model


def check_model(cfg: EdgeConfig) -> Iterator[Check]:
    from edge_mask.detect import resolve_model

    precision = getattr(cfg.detector, "precision", "fp32")
    path = Path(resolve_model(cfg.detector.model, cfg.models, precision))  # verifies the manifest sha256
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    yield Check("model", True, f"{cfg.detector.model} ({precision}) at {path}, sha256 {digest[:16]}... verified")


# -------------------------------------------------------------------------------------------------- keys


def check_keys(cfg: EdgeConfig) -> Iterator[Check]:
    from edge_mask.seal import load_recipient_public_key, load_signing_key

    def recipient() -> Check:
        key = load_recipient_public_key(cfg.seal.recipient_public_key)
        return Check("keys", True, f"recipient public key {key.key_id.hex()} loads")

    def signing() -> Check:
        load_signing_key(cfg.seal.signing_key)
        return Check("keys", True, f"signing key {cfg.seal.signing_key} loads")

    yield _guard("keys", recipient)
    mode = _private_file("keys", cfg.seal.signing_key)
    yield mode
    if mode.ok:
        yield _guard("keys", signing)
    tls = cfg.uplink.broker.tls
    if tls is None:
        yield Check("tls", False, "uplink.broker.tls is not set: frames would travel without TLS",
                    "provision the device certificate and set [uplink.broker.tls]")
        return
    yield _private_file("tls", tls.key)
    for what, path in (("CA", tls.ca), ("client certificate", tls.cert)):
        yield _certificate(what, Path(path))


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
        return Check("tls", False, f"{what} {subject} is not valid before {start:%Y-%m-%d}",
                     "check the clock (see the clock check)")
    if now > end:
        return Check("tls", False, f"{what} {subject} expired on {end:%Y-%m-%d}", "issue a new certificate")
    days = (end - now).days
    detail = f"{what} {subject} valid until {end:%Y-%m-%d} ({days} days)"
    if days < CERT_WARN_DAYS:
        detail += "; renew soon"
    return Check("tls", True, detail)


# ------------------------------------------------------------------------------------------------ broker


def check_broker(cfg: EdgeConfig) -> Iterator[Check]:
    """Connect once the way the service does (same client setup, same CONNACK wait) and report the answer."""
    from edge_mask.uplink import connect, make_client, reason_failed, wait_for_connack

    broker = cfg.uplink.broker
    where = f"{broker.host}:{broker.port}"
    # Its own client id: reusing the service's would kick the running service off the broker.
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
