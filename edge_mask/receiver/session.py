"""The receiver's MQTT connection: persistent session, manual acknowledgement, answers, storage back-off.

Sessions: the receiver connects with a persistent session (MQTT 5 session expiry, or clean_session false on
3.1.1) and a stable client id, so frames published while it is down - or while the broker restarts with
persistence on - are queued for it rather than lost.

Manual acknowledgement (paho's `manual_ack_set`): paho would acknowledge a QoS 1 message as soon as
`on_message` returns, whatever happened to it. Here the PUBACK goes out only for the message ids the receiver
hands back from `take_mqtt_acks()`: frames stored durably, definitive rejections, and dropped chunks. A chunk
of an incomplete frame stays unacknowledged, so a receiver killed between two chunks gets them all again.
The broker sends at most `receive_maximum` (MQTT 5 Receive Maximum, in CONNECT) unacknowledged messages; the
receiver holds at most `max_pending_chunks` < `receive_maximum` of them, so delivery never stalls on held
chunks. With MQTT 3.1.1 the broker's `max_inflight_messages` plays that role and must be set above
`max_pending_chunks` (or frames kept to one chunk).

Group commit: frames are staged as they arrive and committed as a batch when the network goes quiet, 64 are
staged, or the first waited 50 ms (`Receiver.commit_if_due`, after every loop turn); their MQTT acks and
answers go out after the commit. Under load that shares a commit's fsyncs among the batch.

Storage failures (disk full, permissions): the failed message is not acknowledged; the session publishes
what is due, disconnects, waits (exponential back-off) and reconnects, and the broker re-delivers. After
`max_storage_failures` failures in a row without a frame stored in between, `run_session` raises
StorageError: `edge-mask receive` exits non-zero with one line, for systemd (or an operator) to act.

Answers to devices are published here, QoS 1, from this one network-loop thread: due batches after every
loop turn, everything at disconnect (waiting up to 2 s for the broker's PUBACKs). An answer the broker did not
acknowledge before the connection died is published again on the next connection (a repeated answer is
harmless: it confirms the same frames), so a broker restart does not leave a device waiting for its
`ack_timeout_s` to learn what the cloud stored. An answer the broker could hand to nobody (MQTT 5 PUBACK 0x10:
the device is between connections) is tried again every second, up to 30 times.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from typing import Any, Protocol

import paho.mqtt.client as mqtt

from edge_mask.config import ReceiverConfig
from edge_mask.core.backoff import Backoff
from edge_mask.receiver.store import StorageError
from edge_mask.seal import Ack
from edge_mask.uplink import NO_MATCHING_SUBSCRIBERS, make_client, open_connection, reason_failed

log = logging.getLogger(__name__)

SESSION_EXPIRY_S = 7 * 24 * 3600
"""How long the broker keeps queuing frames for a receiver that is away (MQTT 5)."""
_EXPIRE_EVERY_S = 1.0
_FLUSH_WAIT_S = 2.0
_ANSWER_INFLIGHT = 100
_MAX_CARRIED = 10_000
_UNHEARD_RETRY_S = 1.0
_UNHEARD_ATTEMPTS = 30


class Core(Protocol):
    """What the session needs of the Receiver (receiver.py)."""

    cfg: ReceiverConfig
    retry_max_s: float
    client_id: str
    subscription: str
    connected: threading.Event
    counts: Counter[str]
    storage_failure: str | None

    group_commit: bool

    def handle(self, topic: str, payload: bytes, now: float | None = None, tag: int | None = None) -> str: ...
    def commit_if_due(self, idle: bool) -> None: ...
    def take_mqtt_acks(self) -> list[int]: ...
    def take_answers(self, force: bool = True) -> list[tuple[str, Ack]]: ...
    def expire(self) -> None: ...
    def reset_connection(self) -> None: ...


def run_session(core: Core, stop: threading.Event, max_frames: int | None) -> None:
    """Receive until `stop` is set or `max_frames` frames were stored (see the module docstring)."""
    core.group_commit = True
    try:
        _Session(core, stop, max_frames).run()
    finally:
        core.reset_connection()  # commits what is staged
        core.group_commit = False


class _Session:
    def __init__(self, core: Core, stop: threading.Event, max_frames: int | None) -> None:
        self.core = core
        self.cfg = core.cfg
        self.stop = stop
        self.max_frames = max_frames
        self.session_up = False
        # answer mid -> (topic, payload, attempts); answers a dead connection never got a PUBACK for; answers
        # nobody was subscribed to (the device reconnecting), to try again a little later
        self.answers_inflight: dict[int, tuple[str, bytes, int]] = {}
        self.carried: list[tuple[str, bytes, int]] = []
        self.unheard: list[tuple[float, str, bytes, int]] = []
        self.denied_logged = False
        self.counts: Counter[str] = Counter()

    def run(self) -> None:
        core = self.core
        retry_max = max(core.retry_max_s, 0.5)
        backoff = Backoff(min(0.5, retry_max), retry_max)
        failures = 0
        next_expire = 0.0
        while not self._done():
            core.reset_connection()
            core.storage_failure = None
            stored_before = core.counts["stored"]
            client = self._client()
            failed_storage = False
            if self._open(client):
                if failures == 0:
                    backoff.reset()
                tick = min(0.1, self.cfg.ack_interval_s)
                while not self._done() and self.session_up:
                    received = core.counts["received"]
                    if client.loop(timeout=tick) != mqtt.MQTT_ERR_SUCCESS:
                        break
                    core.commit_if_due(idle=core.counts["received"] == received)
                    if time.monotonic() >= next_expire:
                        next_expire = time.monotonic() + _EXPIRE_EVERY_S
                        core.expire()
                    self._pump(client, force=False)
                    if core.storage_failure is not None:
                        failed_storage = True
                        break
                if self.session_up:
                    self._flush(client)
                    client.disconnect()
                    client.loop(timeout=0.1)
            self.session_up = False
            core.connected.clear()
            sock = client.socket()
            if sock is not None:
                sock.close()
            if core.counts["stored"] > stored_before:
                failures = 0
            if failed_storage:
                failures += 1
                if failures >= self.cfg.max_storage_failures:
                    raise StorageError(
                        f"receiver: {failures} storage failures in a row, last: {core.storage_failure}; "
                        f"free space or fix permissions under receiver.output_dir = {self.cfg.output_dir}"
                    )
            if not self._done():
                delay = backoff.next()
                log.info("receiver: reconnecting in %.1f s%s", delay,
                         f" (storage failure {failures} of {self.cfg.max_storage_failures})" if failed_storage else "")
                self.stop.wait(delay)

    def _client(self) -> mqtt.Client:
        client = make_client(self.cfg.broker, self.core.client_id, persistent_session=True,
                             max_inflight=_ANSWER_INFLIGHT)
        client.manual_ack_set(True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.on_publish = self._on_publish
        self.carried = (self.carried + list(self.answers_inflight.values()))[-_MAX_CARRIED:]
        self.answers_inflight.clear()
        return client

    def _done(self) -> bool:
        return self.stop.is_set() or (self.max_frames is not None and self.core.counts["stored"] >= self.max_frames)

    def _open(self, client: mqtt.Client) -> bool:
        failure = open_connection(client, self.cfg.broker, persistent_session=True, session_expiry_s=SESSION_EXPIRY_S,
                                  stop=self._done, receive_maximum=self.cfg.receive_maximum)
        if failure is not None:
            log.warning("receiver: %s", failure)
            return False
        return True

    def _pump(self, client: mqtt.Client, force: bool) -> None:
        """Acknowledge settled messages to the broker and publish the answers that are due."""
        for mid in self.core.take_mqtt_acks():
            client.ack(mid, 1)
        answers = [(topic, ack.pack(), 0) for topic, ack in self.core.take_answers(force=force)]
        if self.carried:
            answers, self.carried = self.carried + answers, []
        if self.unheard and (force or self.unheard[0][0] <= time.monotonic()):
            now = time.monotonic()
            answers += [(t, p, n) for due, t, p, n in self.unheard if force or due <= now]
            self.unheard = [u for u in self.unheard if not (force or u[0] <= now)]
        for topic, payload, attempts in answers:
            info = client.publish(topic, payload, qos=1)
            if info.rc == mqtt.MQTT_ERR_SUCCESS:
                self.answers_inflight[info.mid] = (topic, payload, attempts)
                self.counts["answers_published"] += 1
            else:  # not connected any more: publish it on the next connection
                self.carried.append((topic, payload, attempts))

    def _flush(self, client: mqtt.Client) -> None:
        self.core.commit_if_due(idle=True)
        self._pump(client, force=True)
        deadline = time.monotonic() + _FLUSH_WAIT_S
        while self.answers_inflight and self.session_up and time.monotonic() < deadline:
            if client.loop(timeout=0.05) != mqtt.MQTT_ERR_SUCCESS:
                break

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, props: Any) -> None:
        if reason_failed(reason_code):
            return
        self.session_up = True
        client.subscribe(self.core.subscription, qos=1)
        log.info("receiver: connected as %s, subscribing to %s", self.core.client_id, self.core.subscription)

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, codes: Any, props: Any) -> None:
        if any(reason_failed(code) or getattr(code, "value", 0) >= 0x80 for code in codes):
            log.error("receiver: broker refused the subscription to %s (%s)", self.core.subscription, codes)
            return
        self.core.connected.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, props: Any) -> None:
        if self.session_up and not self._done():
            log.warning("receiver: connection lost (%s)", reason_code)
        self.session_up = False
        self.core.connected.clear()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            topic = message.topic
        except UnicodeDecodeError:
            topic = "<invalid utf-8 topic>"
        self.core.handle(topic, bytes(message.payload), tag=message.mid if message.qos == 1 else None)
        for mid in self.core.take_mqtt_acks():
            client.ack(mid, 1)

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason_code: Any, props: Any) -> None:
        sent = self.answers_inflight.pop(mid, None)
        if getattr(reason_code, "value", 0) == NO_MATCHING_SUBSCRIBERS and sent is not None:
            # The device is not subscribed right now (reconnecting after a broker restart, say): its clean
            # session would never get this answer, so try again shortly, a bounded number of times.
            topic, payload, attempts = sent
            if attempts + 1 < _UNHEARD_ATTEMPTS and len(self.unheard) < _MAX_CARRIED:
                self.unheard.append((time.monotonic() + _UNHEARD_RETRY_S, topic, payload, attempts + 1))
            return
        if reason_failed(reason_code):
            self.counts["answers_refused"] += 1
            if not self.denied_logged:
                log.error("receiver: the broker refused an answer to a device (%s); its ACL must let the receiver "
                          "publish to <prefix>/ack (edge-mask/+/ack)", reason_code)
                self.denied_logged = True
