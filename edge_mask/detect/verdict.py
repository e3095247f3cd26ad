"""What this device decided about its models, kept in the model cache across restarts.

Two small JSON files sit beside the models, each a map from a setup key to an entry:
`precision-auto.json` (which model is faster here, written by `precision.py`) and `precision-parity.json`
(whether the int8 model agrees with fp32 on this device's own kernels and live frames, written by the
parity watch in `shadow.py`). The key hashes both models' bytes, onnxruntime's version, the CPU, the core
count, the threads and the providers: a verdict is only valid for the exact kernels it was measured on, so
any change of these starts over, and deleting a file forces it.

Writes are atomic (temporary file, then rename), so a reader (`edge-mask doctor` while the service runs)
never sees half a file, and a failed write only costs the work at the next start.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import platform
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_mask.detect.models import sha256_file
from edge_mask.detect.runtime import SESSION_CONFIG

log = logging.getLogger(__name__)

AUTO_CHOICE_FILE = "precision-auto.json"
PARITY_FILE = "precision-parity.json"

STATES = ("proving", "int8", "fp32-fallback", "fp32-slower")
"""proving: fp32 masks, int8 shadows until enough faces agree. int8: int8 masks (proven and faster), fp32
shadows. fp32-fallback: int8 was in use and the rolling agreement dropped; fp32 masks and int8 must prove
itself again over twice the faces. fp32-slower: fp32 is faster here, so int8 would not run even if it
agreed; once enough faces were compared (agreeing or not) fp32 masks and nothing shadows."""


def cpu_name() -> str:
    """The CPU model as /proc/cpuinfo names it (an ARM board's 'Hardware' or 'Model' line), else platform's."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.lower().startswith(("model name", "model\t", "hardware")):
                return line.split(":", 1)[-1].strip()
    except OSError:
        pass
    return cpu


def setup_key(int8_path: Path, fp32_path: Path, threads: int, providers: Sequence[str]) -> str:
    """One hash of everything that decides which kernels run: models, runtime, CPU, threads, providers, and
    the sessions' config entries (`runtime.SESSION_CONFIG`: a verdict saved under other settings, such as
    before the exact int8 path on x86, is measured again)."""
    import onnxruntime

    settings = ",".join(f"{key}={value}" for key, value in sorted(SESSION_CONFIG.items()))
    parts = [sha256_file(int8_path), sha256_file(fp32_path), onnxruntime.__version__, cpu_name(),
             str(os.cpu_count()), str(threads), ",".join(providers), settings]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def read_entry(path: Path, key: str) -> dict[str, Any] | None:
    """The entry stored under `key` in the JSON map at `path`, or None (missing, unreadable, malformed)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        entry = data.get(key)
    except (OSError, ValueError, AttributeError):
        return None
    return entry if isinstance(entry, dict) else None


def write_entry(path: Path, key: str, entry: dict[str, Any]) -> bool:
    """Store `entry` under `key` in the JSON map at `path` atomically; False (logged) when it cannot."""
    try:
        data = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
        if not isinstance(data, dict):
            data = {}
        data[key] = entry
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except (OSError, ValueError) as exc:  # a read-only cache only costs the work again at the next start
        log.warning("cannot remember the decision in %s (%s)", path, exc)
        return False
    return True


@dataclass
class ParityVerdict:
    """Where the on-device parity check stands: its state and the figures that put it there.

    `fp32_faces`/`found` and `int8_faces`/`confirmed` count the current proof (or, in state int8, every
    face checked since the proof); the `window_*` figures are the rolling window that last judged int8.
    """

    state: str = "proving"
    fp32_faces: int = 0
    found: int = 0
    """fp32 faces that int8 also found (IoU >= 0.5, score >= threshold - margin)."""
    int8_faces: int = 0
    confirmed: int = 0
    """int8 faces that fp32 also found."""
    frames: int = 0
    frames_with_faces: int = 0
    window_fp32_faces: int = 0
    window_found: int = 0
    window_int8_faces: int = 0
    window_confirmed: int = 0
    fallbacks: int = 0
    int8_ms: float | None = None
    fp32_ms: float | None = None
    decided_at: str | None = None
    """When the state last changed."""
    updated_at: str | None = None

    @property
    def found_share(self) -> float:
        return self.found / self.fp32_faces if self.fp32_faces else 1.0

    @property
    def confirmed_share(self) -> float:
        return self.confirmed / self.int8_faces if self.int8_faces else 1.0

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ParityVerdict | None:
        """A verdict from its stored form; None when the entry is not one (an unknown state, wrong types)."""
        names = {f.name for f in dataclasses.fields(cls)}
        try:
            verdict = cls(**{k: v for k, v in data.items() if k in names})
        except TypeError:
            return None
        counts = (verdict.fp32_faces, verdict.found, verdict.int8_faces, verdict.confirmed, verdict.frames)
        if verdict.state not in STATES or not all(isinstance(n, int) and n >= 0 for n in counts):
            return None
        return verdict


def load_verdict(cache_dir: Path, key: str) -> ParityVerdict | None:
    entry = read_entry(cache_dir / PARITY_FILE, key)
    return ParityVerdict.from_dict(entry) if entry is not None else None


def save_verdict(cache_dir: Path, key: str, verdict: ParityVerdict) -> bool:
    verdict.updated_at = utc_now()
    return write_entry(cache_dir / PARITY_FILE, key, verdict.as_dict())
