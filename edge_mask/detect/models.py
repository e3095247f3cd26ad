"""Model manifest, verified model cache and fetching from verified sources.

Why a manifest with hashes: a face detector that silently loads a truncated or swapped file masks nothing,
and on a camera in an exam room nobody would notice. Every model comes from `models/manifest.toml` with
its sha256; `fetch` accepts a file only when the hash matches, and writes it atomically (temp file, fsync,
rename) so a power cut never leaves a half-written model that looks valid.

The project's own int8 model (`yunet-int8`) has no fixed hash: `edge-mask models quantize` builds it from
the fp32 model and its bytes depend on the onnxruntime version. Its hash, the source hash and the parity
figures against fp32 are written beside it (`<name>.parity.json`); without a passing report it is not used.

Which file a detector loads for a model id and precision is decided in `precision.py`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_mask.config import ModelsConfig
from edge_mask.core.errors import ModelError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
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
UrlOpener = Callable[[str, float], Iterable[bytes]]
"""Reads an http(s) URL in chunks with a timeout, raising OSError naming what failed
(`edge_mask.provision.download.read_url`). The detection room itself opens no connection."""
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
    parity = report.get("parity", {})
    if "tflite_sha256" in report:  # a landmark model converted from TFLite (tools/landmark_models.py)
        if not parity.get("passed"):
            return False, "failed its parity check against the TFLite original"
        return True, f"ok (TFLite parity: max {parity.get('max_landmark_diff_px', float('nan')):.1e} px)"
    if not report.get("passed"):
        return False, "failed its parity check against fp32"
    return True, f"ok (parity recall {parity.get('recall', float('nan')):.4f}, {report.get('format')})"


# ---------------------------------------------------------------------------------------------- fetching


def _is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def _candidate_sources(
    entry: ModelEntry, manifest: Manifest, models: ModelsConfig, extra: Iterable[Path | str], network: bool
) -> list[str]:
    """`--from` folders, the manifest's sources (URLs only with `network`), then configured mirrors."""
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


def build_action(entry: ModelEntry) -> str:
    """The `edge-mask models` action that builds a `built` model: int8 models are quantized, the landmark
    models converted from TFLite."""
    return "quantize" if entry.precision == "int8" else "landmarks"


def write_atomic(dest: Path, data: bytes) -> None:
    """Write `data` to `dest` so that a power cut leaves the old file or the new one, never half of one."""
    tmp, _, _ = _atomic_fill(dest, [data], len(data))
    commit_file(tmp, dest)


def commit_file(tmp: Path, dest: Path) -> None:
    """Rename into place and fsync the directory, so the new name survives a power cut."""
    os.replace(tmp, dest)
    dir_fd = os.open(dest.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _read_chunks(source: str, file_name: str, timeout: float, opener: UrlOpener | None) -> Iterable[bytes]:
    if _is_url(source):
        if opener is None:
            raise OSError("no network access given to this fetch")
        yield from opener(source, timeout)
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
    opener: UrlOpener | None = None,
    timeout: float = 20.0,
) -> Path:
    """Put a verified copy of `entry` in the cache and return its path.

    Sources are tried in order: `extra_sources` (`--from DIR`), the manifest's (URLs, only when an
    `opener` is given, then mirror folders), then `models.mirrors`. A source whose bytes do not match the
    manifest's sha256 is refused; if no source gives the right bytes the error names every source and why
    it failed, on one line.
    """
    if entry.built or entry.sha256 is None:
        raise ModelError(f"model {entry.id!r} is built on this machine; run 'edge-mask models {build_action(entry)}'")
    dest = cache_path(entry, models)
    if dest.is_file() and sha256_file(dest) == entry.sha256:
        return dest
    failures: list[str] = []
    for source in _candidate_sources(entry, manifest, models, extra_sources, opener is not None):
        try:
            limit = max(entry.size or 0, 1) * 2 if entry.size else MAX_DOWNLOAD_BYTES
            tmp, digest, size = _atomic_fill(dest, _read_chunks(source, entry.file, timeout, opener), limit)
        except FileNotFoundError:
            failures.append(f"{source}: no {entry.file}")
            continue
        except (OSError, ValueError, ModelError) as exc:
            failures.append(f"{source}: {exc}")
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


def copy_into_cache(src: Path, dest: Path) -> None:
    """Atomically copy a local file into the cache (used for built models)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    with os.fdopen(fd, "wb") as out, open(src, "rb") as handle:
        shutil.copyfileobj(handle, out)
        out.flush()
        os.fsync(out.fileno())
    commit_file(Path(tmp_name), dest)
