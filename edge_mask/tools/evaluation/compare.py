"""`bench compare`: frames/s of `edge-mask mask` against `deface` on the same clip and the same cores.

Why whole processes, timed from outside: that is what a user compares when they swap one tool for the other
(start-up, decode, detection, masking and encoding all count), and it needs no cooperation from deface.
Both run pinned to the same CPU set with `taskset` when it exists (else with equal thread variables only),
with default settings, alternating which goes first in each round so caches and thermal state do not
favour one side. The ratio is ours/deface per round (frames/s on wall time), and the CPU ratio deface's
CPU seconds over ours (all threads, user + system); min/median/max over the rounds is reported.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edge_mask.capture import VideoReader
from edge_mask.core.errors import UserError
from edge_mask.core.stats import usable_cpus
from edge_mask.tools.evaluation.metrics import ratio_stats

try:
    import resource
except ImportError:  # not on Windows: CPU ratios are then reported as 0
    resource = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

DEFACE_ARGS = ("--backend", "opencv")
"""deface's fastest backend: its default (`auto`) takes onnxruntime whenever that is importable, as it is
beside edge-mask, and onnxruntime is the slower of the two for deface on CPUs; the ratio is against its best."""
DEFACE_HINT = "install it with `pip install --no-deps deface==1.5.0 imageio imageio-ffmpeg tqdm scikit-image`"


def count_frames(clip: Path) -> int:
    """Frames the clip really decodes to (the container's count is only a hint), through the one reader;
    MediaError (a UserError) naming the clip when it is missing or no frame decodes."""
    with VideoReader(clip) as reader:
        return reader.count()


def deface_command() -> list[str]:
    script = Path(sys.executable).with_name("deface")
    found = str(script) if script.exists() else shutil.which("deface")
    if not found:
        raise UserError(f"the deface CLI is not installed; {DEFACE_HINT}")
    return [found]


def edge_mask_command() -> list[str]:
    return [sys.executable, "-m", "edge_mask"]


def pinning(cores: int) -> tuple[list[str], dict[str, str]]:
    """A `taskset` prefix for CPUs 0..cores-1 (when available) and thread variables set equally."""
    if hasattr(os, "sched_getaffinity"):
        available = sorted(os.sched_getaffinity(0))
    else:
        available = list(range(os.cpu_count() or 1))
    chosen = available[: max(1, cores)]
    env = {name: str(len(chosen)) for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    taskset = shutil.which("taskset")
    prefix = [taskset, "-c", ",".join(map(str, chosen))] if taskset else []
    return prefix, env


def _children_cpu() -> float:
    """User + system CPU seconds of every finished child process so far (0 where the OS does not say)."""
    if resource is None:
        return 0.0
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return float(usage.ru_utime + usage.ru_stime)


def _timed(command: Sequence[str], env: dict[str, str], what: str) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one whole process: start-up, every thread, exit."""
    cpu = _children_cpu()
    start = time.perf_counter()
    done = subprocess.run(list(command), env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise UserError(f"{what} failed with exit code {done.returncode}: {tail[0]}")
    return elapsed, _children_cpu() - cpu


def run_compare(
    clip: Path,
    rounds: int = 3,
    cores: int | None = None,
    mask_args: Sequence[str] = (),
    workdir: Path | None = None,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Run deface and edge-mask `rounds` times each on `clip`; returns fps per round and the ratios."""
    if not clip.is_file():
        raise UserError(f"{clip}: clip not found; pass an existing video file")
    if rounds < 1:
        raise UserError("--rounds must be at least 1")
    frames = count_frames(clip)
    if cores is None:
        cores = usable_cpus()
    prefix, thread_env = pinning(cores)
    env = {**os.environ, **thread_env, **(env or {})}
    deface = deface_command()
    rows: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(dir=workdir, prefix="edge-mask-compare-") as tmp:
        out = Path(tmp)
        for number in range(rounds):
            ours_cmd = [*prefix, *edge_mask_command(), "-q", "mask", str(clip), "-o", str(out / "ours"),
                        "--no-progress", *mask_args]
            theirs_cmd = [*prefix, *deface, str(clip), "-o", str(out / f"deface{clip.suffix or '.mp4'}"),
                          *DEFACE_ARGS]
            order = [("ours", ours_cmd), ("deface", theirs_cmd)]
            if number % 2:
                order.reverse()
            timed = {name: _timed(cmd, env, "edge-mask mask" if name == "ours" else "deface") for name, cmd in order}
            times = {name: wall for name, (wall, _) in timed.items()}
            row = {"ours_fps": frames / times["ours"], "deface_fps": frames / times["deface"],
                   "ours_s": times["ours"], "deface_s": times["deface"],
                   "ours_cpu_s": timed["ours"][1], "deface_cpu_s": timed["deface"][1]}
            row["ratio"] = row["ours_fps"] / row["deface_fps"]
            # CPU ratio: deface's CPU seconds per frame over ours (same frames), 0 where CPU time is unknown
            row["cpu_ratio"] = row["deface_cpu_s"] / row["ours_cpu_s"] if row["ours_cpu_s"] > 0 else 0.0
            rows.append(row)
            log.info("round %d: edge-mask %.1f fps, deface %.1f fps, ratio %.1fx (CPU %.1fx)", number + 1,
                     row["ours_fps"], row["deface_fps"], row["ratio"], row["cpu_ratio"])
    return {
        "clip": str(clip),
        "frames": frames,
        "rounds": rows,
        "cores": cores,
        "pinned": bool(prefix),
        "deface_version": _deface_version(deface),
        "deface_args": list(DEFACE_ARGS),
        "ratio": ratio_stats([row["ratio"] for row in rows]),
        "cpu_ratio": ratio_stats([row["cpu_ratio"] for row in rows]),
        "ours_fps": ratio_stats([row["ours_fps"] for row in rows]),
        "deface_fps": ratio_stats([row["deface_fps"] for row in rows]),
    }


def _deface_version(deface: Sequence[str]) -> str:
    """deface's version from this environment's metadata, else from the CLI (it may live in its own venv)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("deface")
    except PackageNotFoundError:
        pass
    try:
        done = subprocess.run([*deface, "--version"], capture_output=True, text=True, check=False, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    lines = done.stdout.strip().splitlines()
    return lines[-1].strip() if done.returncode == 0 and lines else "unknown"
