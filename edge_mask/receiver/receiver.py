"""The cloud side: reassemble, verify, decrypt, drop duplicates and replays, store, and answer the device.

Every MQTT payload goes through `Receiver.handle`, which never raises: a bad message is rejected, counted
under a stable reason and logged on one line, and the next message is handled as if nothing happened.
Reasons come from the opener (unknown_device, bad_signature, wrong_recipient, tampered, malformed,
oversized, unsupported_version) or from here:

* `topic_mismatch`: the header's device id is not the device the topic names. The broker's ACL only lets a
  device write below its own id, so this catches a device re-publishing another device's frames.
* `replay`: a validly signed message that must not be stored: its slot (device, stream, seq) is taken by a
  *different* message, or its capture time lies more than `max_clock_skew_s` in the past or more than
  `max_future_skew_s` in the future (a device clock that is off; answered as `clock_skew`).
A byte-identical copy of a stored message is a `duplicate` (QoS 1 re-delivery after a reconnect, or a
replay of the same bytes; the two cannot be told apart and neither stores anything).
Before any of that, a device over its rate limit (`limits.py`) has its chunks dropped (`rate_limited`).

Answers (`answers.py`): each stored or duplicate frame is confirmed to its device on `<prefix>/ack`, batched;
refusals the receiver can pin on the authenticated publisher (unknown_device named by the topic,
wrong_recipient and topic_mismatch after the signature verified, clock_skew) are answered at most once a
second per device; nothing else is answered (no oracle for forged or damaged bytes).

MQTT acknowledgement (`session.py` runs the connection): a message is acknowledged to the broker only when
its fate is settled: stored durably (its batch committed, store.py), definitively rejected, or dropped (duplicate
chunk, rate limited, expired, evicted). A chunk of a multi-chunk frame is held unacknowledged until its frame
completes, so a receiver killed between two chunks loses nothing: the broker re-delivers them. A storage
failure acknowledges nothing and makes the session reconnect after a back-off (`StorageFailure`).

Memory is bounded whatever the traffic: reassembly by its caps (`seal.chunks`), slots and streams by
`dedupe.py`, MP4 writers by `store.py`, answers by `answers.py`, rate limiter and registry by the enrolled
devices. At the defaults the bound is about max_pending_bytes (256 MiB) of held chunk data, which a flood of
tiny chunks cannot reach (the per-device chunk caps come first), plus about 10 MiB of bookkeeping. Measured
in-process (tracemalloc, Python objects; SQLite's page cache adds its default 2 MiB): one device flooding
250,000 tiny incomplete chunks, 1.4 MiB peak and 0.35 MiB after, with another device's 10 frames in between
all stored, at a flat 9 us per chunk (3 us when the rate limit drops them; the old scan of everything
pending took 300 us per chunk at 10,000 pending and 2 ms at 30,000); 10,000 streams of one frame each:
6.1 MiB; then 20,000 frames in one stream: no growth per frame.

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
from collections.abc import Callable
from typing import Any

from edge_mask.config import ReceiverConfig
from edge_mask.core.errors import MessageError
from edge_mask.receiver.answers import Answers
from edge_mask.receiver.limits import DeviceLimiter
from edge_mask.receiver.registry import DeviceRegistry
from edge_mask.receiver.session import run_session
from edge_mask.receiver.store import FrameStore, StorageFailure
from edge_mask.seal import (
    Ack,
    Opener,
    Reassembler,
    Refusal,
    ack_topic,
    decode_signals,
    load_recipient_private_key,
)
from edge_mask.uplink import check_tls_files

log = logging.getLogger(__name__)

_MAX_GAP_RANGE_STREAMS = 100
_BATCH_MAX = 64
"""Staged frames that make a batch commit at once (group commit, see store.py)."""
_BATCH_WAIT_S = 0.05
"""How long the first staged frame of a batch waits for others before the commit."""


def topic_device(topic: str) -> str | None:
    """The device id a frames topic names: the level right before the first `frames` level."""
    parts = topic.split("/")
    for i in range(1, len(parts)):
        if parts[i] == "frames":
            return parts[i - 1]
    return None


class _Refused(MessageError):
    """A rejection the receiver can attribute to the authenticated publisher, so it answers with `refusal`."""

    def __init__(self, reason: str, detail: str, refusal: Refusal) -> None:
        super().__init__(reason, detail)
        self.refusal = refusal


class Receiver:
    """Receives sealed frames from MQTT and stores the verified ones (see module docstring)."""

    def __init__(self, cfg: ReceiverConfig, retry_max_s: float = 10.0, *, clock: Callable[[], float] = time.monotonic):
        self.cfg = cfg
        self.retry_max_s = retry_max_s
        self._clock = clock
        check_tls_files(cfg.broker, "receiver")
        self._recipient = load_recipient_private_key(cfg.recipient_private_key)
        self.registry = DeviceRegistry(cfg.devices_dir, cfg.registry_poll_s)
        self._opener = Opener(self._recipient, self.registry.devices, max_message_bytes=cfg.max_frame_bytes)
        self.store = FrameStore(cfg.output_dir, cfg.write_mp4, cfg.mp4_fps, writer_idle_s=cfg.writer_idle_s,
                                max_open_writers=cfg.max_open_writers, clock=clock)
        self._reassembler: Reassembler[int] = Reassembler(
            cfg.max_pending_bytes, cfg.chunk_timeout_s, cfg.max_frame_bytes, max_pending_chunks=cfg.max_pending_chunks,
            source_max_bytes=cfg.device_max_pending_bytes, source_max_chunks=cfg.device_max_pending_chunks,
        )
        self._limiter = DeviceLimiter(
            cfg.device_rate_chunks_per_s, cfg.device_rate_bytes_per_s, cfg.device_rate_burst_s
        )
        self._answers = Answers(cfg.ack_interval_s)
        self._mqtt_acks: list[int] = []
        self._frame_tags: list[int] = []
        self._defer = False  # this message's acks and answer wait for the staged batch's commit
        self._waiting_acks: list[int] = []
        self._waiting_answers: list[tuple[str, str, int]] = []
        self._staged_since = 0.0
        self.group_commit = False  # set by the MQTT session: commit staged frames in batches (commit_if_due)
        self._limited_logged: dict[str, float] = {}
        self._rejects_logged: dict[str, float] = {}  # reason -> when its last line was logged
        self._rejects_quiet: Counter[str] = Counter()  # reason -> rejects since that line
        self.storage_failure: str | None = None  # set by a failed save; the session reconnects and clears it
        self.counts: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()
        self._lock = threading.Lock()
        self.connected = threading.Event()
        self.client_id = cfg.broker.client_id or f"edge-mask-receiver-{socket.gethostname()}"
        self.subscription = (
            f"$share/{cfg.share_group}/{cfg.topic_filter}" if cfg.share_group else cfg.topic_filter
        )

    # ------------------------------------------------------------------------------- message handling

    def handle(self, topic: str, payload: bytes, now: float | None = None, tag: int | None = None) -> str:
        """Process one MQTT payload; returns what happened: stored, duplicate, partial, rate_limited,
        storage_error or the reject reason. `tag` (the MQTT message id) comes back from `take_mqtt_acks`
        once the message's fate is settled (see the module docstring)."""
        now = time.time() if now is None else now
        mono = self._clock()
        with self._lock:
            self.counts["received"] += 1
            self._refresh_registry(mono)
            self._frame_tags = [] if tag is None else [tag]
            self._defer = False
            try:
                outcome = self._handle(topic, payload, now, mono, tag)
            except StorageFailure as exc:
                self._storage_failed(exc)
                self._frame_tags = []  # not acknowledged: the broker re-delivers after the reconnect
                outcome = "storage_error"
            except MessageError as exc:
                self.rejected[exc.reason] += 1
                if isinstance(exc, _Refused):
                    self._refuse(topic, exc.refusal, mono)
                self._log_rejected(topic, exc, mono)
                outcome = exc.reason
            except Exception:  # a bug must not stop the receiver; it is counted and logged with its traceback
                self.rejected["internal_error"] += 1
                log.error("receiver: internal error handling a message on %s", topic, exc_info=True)
                outcome = "internal_error"
            else:
                if outcome != "stored":  # counted when its batch commits
                    self.counts[outcome] += 1
            (self._waiting_acks if self._defer else self._mqtt_acks).extend(self._frame_tags)
            self._mqtt_acks.extend(self._reassembler.take_released())
            if self.store.staged and (not self.group_commit or self.store.staged >= _BATCH_MAX):
                if not self._commit() and outcome == "stored":
                    outcome = "storage_error"
            return outcome

    def commit_if_due(self, idle: bool) -> None:
        """Commit the staged batch when the network went quiet (`idle`), it is full, or it waited long enough."""
        with self._lock:
            if self.store.staged and (idle or self._clock() - self._staged_since >= _BATCH_WAIT_S):
                self._commit()

    def _commit(self) -> bool:
        """Commit staged frames; then their MQTT acks and answers go out. On failure nothing does."""
        try:
            stored = self.store.commit()
        except StorageFailure as exc:
            self._storage_failed(exc)
            self._waiting_acks.clear()
            self._waiting_answers.clear()
            return False
        self.counts["stored"] += stored
        self._mqtt_acks.extend(self._waiting_acks)
        self._waiting_acks.clear()
        for topic, stream_hex, seq in self._waiting_answers:
            self._answers.stored(topic, stream_hex, seq, self._clock())
        self._waiting_answers.clear()
        return True

    def _storage_failed(self, exc: StorageFailure) -> None:
        self.counts["storage_errors"] += 1
        self.storage_failure = str(exc)
        log.error("receiver: %s; not acknowledging it", exc)

    def _handle(self, topic: str, payload: bytes, now: float, mono: float, tag: int | None) -> str:
        if len(payload) > self.cfg.max_message_bytes:
            raise MessageError("oversized", f"{len(payload)} bytes > max_message_bytes {self.cfg.max_message_bytes}")
        device = topic_device(topic)
        if device is None:
            raise MessageError("malformed", "topic has no <device>/frames levels")
        if device not in self.registry.devices:
            detail = f"device {device!r} is not enrolled at this receiver"
            raise _Refused("unknown_device", detail, Refusal("unknown_device", detail))
        if not self._limiter.allow(device, len(payload), mono):
            self._log_limited(device, mono)
            return "rate_limited"
        done = self._reassembler.feed_tagged(payload, mono, device, tag)
        if done is None:
            self._frame_tags = []  # held by the reassembler (or released by it)
            return "partial"
        message, self._frame_tags = done
        try:
            opened = self._opener.open(message)
        except MessageError as exc:
            if exc.reason == "wrong_recipient":  # raised only after the device's signature verified
                raise _Refused(exc.reason, exc.detail, Refusal(exc.reason, exc.detail)) from None
            raise
        header = opened.header
        stream_hex = bytes(header.stream_id).hex()
        seq = header.seq
        if header.device_id != device:
            detail = f"header says {header.device_id!r}, topic says {device!r}"
            raise _Refused("topic_mismatch", detail, Refusal("topic_mismatch", detail, stream_hex, ((seq, seq),)))
        age = now - header.captured_at
        if age > self.cfg.max_clock_skew_s or -age > self.cfg.max_future_skew_s:
            side = f"{age:.0f} s in the past" if age > 0 else f"{-age:.0f} s in the future"
            detail = f"captured_at is {side} of the receiver's clock; check the device's clock (NTP)"
            raise _Refused("replay", detail, Refusal("clock_skew", detail, stream_hex, ((seq, seq),)))
        digest = hashlib.sha256(message).digest()
        key = self.store.open_stream(device, stream_hex)
        taken = self.store.lookup(key, seq)
        if taken == digest:
            log.info("receiver: duplicate %s/%s seq %d dropped", device, stream_hex, seq)
            self._defer = self.store.staged > 0  # it may be a copy of a frame not committed yet
            self._answer_stored(topic, stream_hex, seq, mono)
            return "duplicate"
        if taken is not None:
            raise MessageError("replay", f"{device}/{stream_hex} seq {seq} is already stored with other content")
        meta = opened.metadata if isinstance(opened.metadata, dict) else {}
        record = {"captured_at": header.captured_at, "received_at": round(now, 6), "width": header.width,
                  "height": header.height, "content_type": header.content_type, "bytes": len(opened.image),
                  "faces": meta.get("faces"), "fail_closed": meta.get("fail_closed")}
        if "signals" in meta:
            try:
                record["signals"] = decode_signals(meta["signals"])
            except (ValueError, TypeError, OverflowError, RecursionError) as exc:  # signed: keep the frame
                self.counts["signals_malformed"] += 1
                log.warning("receiver: %s/%s seq %d: %s; frame kept without its signals", device, stream_hex, seq, exc)
        if not self.store.staged:
            self._staged_since = mono
        self.store.stage(key, seq, opened.image, header.content_type, digest, record)
        self._defer = True
        self._answer_stored(topic, stream_hex, seq, mono)
        return "stored"

    def _answer_stored(self, topic: str, stream_hex: str, seq: int, mono: float) -> None:
        answer_topic = ack_topic(topic)
        if answer_topic is None:
            return
        if self._defer:
            self._waiting_answers.append((answer_topic, stream_hex, seq))
        else:
            self._answers.stored(answer_topic, stream_hex, seq, mono)

    def _refuse(self, topic: str, refusal: Refusal, mono: float) -> None:
        device, answer_topic = topic_device(topic), ack_topic(topic)
        if device is not None and answer_topic is not None:
            self._answers.refuse(device, answer_topic, refusal, mono)

    def _log_rejected(self, topic: str, exc: MessageError, mono: float) -> None:
        """One line per reject reason every 10 s: a flood of bad messages must not flood the log (the
        counters in the summary carry every one)."""
        last = self._rejects_logged.get(exc.reason)
        if last is not None and mono - last < 10:
            self._rejects_quiet[exc.reason] += 1
            return
        quiet = self._rejects_quiet.pop(exc.reason, 0)
        more = f" (and {quiet} more {exc.reason} since the last such line)" if quiet else ""
        log.warning("receiver: rejected message on %s: %s%s", topic, exc, more)
        self._rejects_logged[exc.reason] = mono

    def _log_limited(self, device: str, mono: float) -> None:
        last = self._limited_logged.get(device)
        if last is None or mono - last >= 60:
            log.warning("receiver: device %s is over its rate limit; dropping its chunks (it will re-send)", device)
            self._limited_logged[device] = mono

    def _refresh_registry(self, mono: float, force: bool = False) -> bool:
        if not self.registry.poll(mono, force=force):
            return False
        devices = self.registry.devices
        self._opener = Opener(self._recipient, devices, max_message_bytes=self.cfg.max_frame_bytes)
        self._limiter.retain(devices)
        self._limited_logged = {d: t for d, t in self._limited_logged.items() if d in devices}
        return True

    def poll_registry(self) -> bool:
        """Re-read the enrollment records now (the receiver also does it every `registry_poll_s`)."""
        with self._lock:
            return self._refresh_registry(self._clock(), force=True)

    # ------------------------------------------------------------------------- what to send, when

    def take_mqtt_acks(self) -> list[int]:
        """MQTT message ids whose fate is settled since the last call: acknowledge them to the broker."""
        with self._lock:
            acks, self._mqtt_acks = self._mqtt_acks, []
            return acks

    def take_answers(self, force: bool = True) -> list[tuple[str, Ack]]:
        """(ack topic, Ack) to publish to devices: the due batches, or all of them (`force`)."""
        with self._lock:
            return self._answers.due(self._clock(), force=force)

    def expire(self) -> None:
        """Drop incomplete chunked frames older than `chunk_timeout_s` and close idle MP4 writers."""
        mono = self._clock()
        with self._lock:
            self._reassembler.expire(mono)
            self._mqtt_acks.extend(self._reassembler.take_released())
            self.store.close_idle(mono)
            self._refresh_registry(mono)

    def reset_connection(self) -> None:
        """The MQTT connection is gone: held chunks and pending acks belong to it (the broker re-delivers).
        Frames already staged are committed: they are stored, and their copies will be duplicates."""
        with self._lock:
            if self.store.staged:
                self._commit()
            self._reassembler.clear()
            self._mqtt_acks.clear()

    def memory(self) -> dict[str, int]:
        """Sizes of the receiver's bounded structures (for tests and measurements)."""
        with self._lock:
            r = self._reassembler.stats()
            return {
                "pending_messages": r["pending"], "pending_chunks": r["pending_chunks"],
                "pending_bytes": r["pending_bytes"], "reassembly_heap": r["heap"],
                **self.store.dedupe.memory(), "open_writers": self.store.open_writers(),
                "answer_batches": self._answers.waiting(), "rate_buckets": len(self._limiter),
                "mqtt_acks_waiting": len(self._mqtt_acks),
            }

    def summary(self) -> dict[str, Any]:
        with self._lock:
            gaps: dict[str, int] = {}
            ranges: dict[str, list[tuple[int, int]]] = {}
            for key, stats in self.store.streams():
                name = f"{key[0]}/{key[1]}"
                gaps[name] = stats.missing()
                if stats.missing() and len(ranges) < _MAX_GAP_RANGE_STREAMS:
                    ranges[name] = self.store.missing_ranges(key)
            r = self._reassembler.stats()
            return {
                "received": self.counts["received"],
                "stored": self.counts["stored"],
                "duplicates": self.counts["duplicate"],
                "partial_chunks": self.counts["partial"],
                "incomplete_dropped": r["expired"] + r["evicted"] + r["over_cap"],
                "held_chunks": r["pending_chunks"],
                "rate_limited": self.counts["rate_limited"],
                "storage_errors": self.counts["storage_errors"],
                "rejected": dict(sorted(self.rejected.items())),
                "rejected_total": sum(self.rejected.values()),
                "answered": self._answers.counts["stored_answered"],
                "refusals_sent": self._answers.counts["refusals"],
                "refusals_suppressed": self._answers.counts["refusals_suppressed"],
                "gaps": gaps,
                "gaps_total": sum(gaps.values()),
                "gap_ranges": ranges,
            }

    # ------------------------------------------------------------------------------------------ MQTT

    def run(self, stop_event: threading.Event, max_frames: int | None = None) -> dict[str, Any]:
        """Receive until `stop_event` is set or `max_frames` frames were stored; returns the summary.
        Raises StorageError after `max_storage_failures` storage failures in a row (see session.py)."""
        try:
            run_session(self, stop_event, max_frames)
        finally:
            summary = self.summary()
            self.store.close()
        return summary
