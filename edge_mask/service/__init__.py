"""Service room: the only place that joins stages: the live device service, batch masking and `doctor`.

Rule: service/ imports the stage rooms through their faces (capture, detect, mask, seal, uplink) and the
ground; never receiver/, provision/, tools/ or the CLI. Raw frames never leave the masker's hands here:
queues carry `RawFrame`s only to the masker and `MaskedFrame`s or sealed bytes after it.

Why the names load on first use (`__getattr__` below): `edge-mask mask` needs neither the live service
(metrics HTTP server, notifier) nor doctor, and importing them cost about 70 ms of every batch run's start.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edge_mask.service.batch import run_batch
    from edge_mask.service.batch_video import build_batch_masker
    from edge_mask.service.doctor import config_checks, run_checks
    from edge_mask.service.hygiene import forbid_core_dumps
    from edge_mask.service.live import Service

_HOMES = {
    "run_batch": "batch",
    "build_batch_masker": "batch_video",
    "config_checks": "doctor",
    "run_checks": "doctor",
    "forbid_core_dumps": "hygiene",
    "Service": "live",
}
"""Each exported name and the module of this room that defines it."""

__all__ = ["Service", "build_batch_masker", "config_checks", "forbid_core_dumps", "run_batch", "run_checks"]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"edge_mask.service.{home}"), name)
    globals()[name] = value
    return value
