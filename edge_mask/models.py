"""Model manifest, verified model cache, fetching, and choosing the model a detector loads.

Why a manifest with hashes: a face detector that silently loads a truncated or swapped file masks nothing,
and on a camera in an exam room nobody would notice. Every model comes from `models/manifest.toml` with
its sha256; `fetch` accepts a file only when the hash matches, and writes it atomically (temp file, fsync,
rename) so a power cut never leaves a half-written model that looks valid.

The project's own int8 model (`yunet-int8`) has no fixed hash: `edge-mask models quantize` builds it from
the fp32 model and its bytes depend on the onnxruntime version. Its hash, the source hash and the parity
figures against fp32 are written beside it (`<name>.parity.json`); without a passing report it is not used.

`precision = "auto"` times int8 against fp32 for about a second at start-up and keeps the faster, because
int8 wins on ARM (dot-product instructions) but often loses on x86 without VNNI. The choice is remembered
in the cache for the same models, runtime, CPU and threads, so restarts skip the timing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_mask.config import ModelsConfig
from edge_mask.errors import ModelError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
# A source checkout (or editable install) reads models/manifest.toml; a wheel install ships the same file
# as data under <prefix>/share/edge-mask/ (pyproject's data-files).
_CHECKOUT_MANIFEST = REPO_ROOT / "models" / "manifest.toml"
_INSTALLED_MANIFEST = Path(sys.prefix) / "share" / "edge-mask" / "manifest.toml"
MANIFEST_PATH = Path(
    os.environ.get(
        "EDGE_MASK_MANIFEST", _CHECKOUT_MANIFEST if _CHECKOUT_MANIFEST.exists() else _INSTALLED_MANIFEST
    )
)
MAX_DOWNLOAD_BYTES = 64 << 20
PARITY_SUFFIX = ".parity.json"


@dataclass(frozen=True)
class ModelEntry:
    """One model of the manifest. `sha256` is None only for models built on this machine (`built`)."""

    id: str
    file: str
    sha256: str | None
    size: int | None
    license: str
    input: str
    precision: str
    sources: tuple[str, ...]
    fp32: str | None = None
    """For an int8 model: the id of the fp32 model it was made from (used by precision fp32/auto)."""
    built: bool = False


@dataclass(frozen=True)
class Manifest:
    path: Path
    models: dict[str, ModelEntry]

    def get(self, model_id: str) -> ModelEntry:
        entry = self.models.get(model_id)
        if entry is None:
            raise ModelError(
                f"model {model_id!r} is not in {self.path}; use one of {', '.join(sorted(self.models))} "
                "or a path to an .onnx file"
            )
        return entry

    def int8_for(self, fp32_id: str) -> list[ModelEntry]:
        """int8 models made from `fp32_id`, the project's own (built) first."""
        found = [e for e in self.models.values() if e.precision == "int8" and e.fp32 == fp32_id]
        return sorted(found, key=lambda e: not e.built)

    def source_dir(self) -> Path:
        """Relative mirror directories are resolved against the repository root (manifest's parent's parent)."""
        return self.path.resolve().parent.parent


def load_manifest(path: Path | None = None) -> Manifest:
    path = Path(path or MANIFEST_PATH)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"{path}: model manifest not found; set EDGE_MASK_MANIFEST to models/manifest.toml") from None
    except tomllib.TOMLDecodeError as exc:
        raise ModelError(f"{path}: model manifest is not valid TOML ({exc})") from None
    models: dict[str, ModelEntry] = {}
    for model_id, raw in dict(data.get("models", {})).items():
        try:
            sha = raw.get("sha256")
            built = bool(raw.get("built", False))
            if sha is None and not built:
                raise KeyError("sha256")
            models[model_id] = ModelEntry(
                id=model_id,
                file=str(raw["file"]),
                sha256=str(sha).lower() if sha else None,
                size=int(raw["size"]) if "size" in raw else None,
                license=str(raw["license"]),
                input=str(raw["input"]),
                precision=str(raw["precision"]),
                sources=tuple(str(s) for s in raw.get("sources", ())),
                fp32=str(raw["fp32"]) if "fp32" in raw else None,
                built=built,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"{path}: model {model_id!r} is missing or has a bad field {exc}") from None
    return Manifest(path, models)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cache_path(entry: ModelEntry, models: ModelsConfig) -> Path:
    return Path(models.cache_dir) / entry.file


def parity_report_path(model_path: Path) -> Path:
    return model_path.with_suffix(PARITY_SUFFIX)


