"""Parity of the YuNet models on ARM kernels against x86: same inputs, same models, different CPU kernels.

Why: the int8 parity gate (`edge_mask.tools.quantize`) runs on the build machine, an x86 CPU, so it proves
the int8 model against fp32 on x86 kernels only. The devices are ARM, where onnxruntime takes other code
paths (NEON, dot-product and i8mm int8 GEMMs; NEON fp32 without x86's NCHWc layout); a bug or a
saturating path there would move scores or drop faces on the device while every check here stays green.
This module compares the raw outputs of both models computed on (emulated) ARM with the ones computed here.

How: `prepare` (x86) writes the parity set's input tensors, exactly as the detector builds them
(`plan_input` + `make_blob` at detection width 640, images chosen like the quantizer's parity set), and
copies both models; `arm_parity_runner.py` (numpy + onnxruntime only) runs both models on every tensor in
the arm64 root and saves the raw outputs; `compare` (x86) runs the same runner code here, decodes both
sides with the product's own `postprocess` (decode + NMS) and reports, per model and threshold, how many
faces each side finds and whether they are the same faces. `scripts/arm64-parity.sh` does all of it.
Timings under emulation mean nothing; only the numbers do.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_mask.core.types import Detections
from edge_mask.detect.yunet import Letterbox, make_blob, plan_input, postprocess
from edge_mask.tools.arm_parity_runner import cpu_features, load_blobs, load_outputs, output_key, run_models
from edge_mask.tools.parity import agreement, matched

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"
PARITY_SOURCES = ("data/faces-dlib", "data/video")
"""The quantizer's parity set (models/README.md): 9 photos and 12 frames of every shared clip."""
DETECT_WIDTH = 640
THRESHOLDS = (0.25, 0.5)
IOU = 0.5
MODELS = {"fp32": "yunet-fp32-dynamic", "int8": "yunet-int8"}
"""Name in the outputs -> manifest id. The int8 model is built from the dynamic fp32 one."""
SCORE_TOLERANCE = {"fp32": 0.02, "int8": 0.02}
"""Largest |ARM score - x86 score| allowed for a face both find. A face scored >= threshold on one side counts
as found on the other when the other has a box at IoU >= 0.5 scoring >= threshold - tolerance."""
REQUIRED = 0.99
"""Share of faces each side must find of the other's, at every threshold."""
_FLOOR = 0.1
_NMS_IOU, _MAX_FACES = 0.3, 200
"""As in the quantizer's parity check."""


@dataclass(frozen=True)
class Row:
    """How one model's outputs on ARM agree with x86 at one threshold."""

    model: str
    threshold: float
    x86_faces: int
    arm_faces: int
    x86_found_on_arm: int
    arm_found_on_x86: int
    score_diff_max: float
    score_diff_p99: float
    raw_diff_max: float
    identical_tensors: int
    tensors: int
    tolerance: float
    passed: bool

    @property
    def recall(self) -> float:
        """Share of x86 faces the ARM run also finds."""
        return self.x86_found_on_arm / self.x86_faces if self.x86_faces else 1.0

    @property
    def precision(self) -> float:
        """Share of ARM faces the x86 run also finds."""
        return self.arm_found_on_x86 / self.arm_faces if self.arm_faces else 1.0


def raw_difference(
    ref: Mapping[str, npt.NDArray[np.float32]], cand: Mapping[str, npt.NDArray[np.float32]]
) -> tuple[float, int, int]:
    """(max |difference| over every raw output tensor, tensors bit-identical, tensors); same keys required."""
    if set(ref) != set(cand):
        missing = sorted(set(ref) ^ set(cand))[:5]
        raise ValueError(f"the two runs have different outputs (first differences: {missing})")
    worst, same = 0.0, 0
    for key, value in ref.items():
        other = cand[key]
        if value.shape != other.shape:
            raise ValueError(f"{key}: shape {value.shape} on x86, {other.shape} on ARM")
        same += int(np.array_equal(value, other))
        if value.size:
            worst = max(worst, float(np.max(np.abs(value.astype(np.float64) - other.astype(np.float64)))))
    return worst, same, len(ref)


