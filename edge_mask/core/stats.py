"""Measurement helpers with one definition each: the percentile, so the masker's, the service's and the
benchmarks' p99 agree, and the count of CPUs a run may use, so batch workers and every report size alike.

Nearest rank (the smallest sample with at least q% of the samples at or below it): a reported p99 is a
latency that really happened, never an interpolation between two frames.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable


def percentile(values: Iterable[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of `values`; None when there are none."""
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q must be within 0..100, got {q}")
    ordered = sorted(values)
    if not ordered:
        return None
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[rank - 1]


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity (so `taskset` sizes a run), else the machine's count."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
