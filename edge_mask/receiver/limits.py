"""Per-device rate limit on what the receiver takes in: a token bucket on chunks and one on bytes.

Why: the receiver handles messages one at a time, in the order the broker delivers them. A device that
floods its own topic (250k tiny chunks, say) would otherwise hold up every other device's frames behind its
junk, and churn the reassembly budget. Over its limit a device's chunks are dropped at the cost of parsing
nothing (acknowledged to the broker, counted `rate_limited`); an honest device is far below the limit, and
a frame dropped by mistake is re-sent by its device because the cloud never confirmed it.

A bucket holds `burst_s` seconds of its rate, so a device draining a backlog after an outage may go at
`burst_s` times its rate for a moment. Memory: two buckets per enrolled device (devices no longer enrolled
are forgotten by `retain`).
"""

from __future__ import annotations

from collections.abc import Container


class TokenBucket:
    """`rate` tokens per second, at most `capacity` saved up; starts full."""

    __slots__ = ("capacity", "rate", "stamp", "tokens")

    def __init__(self, rate: float, capacity: float, now: float) -> None:
        self.rate = rate
        self.capacity = capacity
        self.tokens = capacity
        self.stamp = now

    def refill(self, now: float) -> None:
        if now > self.stamp:
            self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now


class DeviceLimiter:
    """One chunk bucket and one byte bucket per device; a chunk passes only when both have room."""

    def __init__(self, chunks_per_s: float, bytes_per_s: float, burst_s: float) -> None:
        self.chunks_per_s = chunks_per_s
        self.bytes_per_s = bytes_per_s
        self.burst_s = burst_s
        self._buckets: dict[str, tuple[TokenBucket, TokenBucket]] = {}

    def allow(self, device: str, size: int, now: float) -> bool:
        pair = self._buckets.get(device)
        if pair is None:
            pair = self._buckets[device] = (
                TokenBucket(self.chunks_per_s, max(1.0, self.chunks_per_s * self.burst_s), now),
                TokenBucket(self.bytes_per_s, self.bytes_per_s * self.burst_s, now),
            )
        chunks, data = pair
        chunks.refill(now)
        data.refill(now)
        if chunks.tokens < 1 or data.tokens < size:
            return False
        chunks.tokens -= 1
        data.tokens -= size
        return True

    def retain(self, devices: Container[str]) -> None:
        """Forget the buckets of devices that are no longer enrolled."""
        self._buckets = {d: pair for d, pair in self._buckets.items() if d in devices}

    def __len__(self) -> int:
        return len(self._buckets)
