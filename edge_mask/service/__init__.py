"""Service room: the only place that joins stages: the live device service, batch masking and `doctor`.

Rule: service/ imports the stage rooms through their faces (capture, detect, mask, seal, uplink) and the
ground; never receiver/, provision/, tools/ or the CLI. Raw frames never leave the masker's hands here:
queues carry `RawFrame`s only to the masker and `MaskedFrame`s or sealed bytes after it.
"""

from edge_mask.service.batch import run_batch
from edge_mask.service.doctor import run_checks
from edge_mask.service.hygiene import forbid_core_dumps
from edge_mask.service.live import Service

__all__ = ["Service", "forbid_core_dumps", "run_batch", "run_checks"]
