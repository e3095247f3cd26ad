"""The one percentile definition, so the masker's, the service's and the benchmarks' p99 agree.

Nearest rank (the smallest sample with at least q% of the samples at or below it): a reported p99 is a
latency that really happened, never an interpolation between two frames.
"""

from __future__ import annotations

import math
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