def read_parity_report(model_path: Path) -> dict[str, Any] | None:
    try:
        report: dict[str, Any] = json.loads(parity_report_path(model_path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return report


def check_cached(entry: ModelEntry, models: ModelsConfig, manifest: Manifest | None = None) -> tuple[bool, str]:
    """Is the cached copy of `entry` usable? Returns (ok, reason) for `models list`/`verify` and resolving."""
    path = cache_path(entry, models)
    if not path.is_file():
        return False, "missing"
    actual = sha256_file(path)
    if not entry.built:
        if actual != entry.sha256:
            return False, f"sha256 mismatch (got {actual[:12]}…, manifest {str(entry.sha256)[:12]}…)"
        return True, "ok"
    report = read_parity_report(path)
    if report is None:
        return False, f"no parity report ({parity_report_path(path).name})"
    if report.get("sha256") != actual:
        return False, "file does not match its parity report's sha256"
    if manifest is not None and entry.fp32:
        source = manifest.models.get(entry.fp32)
        if source is not None and report.get("source_sha256") != source.sha256:
            return False, f"parity report was made from another source than {entry.fp32}"
    if not report.get("passed"):
        return False, "failed its parity check against fp32"
    parity = report.get("parity", {})
    return True, f"ok (parity recall {parity.get('recall', float('nan')):.4f}, {report.get('format')})"


# ---------------------------------------------------------------------------------------------- fetching


def _is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def _candidate_sources(
    entry: ModelEntry, manifest: Manifest, models: ModelsConfig, extra: Iterable[Path | str], network: bool
) -> list[str]:
    found: list[str] = [str(Path(s).expanduser()) for s in extra]
    for source in entry.sources:
        if _is_url(source):
            if network:
                found.append(source)
        else:
            path = Path(source).expanduser()
            found.append(str(path if path.is_absolute() else manifest.source_dir() / path))
    found.extend(str(m) for m in models.mirrors)
    return found


def _atomic_fill(dest: Path, chunks: Iterable[bytes], limit: int) -> tuple[Path, str, int]:
    """Write chunks to a temp file beside `dest`, fsynced; returns (temp path, sha256, size)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    tmp = Path(tmp_name)
    digest = hashlib.sha256()
    size = 0
    try:
        with os.fdopen(fd, "wb") as handle:
            for chunk in chunks:
                size += len(chunk)
                if size > limit:
                    raise ModelError(f"{dest.name}: download larger than {limit} bytes; refusing it")
                digest.update(chunk)
                handle.write(chunk)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp, digest.hexdigest(), size


def commit_file(tmp: Path, dest: Path) -> None:
    """Rename into place and fsync the directory, so the new name survives a power cut."""
    os.replace(tmp, dest)
    dir_fd = os.open(dest.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _read_chunks(source: str, file_name: str, timeout: float) -> Iterable[bytes]:
    if _is_url(source):
        request = urllib.request.Request(source, headers={"User-Agent": "edge-mask"})
        with urllib.request.urlopen(request, timeout=timeout) as response:  # only http(s) URLs reach here
            yield from iter(lambda: response.read(1 << 16), b"")
        return
    path = Path(source)
    if path.is_dir():
        path = path / file_name
    with open(path, "rb") as handle:
        yield from iter(lambda: handle.read(1 << 20), b"")


def fetch(
    entry: ModelEntry,
    models: ModelsConfig,
    manifest: Manifest,
    extra_sources: Sequence[Path | str] = (),
    network: bool = True,
    timeout: float = 20.0,
) -> Path:
    """Put a verified copy of `entry` in the cache and return its path.

    Sources are tried in order: `extra_sources` (`--from DIR`), the manifest's (URLs, then mirror folders),
    then `models.mirrors`. A source whose bytes do not match the manifest's sha256 is refused; if no source
    gives the right bytes the error names every source and why it failed, on one line.
    """
    if entry.built or entry.sha256 is None:
        raise ModelError(f"model {entry.id!r} is built on this machine; run 'edge-mask models quantize'")
    dest = cache_path(entry, models)
    if dest.is_file() and sha256_file(dest) == entry.sha256:
        return dest
    failures: list[str] = []
    for source in _candidate_sources(entry, manifest, models, extra_sources, network):
        try:
            limit = max(entry.size or 0, 1) * 2 if entry.size else MAX_DOWNLOAD_BYTES
            tmp, digest, size = _atomic_fill(dest, _read_chunks(source, entry.file, timeout), limit)
        except FileNotFoundError:
            failures.append(f"{source}: no {entry.file}")
            continue
        except urllib.error.HTTPError as exc:
            failures.append(f"{source}: HTTP {exc.code} {exc.reason}")
            continue
        except (OSError, urllib.error.URLError, ValueError, ModelError) as exc:
            failures.append(f"{source}: {getattr(exc, 'reason', None) or exc}")
            continue
        if digest != entry.sha256:
            tmp.unlink(missing_ok=True)
            message = (f"{source}: sha256 mismatch for {entry.file} (got {digest}, manifest says {entry.sha256}); "
                       "refused")
            log.warning("%s", message)
            failures.append(message)
            continue
        commit_file(tmp, dest)
        log.info("fetched %s (%d bytes, sha256 verified) from %s", entry.file, size, source)
        return dest
    raise ModelError(f"cannot fetch model {entry.id!r}: " + "; ".join(failures or ["no sources configured"]))


# --------------------------------------------------------------------------------------------- resolving


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
        return fetch(entry, models, manifest, network=False)
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
    from edge_mask.detect import fixed_input_size, open_session

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


def copy_into_cache(src: Path, dest: Path) -> None:
    """Atomically copy a local file into the cache (used for built models)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    with os.fdopen(fd, "wb") as out, open(src, "rb") as handle:
        shutil.copyfileobj(handle, out)
        out.flush()
        os.fsync(out.fileno())
    commit_file(Path(tmp_name), dest)
