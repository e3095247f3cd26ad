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

Why the QOperator format, uint8 activations and per-channel weights: onnxruntime's quantizer writes the
per-channel convolution weights as int8 whatever weight type is asked for (its QOperator Conv path), so the
model is U8S8. x86 CPUs multiply uint8 by int8 with an instruction that saturates 16-bit sums unless they
have VNNI (onnxruntime's documented U8S8 caveat), so an AVX2 machine scored the model differently: a 2-core
AMD EPYC found 252 faces at 0.25 on the held-aside images where an AVX-512 VNNI Xeon and ARM find 255, and
failed the gate. `detect.runtime.open_session` sets `session.x64quantprecision`, which makes onnxruntime
turn such weights into uint8 when it loads the model on x86 and take its exact uint8 x uint8 path; with it
the EPYC gives the Xeon's and ARM's figures. The report's `weight_type` is read from the written model.
Per-channel weights, MinMax calibration, no reduce-range (reduce-range lost ~5% of faces in our
measurements). The variants measured are in models/README.md.

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
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from edge_mask.capture import MediaError, VideoReader, read_image
from edge_mask.core.errors import ModelError
from edge_mask.core.types import Image
from edge_mask.detect import make_blob, plan_input
from edge_mask.detect.models import commit_file, copy_into_cache, parity_report_path, sha256_file
from edge_mask.tools.parity import (  # noqa: F401  (re-exported: the gate's figures live with the build)
    GATE_THRESHOLDS,
    PARITY_MARGIN,
    REQUIRED_AGREEMENT,
    Parity,
    check_parity,
    margin_at,
)

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}
VIDEO_SUFFIXES = {".mp4", ".mkv", ".avi", ".mov", ".gif"}
FORMATS = ("QOperator", "QDQ")
DEFAULT_FORMATS = ("QOperator",)


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
"""Weight type asked for per format. onnxruntime writes per-channel convolution weights as int8 in the
QOperator format anyway (the report records what the model holds, `weight_type_of`); the request is kept
because it decides the bytes of the shipped model. QDQ keeps onnxruntime's default U8S8 (as U8U8 it ran
1.7x slower than fp32 here)."""
CALIB_COUNT = 128
"""Calibration images of the shipped int8 model (the demo, the tests and `edge-mask models quantize` by
default): another count gives another, equally valid model with another sha256 than the one the ARM parity
run and the notes refer to."""
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
    calib_count: int = CALIB_COUNT,
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
        "weight_type": weight_type_of(out),
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


def weight_type_of(model: Path) -> str:
    """The element type of the convolution weights the model holds ("int8", "uint8", or several joined by
    "+"), read from its QLinearConv weights and DequantizeLinear constants."""
    import onnx

    graph = onnx.load(str(model)).graph
    constants = {tensor.name: tensor for tensor in graph.initializer}
    names = [node.input[3] for node in graph.node if node.op_type == "QLinearConv"]
    names += [node.input[0] for node in graph.node if node.op_type == "DequantizeLinear"]
    kinds = {onnx.helper.tensor_dtype_to_np_dtype(constants[name].data_type).name
             for name in names if name in constants and len(constants[name].dims) == 4}
    return "+".join(sorted(kinds)) or "none"


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
