"""The `Masker` protocol and its registry, keyed by the config's `mask.masker`.

Everything that turns raw frames into masked ones (the service, batch masking, the benchmarks, the tests'
fakes) goes through this interface, so the service needs no special cases for one masker or another.
"""

from __future__ import annotations

from typing import Protocol

from edge_mask.config import MaskConfig, MaskerConfig, TrackerConfig
from edge_mask.core.registry import Registry
from edge_mask.core.types import MaskedFrame, RawFrame


class Masker(Protocol):
    """Turns every `RawFrame` into a `MaskedFrame`, or None when a failure drops the frame (counted)."""

    def process(self, frame: RawFrame) -> MaskedFrame | None: ...

    def warm_up(self, width: int, height: int) -> None:
        """Prepare for frames of this size (the first inference allocates), without a deadline."""

    def reconfigure(self, tracker: TrackerConfig | None = None, mask: MaskConfig | None = None) -> None:
        """Apply new tracker/mask settings between frames, keeping what is tracked."""

    def reset(self) -> None:
        """Forget tracked faces: the next frame starts a new stream."""

    def stats(self) -> dict[str, float | int]: ...

    def latency_samples(self) -> dict[str, list[float]]:
        """Raw per-stage latencies in seconds (successful frames only), for the benchmark."""

    def close(self) -> None: ...


MASKERS: Registry[Masker] = Registry("mask.masker")


def build_masker(cfg: MaskerConfig) -> Masker:
    """The masker named by `cfg.mask.masker`, built from the detector, models, tracker and mask sections."""
    return MASKERS.create_named(cfg.mask.masker, cfg)
