"""Build the test model cache once (fp32 YuNet from the shared mirror, the project's int8 by quantizing)
and reuse it across runs from REPO/.cache/models while it stays valid.

Why a lock: several pytest processes may start at once (developers, CI shards); the first builds, the
others wait and then find a valid cache.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from edge_mask.config import ModelsConfig
from edge_mask.detect.models import check_cached, fetch, load_manifest

FP32_IDS = ("yunet-fp32", "yunet-fp32-dynamic")
INT8_ID = "yunet-int8"


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def calibration_sources(shared: Path) -> list[Path]:
    """Identity photos and frames of every shared clip (between the frames parity takes)."""
    return [shared / "data" / "identities", shared / "data" / "video"]


def parity_sources(shared: Path) -> list[Path]:
    return [shared / "data" / "faces-dlib", shared / "data" / "video"]


def ensure_model_cache(cache_dir: Path, shared: Path, with_int8: bool = True) -> ModelsConfig:
    models = ModelsConfig(cache_dir=cache_dir, mirrors=(shared / "models",))
    manifest = load_manifest()
    with _locked(cache_dir / ".lock"):
        for model_id in FP32_IDS:
            fetch(manifest.get(model_id), models, manifest)
        if with_int8:
            entry = manifest.get(INT8_ID)
            ok, _ = check_cached(entry, models, manifest)
            if not ok:
                from edge_mask.tools.quantize import quantize_model

                source = cache_dir / manifest.get(FP32_IDS[1]).file
                quantize_model(
                    source,
                    cache_dir / entry.file,
                    calibration=calibration_sources(shared),
                    parity=parity_sources(shared),
                )
    return models
