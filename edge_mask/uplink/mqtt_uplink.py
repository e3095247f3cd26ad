"""Upload spooled frames over MQTT with QoS 1; a frame leaves the spool only when the broker acknowledged it.

Flow: the pipeline puts sealed frames into the spool; this module's thread keeps a small window of
records in flight (`UplinkConfig.inflight` MQTT messages), publishes each record's chunks
(`wire.split_message`, every payload a chunk envelope) to `{prefix}/frames`, and acks the record in the
spool once every chunk got its PUBACK. A PUBACK with an MQTT 5 failure code (0x87 not authorized,
0x97 quota exceeded, ...) is not an acknowledgement: the record stays and is retried after a back-off.

On a lost connection the in-flight set is simply forgotten: those records are still in the spool and are
sent again, oldest first, after the next CONNACK (the receiver drops the duplicates). Reconnects use
exponential backoff with jitter (`edge_mask.core.backoff`). `connected` is true only between a successful
CONNACK and the loss of that connection.

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
from edge_mask.seal import split_message
from edge_mask.uplink.base import UPLINKS, StatsSource, Uplink
from edge_mask.uplink.mqtt import check_tls_files, make_client, open_connection, reason_failed
from edge_mask.uplink.spool import Spool

log = logging.getLogger(__name__)

_LOOP_TIMEOUT_S = 0.02
_STOP_GRACE_S = 2.0


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
        self._client_id = cfg.broker.client_id or device_id
        self._stats_source = stats_source
        self._stop = threading.Event()
        self._clean_stop = True
        self._thread: threading.Thread | None = None
        self._connected = threading.Event()
        self._backoff = Backoff(cfg.retry_min_s, cfg.retry_max_s)
        self._extra_stats: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
        self._lock = threading.Lock()  # guards the counters read by stats()
        # Per connection: mid -> record id, record id -> mids still waiting for PUBACK.
        self._mid_record: dict[int, int] = {}
        self._record_mids: dict[int, set[int]] = {}
        self._hold_until = 0.0
        self._session_up = False
        self._counters = {
            "connects": 0,
            "connect_failures": 0,
            "disconnects": 0,
            "frames_published": 0,
            "frames_acked": 0,
            "chunks_published": 0,
            "frames_rejected": 0,
            "frames_resent": 0,
        }
        self._ever_sent: set[int] = set()

    # ------------------------------------------------------------------------------------- public API

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("uplink already started")
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="edge-mask-uplink", daemon=True)
        self._thread.start()

    def stop(self, clean: bool = True) -> None:
        """Stop the thread. Clean: publish `stopped` and disconnect; else drop the link so the LWT fires."""
        self._clean_stop = clean
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.cfg.broker.connect_timeout_s + 2 * _STOP_GRACE_S + 5)
            self._thread = None

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def publish_stats(self, stats: dict[str, Any]) -> None:
        """Queue a stats message (merged with the uplink's own counters) for `{prefix}/stats`."""
        self._extra_stats.put(dict(stats))

    def stats(self) -> dict[str, Any]:
        with self._lock:
            out: dict[str, Any] = dict(self._counters)
            out["inflight_messages"] = len(self._mid_record)
        out["connected"] = self.connected
        return out

    # ------------------------------------------------------------------------------------ connections

    def _run(self) -> None:
        while not self._stop.is_set():
            client = make_client(
                self.cfg.broker,
                self._client_id,
                will=(self.status_topic, b"offline"),
                max_inflight=self.cfg.inflight,
            )
            if self._open(client):
                self._backoff.reset()
                self._serve(client)
            self._close(client)
            if self._stop.is_set():
                break
            delay = self._backoff.next()
            log.info("uplink: reconnecting to %s:%d in %.1f s", self.cfg.broker.host, self.cfg.broker.port, delay)
            self._stop.wait(delay)

    def _open(self, client: mqtt.Client) -> bool:
        """Connect and wait for a successful CONNACK; False (and counted) otherwise."""
        self._session_up = False
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
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
        with self._lock:
            self._counters["connects"] += 1
            self._mid_record.clear()
            self._record_mids.clear()
        client.publish(self.status_topic, b"online", qos=1, retain=True)
        self._connected.set()
        log.info("uplink: connected to %s:%d as %s", self.cfg.broker.host, self.cfg.broker.port, self._client_id)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, props: Any) -> None:
        if self._session_up:
            self._session_up = False
            self._count("disconnects")
            if not self._stop.is_set():
                log.warning("uplink: connection lost (%s)", reason_code)
        self._connected.clear()

    def _close(self, client: mqtt.Client) -> None:
        self._connected.clear()
        with self._lock:
            # Unacknowledged records stay in the spool and go out again after the next CONNACK.
            self._mid_record.clear()
            self._record_mids.clear()
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

    def _serve(self, client: mqtt.Client) -> None:
        next_stats = time.monotonic() + self.cfg.stats_interval_s
        while not self._stop.is_set() and self._session_up:
            self._fill_window(client)
            while not self._extra_stats.empty():
                self._send_stats(client, self._extra_stats.get())
            if time.monotonic() >= next_stats:
                next_stats = time.monotonic() + self.cfg.stats_interval_s
                self._send_stats(client, {})
            if client.loop(timeout=_LOOP_TIMEOUT_S) != mqtt.MQTT_ERR_SUCCESS:
                break
        if self._stop.is_set() and self._session_up and self._clean_stop:
            # Give the frames already in flight a moment to be acknowledged, to spare duplicates.
            deadline = time.monotonic() + _STOP_GRACE_S
            while self._mid_record and self._session_up and time.monotonic() < deadline:
                if client.loop(timeout=0.05) != mqtt.MQTT_ERR_SUCCESS:
                    break

    def _fill_window(self, client: mqtt.Client) -> None:
        if time.monotonic() < self._hold_until:
            return
        room = self.cfg.inflight - len(self._mid_record)
        if room <= 0:
            return
        records = self.spool.pending(room, exclude=self._record_mids.keys())
        for record in records:
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
                if record.id in self._ever_sent:
                    self._counters["frames_resent"] += 1
                if len(self._ever_sent) > 100_000:
                    self._ever_sent.clear()  # ids dropped from the spool for space never get acked
                self._ever_sent.add(record.id)

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason_code: Any, props: Any) -> None:
        with self._lock:
            record_id = self._mid_record.pop(mid, None)
            if record_id is None:
                return  # status or stats message
            mids = self._record_mids.get(record_id)
            if mids is None:
                return
            if reason_failed(reason_code):
                # Forget the whole record for this connection; it stays in the spool and is retried later.
                for other in mids:
                    self._mid_record.pop(other, None)
                del self._record_mids[record_id]
                self._counters["frames_rejected"] += 1
                delay = self._backoff.next()
                self._hold_until = time.monotonic() + delay
                log.error(
                    "uplink: broker rejected a frame on %s (%s); keeping it spooled, retrying in %.1f s",
                    self.frames_topic, reason_code, delay,
                )
                return
            mids.discard(mid)
            if mids:
                return
            del self._record_mids[record_id]
            self._counters["frames_acked"] += 1
            self._ever_sent.discard(record_id)
        self.spool.ack(record_id)

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
