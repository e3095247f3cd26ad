"""The `Uplink` protocol and its registry, keyed by the config's `uplink.type`.

An uplink empties the spool towards the cloud: it owns its thread, removes a record from the spool only
when the transport has confirmed it, and reports its state. MQTT is the one transport today; an HTTPS or
AWS IoT transport registers here without the service changing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from edge_mask.config import UplinkConfig
from edge_mask.core.registry import Registry
from edge_mask.uplink.spool import Spool


class Uplink(Protocol):
    """Moves spooled records to the cloud on its own thread."""

    @property
    def connected(self) -> bool: ...

    def start(self) -> None: ...

    def stop(self, clean: bool = True) -> None:
        """Stop the thread; `clean` says goodbye (a status message), else the transport's last will fires."""

    def wait_connected(self, timeout: float) -> bool: ...

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
