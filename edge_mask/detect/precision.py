"""Which model file a detector loads: the model id and precision from config, resolved in the cache.

`precision = "auto"` times int8 against fp32 for about a second at start-up and keeps the faster, because
int8 wins on ARM (dot-product instructions) but often loses on x86. The choice is remembered in the cache
for the same models, runtime, CPU and threads, so restarts skip the timing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edge_mask.config import ModelsConfig
from edge_mask.core.errors import ModelError
from edge_mask.detect.models import (
    Manifest,
    ModelEntry,
    cache_path,
    check_cached,
    fetch,
    load_manifest,
    sha256_file,
)
from edge_mask.detect.runtime import fixed_input_size, open_session

log = logging.getLogger(__name__)



def _looks_like_path(model: str) -> bool:
    return model.endswith(".onnx") or os.sep in model or "/" in model


def _available(entry: ModelEntry, models: ModelsConfig, manifest: Manifest) -> Path:
    """A verified cached copy, fetching from local mirrors (never the network) when it is missing."""
    ok, reason = check_cached(entry, models, manifest)
    if ok:
        return cache_path(entry, models)
    if entry.built:
        raise ModelError(
            f"model {entry.id!r} in {models.cache_dir}: {reason}; build it with 'edge-mask models quantize'"
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
    and returns the faster. A path is returned as is (precision does not apply to an explicit file).
    """
    if _looks_like_path(model):
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
    fp32_path = _available(fp32, models, manifest)
    int8_path: Path | None = None
    for candidate in int8s:
        ok, reason = check_cached(candidate, models, manifest)
        if ok:
            int8_path = cache_path(candidate, models)
            break
        log.warning("precision auto: int8 model %s not usable (%s); considering fp32 only", candidate.id, reason)
    if int8_path is None:
        return fp32_path
    return choose_faster(int8_path, fp32_path, threads, providers)


_CHOICES: dict[tuple[str, str, int, tuple[str, ...]], Path] = {}


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
    key = (str(int8_path), str(fp32_path), threads, tuple(providers))
    if key in _CHOICES:
        return _CHOICES[key]
    remembered = _remembered_choice(int8_path, fp32_path, threads, providers)
    if remembered is not None:
        _CHOICES[key] = remembered
        return remembered
    timings: dict[Path, float] = {}
    for path in (int8_path, fp32_path):
        session = open_session(path, threads, providers)
        fixed = fixed_input_size(session)
        shape = (fixed[1], fixed[0]) if fixed else (480, 640)
        timings[path] = time_model(session, shape, budget_s / 2)
    chosen = min(timings, key=lambda p: timings[p])
    log.info(
        "precision auto: int8 %s %.1f ms, fp32 %s %.1f ms per 640x480 inference with %d threads; using %s",
        int8_path.name, timings[int8_path] * 1e3, fp32_path.name, timings[fp32_path] * 1e3, threads,
        "int8" if chosen == int8_path else "fp32",
    )
    _CHOICES[key] = chosen
    _remember_choice(int8_path, fp32_path, threads, providers, chosen, timings)
    return chosen


# The auto decision is kept beside the models so a device that restarts does not re-time at every start.
# It is keyed by both models' bytes, onnxruntime's version, the CPU, the threads and the providers, so any
# change of these re-times; deleting the file forces it too.
AUTO_CHOICE_FILE = "precision-auto.json"


def _choice_key(int8_path: Path, fp32_path: Path, threads: int, providers: Sequence[str]) -> str:
    import platform

    import onnxruntime

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.lower().startswith(("model name", "model\t", "hardware")):
                cpu = line.split(":", 1)[-1].strip()
                break
    except OSError:
        pass
    parts = [sha256_file(int8_path), sha256_file(fp32_path), onnxruntime.__version__, cpu,
             str(os.cpu_count()), str(threads), ",".join(providers)]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def _remembered_choice(int8_path: Path, fp32_path: Path, threads: int, providers: Sequence[str]) -> Path | None:
    try:
        data = json.loads((int8_path.parent / AUTO_CHOICE_FILE).read_text(encoding="utf-8"))
        entry = data.get(_choice_key(int8_path, fp32_path, threads, providers))
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(entry, dict) or entry.get("chosen") not in ("int8", "fp32"):
        return None
    chosen = int8_path if entry["chosen"] == "int8" else fp32_path
    log.info("precision auto: using %s as timed earlier on this machine (int8 %s ms, fp32 %s ms; delete %s to re-time)",
             entry["chosen"], entry.get("int8_ms"), entry.get("fp32_ms"), int8_path.parent / AUTO_CHOICE_FILE)
    return chosen


def _remember_choice(
    int8_path: Path, fp32_path: Path, threads: int, providers: Sequence[str], chosen: Path, timings: dict[Path, float]
) -> None:
    path = int8_path.parent / AUTO_CHOICE_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
        if not isinstance(data, dict):
            data = {}
        data[_choice_key(int8_path, fp32_path, threads, providers)] = {
            "chosen": "int8" if chosen == int8_path else "fp32",
            "int8_ms": round(timings[int8_path] * 1e3, 2),
            "fp32_ms": round(timings[fp32_path] * 1e3, 2),
            "threads": threads,
            "decided_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except (OSError, ValueError) as exc:  # a read-only cache only costs the timing at the next start
        log.warning("precision auto: cannot remember the choice in %s (%s)", path, exc)


