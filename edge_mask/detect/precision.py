"""Which model file a detector loads: the model id and precision from config, resolved in the cache.

`precision = "auto"` times int8 against fp32 for about a second at start-up, because int8 wins on ARM
(dot-product instructions) but often loses on x86; the timing is remembered in the cache for the same
models, runtime, CPU and threads, so restarts skip it. A build-time parity gate cannot vouch for the CPU the
model runs on, so `auto` loads int8 only once this device's parity watch (`shadow.py`) has proven it on its
own kernels and frames (`precision-parity.json`, see `verdict.py`) and int8 is the faster; until then fp32.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_mask.config import ModelsConfig
from edge_mask.core.errors import ModelError
from edge_mask.detect.models import (
    Manifest,
    ModelEntry,
    build_action,
    cache_path,
    check_cached,
    fetch,
    load_manifest,
    sha256_file,
)
from edge_mask.detect.runtime import fixed_input_size, open_session
from edge_mask.detect.verdict import AUTO_CHOICE_FILE, load_verdict, read_entry, setup_key, utc_now, write_entry

log = logging.getLogger(__name__)

__all__ = [
    "AUTO_CHOICE_FILE", "Timing", "auto_candidates", "choose_faster", "looks_like_path", "precision_of",
    "resolve_model", "timing",
]


def looks_like_path(model: str) -> bool:
    """Is `detector.model` a file path rather than a model id of the manifest?"""
    return model.endswith(".onnx") or os.sep in model or "/" in model


def precision_of(path: Path, models: ModelsConfig, manifest: Manifest | None = None) -> str:
    """"int8" or "fp32" for a file the manifest knows (in this cache, or by its sha256); "file" otherwise."""
    manifest = manifest or load_manifest()
    resolved = Path(path).expanduser().resolve()
    for entry in manifest.models.values():
        if cache_path(entry, models).resolve() == resolved:
            return entry.precision
    try:
        digest = sha256_file(resolved)
    except OSError:
        return "file"
    return next((e.precision for e in manifest.models.values() if e.sha256 == digest), "file")


def _available(entry: ModelEntry, models: ModelsConfig, manifest: Manifest) -> Path:
    """A verified cached copy, fetching from local mirrors (never the network) when it is missing."""
    ok, reason = check_cached(entry, models, manifest)
    if ok:
        return cache_path(entry, models)
    if entry.built:
        raise ModelError(
            f"model {entry.id!r} in {models.cache_dir}: {reason}; build it with "
            f"'edge-mask models {build_action(entry)}'"
        )
    try:
        return fetch(entry, models, manifest)
    except ModelError as exc:
        raise ModelError(
            f"model {entry.id!r} is not in the cache {models.cache_dir} ({reason}); run 'edge-mask models fetch' "
            f"({exc.message})"
        ) from None


def resolve_model(
    model: str,
    models: ModelsConfig,
    precision: str,
    threads: int = 2,
    providers: Sequence[str] = ("CPUExecutionProvider",),
    manifest: Manifest | None = None,
) -> Path:
    """The verified model file a detector should load for a model id (or .onnx path) and precision.

    `fp32` and `int8` pick that variant of the model family; `auto` times both (when a passing int8 exists)
    and returns int8 only when it is the faster and this device's parity watch has proven it, else fp32.
    A path is returned as is (precision does not apply to an explicit file).
    """
    if looks_like_path(model):
        path = Path(model).expanduser()
        if not path.is_file():
            raise ModelError(f"detector.model = {model!r}: file not found; give a model id or an existing .onnx path")
        return path
    manifest = manifest or load_manifest()
    entry = manifest.get(model)
    if entry.precision == "int8":
        if entry.fp32 is None:
            raise ModelError(f"{manifest.path}: int8 model {entry.id!r} does not name its fp32 model")
        fp32, int8s = manifest.get(entry.fp32), [entry]
    else:
        fp32, int8s = entry, manifest.int8_for(entry.id)
    if precision == "fp32":
        return _available(fp32, models, manifest)
    if precision == "int8":
        if not int8s:
            raise ModelError(f"model {model!r} has no int8 variant in {manifest.path}; use precision = 'fp32'")
        return _available(int8s[0], models, manifest)
    if precision != "auto":
        raise ModelError(f"detector.precision = {precision!r}: expected auto, int8 or fp32")
    fp32_path, int8_path = _auto_pair(fp32, int8s, models, manifest)
    if int8_path is None:
        return fp32_path
    chosen = choose_faster(int8_path, fp32_path, threads, providers)
    if chosen != int8_path:
        return fp32_path
    verdict = load_verdict(int8_path.parent, setup_key(int8_path, fp32_path, threads, providers))
    if verdict is None or verdict.state != "int8":
        log.info("precision auto: int8 is faster here but not yet proven on this device's frames (%s); fp32 "
                 "until the live service's parity watch proves it", verdict.state if verdict else "no verdict")
        return fp32_path
    return int8_path


def auto_candidates(
    model: str, models: ModelsConfig, manifest: Manifest | None = None
) -> tuple[Path, Path | None]:
    """(fp32 file, passing int8 file or None) that `precision = "auto"` chooses between for a model id."""
    manifest = manifest or load_manifest()
    entry = manifest.get(model)
    if entry.precision == "int8":
        if entry.fp32 is None:
            raise ModelError(f"{manifest.path}: int8 model {entry.id!r} does not name its fp32 model")
        return _auto_pair(manifest.get(entry.fp32), [entry], models, manifest)
    return _auto_pair(entry, manifest.int8_for(entry.id), models, manifest)


def _auto_pair(
    fp32: ModelEntry, int8s: Sequence[ModelEntry], models: ModelsConfig, manifest: Manifest
) -> tuple[Path, Path | None]:
    fp32_path = _available(fp32, models, manifest)
    for candidate in int8s:
        ok, reason = check_cached(candidate, models, manifest)
        if ok:
            return fp32_path, cache_path(candidate, models)
        log.warning("precision auto: int8 model %s not usable (%s); considering fp32 only", candidate.id, reason)
    return fp32_path, None


@dataclass(frozen=True)
class Timing:
    """Which model ran faster here, and by how much (ms per 640x480 inference, median)."""

    chosen: str
    """"int8" or "fp32"."""
    int8_ms: float | None
    fp32_ms: float | None
    decided_at: str | None = None


_CHOICES: dict[tuple[str, str, int, tuple[str, ...]], Timing] = {}


def time_model(session: Any, shape: tuple[int, int], budget_s: float) -> float:
    """Median seconds per inference on a noise image of `shape` (height, width) within `budget_s`."""
    height, width = shape
    blob = np.random.default_rng(0).uniform(0, 255, (1, 3, height, width)).astype(np.float32)
    name = session.get_inputs()[0].name
    session.run(None, {name: blob})  # warm-up: first run allocates
    times: list[float] = []
    deadline = time.perf_counter() + budget_s
    while time.perf_counter() < deadline or len(times) < 3:
        start = time.perf_counter()
        session.run(None, {name: blob})
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def choose_faster(
    int8_path: Path, fp32_path: Path, threads: int, providers: Sequence[str], budget_s: float = 1.0
) -> Path:
    """Time both models for about `budget_s` in total and return the faster (decided once per process)."""
    return int8_path if timing(int8_path, fp32_path, threads, providers, budget_s).chosen == "int8" else fp32_path


def timing(
    int8_path: Path, fp32_path: Path, threads: int, providers: Sequence[str], budget_s: float = 1.0
) -> Timing:
    """The speed verdict for this setup: remembered in the cache, else timed now (and remembered)."""
    key = (str(int8_path), str(fp32_path), threads, tuple(providers))
    if key in _CHOICES:
        return _CHOICES[key]
    path = int8_path.parent / AUTO_CHOICE_FILE
    setup = setup_key(int8_path, fp32_path, threads, providers)
    entry = read_entry(path, setup)
    if entry is not None and entry.get("chosen") in ("int8", "fp32"):
        found = Timing(str(entry["chosen"]), entry.get("int8_ms"), entry.get("fp32_ms"), entry.get("decided_at"))
        log.info("precision auto: using %s as timed earlier on this machine (int8 %s ms, fp32 %s ms; delete %s to "
                 "re-time)", found.chosen, found.int8_ms, found.fp32_ms, path)
        _CHOICES[key] = found
        return found
    timings: dict[Path, float] = {}
    for model in (int8_path, fp32_path):
        session = open_session(model, threads, providers)
        fixed = fixed_input_size(session)
        shape = (fixed[1], fixed[0]) if fixed else (480, 640)
        timings[model] = time_model(session, shape, budget_s / 2)
    measured = Timing("int8" if timings[int8_path] < timings[fp32_path] else "fp32",
                      round(timings[int8_path] * 1e3, 2), round(timings[fp32_path] * 1e3, 2), utc_now())
    log.info(
        "precision auto: int8 %s %.1f ms, fp32 %s %.1f ms per 640x480 inference with %d threads; using %s",
        int8_path.name, timings[int8_path] * 1e3, fp32_path.name, timings[fp32_path] * 1e3, threads,
        measured.chosen,
    )
    _CHOICES[key] = measured
    write_entry(path, setup, {"chosen": measured.chosen, "int8_ms": measured.int8_ms, "fp32_ms": measured.fp32_ms,
                              "threads": threads, "decided_at": measured.decided_at})
    return measured