def compare_model(
    model: str,
    ref: Sequence[Detections],
    cand: Sequence[Detections],
    raw: tuple[float, int, int],
    thresholds: Sequence[float] = THRESHOLDS,
    tolerance: float = 0.02,
    required: float = REQUIRED,
) -> list[Row]:
    """One `Row` per threshold for detections decoded from x86 (`ref`) and ARM (`cand`) outputs.

    Passes when both shares are >= `required` and every matched face's score moved by <= `tolerance`.
    """
    rows = []
    for threshold in thresholds:
        # the quantizer's face-by-face agreement, x86 in the place of fp32 and ARM in the place of int8
        n_ref, hit_ref, n_cand, hit_cand = agreement(ref, cand, threshold, tolerance, IOU)
        diffs = matched(ref, cand, threshold, IOU)[1]
        worst = max(diffs, default=0.0)
        row = Row(model=model, threshold=threshold, x86_faces=n_ref, arm_faces=n_cand, x86_found_on_arm=hit_ref,
                  arm_found_on_x86=hit_cand, score_diff_max=worst,
                  score_diff_p99=float(np.percentile(diffs, 99)) if diffs else 0.0, raw_diff_max=raw[0],
                  identical_tensors=raw[1], tensors=raw[2], tolerance=tolerance, passed=False)
        passed = n_ref > 0 and row.recall >= required and row.precision >= required and worst <= tolerance
        rows.append(replace(row, passed=bool(passed)))
    return rows


# ------------------------------------------------------------------------------------------ the two steps


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def prepare(out: Path, models_dir: Path, shared: Path = SHARED) -> dict[str, Any]:
    """Write `out`/blobs.npz (uint8 NCHW tensors), blobs.json (letterboxes) and the two models."""
    from edge_mask.detect import load_manifest
    from edge_mask.tools.quantize import FRAMES_PER_VIDEO, load_images

    sources = [shared / s for s in PARITY_SOURCES]
    missing = [str(s) for s in sources if not s.exists()]
    if missing:
        raise SystemExit(f"parity data not found: {', '.join(missing)} (the shared folder beside the checkout)")
    manifest = load_manifest()
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, model_id in MODELS.items():
        src = models_dir / manifest.models[model_id].file
        if not src.is_file():
            raise SystemExit(f"{src}: not found; run 'edge-mask models fetch' / 'edge-mask models quantize' first")
        shutil.copyfile(src, out / f"{name}.onnx")
        files[name] = {"id": model_id, "file": src.name, "sha256": _sha256(src)}
    images = load_images(sources, frames_per_video=FRAMES_PER_VIDEO)
    blobs: dict[str, Any] = {}  # Any: numpy's stubs would match ** against savez's allow_pickle
    boxes = []
    for index, image in enumerate(images):
        height, width = image.shape[:2]
        box = plan_input(width, height, DETECT_WIDTH)
        blob = make_blob(image, box)
        pixels = blob.astype(np.uint8)
        if not np.array_equal(pixels.astype(np.float32), blob):
            raise ValueError("make_blob produced values that are not whole 0..255 numbers; store float32 instead")
        blobs[f"{index:04d}"] = pixels
        boxes.append({"frame_width": width, "frame_height": height, **asdict(box)})
    np.savez_compressed(out / "blobs.npz", **blobs)
    info = {"images": len(images), "detect_width": DETECT_WIDTH, "sources": list(PARITY_SOURCES),
            "frames_per_video": FRAMES_PER_VIDEO, "models": files, "letterboxes": boxes}
    (out / "blobs.json").write_text(json.dumps(info, indent=1), encoding="utf-8")
    log.info("prepared %d blobs and %s in %s", len(images), ", ".join(files), out)
    return info


def _decode(outputs: Mapping[str, npt.NDArray[np.float32]], model: str, boxes: Sequence[Mapping[str, Any]]
            ) -> list[Detections]:
    found = []
    for index, item in enumerate(boxes):
        prefix = output_key(model, index, "")
        mine = {key[len(prefix):]: value for key, value in outputs.items() if key.startswith(prefix)}
        box = Letterbox(**{k: item[k] for k in ("scale", "width", "height", "resized_width", "resized_height")})
        found.append(postprocess(mine, box, item["frame_width"], item["frame_height"], _FLOOR, _NMS_IOU,
                                 _MAX_FACES))
    return found


