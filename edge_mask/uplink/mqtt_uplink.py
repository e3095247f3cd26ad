"""Upload spooled frames over MQTT with QoS 1; a frame leaves the spool only when the cloud stored it.

Flow: the pipeline puts sealed frames into the spool; this module's thread keeps a small window of
messages in flight (`UplinkConfig.inflight`), publishes each record's chunks (`wire.split_message`, every
payload a chunk envelope) to `{prefix}/frames`, and waits for the broker's PUBACK of every chunk.

Why the PUBACK is not the end (`confirm = "cloud"`, the default): a broker that restarts without saving
its queue, or a receiver that fails to write, would lose frames the device had deleted. So after the
PUBACK a record waits "awaiting cloud" (`confirm.Outstanding`, at most `awaiting_max` records) until the
receiver's Ack on `{prefix}/ack` names its (stream, seq) (`Spool.delete_ranges`); the uplink subscribes
to that topic after every CONNACK. A record the cloud does not confirm within `ack_timeout_s` (doubling
per attempt, up to 8x) is sent again; the receiver drops duplicates and answers them as stored. A refusal
in an Ack (wrong recipient key, device not enrolled) keeps the frames and is reported
(`confirm.CloudVerdict`: log, stats, cloud-status.json for `doctor`). `confirm = "broker"` deletes on
PUBACK, for brokers with no receiver answering (the uplink benchmark's baseline).

A PUBACK with an MQTT 5 failure code (0x87 not authorized, 0x97 quota exceeded, ...) or 0x10 ("no
matching subscribers": the broker dropped it) is not a delivery in either mode: the record goes back to
pending and is retried after a back-off. On a lost connection the records still in flight go back to
pending and are sent again, oldest first, after the next CONNACK; the ones awaiting the cloud keep their
timers. Reconnects use exponential backoff with jitter (`edge_mask.core.backoff`).

Status: `{prefix}/status` is retained; the broker's LWT sets it to `offline`, the uplink sets `online`
after CONNACK and `stopped` on a clean stop. Stats go to `{prefix}/stats` every `stats_interval_s`.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt

from edge_mask.config import UplinkConfig
from edge_mask.core.backoff import Backoff
from edge_mask.core.errors import MessageError
from edge_mask.seal import Ack, ack_topic, parse_ack, split_message
from edge_mask.uplink.base import UPLINKS, Spool, StatsSource, Uplink
from edge_mask.uplink.confirm import CloudVerdict, Outstanding
from edge_mask.uplink.mqtt import (
    NO_MATCHING_SUBSCRIBERS,
    Waker,
    check_tls_files,
    loop_once,
    make_client,
    not_delivered,
    open_connection,
    reason_failed,
)

log = logging.getLogger(__name__)

_LOOP_TIMEOUT_S = 0.02
_STOP_GRACE_S = 2.0
_STOP_ACK_QUIET_S = 0.3  # on stop, wait for cloud answers only while they keep coming


class MqttUplink:
    """Drains a spool to an MQTT broker in a background thread (see module docstring)."""

    def __init__(
        self, cfg: UplinkConfig, device_id: str, spool: Spool, stats_source: StatsSource | None = None
    ) -> None:
        check_tls_files(cfg.broker, "uplink")
        self.cfg = cfg
        self.device_id = device_id
        self.spool = spool
        self.prefix = cfg.topic_prefix.format(device_id=device_id).rstrip("/")
        self.frames_topic = f"{self.prefix}/frames"
        self.status_topic = f"{self.prefix}/status"
        self.stats_topic = f"{self.prefix}/stats"
        self.ack_topic = ack_topic(self.frames_topic) if cfg.confirm == "cloud" else None
        self._client_id = cfg.broker.client_id or device_id
        self._stats_source = stats_source
        self._stop = threading.Event()
        self._clean_stop = True
        self._thread: threading.Thread | None = None
        self._connected = threading.Event()
        self._backoff = Backoff(cfg.retry_min_s, cfg.retry_max_s)
        self._extra_stats: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
        self._lock = threading.Lock()  # guards what stats() reads: counters, outstanding, verdict
        # Per connection: mid -> record id, record id -> mids still waiting for PUBACK.
        self._mid_record: dict[int, int] = {}
        self._record_mids: dict[int, set[int]] = {}
        self._out = Outstanding(cfg.ack_timeout_s)
        self._verdict = CloudVerdict(spool.directory)
        self._hold_until = 0.0
        self._waker: Waker | None = None
        """The running thread's wake-up socket pair: made by `start()`, closed by that thread as it ends."""
        self._session_up = False
        self._undelivered_logged = False
        self._counters = {
            "connects": 0,
            "connect_failures": 0,
            "disconnects": 0,
            "frames_published": 0,
            "frames_acked": 0,
            "chunks_published": 0,
            "frames_rejected": 0,
            "frames_undelivered": 0,
            "frames_resent": 0,
            "acks_received": 0,
            "acks_malformed": 0,
        }

    # ------------------------------------------------------------------------------------- public API

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError("uplink already started, or its last run has not ended yet")
        self._stop.clear()
        # A pair of its own for each run, closed by that run's thread as it ends.
        self._waker = Waker()
        self._thread = threading.Thread(target=self._run, args=(self._waker,), name="edge-mask-uplink", daemon=True)
        self._thread.start()

    def stop(self, clean: bool = True) -> None:
        """Stop the thread. Clean: publish `stopped` and disconnect; else drop the link so the LWT fires."""
        self._clean_stop = clean
        self._stop.set()
        self.wake()
        if self._thread is not None:
            self._thread.join(timeout=self.cfg.broker.connect_timeout_s + 3 * _STOP_GRACE_S + 5)
            if self._thread.is_alive():  # kept: start() must not run a second loop beside it on the same spool
                log.warning("uplink: its thread has not ended after stop; it will when its network call returns")

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def wake(self) -> None:
        """New records are in the spool: publish them now instead of at the next poll (`_LOOP_TIMEOUT_S`)."""
        waker = self._waker
        if waker is not None:
            waker.wake()

    def publish_stats(self, stats: dict[str, Any]) -> None:
        """Queue a stats message (merged with the uplink's own counters) for `{prefix}/stats`."""
        self._extra_stats.put(dict(stats))

    def stats(self) -> dict[str, Any]:
        with self._lock:
            out: dict[str, Any] = dict(self._counters)
            out["inflight_messages"] = len(self._mid_record)
            out["awaiting_cloud"] = self._out.awaiting
            out.update(self._verdict.stats())
        out["connected"] = self.connected
        return out

    # ------------------------------------------------------------------------------------ connections

    def _run(self, waker: Waker) -> None:
        try:
            self._connections(waker)
        finally:
            waker.close()

    def _connections(self, waker: Waker) -> None:
        while not self._stop.is_set():
            client = make_client(
                self.cfg.broker,
                self._client_id,
                will=(self.status_topic, b"offline"),
                max_inflight=self.cfg.inflight,
            )
            if self._open(client):
                self._backoff.reset()
                self._serve(client, waker)
            self._close(client)
            if self._stop.is_set():
                break
            delay = self._backoff.next()
            log.info("uplink: reconnecting to %s:%d in %.1f s", self.cfg.broker.host, self.cfg.broker.port, delay)
            self._stop.wait(delay)
        if self._verdict.confirmed or self._verdict.refusal is not None:
            self._verdict.write()  # last_confirmed_at as of the stop, for doctor

    def _open(self, client: mqtt.Client) -> bool:
        """Connect and wait for a successful CONNACK; False (and counted) otherwise."""
        self._session_up = False
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        failure = open_connection(client, self.cfg.broker, persistent_session=False, session_expiry_s=0,
                                  stop=self._stop.is_set)
        if failure is not None:
            self._count("connect_failures")
            log.warning("uplink: %s", failure)
            return False
        return True

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, props: Any) -> None:
        if reason_failed(reason_code):
            return
        self._session_up = True
        self._forget_link()
        with self._lock:
            self._counters["connects"] += 1
        if self.ack_topic is not None:
            # Before any frame: the broker handles this connection's packets in order, so no Ack for a
            # frame published after this point can miss the subscription.
            client.subscribe(self.ack_topic, qos=1)
        client.publish(self.status_topic, b"online", qos=1, retain=True)
        self._connected.set()
        log.info("uplink: connected to %s:%d as %s", self.cfg.broker.host, self.cfg.broker.port, self._client_id)

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, codes: Any, props: Any) -> None:
        if any(reason_failed(code) or getattr(code, "value", 0) >= 0x80 for code in codes):
            log.error("uplink: the broker refused the subscription to %s (%s): the cloud's confirmations cannot "
                      "arrive, frames stay spooled and are re-sent every ack_timeout_s -> fix: allow the device "
                      "to read its ack topic in the broker ACL", self.ack_topic, codes)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, props: Any) -> None:
        if self._session_up:
            self._session_up = False
            self._count("disconnects")
            if not self._stop.is_set():
                log.warning("uplink: connection lost (%s)", reason_code)
        self._connected.clear()

    def _forget_link(self) -> None:
        """Unacknowledged records stay in the spool and go out again after the next CONNACK."""
        with self._lock:
            self._mid_record.clear()
            self._record_mids.clear()
            self._out.forget_in_flight()

    def _close(self, client: mqtt.Client) -> None:
        self._connected.clear()
        self._forget_link()
        was_up, self._session_up = self._session_up, False
        if was_up and self._stop.is_set() and self._clean_stop:
            info = client.publish(self.status_topic, b"stopped", qos=1, retain=True)
            deadline = time.monotonic() + _STOP_GRACE_S
            while not info.is_published() and time.monotonic() < deadline:
                if client.loop(timeout=0.05) != mqtt.MQTT_ERR_SUCCESS:
                    break
            client.disconnect()
            client.loop(timeout=0.05)
        # Without a DISCONNECT packet (crash-like stop, or a dead link) the broker publishes the LWT.
        sock = client.socket()
        if sock is not None:
            sock.close()

    # ---------------------------------------------------------------------------------------- sending

    def _serve(self, client: mqtt.Client, waker: Waker) -> None:
        next_stats = time.monotonic() + self.cfg.stats_interval_s
        while not self._stop.is_set() and self._session_up:
            self._fill_window(client)
            while not self._extra_stats.empty():
                self._send_stats(client, self._extra_stats.get())
            if time.monotonic() >= next_stats:
                next_stats = time.monotonic() + self.cfg.stats_interval_s
                self._send_stats(client, {})
            if loop_once(client, waker, _LOOP_TIMEOUT_S) != mqtt.MQTT_ERR_SUCCESS:
                break
        if self._stop.is_set() and self._session_up and self._clean_stop:
            # Give the frames already out a moment to be acknowledged (and confirmed), to spare duplicates.
            deadline = time.monotonic() + _STOP_GRACE_S
            while self._session_up and time.monotonic() < deadline and (self._mid_record or self._answers_coming()):
                if client.loop(timeout=0.05) != mqtt.MQTT_ERR_SUCCESS:
                    break

    def _answers_coming(self) -> bool:
        age = self._verdict.stats()["last_confirmed_age_s"]
        return self._out.awaiting > 0 and age is not None and age < _STOP_ACK_QUIET_S

    def _fill_window(self, client: mqtt.Client) -> None:
        if time.monotonic() < self._hold_until:
            return
        with self._lock:
            self._out.expire()
            limit = self.cfg.inflight - len(self._mid_record)
            if self.ack_topic is not None:
                limit = min(limit, self.cfg.awaiting_max - len(self._out))
            if limit <= 0:
                return
            exclude = set(self._out.ids())
        for record in self.spool.pending(limit, exclude=exclude):
            if self._mid_record and len(self._mid_record) >= self.cfg.inflight:
                break  # a big chunked record waits until the window has drained
            mids: set[int] = set()
            for chunk in split_message(record.message, self.cfg.max_payload):
                info = client.publish(self.frames_topic, chunk, qos=1)
                if info.rc != mqtt.MQTT_ERR_SUCCESS:
                    # The link is gone; a partly sent record is not tracked and goes out whole next time.
                    log.debug("uplink: publish failed (%s); waiting for reconnect", info.rc)
                    self._session_up = False
                    return
                mids.add(info.mid)
            with self._lock:
                for mid in mids:
                    self._mid_record[mid] = record.id
                self._record_mids[record.id] = mids
                self._counters["frames_published"] += 1
                self._counters["chunks_published"] += len(mids)
                if self._out.published(record):
                    self._counters["frames_resent"] += 1

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason_code: Any, props: Any) -> None:
        with self._lock:
            record_id = self._mid_record.pop(mid, None)
            if record_id is None:
                return  # status or stats message
            mids = self._record_mids.get(record_id)
            if mids is None:
                return
            if not_delivered(reason_code):
                # Forget the whole record for this connection; it stays in the spool and is retried later.
                for other in mids:
                    self._mid_record.pop(other, None)
                del self._record_mids[record_id]
                self._out.forget(record_id)
                self._undelivered(reason_code)
                return
            self._undelivered_logged = False
            mids.discard(mid)
            if mids:
                return
            del self._record_mids[record_id]
            self._counters["frames_acked"] += 1
            if self.ack_topic is not None:
                self._out.delivered(record_id)  # now the cloud's turn
                return
            self._out.forget(record_id)
        self.spool.ack(record_id)

    def _undelivered(self, reason_code: Any) -> None:
        """Called under the lock: hold sending for a back-off, count and log (0x10 once per episode)."""
        delay = self._backoff.next()
        self._hold_until = time.monotonic() + delay
        if getattr(reason_code, "value", None) == NO_MATCHING_SUBSCRIBERS:
            self._counters["frames_undelivered"] += 1
            if not self._undelivered_logged:
                self._undelivered_logged = True
                log.warning("uplink: nobody subscribes to %s (PUBACK 0x10 no matching subscribers): the cloud "
                            "receiver is not listening; keeping frames spooled, retrying", self.frames_topic)
            return
        self._counters["frames_rejected"] += 1
        log.error("uplink: broker rejected a frame on %s (%s); keeping it spooled, retrying in %.1f s",
                  self.frames_topic, reason_code, delay)

    # ---------------------------------------------------------------------------------- cloud answers

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if self.ack_topic is None or msg.topic != self.ack_topic:
            return
        try:
            ack = parse_ack(bytes(msg.payload))
        except MessageError as exc:
            self._count("acks_malformed")
            log.warning("uplink: ignored a malformed answer on %s (%s)", msg.topic, exc)
            return
        self._count("acks_received")
        self._apply(ack)

    def _apply(self, ack: Ack) -> None:
        deleted = 0
        for stream_hex, ranges in ack.stored.items():
            stream = bytes.fromhex(stream_hex)
            deleted += self.spool.delete_ranges(stream, ranges)
            with self._lock:
                self._out.confirmed(stream, ranges)
        with self._lock:
            if ack.stored:
                self._verdict.on_confirmed(deleted)
            for refusal in ack.refused:
                self._verdict.on_refused(refusal, sum(b - a + 1 for a, b in refusal.ranges) or 1)

    def _send_stats(self, client: mqtt.Client, extra: dict[str, Any]) -> None:
        payload: dict[str, Any] = {"device_id": self.device_id, "time": time.time()}
        payload.update(self.stats())
        payload.update(self.spool.stats().as_dict())
        if self._stats_source is not None:
            payload.update(self._stats_source())
        payload.update(extra)
        client.publish(self.stats_topic, json.dumps(payload, default=str).encode(), qos=1)

    def _count(self, name: str) -> None:
        with self._lock:
            self._counters[name] += 1


@UPLINKS.register("mqtt")
def _mqtt_uplink(
    cfg: UplinkConfig, device_id: str, spool: Spool, stats_source: StatsSource | None = None
) -> Uplink:
    return MqttUplink(cfg, device_id, spool, stats_source=stats_source)
