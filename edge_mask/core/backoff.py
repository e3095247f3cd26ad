"""The one retry policy: exponential backoff, capped, with proportional jitter.

Used wherever edge_mask waits before trying again: the uplink reconnecting to its broker, the receiver
reconnecting, and the capture loop reopening a camera. One class so that every retry in the product
behaves (and is tuned, and is tested) the same way.

Why jitter: after a broker restart (or a clinic's network coming back) every device of the fleet sees its
connection fail at the same moment and retries. Without jitter they would all retry on the same schedule
(min, 2*min, 4*min ...) and hit the broker as one wave at each step, again and again. Jitter spreads each
wave over a window so the broker sees a trickle instead.

Policy: the ceiling starts at `min_s` and doubles after every wait, capped at `max_s`. Each wait is drawn
uniformly from [max(min_s, ceiling * (1 - JITTER)), ceiling]: proportional jitter over the top fifth of
the ceiling. Not "full" jitter (uniform in [0, ceiling]) nor "equal" jitter (ceiling/2 + uniform(0,
ceiling/2)): those spread a wave further, but they make the wait unpredictable for whoever reads the
health output ("retrying in 1.3 s" at the 8 s step) and let a dead camera or broker be polled far more
often than the configured ceiling says. With proportional jitter every wait is within 20% of the
documented ladder, yet two devices that failed together drift apart by up to a fifth of the ceiling at
every step. The first wait after a reset is exactly `min_s` (the window [min_s, min_s] is empty): a
short blip is retried at once, and the spread starts with the second attempt.

Pure logic, no I/O: the caller does the waiting (`Event.wait(delay)`), so a stop request never waits for
a backoff to run out.
"""

from __future__ import annotations

import random

JITTER = 0.2
"""Fraction of the ceiling the wait is drawn from (its top 20%)."""


class Backoff:
    """Delays for successive retries: `next()` after each failure, `reset()` after a success."""

    def __init__(self, min_s: float, max_s: float, rng: random.Random | None = None) -> None:
        self.min_s = min_s
        self.max_s = max(min_s, max_s)
        self._ceiling = min_s
        self._rng = rng or random.Random()

    def next(self) -> float:
        """The wait before the next attempt; doubles the ceiling (up to `max_s`) for the one after."""
        ceiling = self._ceiling
        floor = max(self.min_s, ceiling * (1.0 - JITTER))
        self._ceiling = min(self.max_s, ceiling * 2)
        return float(self._rng.uniform(floor, ceiling)) if ceiling > floor else float(ceiling)

    def reset(self) -> None:
        """Back to the first step: the next failure is retried after `min_s`."""
        self._ceiling = self.min_s
