"""Static int8 quantization of YuNet with onnxruntime, and the parity check that decides if it may be used.

Why static (not dynamic) quantization: dynamic quantization only covers MatMul-like ops and leaves every
convolution in float, which is all of YuNet. Static quantization needs activation ranges, so it is
calibrated on real face photos at the detection resolution; ranges taken from noise or from the wrong
scale would cost small, far faces first, and those are exactly the ones a privacy product cannot miss.

Why a parity gate: an int8 model that drops 1 face in 20 would leak faces silently. A candidate is kept
only if, on photos and video frames held aside from calibration, it finds the same faces as fp32 (IoU >=
0.5) in >= 99% of cases, both ways (fp32 faces it finds, and its faces that fp32 also finds).

Both onnxruntime formats are tried (QDQ and QOperator, per-channel weights, uint8 activations, int8
weights, no reduce-range: reduce-range lost ~5% of faces in our measurements); the better by parity, then
speed, is written with a JSON report beside it.
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

import cv2
import numpy as np

from edge_mask.detect import OnnxYuNet, iou_matrix, make_blob, open_session, plan_input
from edge_mask.errors import ModelError
from edge_mask.models import commit_file, copy_into_cache, parity_report_path, sha256_file
from edge_mask.types import Image

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}
VIDEO_SUFFIXES = {".mp4", ".mkv", ".avi", ".mov", ".gif"}
FORMATS = ("QDQ", "QOperator")
REQUIRED_AGREEMENT = 0.99


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


def _video_frames(path: Path, count: int) -> Iterator[Image]:
    """`count` frames spread evenly over a video, read sequentially (seeking is unreliable in some codecs)."""
    capture = cv2.VideoCapture(str(path))
    try:
        total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        wanted = set(np.linspace(0, max(total - 1, 0), count).astype(int).tolist()) if total > 0 else {0}
        index = 0
        while wanted and index <= max(wanted):
            ok, frame = capture.read()
            if not ok:
                break
            if index in wanted:
                wanted.discard(index)
                yield np.asarray(frame, np.uint8)
            index += 1
    finally:
        capture.release()


def load_images(paths: Sequence[Path], limit: int | None = None, frames_per_video: int = 8) -> list[Image]:
    """Photos (recursively) and evenly sampled video frames; at most `limit`, spread evenly over the files."""
    images: list[Image] = []
    for file in _media_files(paths):
        if file.suffix.lower() in VIDEO_SUFFIXES:
            images.extend(_video_frames(file, frames_per_video))
            continue
        image = cv2.imread(str(file), cv2.IMREAD_COLOR)
        if image is None:
            log.warning("skipping unreadable image %s", file)
            continue
        images.append(np.asarray(image, np.uint8))
    if limit is not None and len(images) > limit:
        keep = np.linspace(0, len(images) - 1, limit).astype(int)
        images = [images[i] for i in keep]
    if not images:
        raise ModelError(f"no readable images or videos in {', '.join(str(p) for p in paths)}")
    return images


@dataclass
class Parity:
    """How an int8 model agrees with fp32 on held-aside images (same threshold, same detection size)."""

    images: int
    fp32_faces: int
    int8_faces: int
    fp32_found_by_int8: int
    int8_found_by_fp32: int
    recall: float
    """Share of fp32 faces that int8 also finds at IoU >= `iou`."""
    precision: float
    """Share of int8 faces that fp32 also finds."""
    mean_iou: float
    threshold: float
    iou: float
    required: float
    fp32_ms: float
    int8_ms: float
    passed: bool


def _run_all(detector: OnnxYuNet, images: Sequence[Image]) -> tuple[list[Any], float]:
    detector.detect(images[0])  # warm-up, so the first allocation does not count in the timing
    start = time.perf_counter()
    found = [detector.detect(image) for image in images]
    return found, (time.perf_counter() - start) * 1e3 / max(len(images), 1)


def check_parity(
    fp32: Path,
    int8: Path,
    images: Sequence[Image],
    threshold: float = 0.5,
    iou: float = 0.5,
    detect_width: int = 640,
    threads: int = 2,
    required: float = REQUIRED_AGREEMENT,
) -> Parity:
    """Compare two models face by face on `images`; `passed` when both agreement shares are >= `required`."""
    results = []
    for path in (fp32, int8):
        detector = OnnxYuNet(open_session(path, threads), threshold, 0.3, detect_width, 200)
        results.append(_run_all(detector, images))
    (ref, ref_ms), (cand, cand_ms) = results
    n_ref = n_cand = hit_ref = hit_cand = 0
    matched_ious: list[float] = []
    for a, b in zip(ref, cand, strict=True):
        ious = iou_matrix(a.boxes, b.boxes)
        n_ref, n_cand = n_ref + len(a), n_cand + len(b)
        if ious.size:
            best = ious.max(axis=1)
            hit_ref += int((best >= iou).sum())
            hit_cand += int((ious.max(axis=0) >= iou).sum())
            matched_ious.extend(best[best >= iou].tolist())
    recall = hit_ref / n_ref if n_ref else 1.0
    precision = hit_cand / n_cand if n_cand else 1.0
    return Parity(
        images=len(images), fp32_faces=n_ref, int8_faces=n_cand, fp32_found_by_int8=hit_ref,
        int8_found_by_fp32=hit_cand, recall=round(recall, 4), precision=round(precision, 4),
        mean_iou=round(float(np.mean(matched_ious)) if matched_ious else 0.0, 4), threshold=threshold, iou=iou,
        required=required, fp32_ms=round(ref_ms, 2), int8_ms=round(cand_ms, 2),
        passed=bool(n_ref > 0 and recall >= required and precision >= required),
    )


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
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
    )


def quantize_model(
    src: Path,
    out: Path,
    calibration: Sequence[Path],
    parity: Sequence[Path] | None = None,
    formats: Sequence[str] = FORMATS,
    calib_count: int = 60,
    detect_width: int = 640,
    threads: int = 2,
    required: float = REQUIRED_AGREEMENT,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Quantize `src` to `out`, check parity, and write `out`'s `.parity.json`; returns the report.

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
    calib = load_images(calibration)
    if parity:
        held = load_images(parity)
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
            result = check_parity(src, path, held, detect_width=detect_width, threads=threads, required=required)
            say(
                f"{fmt}: {result.fp32_found_by_int8}/{result.fp32_faces} fp32 faces found (recall "
                f"{result.recall:.4f}), {result.int8_found_by_fp32}/{result.int8_faces} int8 faces confirmed "
                f"(precision {result.precision:.4f}), mean IoU {result.mean_iou:.3f}, {result.int8_ms:.1f} ms/image "
                f"vs fp32 {result.fp32_ms:.1f} ms; {'PASS' if result.passed else 'FAIL'} (quantized in {seconds:.1f} s)"
            )
            candidates.append({"format": fmt, "path": path, "parity": result, "quantize_s": round(seconds, 1)})
        best = max(
            candidates,
            key=lambda c: (c["parity"].passed, min(c["parity"].recall, c["parity"].precision), -c["parity"].int8_ms),
        )
        copy_into_cache(best["path"], out)
    chosen: Parity = best["parity"]
    report: dict[str, Any] = {
        "model": out.name,
        "sha256": sha256_file(out),
        "size": out.stat().st_size,
        "source": src.name,
        "source_sha256": sha256_file(src),
        "format": best["format"],
        "per_channel": True,
        "activation_type": "uint8",
        "weight_type": "int8",
        "calibration_images": len(blobs),
        "detect_width": detect_width,
        "onnxruntime": onnxruntime.__version__,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "parity": asdict(chosen),
        "candidates": [
            {"format": c["format"], "quantize_s": c["quantize_s"], **asdict(c["parity"])} for c in candidates
        ],
        "passed": chosen.passed,
    }
    write_report(out, report)
    say(f"kept {best['format']} -> {out} ({report['size']} bytes, sha256 {report['sha256']}); "
        f"parity {'PASSED' if chosen.passed else 'FAILED: the product will not use this model'}")
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
