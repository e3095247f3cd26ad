"""What the uplink and the receiver share about talking to an MQTT broker.

Both run their own network loop in one thread they own (the receiver `client.loop()`, the uplink
`loop_once`, which a `Waker` ends as soon as a frame is spooled) instead of paho's `loop_start()`: paho's
automatic reconnect waits a fixed exponential delay without jitter, so a fleet of cameras that lost the
broker together would reconnect together (the jittered policy is
`edge_mask.core.backoff.Backoff`, shared with the capture loop); and owning the loop lets the uplink
publish from the same thread that handles acknowledgements, with no cross-thread calls into paho.

A fresh paho client is built for every connection attempt, so no state of a dead connection (paho's own
queue of unacknowledged messages, old message ids) can leak into the next one: the spool is the only
source of truth for what still has to be sent.

`wait_for_connack` is the one place that runs a fresh connection until the broker answers CONNECT: the
uplink, the receiver and `edge-mask doctor` all go through it, so "connected" means the same everywhere.

`loop_once` is paho's `loop()` rebuilt on its public external-loop API (`socket`, `want_write`,
`loop_read`, `loop_write`, `loop_misc`) with one more thing to wait on, a `Waker`: another thread (the
pipeline, when it has spooled a frame) can end the wait at once. With `loop()` a new frame waited for the
poll timeout (20 ms) before it was published, which was half of the live service's latency budget.
"""

from __future__ import annotations

import logging
import select
import socket
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_mask.config import BrokerConfig
from edge_mask.core.errors import KeyMaterialError

log = logging.getLogger(__name__)


def check_tls_files(broker: BrokerConfig, what: str) -> None:
    """Fail at start with the file to fix, not with an SSL error at every reconnect."""
    if broker.tls is None:
        return
    for name in ("ca", "cert", "key"):
        path = Path(getattr(broker.tls, name))
        if not path.is_file():
            raise KeyMaterialError(
                f"{what}.broker.tls.{name} = {path}: file not found; provision it or fix the path"
            )


def make_client(
    broker: BrokerConfig,
    client_id: str,
    *,
    persistent_session: bool = False,
    will: tuple[str, bytes] | None = None,
    max_inflight: int = 20,
) -> mqtt.Client:
    """A paho client (callback API version 2) for one connection attempt, with TLS when configured."""
    v5 = broker.protocol == "5"
    kwargs: dict[str, Any] = {
        "callback_api_version": CallbackAPIVersion.VERSION2,
        "client_id": client_id,
        "protocol": mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
    }
    if not v5:
        kwargs["clean_session"] = not persistent_session
    client = mqtt.Client(**kwargs)
    client.connect_timeout = broker.connect_timeout_s
    client.max_inflight_messages_set(max_inflight)
    client.max_queued_messages_set(0)
    if broker.tls is not None:
        client.tls_set(
            ca_certs=str(broker.tls.ca),
            certfile=str(broker.tls.cert),
            keyfile=str(broker.tls.key),
            cert_reqs=ssl.CERT_REQUIRED,
            tls_version=ssl.PROTOCOL_TLS_CLIENT,
        )
    if will is not None:
        client.will_set(will[0], will[1], qos=1, retain=True)
    return client


def connect(
    client: mqtt.Client,
    broker: BrokerConfig,
    *,
    persistent_session: bool,
    session_expiry_s: int,
    receive_maximum: int | None = None,
) -> None:
    """Open the socket and send CONNECT; the caller runs the loop until CONNACK. Raises OSError on failure.
    `receive_maximum` (MQTT 5 only): how many unacknowledged QoS 1 messages the broker may send at once."""
    if broker.protocol == "5":
        props: Properties | None = None
        if persistent_session or receive_maximum is not None:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        if persistent_session and props is not None:
            props.SessionExpiryInterval = session_expiry_s
        if receive_maximum is not None and props is not None:
            props.ReceiveMaximum = receive_maximum
        client.connect(
            broker.host,
            broker.port,
            keepalive=broker.keepalive_s,
            clean_start=not persistent_session,
            properties=props,
        )
    else:
        client.connect(broker.host, broker.port, keepalive=broker.keepalive_s)


def reason_failed(reason_code: Any) -> bool:
    """True for an MQTT 5 failure reason code (>= 0x80); MQTT 3.1.1 acks are always successes in paho."""
    return bool(getattr(reason_code, "is_failure", False))


NO_MATCHING_SUBSCRIBERS = 0x10


