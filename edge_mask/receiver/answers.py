"""The receiver's answers to devices: batched `Ack`s for stored frames, rate-limited refusal notices.

Why batch: at 30 fps one answer per frame would double the broker's message rate; one answer per device every
`interval_s` (or as soon as 256 sequence numbers wait) carries the same information as a few ranges.
The receiver queues a (stream, seq) here only after the frame and its index line are durable (or the frame
was found to be a duplicate of one that is), so an answer never confirms something a crash could still lose.

Why refusals are rate limited and narrow: a refusal tells the device the cloud will not store its frames
(wrong recipient key, not enrolled, clock off), so it can say so in its log, stats and `doctor`. Only reasons
the receiver can pin on the authenticated publisher are answered (the topic names the device, and the broker's
ACL lets a device write only below its own name); bad signatures, tampering and malformed bytes get no answer,
which would otherwise be an oracle for whoever crafts them. One notice per device per second is enough for a
device to learn the reason, and keeps a misconfigured device from making the receiver flood the broker.

Memory: at most 256 sequence numbers per device waiting (then the batch is due), one refusal per batch, and
one timestamp per device refused within the last second (older ones are pruned).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from edge_mask.seal import Ack, Refusal, to_ranges

MAX_WAITING = 256
"""Sequence numbers waiting for one device that make its answer due at once."""
REFUSAL_EVERY_S = 1.0


@dataclass(eq=False)
class _Batch:
    since: float
    stored: dict[str, list[int]] = field(default_factory=dict)
    waiting: int = 0
    refused: list[Refusal] = field(default_factory=list)


class Answers:
    """Per-ack-topic batches of what to tell each device; `due()` hands out the answers to publish."""

    def __init__(self, interval_s: float, max_waiting: int = MAX_WAITING, refusal_every_s: float = REFUSAL_EVERY_S):
        self.interval_s = interval_s
        self.max_waiting = max_waiting
        self.refusal_every_s = refusal_every_s
        self._batches: dict[str, _Batch] = {}
        self._order: deque[tuple[float, str]] = deque()  # (since, topic) of batches, oldest first
        self._urgent: list[str] = []
        self._last_refusal: dict[str, float] = {}
        self.counts = {"stored_answered": 0, "refusals": 0, "refusals_suppressed": 0}

    def stored(self, topic: str, stream: str, seq: int, now: float) -> None:
        """The frame (stream, seq) from the device answering on `topic` is durable (or was already)."""
        batch = self._batch(topic, now)
        batch.stored.setdefault(stream, []).append(seq)
        batch.waiting += 1
        self.counts["stored_answered"] += 1
        if batch.waiting == self.max_waiting:
            self._urgent.append(topic)

    def refuse(self, device: str, topic: str, refusal: Refusal, now: float) -> bool:
        """Queue a refusal notice unless `device` got one within `refusal_every_s`; True when queued."""
        last = self._last_refusal.get(device)
        if last is not None and now - last < self.refusal_every_s:
            self.counts["refusals_suppressed"] += 1
            return False
        if len(self._last_refusal) > 1024:
            self._last_refusal = {d: t for d, t in self._last_refusal.items() if now - t < self.refusal_every_s}
        self._last_refusal[device] = now
        batch = self._batch(topic, now)
        batch.refused.append(refusal)
        self.counts["refusals"] += 1
        self._urgent.append(topic)
        return True

    def due(self, now: float, force: bool = False) -> list[tuple[str, Ack]]:
        """(topic, Ack) for every batch that is due: older than `interval_s`, full, refusing, or all (`force`)."""
        ready: list[tuple[str, float | None]] = [(topic, None) for topic in self._urgent]
        self._urgent = []
        while self._order and (force or now - self._order[0][0] >= self.interval_s):
            first, name = self._order.popleft()
            ready.append((name, first))
        answers: list[tuple[str, Ack]] = []
        for topic, since in ready:
            batch = self._batches.get(topic)
            if batch is None or (since is not None and batch.since != since and not force):
                continue  # already sent (urgent earlier), or a newer batch for the topic that is not due yet
            del self._batches[topic]
            stored = {stream: tuple(to_ranges(seqs)) for stream, seqs in batch.stored.items()}
            answers.append((topic, Ack(stored=stored, refused=tuple(batch.refused))))
        return answers

    def waiting(self) -> int:
        """How many answers are queued (batches not yet handed out)."""
        return len(self._batches)

    def _batch(self, topic: str, now: float) -> _Batch:
        batch = self._batches.get(topic)
        if batch is None:
            batch = self._batches[topic] = _Batch(now)
            self._order.append((now, topic))
        return batch
