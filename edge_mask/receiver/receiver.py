"""The cloud side: subscribe, reassemble, verify, decrypt, drop duplicates and replays, store.

Every MQTT payload goes through `Receiver.handle`, which never raises: a bad message is rejected, counted
under a stable reason and logged on one line, and the next message is handled as if nothing happened.
Reasons come from the opener (unknown_device, bad_signature, wrong_recipient, tampered, malformed,
oversized, unsupported_version) or from here:

* `topic_mismatch`: the header's device id is not the device the topic names. The broker's ACL only lets a
  device write below its own id, so this catches a device re-publishing another device's frames.
* `replay`: a validly signed message that must not be stored: its slot (device, stream, seq) is taken by a
  *different* message, or its capture time lies outside `max_clock_skew_s` of now.
A byte-identical copy of a stored message is a `duplicate` (QoS 1 re-delivery after a reconnect, or a
replay of the same bytes; the two cannot be told apart and neither stores anything).

Sessions: the receiver connects with a persistent session (MQTT 5 session expiry, or clean_session false on
3.1.1) and a stable client id, so frames published while it is down - or while the broker restarts with
persistence on - are queued for it rather than lost. paho acknowledges a QoS 1 message only after
`on_message` returns, i.e. after the frame and its index line are on disk.

Limitation: with `share_group`, the broker hands each MQTT message to one member of the group, so the
chunks of one frame can land on different receivers. Keep frames below `uplink.max_payload` (one chunk)
when sharing a subscription, or do not share.
"""

from __future__ import annotations

import hashlib
import logging
import socket
import threading
import time
from collections import Counter
from typing import Any

import paho.mqtt.client as mqtt

from edge_mask.config import ReceiverConfig
from edge_mask.core.backoff import Backoff
from edge_mask.core.errors import MessageError, UserError
from edge_mask.receiver.store import FrameStore
from edge_mask.seal import Opener, Reassembler, load_device_registry, load_recipient_private_key
from edge_mask.uplink import check_tls_files, make_client, open_connection, reason_failed

log = logging.getLogger(__name__)

SESSION_EXPIRY_S = 7 * 24 * 3600
"""How long the broker keeps queuing frames for a receiver that is away (MQTT 5)."""
_REGISTRY_RELOAD_S = 10.0
_EXPIRE_EVERY_S = 1.0


def topic_device(topic: str) -> str | None:
    """The device id a frames topic names: the level right before the first `frames` level."""
    parts = topic.split("/")
    for i in range(1, len(parts)):
        if parts[i] == "frames":
            return parts[i - 1]
    return None