def _only(outputs: Mapping[str, npt.NDArray[np.float32]], model: str) -> dict[str, npt.NDArray[np.float32]]:
    return {key: value for key, value in outputs.items() if key.startswith(model + "/")}


def compare(work: Path, arm_runs: Sequence[Path], threads: int = 2) -> list[tuple[str, list[Row]]]:
    """Run both models here (x86), then compare each ARM run with it; returns (ARM run label, rows)."""
    info = json.loads((work / "blobs.json").read_text(encoding="utf-8"))
    x86_path = work / "outputs-x86.npz"
    if not x86_path.is_file():
        from edge_mask.tools.arm_parity_runner import save_outputs

        outputs, seconds = run_models(load_blobs(work / "blobs.npz"), {m: work / f"{m}.onnx" for m in MODELS},
                                      threads)
        save_outputs(x86_path, outputs, {**cpu_features(), "seconds": seconds})
    ref_out, ref_meta = load_outputs(x86_path)
    log.info("x86 reference: %s", ref_meta)
    ref = {m: _decode(ref_out, m, info["letterboxes"]) for m in MODELS}
    results = []
    for path in arm_runs:
        cand_out, meta = load_outputs(path)
        label = f"{meta.get('machine', '?')} {meta.get('qemu_cpu') or 'default'} [{','.join(meta.get('features', []))}]"
        rows: list[Row] = []
        for model in MODELS:
            raw = raw_difference(_only(ref_out, model), _only(cand_out, model))
            rows += compare_model(model, ref[model], _decode(cand_out, model, info["letterboxes"]), raw,
                                  tolerance=SCORE_TOLERANCE[model])
        results.append((label, rows))
    return results


def format_table(label: str, rows: Sequence[Row]) -> str:
    """A Markdown table of one ARM run against x86."""
    lines = [f"ARM run: {label}", "",
             "| model | thr | x86 faces | ARM faces | x86 found on ARM | ARM found on x86 | max / p99 abs score diff "
             "| max abs raw diff | identical tensors | result |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r.model} | {r.threshold:.2f} | {r.x86_faces} | {r.arm_faces} | {r.x86_found_on_arm}/{r.x86_faces} "
            f"({r.recall:.3f}) | {r.arm_found_on_x86}/{r.arm_faces} ({r.precision:.3f}) | {r.score_diff_max:.2g} / "
            f"{r.score_diff_p99:.2g} | {r.raw_diff_max:.2g} | {r.identical_tensors}/{r.tensors} | "
            f"{'PASS' if r.passed else 'FAIL'} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="step", required=True)
    prep = sub.add_parser("prepare", help="write the parity set's input blobs and the two models")
    prep.add_argument("--work", type=Path, default=REPO / ".cache" / "arm-parity")
    prep.add_argument("--models", type=Path, default=REPO / ".cache" / "models", help="model cache folder")
    prep.add_argument("--shared", type=Path, default=SHARED)
    comp = sub.add_parser("compare", help="run here and compare with the ARM runs' raw outputs")
    comp.add_argument("--work", type=Path, default=REPO / ".cache" / "arm-parity")
    comp.add_argument("arm", type=Path, nargs="+", help="outputs .npz written by arm_parity_runner.py on ARM")
    comp.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if args.step == "prepare":
        (args.work / "outputs-x86.npz").unlink(missing_ok=True)
        prepare(args.work, args.models, args.shared)
        return 0
    failed = False
    print(f"Gate: per model and threshold, >= {REQUIRED:.0%} of faces found both ways at IoU >= {IOU} (the other "
          f"side scoring >= threshold - tolerance) and max abs score diff <= tolerance "
          f"({', '.join(f'{m} {t}' for m, t in SCORE_TOLERANCE.items())}).\n")
    for label, rows in compare(args.work, args.arm, args.threads):
        print(format_table(label, rows) + "\n")
        failed |= not all(r.passed for r in rows)
    print("ARM parity: " + ("FAIL" if failed else "PASS"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