def not_delivered(reason_code: Any) -> bool:
    """A PUBACK that hands nothing on: a failure (>= 0x80), or 0x10 "no matching subscribers" (the broker
    took the message and dropped it: no receiver, not even an offline one's persistent session, listens)."""
    return reason_failed(reason_code) or getattr(reason_code, "value", None) == NO_MATCHING_SUBSCRIBERS


def wait_for_connack(client: mqtt.Client, timeout_s: float, stop: Callable[[], bool] | None = None) -> Any:
    """Run `client`'s network loop until its CONNACK arrives; returns the reason code, or None.

    Call it right after `connect()`. None means no answer: the timeout passed, `stop()` became true, or the
    socket failed first (a refused TLS handshake ends here). Check a returned code with `reason_failed`.
    The client's own `on_connect` (subscribe, publish "online" ...) still runs, from inside this loop;
    it is wrapped only for the duration of the wait, so the caller keeps its callback afterwards.
    """
    answer: list[Any] = []
    own = client.on_connect
    call_own: Callable[..., object] | None = own  # paho types on_connect as a union of callback APIs

    def on_connect(cl: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, props: Any) -> None:
        answer.append(reason_code)
        if call_own is not None:
            call_own(cl, userdata, flags, reason_code, props)

    client.on_connect = on_connect
    try:
        deadline = time.monotonic() + timeout_s
        while not answer and time.monotonic() < deadline and not (stop is not None and stop()):
            if client.loop(timeout=0.1) != mqtt.MQTT_ERR_SUCCESS:
                break
    finally:
        client.on_connect = own
    if not answer:
        log.debug("no CONNACK within %.1f s", timeout_s)
        return None
    return answer[0]


def open_connection(
    client: mqtt.Client,
    broker: BrokerConfig,
    *,
    persistent_session: bool,
    session_expiry_s: int,
    stop: Callable[[], bool] | None = None,
    receive_maximum: int | None = None,
) -> str | None:
    """`connect()`, then `wait_for_connack()`: None when the broker accepted, else one line saying why not
    (for the caller's log, which names who was connecting)."""
    try:
        connect(client, broker, persistent_session=persistent_session, session_expiry_s=session_expiry_s,
                receive_maximum=receive_maximum)
    except (OSError, ValueError) as exc:
        return f"cannot connect to {broker.host}:{broker.port}: {exc}"
    connack = wait_for_connack(client, broker.connect_timeout_s, stop)
    if connack is None or reason_failed(connack):
        return f"broker refused or did not answer the connection (CONNACK {connack})"
    return None


class Waker:
    """A socket pair: `wake()` from any thread makes a `loop_once` waiting on it return at once."""

    def __init__(self) -> None:
        self.reader, self._writer = socket.socketpair()
        self.reader.setblocking(False)
        self._writer.setblocking(False)

    def wake(self) -> None:
        try:
            self._writer.send(b"\0")
        except OSError:  # the pair is full (a wake is already pending) or closed at shutdown
            pass

    def drain(self) -> None:
        try:
            while self.reader.recv(4096):
                pass
        except OSError:
            pass

    @property
    def closed(self) -> bool:
        return self.reader.fileno() == -1

    def close(self) -> None:
        self.reader.close()
        self._writer.close()


def loop_once(client: mqtt.Client, waker: Waker, timeout: float) -> MQTTErrorCode:
    """One round of network I/O for `client`: wait up to `timeout` for the broker or the waker, then read,
    write and run paho's housekeeping (keepalive pings, retries). The return code is `client.loop()`'s."""
    sock = client.socket()
    if sock is None:
        return mqtt.MQTT_ERR_NO_CONN
    pending = sock.pending() if isinstance(sock, ssl.SSLSocket) else 0  # TLS bytes select() cannot see
    writers = [sock] if client.want_write() else []
    try:
        readable, _, _ = select.select([sock, waker.reader], writers, [], 0.0 if pending else timeout)
    except (TypeError, ValueError, OSError):
        return mqtt.MQTT_ERR_CONN_LOST
    if waker.reader in readable:
        waker.drain()
    if sock in readable or pending:
        rc = client.loop_read()
        if rc != mqtt.MQTT_ERR_SUCCESS or client.socket() is None:
            return rc
    if client.want_write():  # also what was published since the select
        rc = client.loop_write()
        if rc != mqtt.MQTT_ERR_SUCCESS:
            return rc
    return client.loop_misc()
