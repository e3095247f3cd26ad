"""What the uplink sent and still waits to hear about, and the cloud's verdict on this device.

`Outstanding` holds every record published in this process and not yet confirmed: "in flight" until the
broker's PUBACK for its last chunk, then "awaiting cloud" until an Ack (`seal.Ack`) names its
(stream, seq), or until its timer runs out (`ack_timeout_s`, doubled per attempt up to 8x), when it goes
back to pending and is sent again. The state is memory only: after a restart everything in the spool is
sent once more, and the receiver answers the duplicates as stored. Records in here are excluded from the
spool's `pending()`, so nothing is published twice while an answer can still come.

`CloudVerdict` is what the cloud said last: a refusal reason (wrong recipient key, device not enrolled...)
is logged once per change (and at most every 60 s while it lasts), counted, shown in the stats and written
atomically to `<spool dir>/cloud-status.json` (mode 0600), which `edge-mask doctor` reads. Refused frames
stay in the spool: a device re-provisioned or enrolled at the cloud delivers them after all.
"""

from __future__ import annotations

import datetime as dt
import heapq
import json
import logging
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_mask.seal import Refusal, write_secret
from edge_mask.uplink.base import Range, SpoolRecord

log = logging.getLogger(__name__)

STATUS_NAME = "cloud-status.json"
MAX_BACKOFF_FACTOR = 8
_RELOG_S = 60.0
_REWRITE_S = 60.0
_MAX_ATTEMPT_ENTRIES = 100_000

# The fix for each refusal reason the receiver can attribute to an authenticated device.
FIXES = {
    "wrong_recipient": "re-provision the device with the cloud's current recipient.pub "
                       "(seal.recipient_public_key); the frames it holds are sealed to a key the cloud lacks",
    "unknown_device": "enroll the device at the cloud (edge-mask provision device ... --devices <cloud devices dir>)"
                      " or check device_id against its certificate",
    "bad_signature": "re-enroll the device's current signing key at the cloud (seal.signing_key changed)",
    "replay": "check the device clock (timedatectl set-ntp true) and that no other device uses this id",
    "clock_skew": "check the device clock (timedatectl set-ntp true)",
}
DEFAULT_FIX = "check the receiver's log for this device; frames stay spooled until the cloud stores them"


def fix_for(reason: str) -> str:
    return FIXES.get(reason, DEFAULT_FIX)


@dataclass
class _Sent:
    key: tuple[bytes, int]
    attempt: int
    deadline: float | None = None  # None while in flight to the broker


def ids_in_ranges(index: Mapping[tuple[bytes, int], int], stream: bytes, ranges: Iterable[Range]) -> list[int]:
    """The record ids that `index` ((stream, seq) -> id) holds for `stream` within the inclusive ranges: each
    seq of a range shorter than the index is looked up, a longer range scans the index once."""
    matched: list[int] = []
    for first, last in ranges:
        if last - first < len(index):
            found = (index.get((stream, seq)) for seq in range(first, last + 1))
            matched += [rid for rid in found if rid is not None]
        else:
            matched += [rid for (s, seq), rid in index.items() if s == stream and first <= seq <= last]
    return matched


