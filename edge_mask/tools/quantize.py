"""Static int8 quantization of YuNet with onnxruntime, and the parity check that decides if it may be used.

Why static (not dynamic) quantization: dynamic quantization only covers MatMul-like ops and leaves every
convolution in float, which is all of YuNet. Static quantization needs activation ranges, so it is
calibrated on real face photos at the detection resolution; ranges taken from noise or from the wrong
scale would cost small, far faces first, and those are exactly the ones a privacy product cannot miss.

Why a parity gate: an int8 model that drops 1 face in 20 would leak faces silently. A candidate is kept
only if, on photos and video frames held aside from calibration, it finds the same faces as fp32 (IoU >=
0.5) in >= 99% of cases, both ways (fp32 faces it finds, and its faces that fp32 also finds), at the
threshold the product detects at (`detector.threshold`, 0.25) and at YuNet's usual 0.5.

Why a score margin in the gate: quantization moves a face's score by up to about 0.1 (99th percentile,
measured on the held-aside set), and the shared data has many faces scoring near 0.25. With a hard cut at
the threshold, a face fp32 scores 0.26 and int8 0.24 counts as a disagreement although both models see it,
and how many such faces land on which side changes with the CPU's kernels: that made the gate pass on one
machine and fail on the next. A face counts as found by the other model when that model scores it at
least `threshold - margin` (margin 0.1) at IoU >= 0.5. The strict figures (margin 0) are in the report too.

Why uint8 weights and activations (U8U8) in the QOperator format: integer products are exact, so the same
model gives the same integers on every CPU, except where the kernel saturates. x86 CPUs without VNNI
multiply uint8 by int8 with an instruction that saturates 16-bit sums (onnxruntime's documented U8S8
caveat), which is why a U8S8 model scored differently on AVX2 and AVX-512 VNNI machines. U8U8 takes a
non-saturating path on x86 and ARM alike. Per-channel weights, MinMax calibration, no reduce-range
(reduce-range lost ~5% of faces in our measurements). The variants measured are in models/README.md.

Deterministic: files are read in sorted order, frames are taken at fixed positions and MinMax has no
randomness, so the same inputs give a byte-identical model (a test builds it twice and compares).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_mask.capture import MediaError, VideoReader, read_image
from edge_mask.core.boxes import iou_matrix
from edge_mask.core.errors import ModelError
from edge_mask.core.types import Detections, Image
from edge_mask.detect import OnnxYuNet, make_blob, open_session, plan_input
from edge_mask.detect.models import commit_file, copy_into_cache, parity_report_path, sha256_file

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}
VIDEO_SUFFIXES = {".mp4", ".mkv", ".avi", ".mov", ".gif"}
FORMATS = ("QOperator", "QDQ")
DEFAULT_FORMATS = ("QOperator",)
REQUIRED_AGREEMENT = 0.99
PARITY_MARGIN = 0.1
"""A face scored >= threshold by one model counts as found by the other if it scores >= threshold - margin."""
GATE_THRESHOLDS = (0.25, 0.5)
"""The product's detection threshold (config default) and YuNet's usual one."""


def _media_files(paths: Sequence[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES))
        elif path.is_file():
            files.append(path)
        else:
            raise ModelError(f"{path}: no such file or directory for calibration/parity images")
    return files


def frame_positions(total: int, count: int, between: bool = False) -> set[int]:
    """`count` evenly spread frame indices of a `total`-frame video; `between` takes the count - 1 midpoints
    of the same grid instead, so calibration frames (between) never coincide with parity frames (on it)."""
    if total <= 0:
        return {0}
    grid = np.linspace(0, total - 1, count)
    if between:
        grid = (grid[:-1] + grid[1:]) / 2 if count > 1 else np.array([(total - 1) / 2])
    return set(np.round(grid).astype(int).tolist())


def _video_frames(path: Path, count: int, between: bool = False) -> Iterator[Image]:
    """`count` frames spread evenly over a video (positions from its container's frame count), read
    sequentially by the one reader; an unreadable video is skipped with a warning, like a photo."""
    try:
        reader = VideoReader(path)
    except MediaError as exc:
        log.warning("skipping unreadable video: %s", exc.message)
        return
    with reader:
        yield from reader.sample(frame_positions(reader.info.frames, count, between))


def load_images(
    paths: Sequence[Path], limit: int | None = None, frames_per_video: int = 8, between: bool = False
) -> list[Image]:
    """Photos (recursively) and evenly sampled video frames; at most `limit`, spread evenly over the files.

    `between` samples video frames halfway between the positions taken without it (see `frame_positions`).
    """
    images: list[Image] = []
    for file in _media_files(paths):
        if file.suffix.lower() in VIDEO_SUFFIXES:
            images.extend(_video_frames(file, frames_per_video, between))
            continue
        try:
            images.append(read_image(file))
        except MediaError as exc:
            log.warning("skipping unreadable image: %s", exc.message)
    if limit is not None and len(images) > limit:
        keep = np.linspace(0, len(images) - 1, limit).astype(int)
        images = [images[i] for i in keep]
    if not images:
        raise ModelError(f"no readable images or videos in {', '.join(str(p) for p in paths)}")
    return images


@dataclass
class Parity:
    """How an int8 model agrees with fp32 on held-aside images at one threshold (same detection size).

    A face either model scores >= `threshold` counts as found by the other when the other scores a box at
    IoU >= `iou` with at least `threshold - margin`; the `strict_*` shares use no margin.
    """

    images: int
    fp32_faces: int
    int8_faces: int
    fp32_found_by_int8: int
    int8_found_by_fp32: int
    recall: float
    """Share of fp32 faces that int8 also finds at IoU >= `iou`."""
    precision: float
    """Share of int8 faces that fp32 also finds."""
    strict_recall: float
    strict_precision: float
    mean_iou: float
    score_shift_p99: float
    """99th percentile of |int8 score - fp32 score| over faces both find."""
    threshold: float
    margin: float
    iou: float
    required: float
    fp32_ms: float
    int8_ms: float
    passed: bool


def _run_all(detector: OnnxYuNet, images: Sequence[Image]) -> tuple[list[Detections], float]:
    detector.detect(images[0])  # warm-up, so the first allocation does not count in the timing
    start = time.perf_counter()
    found = [detector.detect(image) for image in images]
    return found, (time.perf_counter() - start) * 1e3 / max(len(images), 1)


def _found(a: Detections, b: Detections, threshold: float, floor: float, iou: float) -> tuple[int, int]:
    """(faces of `a` scoring >= threshold, how many of them `b` has at IoU >= iou with score >= floor)."""
    mine = a.boxes[a.scores >= threshold]
    theirs = b.boxes[b.scores >= floor]
    if len(mine) == 0 or len(theirs) == 0:
        return len(mine), 0
    return len(mine), int((iou_matrix(mine, theirs).max(axis=1) >= iou).sum())


def agreement(
    ref: Sequence[Detections], cand: Sequence[Detections], threshold: float, margin: float, iou: float
) -> tuple[int, int, int, int]:
    """(fp32 faces, of them found by int8, int8 faces, of them found by fp32) over paired results."""
    n_ref = hit_ref = n_cand = hit_cand = 0
    for a, b in zip(ref, cand, strict=True):
        n, hit = _found(a, b, threshold, threshold - margin, iou)
        n_ref, hit_ref = n_ref + n, hit_ref + hit
        n, hit = _found(b, a, threshold, threshold - margin, iou)
        n_cand, hit_cand = n_cand + n, hit_cand + hit
    return n_ref, hit_ref, n_cand, hit_cand


def _matched(ref: Sequence[Detections], cand: Sequence[Detections], threshold: float, iou: float) -> tuple[
        list[float], list[float]]:
    """IoUs and absolute score shifts of fp32 faces (>= threshold) and their best int8 match."""
    ious: list[float] = []
    shifts: list[float] = []
    for a, b in zip(ref, cand, strict=True):
        keep = a.scores >= threshold
        if not keep.any() or len(b) == 0:
            continue
        matrix = iou_matrix(a.boxes[keep], b.boxes)
        best, which = matrix.max(axis=1), matrix.argmax(axis=1)
        ok = best >= iou
        ious.extend(best[ok].tolist())
        shifts.extend(np.abs(b.scores[which] - a.scores[keep])[ok].tolist())
    return ious, shifts


def check_parity(
    fp32: Path,
    int8: Path,
    images: Sequence[Image],
    thresholds: Sequence[float] = GATE_THRESHOLDS,
    margin: float = PARITY_MARGIN,
    iou: float = 0.5,
    detect_width: int = 640,
    threads: int = 2,
    required: float = REQUIRED_AGREEMENT,
) -> list[Parity]:
    """Compare two models face by face on `images` at each threshold; `passed` when both shares >= `required`."""
    floor = max(min(thresholds) - margin, 0.01)
    results = []
    for path in (fp32, int8):
        detector = OnnxYuNet(open_session(path, threads), floor, 0.3, detect_width, 200)
        results.append(_run_all(detector, images))
    (ref, ref_ms), (cand, cand_ms) = results
    out: list[Parity] = []
    for threshold in thresholds:
        n_ref, hit_ref, n_cand, hit_cand = agreement(ref, cand, threshold, margin, iou)
        s_ref, s_hit_ref, s_cand, s_hit_cand = agreement(ref, cand, threshold, 0.0, iou)
        ious, shifts = _matched(ref, cand, threshold, iou)
        recall = hit_ref / n_ref if n_ref else 1.0
        precision = hit_cand / n_cand if n_cand else 1.0
        out.append(Parity(
            images=len(images), fp32_faces=n_ref, int8_faces=n_cand, fp32_found_by_int8=hit_ref,
            int8_found_by_fp32=hit_cand, recall=round(recall, 4), precision=round(precision, 4),
            strict_recall=round(s_hit_ref / s_ref if s_ref else 1.0, 4),
            strict_precision=round(s_hit_cand / s_cand if s_cand else 1.0, 4),
            mean_iou=round(float(np.mean(ious)) if ious else 0.0, 4),
            score_shift_p99=round(float(np.percentile(shifts, 99)) if shifts else 0.0, 4),
            threshold=threshold, margin=margin, iou=iou, required=required,
            fp32_ms=round(ref_ms, 2), int8_ms=round(cand_ms, 2),
            passed=bool(n_ref > 0 and recall >= required and precision >= required),
        ))
    return out


def _prepare_source(src: Path, work: Path) -> Path:
    """Opset >= 13 (per-channel DequantizeLinear needs `axis`) and onnxruntime's pre-processing."""
    import onnx
    from onnx import version_converter
    from onnxruntime.quantization.shape_inference import quant_pre_process

    model = onnx.load(str(src))
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset < 13:
        model = version_converter.convert_version(model, 13)
    upgraded = work / "opset13.onnx"
    onnx.save(model, str(upgraded))
    prepared = work / "prepared.onnx"
    quant_pre_process(str(upgraded), str(prepared), skip_symbolic_shape=True)
    return prepared


WEIGHT_TYPES = {"QOperator": "uint8", "QDQ": "int8"}
"""Weight type per format: U8U8 for QOperator (exact on every CPU); QDQ keeps onnxruntime's default U8S8
(as U8U8 it ran 1.7x slower than fp32 here)."""
FRAMES_PER_VIDEO = 12
"""Parity takes this many evenly spread frames of each video; calibration the midpoints between them."""


def _quantize(prepared: Path, out: Path, blobs: Sequence[Any], fmt: str) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self._blobs = iter(blobs)

        def get_next(self) -> dict[str, Any] | None:
            blob = next(self._blobs, None)
            return None if blob is None else {"input": blob}

    quantize_static(
        str(prepared), str(out), Reader(),
        quant_format=QuantFormat.QDQ if fmt == "QDQ" else QuantFormat.QOperator,
        per_channel=True, reduce_range=False,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QUInt8 if WEIGHT_TYPES[fmt] == "uint8" else QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
    )


def quantize_model(
    src: Path,
    out: Path,
    calibration: Sequence[Path],
    parity: Sequence[Path] | None = None,
    formats: Sequence[str] = DEFAULT_FORMATS,
    calib_count: int = 128,
    detect_width: int = 640,
    threads: int = 2,
    required: float = REQUIRED_AGREEMENT,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Quantize `src` to `out`, check parity, and write `out`'s `.parity.json`; returns the report.

    Calibration takes photos and video frames between the ones parity takes, so a folder may serve both.
    Without `parity` paths, every fourth calibration image is held aside for the parity check instead.
    The model is written even when no candidate passes (for inspection); its report says `passed: false`
    and the product refuses to load it.
    """
    import onnxruntime

    say = progress or (lambda message: log.info("%s", message))
    src, out = Path(src), Path(out)
    if not src.is_file():
        raise ModelError(f"{src}: source model not found; run 'edge-mask models fetch' first")
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ModelError(f"unknown quantization format(s) {unknown}; expected {', '.join(FORMATS)}")
    calib = load_images(calibration, frames_per_video=FRAMES_PER_VIDEO, between=True)
    if parity:
        held = load_images(parity, frames_per_video=FRAMES_PER_VIDEO)
    else:
        held, calib = calib[::4], [image for i, image in enumerate(calib) if i % 4]
    if len(calib) > calib_count:
        calib = [calib[i] for i in np.linspace(0, len(calib) - 1, calib_count).astype(int)]
    blobs = [make_blob(image, plan_input(image.shape[1], image.shape[0], detect_width)) for image in calib]
    say(f"calibrating on {len(blobs)} images at detection width {detect_width}; parity on {len(held)} held-aside")
    candidates: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="edge-mask-quant-") as tmp:
        work = Path(tmp)
        prepared = _prepare_source(src, work)
        for fmt in formats:
            path = work / f"int8-{fmt}.onnx"
            start = time.perf_counter()
            _quantize(prepared, path, blobs, fmt)
            seconds = time.perf_counter() - start
            results = check_parity(src, path, held, detect_width=detect_width, threads=threads, required=required)
            for result in results:
                say(
                    f"{fmt} at {result.threshold:.2f}: {result.fp32_found_by_int8}/{result.fp32_faces} fp32 faces "
                    f"found (recall {result.recall:.4f}, strict {result.strict_recall:.4f}), "
                    f"{result.int8_found_by_fp32}/{result.int8_faces} int8 faces confirmed (precision "
                    f"{result.precision:.4f}, strict {result.strict_precision:.4f}), score shift p99 "
                    f"{result.score_shift_p99:.3f}; {'PASS' if result.passed else 'FAIL'}"
                )
            head = results[0]
            say(f"{fmt}: {head.int8_ms:.1f} ms/image vs fp32 {head.fp32_ms:.1f} ms (quantized in {seconds:.1f} s)")
            candidates.append({"format": fmt, "path": path, "parity": results, "quantize_s": round(seconds, 1),
                               "passed": all(r.passed for r in results)})
        best = max(
            candidates,
            key=lambda c: (c["passed"], min(min(r.recall, r.precision) for r in c["parity"]), -c["parity"][0].int8_ms),
        )
        copy_into_cache(best["path"], out)
    chosen: list[Parity] = best["parity"]
    report: dict[str, Any] = {
        "model": out.name,
        "sha256": sha256_file(out),
        "size": out.stat().st_size,
        "source": src.name,
        "source_sha256": sha256_file(src),
        "format": best["format"],
        "per_channel": True,
        "activation_type": "uint8",
        "weight_type": WEIGHT_TYPES[best["format"]],
        "calibration": "MinMax",
        "calibration_images": len(blobs),
        "detect_width": detect_width,
        "onnxruntime": onnxruntime.__version__,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "parity": asdict(chosen[0]),
        "parity_by_threshold": [asdict(p) for p in chosen],
        "candidates": [
            {"format": c["format"], "quantize_s": c["quantize_s"], "passed": c["passed"],
             "parity_by_threshold": [asdict(p) for p in c["parity"]]} for c in candidates
        ],
        "passed": bool(best["passed"]),
    }
    write_report(out, report)
    say(f"kept {best['format']} -> {out} ({report['size']} bytes, sha256 {report['sha256']}); "
        f"parity {'PASSED' if best['passed'] else 'FAILED: the product will not use this model'}")
    return report


def write_report(model: Path, report: dict[str, Any]) -> None:
    """Write the parity report atomically beside the model."""
    dest = parity_report_path(model)
    with tempfile.NamedTemporaryFile("w", dir=dest.parent, prefix=f".{dest.name}.", delete=False,
                                     encoding="utf-8") as handle:
        json.dump(report, handle, indent=2, sort_keys=True)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    commit_file(Path(handle.name), dest)
