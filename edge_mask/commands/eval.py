"""`edge-mask eval ...`: measure the masker against independent anchors (needs the `eval` extra).

  eval detect --gt DIR     recall and mask coverage per annotated face at several thresholds
  eval leaks VIDEO...      CenterFace judge on original vs masked frames: leaked frames and tracks per clip
  eval utility [VIDEO...]  masked vs needed share of each frame, collateral, against deface's geometry
  eval reid                face-recognition attacker (dlib ResNet) on clean vs masked probes, per mask style
  eval report              run everything and regenerate docs/evaluation.md and docs/eval/*.png

Each prints a short table, or one JSON object with --json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from edge_mask.core.errors import UserError

REPO = Path(__file__).resolve().parents[2]


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("eval", help="evaluate leaks, coverage, re-identification; write the report",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="eval_command", metavar="WHAT", required=True)

    detect = sub.add_parser("detect", help="recall and mask coverage on annotated photos")
    detect.add_argument("--gt", required=True, type=Path, help="folder with imglab .xml and/or .json annotations")
    detect.add_argument("--thresholds", default="0.3,0.4,0.5,0.6,0.7,0.8,0.9", help="comma-separated scores")
    detect.add_argument("--iou", type=float, default=0.5, help="IoU for a detection to count as found")
    _common(detect)
    detect.set_defaults(func=run_detect)

    leaks = sub.add_parser("leaks", help="independent judge on original vs masked video frames")
    leaks.add_argument("videos", nargs="+", type=Path, metavar="VIDEO")
    leaks.add_argument("--every", type=int, default=1, metavar="N", help="judge every N-th frame (all are masked)")
    leaks.add_argument("--max-frames", type=int, default=None, metavar="N", help="stop each clip after N frames")
    leaks.add_argument("--judge-threshold", type=float, default=0.5)
    _common(leaks)
    leaks.set_defaults(func=run_leaks)

    utility = sub.add_parser("utility", help="masked against needed share of each frame; deface as the anchor",
                             description="Masks with the configured geometry painted solid magenta (whatever "
                             "--style says); the judge (CenterFace) runs on the original frames only.")
    utility.add_argument("videos", nargs="*", type=Path, metavar="VIDEO", help="default: every shared clip")
    utility.add_argument("--clips", default=None, metavar="NAMES",
                         help="comma-separated shared clip names or stems (e.g. eat,short_hamilton_clip)")
    utility.add_argument("--every", type=int, default=1, metavar="N", help="measure every N-th frame (all masked)")
    utility.add_argument("--max-frames", type=int, default=None, metavar="N", help="stop each clip after N frames")
    _common(utility)
    utility.set_defaults(func=run_utility)

    reid = sub.add_parser("reid", help="face-recognition attacker against masked probes")
    reid.add_argument("--data", type=Path, default=None, help="identities folder (default ../shared/data/identities)")
    reid.add_argument("--styles", default="original,solid,pixelate,blur,deface", help="comma-separated styles")
    reid.add_argument("--max-pairs", type=int, default=None, metavar="N", help="verify only the first N pairs")
    _common(reid)
    reid.set_defaults(func=run_reid)

    linkage = sub.add_parser("linkage", help="do the clinical signals link halves of the same recording?")
    linkage.add_argument("videos", nargs="*", type=Path, metavar="VIDEO", help="default: the shared ASL clips")
    _common(linkage)
    linkage.set_defaults(func=run_linkage)

    report = sub.add_parser("report", help="run all evaluations and regenerate docs/evaluation.md")
    report.add_argument("--shared", type=Path, default=None, help="shared data folder (default ../shared)")
    report.add_argument("--out", type=Path, default=REPO / "docs" / "evaluation.md", help="Markdown to write")
    report.add_argument("--assets", type=Path, default=None, help="plots and results.json (default: eval/ beside)")
    report.add_argument("--sections", default="detect,leaks,utility,reid,linkage,bench,compare",
                        help="comma-separated subset")
    report.add_argument("--every", type=int, default=1, metavar="N", help="leaks, utility: judge every N-th frame")
    report.add_argument("--rounds", type=int, default=3, help="rounds of the deface comparison")
    report.add_argument("--from-json", type=Path, default=None, metavar="FILE",
                        help="re-render from a saved results.json instead of measuring")
    report.add_argument("--update", action="store_true",
                        help="re-measure only --sections and keep the other sections of the saved results.json")
    _common(report, with_json=False)
    report.set_defaults(func=run_report)


def _common(parser: argparse.ArgumentParser, with_json: bool = True) -> None:
    parser.add_argument("--config", type=Path, default=None, help="device config to evaluate (default settings)")
    parser.add_argument("--model-cache", type=Path, default=None, help="model cache folder (overrides the config)")
    parser.add_argument("--style", choices=("solid", "pixelate", "blur", "clinical"), default=None,
                        help="mask style to use")
    parser.add_argument("--threshold", type=float, default=None, help="detector score threshold")
    if with_json:
        parser.add_argument("--json", action="store_true", help="print one JSON object")


def _cfg(args: argparse.Namespace) -> Any:
    from edge_mask.tools.evaluation.pipeline import eval_config, with_detector, with_mask

    cfg = eval_config(args.config, args.model_cache)
    if args.style:
        cfg = with_mask(cfg, style=args.style)
    if args.threshold is not None:
        if not 0 < args.threshold < 1:
            raise UserError(f"--threshold {args.threshold}: expected a value between 0 and 1")
        cfg = with_detector(cfg, threshold=args.threshold)
    return cfg


def _floats(text: str, what: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"{what} {text!r}: expected comma-separated numbers like 0.3,0.5,0.7") from None
    if not values or not all(0 < v < 1 for v in values):
        raise UserError(f"{what} {text!r}: expected numbers between 0 and 1")
    return values


def _shared() -> Path:
    from edge_mask.tools.evaluation.report import default_shared

    return default_shared()


def run_detect(args: argparse.Namespace) -> int:
    from edge_mask.tools.evaluation.detect_eval import evaluate_detection

    result = evaluate_detection(args.gt, _cfg(args), _floats(args.thresholds, "--thresholds"), args.iou)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{result['faces']} faces in {result['images']} photos; recall at IoU >= {result['iou']}, "
          f"coverage = share of each face box hidden by the {result['style']} mask")
    print(f"{'threshold':>9} {'recall':>7} {'>=90% covered':>14} {'mean cov':>9} {'min cov':>8} {'FP regions':>11}")
    for row in result["rows"]:
        mark = "*" if abs(row["threshold"] - result["default_threshold"]) < 1e-6 else " "
        print(f"{row['threshold']:>8.2f}{mark} {row['recall']:>7.1%} {row['covered']:>7}/{row['faces']:<6} "
              f"{row['mean_coverage']:>9.1%} {row['min_coverage']:>8.1%} {row['false_positive_regions']:>11}")
    print("* configured threshold")
    return 0


def run_leaks(args: argparse.Namespace) -> int:
    from edge_mask.tools.evaluation.leaks import evaluate_leaks

    if args.every < 1:
        raise UserError("--every must be at least 1")
    result = evaluate_leaks(args.videos, _cfg(args), args.every, args.max_frames, args.judge_threshold)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{'clip':<28} {'frames':>6} {'judged':>6} {'faces':>6} {'leaked frames':>13} {'leaked tracks':>13}")
        for clip in [*result["clips"], {"name": "TOTAL", **result["totals"]}]:
            print(f"{clip['name']:<28} {clip['frames']:>6} {clip['judged_frames']:>6} {clip['judge_faces']:>6} "
                  f"{clip['leaked_frames']:>13} {clip['leaked_tracks']:>6}/{clip['tracks']:<6}")
    return 1 if result["totals"]["leaked_tracks"] else 0


def _utility_clips(args: argparse.Namespace) -> list[Path]:
    """Explicit VIDEO paths, else the shared clips, narrowed by --clips (name or stem)."""
    from edge_mask.tools.evaluation.report import shared_clips

    clips = list(args.videos) or shared_clips(_shared())
    if args.clips:
        wanted = {name.strip() for name in args.clips.split(",") if name.strip()}
        unknown = wanted - {c.name for c in clips} - {c.stem for c in clips}
        if unknown:
            raise UserError(f"--clips: no clip named {', '.join(sorted(unknown))}; "
                            f"known: {', '.join(c.stem for c in clips)}")
        clips = [c for c in clips if c.name in wanted or c.stem in wanted]
    if not clips:
        raise UserError("no clips to measure: pass VIDEO paths or place the shared data (EDGE_MASK_SHARED)")
    return clips


def run_utility(args: argparse.Namespace) -> int:
    from edge_mask.tools.evaluation.utility import evaluate_utility

    if args.every < 1:
        raise UserError("--every must be at least 1")
    result = evaluate_utility(_utility_clips(args), _cfg(args), args.every, args.max_frames)
    if args.json:
        print(json.dumps(result))
    else:
        print_utility(result)
    return 0


def print_utility(result: dict[str, Any]) -> None:
    """The utility table: one line per clip and the total, edge_mask beside deface's geometry."""
    print(f"shares of the frame, mean over judged frames (every {result['every']}); needed = head ellipses "
          f"{result['head_ellipse']['width']}x{result['head_ellipse']['height']} around CenterFace faces > "
          f"{result['judge']['threshold']}; >half = frames more than half masked; <80% = judge faces less than "
          f"{result['covered_at']:.0%} covered")
    print(f"{'':<24} {'':>6} {'':>5} {'':>7} | {'edge_mask':^30} | {'deface 1.5.0 geometry (anchor)':^30}")
    cells = f"{'masked':>7} {'collat.':>7} {'>half':>6} {'<80%':>6}"
    print(f"{'clip':<24} {'judged':>6} {'faces':>5} {'needed':>7} | {cells} | {cells}")
    for clip in [*result["clips"], {**result["totals"], "name": "TOTAL"}]:
        line = f"{clip['name']:<24} {clip['judged_frames']:>6} {clip['judge_faces']:>5} {clip['needed']:>7.1%}"
        for key in ("edge_mask", "deface"):
            m = clip["maskers"][key]
            line += (f" | {m['masked']:>7.1%} {m['collateral']:>7.1%} {m['over_half_frames']:>6} "
                     f"{m['faces_uncovered']:>6}")
        print(line)
    sources = result["totals"].get("collateral_sources")
    if sources:
        print("edge_mask collateral by source (total): " + ", ".join(f"{k} {v:.2%}" for k, v in sources.items()))