class Outstanding:
    """Records published and not yet confirmed by the cloud (see module docstring). One thread only."""

    def __init__(self, ack_timeout_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._timeout = ack_timeout_s
        self._clock = clock
        self._sent: dict[int, _Sent] = {}
        self._by_key: dict[tuple[bytes, int], int] = {}
        self._attempts: dict[int, int] = {}  # publishes per record id, kept while it is pending again
        self._timers: list[tuple[float, int, int]] = []  # (deadline, record id, attempt), lazily pruned
        self.awaiting = 0

    def __len__(self) -> int:
        return len(self._sent)

    def ids(self) -> Collection[int]:
        return self._sent.keys()

    def published(self, record: SpoolRecord) -> bool:
        """Note a record handed to the broker; True when this is a re-send."""
        attempt = self._attempts.get(record.id, 0) + 1
        if len(self._attempts) >= _MAX_ATTEMPT_ENTRIES:
            self._attempts.clear()  # ids dropped from the spool for space never come back
        self._attempts[record.id] = attempt
        key = (record.stream, record.seq)
        self._sent[record.id] = _Sent(key, attempt)
        self._by_key[key] = record.id
        return attempt > 1

    def delivered(self, record_id: int) -> bool:
        """The broker took every chunk: start the cloud timer. False when the record is no longer ours
        (the cloud confirmed it before the PUBACK arrived)."""
        sent = self._sent.get(record_id)
        if sent is None or sent.deadline is not None:
            return False
        sent.deadline = self._clock() + self._timeout * min(2 ** (sent.attempt - 1), MAX_BACKOFF_FACTOR)
        heapq.heappush(self._timers, (sent.deadline, record_id, sent.attempt))
        self.awaiting += 1
        if len(self._timers) > 4 * len(self._sent) + 1024:
            self._timers = [t for t in self._timers if self._live(t)]
            heapq.heapify(self._timers)
        return True

    def forget(self, record_id: int) -> None:
        """Not delivered (failed PUBACK, 0x10, link lost): the record is pending again, sent from the spool."""
        sent = self._sent.pop(record_id, None)
        if sent is None:
            return
        if self._by_key.get(sent.key) == record_id:
            del self._by_key[sent.key]
        if sent.deadline is not None:
            self.awaiting -= 1

    def forget_in_flight(self) -> int:
        """The connection dropped: records without a PUBACK go back to pending; awaiting ones keep waiting."""
        lost = [rid for rid, sent in self._sent.items() if sent.deadline is None]
        for rid in lost:
            self.forget(rid)
        return len(lost)

    def confirmed(self, stream: bytes, ranges: Iterable[Range]) -> int:
        """Drop what the cloud confirmed; how many of the records in here it named."""
        matched = ids_in_ranges(self._by_key, stream, ranges)
        for rid in matched:
            self.forget(rid)
            self._attempts.pop(rid, None)
        return len(matched)

    def expire(self) -> int:
        """Records whose cloud timer ran out go back to pending (re-sent, oldest first); how many."""
        now = self._clock()
        count = 0
        while self._timers and self._timers[0][0] <= now:
            timer = heapq.heappop(self._timers)
            if self._live(timer):
                self.forget(timer[1])
                count += 1
        return count

    def _live(self, timer: tuple[float, int, int]) -> bool:
        sent = self._sent.get(timer[1])
        return sent is not None and sent.attempt == timer[2] and sent.deadline is not None


def _iso(t: float | None) -> str | None:
    return None if t is None else dt.datetime.fromtimestamp(t, dt.timezone.utc).isoformat(timespec="seconds")


class CloudVerdict:
    """The cloud's latest word on this device, logged on change, counted and persisted for `doctor`."""

    def __init__(
        self,
        directory: Path | None,
        wall: Callable[[], float] = time.time,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = None if directory is None else directory / STATUS_NAME
        self._wall = wall
        self._clock = clock
        self.refusal: str | None = None
        self.detail = ""
        self.since: float | None = None
        self.refused = 0
        self.confirmed = 0
        self.last_confirmed_at: float | None = None
        self._last_confirmed_mono: float | None = None
        self._logged_at = -_RELOG_S
        self._written_at = -_REWRITE_S

    def on_confirmed(self, count: int) -> None:
        self.confirmed += count
        self.last_confirmed_at = self._wall()
        self._last_confirmed_mono = self._clock()
        if self.refusal is not None:
            log.warning("uplink: the cloud stores this device's frames again (it refused them: %s since %s)",
                        self.refusal, _iso(self.since))
            self.refusal, self.detail, self.since = None, "", None
            self.write()
        elif self._clock() - self._written_at >= _REWRITE_S:
            self.write()

    def on_refused(self, refusal: Refusal, count: int) -> None:
        self.refused += count
        now = self._clock()
        changed = refusal.reason != self.refusal
        if changed:
            self.refusal, self.detail, self.since = refusal.reason, refusal.detail, self._wall()
            self.write()
        if changed or now - self._logged_at >= _RELOG_S:
            self._logged_at = now
            log.error("uplink: the cloud refuses this device's frames: %s%s; keeping them spooled -> fix: %s",
                      refusal.reason, f" ({refusal.detail})" if refusal.detail else "", fix_for(refusal.reason))

    def stats(self) -> dict[str, Any]:
        age = None if self._last_confirmed_mono is None else round(self._clock() - self._last_confirmed_mono, 3)
        return {"frames_confirmed": self.confirmed, "cloud_refused": self.refused, "cloud_refusal": self.refusal,
                "last_confirmed_age_s": age}

    def write(self) -> None:
        """Replace cloud-status.json atomically; a failure (disk full) is logged, never raised."""
        self._written_at = self._clock()
        if self.path is None:
            return
        body = {"refused": self.refusal, "detail": self.detail, "since": _iso(self.since),
                "last_confirmed_at": _iso(self.last_confirmed_at)}
        try:
            write_secret(self.path, json.dumps(body).encode(), force=True)  # temp 0600, fsync, rename
        except OSError as exc:
            log.warning("uplink: cannot write %s (%s)", self.path, exc.strerror)


@dataclass(frozen=True)
class CloudStatus:
    """cloud-status.json as `doctor` reads it."""

    refused: str | None
    detail: str
    since: str | None
    last_confirmed_at: str | None


def read_cloud_status(directory: Path) -> CloudStatus | None:
    """The status the uplink last wrote in the spool directory; None when there is none (or unreadable)."""
    try:
        body = json.loads((directory / STATUS_NAME).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(body, dict):
        return None

    def text(key: str) -> str | None:
        value = body.get(key)
        return value if isinstance(value, str) else None

    return CloudStatus(text("refused"), text("detail") or "", text("since"), text("last_confirmed_at"))
