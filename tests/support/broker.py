"""A real Mosquitto for tests: TLS with client certificates, identity as username, per-device ACL.

Why a real broker: the properties under test (QoS 1 acknowledgements, ACL refusals, LWT, shared
subscriptions, sessions surviving a broker restart) are the broker's behaviour, which a fake would only
imitate. Each broker gets an ephemeral loopback port (never 1883), its own CA and certificates made with
`cryptography`, persistence on (so a stopped and restarted broker keeps the receivers' sessions), and a log
file that is attached to failing assertions through `Broker.log()`.

Use the `mosquitto_broker` fixture (import it into a test module), or `Broker(tmp_dir)` as a context
manager for custom setups. `stop()` / `start()` keep the port for outage tests.
"""

from __future__ import annotations

import datetime as dt
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edge_mask.config import BrokerConfig, TLSConfig

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
RECEIVER_USER = "cloud-receiver"


def free_port() -> int:
    """A currently free loopback port (the kernel picks it; it is never 1883 in practice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    if port == 1883:  # pragma: no cover - vanishingly unlikely
        return free_port()
    return port


class TestCA:
    """A throw-away certificate authority that issues the broker's and the clients' certificates."""

    __test__ = False  # not a pytest test class

    def __init__(self, directory: Path, name: str = "edge-mask test CA") -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = dt.datetime.now(dt.timezone.utc)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
            )
            .sign(self.key, hashes.SHA256())
        )
        self.path = self.dir / "ca.crt"
        self.path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, common_name: str, server: bool = False) -> tuple[Path, Path]:
        """Write `<cn>.crt` and `<cn>.key`; servers get a SAN for 127.0.0.1 and localhost."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.timezone.utc)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        )
        if server:
            import ipaddress

            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            ).add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        else:
            builder = builder.add_extension(
                x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
            )
        cert = builder.sign(self.key, hashes.SHA256())
        cert_path = self.dir / f"{common_name}.crt"
        key_path = self.dir / f"{common_name}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        os.chmod(key_path, 0o600)
        return cert_path, key_path


def render_acl(receivers: Sequence[str]) -> str:
    """Devices (username = certificate CN) may only write below their own id; receivers read everything."""
    lines = ["# written by tests/support/broker.py", "pattern write edge-mask/%u/#", ""]
    for user in receivers:
        lines += [f"user {user}", "topic read edge-mask/#", ""]
    return "\n".join(lines)


class Broker:
    """One Mosquitto process with its files under `directory`."""

    def __init__(self, directory: Path, receivers: Sequence[str] = (RECEIVER_USER,)) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.host = "127.0.0.1"
        self.port = free_port()
        self.ca = TestCA(self.dir / "pki")
        self.server_cert, self.server_key = self.ca.issue("localhost", server=True)
        self.log_path = self.dir / "mosquitto.log"
        self.acl_path = self.dir / "acl"
        self.acl_path.write_text(render_acl(receivers))
        (self.dir / "data").mkdir(exist_ok=True)
        self.conf_path = self.dir / "mosquitto.conf"
        self.conf_path.write_text(self._conf())
        self._proc: subprocess.Popen[bytes] | None = None

    def _conf(self) -> str:
        user = pwd.getpwuid(os.geteuid()).pw_name
        return "\n".join(
            [
                f"user {user}",
                "per_listener_settings false",
                "persistence true",
                f"persistence_location {self.dir / 'data'}/",
                "autosave_interval 1",
                f"log_dest file {self.log_path}",
                "log_type error",
                "log_type warning",
                "log_type notice",
                "log_type information",
                "log_type subscribe",
                "connection_messages true",
                "max_queued_messages 100000",
                "max_inflight_messages 100",
                f"acl_file {self.acl_path}",
                "allow_anonymous false",
                f"listener {self.port} {self.host}",
                f"cafile {self.ca.path}",
                f"certfile {self.server_cert}",
                f"keyfile {self.server_key}",
                "require_certificate true",
                "use_identity_as_username true",
                "",
            ]
        )

    # ----------------------------------------------------------------------------------------- clients

    def client_tls(self, name: str) -> TLSConfig:
        """A client certificate whose CN (the MQTT username) is `name`."""
        cert, key = self.ca.issue(name)
        return TLSConfig(ca=self.ca.path, cert=cert, key=key)

    def broker_config(self, name: str, protocol: str = "5", client_id: str | None = None) -> BrokerConfig:
        return BrokerConfig.model_validate(
            {
                "host": self.host,
                "port": self.port,
                "protocol": protocol,
                "tls": self.client_tls(name),
                "client_id": client_id,
                "keepalive_s": 5,
                "connect_timeout_s": 5.0,
            }
        )

    # --------------------------------------------------------------------------------------- lifecycle

    def start(self, timeout: float = 10.0) -> None:
        if self.running:
            return
        self._proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.conf_path)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
                raise RuntimeError(f"mosquitto exited with {self._proc.returncode}: {err}\n{self.log()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"mosquitto did not listen on {self.host}:{self.port} within {timeout}s\n{self.log()}")

    def stop(self) -> None:
        """SIGTERM (mosquitto saves its persistence database), then SIGKILL if it hangs."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        if proc.stderr:
            proc.stderr.close()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def wait_for_log(self, text: str, timeout: float = 30.0) -> bool:
        """Wait until the broker logged `text` (e.g. a subscription: `<client id> 1 <filter>`)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log():
                return True
            time.sleep(0.05)
        return False

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no mosquitto log)"

    def __enter__(self) -> Broker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@pytest.fixture
def mosquitto_broker(tmp_path: Path) -> Iterator[Broker]:
    """A started TLS Mosquitto on an ephemeral loopback port; always stopped after the test."""
    if not os.path.exists(MOSQUITTO):
        pytest.skip("mosquitto is not installed (apt-get install -y mosquitto)")
    broker = Broker(tmp_path / "broker")
    try:
        broker.start()
        yield broker
    finally:
        broker.stop()