def run_reid(args: argparse.Namespace) -> int:
    from edge_mask.tools.evaluation.reid import evaluate_reid

    data = args.data or _shared() / "data" / "identities"
    styles = [s.strip() for s in args.styles.split(",") if s.strip()]
    result = evaluate_reid(data, _cfg(args), styles, args.max_pairs)
    if args.json:
        print(json.dumps(result))
        return 0
    ident, verify = result["identification"]["styles"], result["verification"]["styles"]
    print(f"{'style':<10} {'identified':>10} {'mean dist':>9} {'pairs verified':>15} {'mean dist':>9}")
    for style in styles:
        i, v = ident[style], verify[style]
        print(f"{style:<10} {i['identified']:>4}/{i['probe_faces']:<5} {i['mean_distance'] or 0:>9.3f} "
              f"{v['same_verified']:>7}/{v['same_pairs']:<7} {v['mean_same_distance'] or 0:>9.3f}")
    print(f"(identified: rank-1 correct and distance < {result['match_threshold']})")
    return 0


def run_report(args: argparse.Namespace) -> int:
    from edge_mask.tools.evaluation.report import collect, write_report

    assets = args.assets or args.out.parent / "eval"
    if args.from_json:
        try:
            results = json.loads(args.from_json.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise UserError(f"{args.from_json}: cannot read results ({exc}); run `edge-mask eval report`") from None
    else:
        sections = [s.strip() for s in args.sections.split(",") if s.strip()]
        results = collect(_cfg(args), args.shared or _shared(), sections, args.every, args.rounds, args.config)
        saved = assets / "results.json"
        if args.update and saved.is_file():
            kept = json.loads(saved.read_text(encoding="utf-8"))
            kept_errors = {k: v for k, v in kept.get("errors", {}).items() if k not in sections}
            results = {**kept, **results, "errors": {**kept_errors, **results["errors"]},
                       "timing_s": {**kept.get("timing_s", {}), **results["timing_s"]},
                       "updated_sections": sections, "previous_run": kept.get("generated_at"),
                       "previous_config": kept.get("previous_config", kept.get("config"))}
    for path in write_report(results, args.out, assets):
        print(f"wrote {path}")
    for name, message in results.get("errors", {}).items():
        print(f"section {name} did not run: {message}")
    return 1 if results.get("errors") else 0


def run_linkage(args: argparse.Namespace) -> int:
    from edge_mask.tools.evaluation.linkage import run_linkage as linkage
    from edge_mask.tools.evaluation.linkage import target

    clips = list(args.videos) or sorted((_shared() / "data" / "video" / "asl").glob("*.mkv"))
    if not clips:
        raise UserError("no clips: pass VIDEO paths or place the shared data (EDGE_MASK_SHARED)")
    report = linkage(clips, _cfg(args))
    if args.json:
        print(json.dumps(report))
        return 0
    for tier, result in report.items():
        print(f"{tier:<11} {result['linked']} of {result['clips']} clips' halves linked to each other "
              f"(chance {100 * result['chance']:.0f}%, target at most {100 * target(result):.0f}%)")
    return 0

