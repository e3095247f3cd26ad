"""The `Uplink` and `Spool` protocols; the uplinks' registry, keyed by the config's `uplink.type`.

An uplink empties the spool towards the cloud: it owns its thread, removes a record from the spool only
when the transport has confirmed it, and reports its state. MQTT is the one transport today; an HTTPS or
AWS IoT transport registers here without the service changing.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from edge_mask.config import UplinkConfig
from edge_mask.core.registry import Registry

if TYPE_CHECKING:
    from edge_mask.seal import SealedFrame

Range = tuple[int, int]


@dataclass(frozen=True)
class SpoolRecord:
    """One sealed message waiting for confirmation; `id` orders records oldest first."""

    id: int
    seq: int
    message: bytes
    stream: bytes = b""


@dataclass(frozen=True)
class SpoolStats:
    """Counters since this process opened the spool, plus the current backlog."""

    pending: int
    pending_bytes: int
    oldest_age_s: float
    put: int
    acked: int
    dropped_full: int
    dropped_age: int

    def as_dict(self) -> dict[str, float | int]:
        return {
            "spool_pending": self.pending,
            "spool_pending_bytes": self.pending_bytes,
            "spool_oldest_age_s": round(self.oldest_age_s, 3),
            "spool_put": self.put,
            "spool_acked": self.acked,
            "spool_dropped_full": self.dropped_full,
            "spool_dropped_age": self.dropped_age,
        }


class Spool(Protocol):
    """What the capture pipeline (writer) and the uplink (reader/acker) share; all methods thread-safe."""

    @property
    def directory(self) -> Path | None:
        """Where the spool keeps its files (the uplink writes `cloud-status.json` there), or None."""

    def put(self, sealed: SealedFrame) -> int:
        """Store durably; the record id, or -1 when a full disk left no room even after dropping all else."""

    def pending(self, limit: int, exclude: Collection[int] = ()) -> list[SpoolRecord]: ...

    def ack(self, record_id: int) -> None: ...

    def delete_ranges(self, stream_id: bytes, ranges: Iterable[Range]) -> int:
        """Remove the records of `stream_id` whose seq lies in one of the inclusive ranges; how many went."""

    def stats(self) -> SpoolStats: ...

    def close(self) -> None: ...





class Uplink(Protocol):
    """Moves spooled records to the cloud on its own thread."""

    @property
    def connected(self) -> bool: ...

    def start(self) -> None: ...

    def stop(self, clean: bool = True) -> None:
        """Stop the thread; `clean` says goodbye (a status message), else the transport's last will fires."""

    def wait_connected(self, timeout: float) -> bool: ...

    def wake(self) -> None:
        """New records are in the spool: send them now rather than at the next poll (may be a no-op)."""

    def publish_stats(self, stats: dict[str, Any]) -> None:
        """Send a stats or event message beside the frames (merged with the uplink's own counters)."""

    def stats(self) -> dict[str, Any]: ...


StatsSource = Callable[[], dict[str, Any]]
UPLINKS: Registry[Uplink] = Registry("uplink")


def create_uplink(
    cfg: UplinkConfig, device_id: str, spool: Spool, stats_source: StatsSource | None = None
) -> Uplink:
    """The transport named by `cfg.type`, not yet started."""
    return UPLINKS.create(cfg, device_id, spool, stats_source=stats_source)
