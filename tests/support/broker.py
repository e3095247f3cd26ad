"""A real Mosquitto for tests: TLS with client certificates, identity as username, per-device ACL.

The CA, certificates, ACL and mosquitto.conf come from `edge_mask.provision.pki`, i.e. the same files
`edge-mask provision broker` writes, so the tests exercise the production broker setup.

Why a real broker: the properties under test (QoS 1 acknowledgements, ACL refusals, LWT, shared
subscriptions, sessions surviving a broker restart) are the broker's behaviour, which a fake would only
imitate. Each broker gets an ephemeral loopback port (never 1883), its own CA and certificates,
persistence on (so a stopped and restarted broker keeps the receivers' sessions), and a log
file that is attached to failing assertions through `Broker.log()`.

The broker forces client id = certificate CN (`use_username_as_clientid`): a client made with
`broker_config(name)` is known to the broker, and named in its log, as `name`, whatever `client_id` it
sends; so a test waits for a subscription as `wait_for_log(f"{name} 1 {filter}")`, and two receivers that
share a subscription need two names, both listed in `receivers` (the ACL's receiver identities).

Use the `mosquitto_broker` fixture (import it into a test module), or `Broker(tmp_dir)` as a context
manager for custom setups. `stop()` / `start()` keep the port for outage tests; `kill()` is SIGKILL (a
crash: what was queued since the last autosave is gone). The process itself (loopback
listener, wait until it listens, SIGTERM on stop) and `free_port` are the product's one launcher,
`edge_mask.tools.broker`, which the demo and the benchmarks use too.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from edge_mask.config import BrokerConfig, TLSConfig
from edge_mask.provision import pki
from edge_mask.provision.enroll import mosquitto_path
from edge_mask.tools.broker import LOOPBACK, Mosquitto, free_port

__all__ = ["RECEIVER_USER", "RECEIVER_USER_2", "Broker", "free_port", "mosquitto_broker"]

RECEIVER_USER = "cloud-receiver"
RECEIVER_USER_2 = "cloud-receiver-2"
"""A second receiver identity (shared-subscription tests): each receiver needs its own certificate CN."""


class Broker:
    """One Mosquitto process with its files under `directory`."""

    def __init__(
        self,
        directory: Path,
        receivers: Sequence[str] = (RECEIVER_USER, RECEIVER_USER_2),
        log_types: Sequence[str] = ("subscribe",),
    ) -> None:
        """`log_types`: extra Mosquitto `log_type` lines (`subscribe` to wait for a subscriber in the log;
        `debug` also logs every packet, e.g. `Sending PUBLISH to <client id>`, for fault-injection timing)."""
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.host = LOOPBACK
        self.pki_dir = self.dir / "pki"
        self.ca = pki.create_ca(self.pki_dir / "ca", "edge-mask test CA")
        server = pki.make_server_cert(self.ca, self.pki_dir / "broker", "localhost")
        self.server_cert, self.server_key = server.cert, server.key
        self.acl_path = self.dir / "acl"
        self.acl_path.write_text(pki.render_acl(receivers))
        # The production broker config from `edge_mask.provision.pki` (persistence on), plus subscription
        # logging so tests can wait for a subscriber in the log.
        self._mosquitto = Mosquitto.tls(
            self.dir,
            cafile=self.ca.cert_path,
            certfile=self.server_cert,
            keyfile=self.server_key,
            acl_file=self.acl_path,
            persistence=True,
            extra="".join(f"log_type {kind}\n" for kind in log_types),
        )
        self.port = self._mosquitto.port
        self.conf_path = self._mosquitto.conf
        self.log_path = self.dir / "mosquitto.log"

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
        """Settings for a client with certificate CN `name`; the broker replaces `client_id` by `name`."""
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
        """Start (or restart, on the same port) and return once the broker accepts connections."""
        self._mosquitto.start(timeout)

    def stop(self) -> None:
        """SIGTERM (mosquitto saves its persistence database), then SIGKILL if it hangs."""
        self._mosquitto.stop()

    def kill(self) -> None:
        """SIGKILL: a crash; whatever the broker queued since its last autosave is lost."""
        self._mosquitto.kill()

    @property
    def running(self) -> bool:
        return self._mosquitto.running

    def wait_for_log(self, text: str, timeout: float = 30.0, count: int = 1) -> bool:
        """Wait until the broker logged `text` at least `count` times (e.g. a subscription:
        `<client id> 1 <filter>`; a client that subscribes again after a restart logs it once more)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.log().count(text) >= count:
                return True
            time.sleep(0.02)
        return False

    def log(self) -> str:
        return self._mosquitto.log()

    def __enter__(self) -> Broker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@pytest.fixture
def mosquitto_broker(tmp_path: Path) -> Iterator[Broker]:
    """A started TLS Mosquitto on an ephemeral loopback port; always stopped after the test."""
    if mosquitto_path() is None:
        pytest.skip("mosquitto is not installed (apt-get install -y mosquitto)")
    broker = Broker(tmp_path / "broker")
    try:
        broker.start()
        yield broker
    finally:
        broker.stop()
