"""A real Mosquitto for tests: TLS with client certificates, identity as username, per-device ACL.

The CA, certificates, ACL and mosquitto.conf come from `edge_mask.provision.pki`, i.e. the same files
`edge-mask provision broker` writes, so the tests exercise the production broker setup.

Why a real broker: the properties under test (QoS 1 acknowledgements, ACL refusals, LWT, shared
subscriptions, sessions surviving a broker restart) are the broker's behaviour, which a fake would only
imitate. Each broker gets an ephemeral loopback port (never 1883), its own CA and certificates,
persistence on (so a stopped and restarted broker keeps the receivers' sessions), and a log
file that is attached to failing assertions through `Broker.log()`.

Use the `mosquitto_broker` fixture (import it into a test module), or `Broker(tmp_dir)` as a context
manager for custom setups. `stop()` / `start()` keep the port for outage tests.
"""

from __future__ import annotations

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

from edge_mask.config import BrokerConfig, TLSConfig
from edge_mask.provision import pki

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


class Broker:
    """One Mosquitto process with its files under `directory`."""

    def __init__(self, directory: Path, receivers: Sequence[str] = (RECEIVER_USER,)) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.host = "127.0.0.1"
        self.port = free_port()
        self.pki_dir = self.dir / "pki"
        self.ca = pki.create_ca(self.pki_dir / "ca", "edge-mask test CA")
        server = pki.make_server_cert(self.ca, self.pki_dir / "broker", "localhost")
        self.server_cert, self.server_key = server.cert, server.key
        self.log_path = self.dir / "mosquitto.log"
        self.acl_path = self.dir / "acl"
        self.acl_path.write_text(pki.render_acl(receivers))
        (self.dir / "data").mkdir(exist_ok=True)
        self.conf_path = self.dir / "mosquitto.conf"
        self.conf_path.write_text(self._conf())
        self._proc: subprocess.Popen[bytes] | None = None

    def _conf(self) -> str:
        """The production broker config from `edge_mask.provision.pki`, plus subscription logging for the tests."""
        conf = pki.render_mosquitto_conf(
            port=self.port,
            cafile=self.ca.cert_path,
            certfile=self.server_cert,
            keyfile=self.server_key,
            acl_file=self.acl_path,
            bind_address=self.host,
            persistence_dir=self.dir / "data",
            log_file=self.log_path,
            user=pwd.getpwuid(os.geteuid()).pw_name,  # as root, mosquitto would otherwise drop to `mosquitto`
        )
        return conf + "\nlog_type subscribe\n"

    # ----------------------------------------------------------------------------------------- clients

    def client_tls(self, name: str) -> TLSConfig:
        """A client certificate from this broker's CA whose CN (the MQTT username) is `name`."""
        issued = pki.make_client_cert(self.ca, self.pki_dir / "clients" / name, name, "client", force=True)
        return TLSConfig(ca=self.ca.cert_path, cert=issued.cert, key=issued.key)

    def rogue_tls(self, name: str) -> TLSConfig:
        """A certificate for `name` from a CA the broker does not trust (the client still trusts the broker)."""
        rogue = pki.create_ca(self.pki_dir / "rogue-ca", "rogue CA", force=True)
        issued = pki.make_client_cert(rogue, self.pki_dir / "rogue" / name, name, "client", force=True)
        return TLSConfig(ca=self.ca.cert_path, cert=issued.cert, key=issued.key)

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