class Receiver:
    """Receives sealed frames from MQTT and stores the verified ones (see module docstring)."""

    def __init__(self, cfg: ReceiverConfig, retry_max_s: float = 10.0) -> None:
        self.cfg = cfg
        self.retry_max_s = retry_max_s
        check_tls_files(cfg.broker, "receiver")
        self._recipient = load_recipient_private_key(cfg.recipient_private_key)
        self._load_registry()
        self.store = FrameStore(cfg.output_dir, cfg.write_mp4, cfg.mp4_fps)
        self._reassemblers: dict[str, Reassembler] = {}
        self.counts: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._next_expire = 0.0
        self._max_frames: int | None = None
        self._stop = threading.Event()
        self._session_up = False
        self.connected = threading.Event()
        self.client_id = cfg.broker.client_id or f"edge-mask-receiver-{socket.gethostname()}"
        self.subscription = (
            f"$share/{cfg.share_group}/{cfg.topic_filter}" if cfg.share_group else cfg.topic_filter
        )

    def _load_registry(self) -> None:
        try:
            devices = load_device_registry(self.cfg.devices_dir)
        except FileNotFoundError:
            raise UserError(
                f"receiver.devices_dir = {self.cfg.devices_dir}: not found; enroll devices with "
                "`edge-mask provision device` or fix the path"
            ) from None
        self._opener = Opener(self._recipient, devices, max_message_bytes=self.cfg.max_frame_bytes)
        self._devices = devices
        self._registry_loaded = time.monotonic()
        log.info("receiver: %d enrolled devices", len(devices))

    # ------------------------------------------------------------------------------- message handling

    def handle(self, topic: str, payload: bytes, now: float | None = None) -> str:
        """Process one MQTT payload; returns what happened: stored, duplicate, partial or the reject reason."""
        now = time.time() if now is None else now
        with self._lock:
            self.counts["received"] += 1
            try:
                outcome = self._handle(topic, payload, now)
            except MessageError as exc:
                self.rejected[exc.reason] += 1
                log.warning("receiver: rejected message on %s: %s", topic, exc)
                return exc.reason
            except Exception:  # a bug must not stop the receiver; it is counted and logged with its traceback
                self.rejected["internal_error"] += 1
                log.error("receiver: internal error handling a message on %s", topic, exc_info=True)
                return "internal_error"
            self.counts[outcome] += 1
            return outcome

    def _handle(self, topic: str, payload: bytes, now: float) -> str:
        if len(payload) > self.cfg.max_message_bytes:
            raise MessageError("oversized", f"{len(payload)} bytes > max_message_bytes {self.cfg.max_message_bytes}")
        device = topic_device(topic)
        if device is None:
            raise MessageError("malformed", "topic has no <device>/frames levels")
        if device not in self._devices and time.monotonic() - self._registry_loaded > _REGISTRY_RELOAD_S:
            self._load_registry()  # a device enrolled while we run
        if device not in self._devices:
            raise MessageError("unknown_device", f"device {device!r} in the topic is not enrolled")
        message = self._reassembler(device).feed(payload, time.monotonic())
        if message is None:
            return "partial"
        opened = self._opener.open(message)
        header = opened.header
        if header.device_id != device:
            raise MessageError("topic_mismatch", f"header says {header.device_id!r}, topic says {device!r}")
        if abs(now - header.captured_at) > self.cfg.max_clock_skew_s:
            raise MessageError(
                "replay", f"captured_at {header.captured_at:.0f} is more than max_clock_skew_s from now"
            )
        stream_hex = bytes(header.stream_id).hex()
        digest = hashlib.sha256(message).hexdigest()
        taken = self.store.lookup(device, stream_hex, header.seq)
        if taken == digest:
            log.info("receiver: duplicate %s/%s seq %d dropped", device, stream_hex, header.seq)
            return "duplicate"
        if taken is not None:
            raise MessageError("replay", f"{device}/{stream_hex} seq {header.seq} is already stored with other content")
        meta = opened.metadata if isinstance(opened.metadata, dict) else {}
        record = {
            "captured_at": header.captured_at,
            "received_at": round(now, 6),
            "width": header.width,
            "height": header.height,
            "content_type": header.content_type,
            "bytes": len(opened.image),
            "faces": meta.get("faces"),
            "fail_closed": meta.get("fail_closed"),
        }
        self.store.save(device, stream_hex, header.seq, opened.image, header.content_type, digest, record)
        return "stored"

    def _reassembler(self, device: str) -> Reassembler:
        """One per device, so a device cannot complete or evict another device's chunks."""
        found = self._reassemblers.get(device)
        if found is None:
            found = Reassembler(
                max_pending_bytes=self.cfg.max_pending_bytes,
                timeout_s=self.cfg.chunk_timeout_s,
                max_message_bytes=self.cfg.max_frame_bytes,
            )
            self._reassemblers[device] = found
        return found

    def expire(self) -> None:
        """Drop incomplete chunked frames older than `chunk_timeout_s` (also done on every feed)."""
        now = time.monotonic()
        with self._lock:
            for reassembler in self._reassemblers.values():
                reassembler.expire(now)

    def summary(self) -> dict[str, Any]:
        with self._lock:
            gaps: dict[str, int] = {}
            ranges: dict[str, list[tuple[int, int]]] = {}
            for (device, stream), state in self.store.streams().items():
                gaps[f"{device}/{stream}"] = state.missing()
                if state.missing():
                    ranges[f"{device}/{stream}"] = state.missing_ranges()
            incomplete = sum(
                r.counts["expired"] + r.counts["evicted"] for r in self._reassemblers.values()
            )
            return {
                "received": self.counts["received"],
                "stored": self.counts["stored"],
                "duplicates": self.counts["duplicate"],
                "partial_chunks": self.counts["partial"],
                "incomplete_dropped": incomplete,
                "rejected": dict(sorted(self.rejected.items())),
                "rejected_total": sum(self.rejected.values()),
                "gaps": gaps,
                "gaps_total": sum(gaps.values()),
                "gap_ranges": ranges,
            }

    # ------------------------------------------------------------------------------------------ MQTT

    def run(self, stop_event: threading.Event, max_frames: int | None = None) -> dict[str, Any]:
        """Receive until `stop_event` is set or `max_frames` frames were stored; returns the summary."""
        self._max_frames = max_frames
        self._stop = stop_event
        backoff = Backoff(min(0.5, self.retry_max_s), self.retry_max_s)
        try:
            while not self._done():
                client = make_client(self.cfg.broker, self.client_id, persistent_session=True)
                client.on_connect = self._on_connect
                client.on_disconnect = self._on_disconnect
                client.on_message = self._on_message
                client.on_subscribe = self._on_subscribe
                if self._open(client):
                    backoff.reset()
                    while not self._done() and self._session_up:
                        if client.loop(timeout=0.1) != mqtt.MQTT_ERR_SUCCESS:
                            break
                        if time.monotonic() >= self._next_expire:
                            self._next_expire = time.monotonic() + _EXPIRE_EVERY_S
                            self.expire()
                if self._session_up:
                    client.disconnect()
                    client.loop(timeout=0.1)
                self._session_up = False
                self.connected.clear()
                sock = client.socket()
                if sock is not None:
                    sock.close()
                if not self._done():
                    delay = backoff.next()
                    log.info("receiver: reconnecting in %.1f s", delay)
                    self._stop.wait(delay)
        finally:
            self.store.close()
        return self.summary()

    def _done(self) -> bool:
        return self._stop.is_set() or (self._max_frames is not None and self.counts["stored"] >= self._max_frames)

    def _open(self, client: mqtt.Client) -> bool:
        failure = open_connection(client, self.cfg.broker, persistent_session=True,
                                  session_expiry_s=SESSION_EXPIRY_S, stop=self._done)
        if failure is not None:
            log.warning("receiver: %s", failure)
            return False
        return True

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, props: Any) -> None:
        if reason_failed(reason_code):
            return
        self._session_up = True
        client.subscribe(self.subscription, qos=1)
        log.info("receiver: connected as %s, subscribing to %s", self.client_id, self.subscription)

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, codes: Any, props: Any) -> None:
        if any(reason_failed(code) or getattr(code, "value", 0) >= 0x80 for code in codes):
            log.error("receiver: broker refused the subscription to %s (%s)", self.subscription, codes)
            return
        self.connected.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, props: Any) -> None:
        if self._session_up and not self._done():
            log.warning("receiver: connection lost (%s)", reason_code)
        self._session_up = False
        self.connected.clear()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            topic = message.topic
        except UnicodeDecodeError:
            topic = "<invalid utf-8 topic>"
        self.handle(topic, bytes(message.payload))
