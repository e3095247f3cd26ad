"""What the live service's stats and `edge-mask doctor` say about the detector: which model masks, why,
and where the on-device parity watch (`shadow.py`) stands.

Why a module of its own: the service reads these figures from a built detector (whatever wraps it), and the
doctor from the verdict files without building anything; both must say the same thing in the same words.
"""

from __future__ import annotations

import logging
from typing import Any

from edge_mask.config import ModelsConfig, OnnxDetectorConfig, OpenCVYuNetDetectorConfig
from edge_mask.detect.agreement import REQUIRED_AGREEMENT
from edge_mask.detect.precision import auto_candidates, timing
from edge_mask.detect.shadow import ParityWatch, resume
from edge_mask.detect.tiles import scan_frames
from edge_mask.detect.verdict import load_verdict, setup_key

log = logging.getLogger(__name__)

MIN_FACE_PX = 10
"""The narrowest face YuNet finds reliably at its own input scale (pixels); smaller faces need tiles."""


def smallest_face_px(settings: OnnxDetectorConfig | OpenCVYuNetDetectorConfig, frame_width: int) -> int:
    """About the narrowest face (source pixels) the detector finds in frames `frame_width` wide: frames wider
    than `detect_width` are scaled down for detection, unless `detector.tiles` also scans them at full size."""
    tiles = bool(getattr(settings, "tiles", False))
    if tiles or frame_width <= settings.detect_width:
        return MIN_FACE_PX
    return round(MIN_FACE_PX * frame_width / settings.detect_width)


def coverage_line(settings: OnnxDetectorConfig | OpenCVYuNetDetectorConfig, width: int, height: int) -> str:
    """One line for `edge-mask doctor`: the smallest face found in this camera's frames, and how to go lower."""
    smallest = smallest_face_px(settings, width)
    tiles = bool(getattr(settings, "tiles", False))
    if smallest <= MIN_FACE_PX:
        how = "full resolution"
        count, frames = scan_frames(width, height, settings.detect_width, int(getattr(settings, "tiles_per_frame", 0)))
        if tiles and count:
            how = f"full resolution: detector.tiles, {count} tiles " + (
                f"in turn, so a face that small is found once every {frames} frames and held in between"
                if frames > 1 else "on every frame")
        return f"faces from about {smallest} px wide are found in {width}x{height} frames ({how})"
    how = ("raise detector.detect_width or set detector.tiles = true" if isinstance(settings, OnnxDetectorConfig)
           else "raise detector.detect_width (tiles need the onnx detector: detector.type = 'onnx')")
    return (f"faces narrower than about {smallest} px are missed in {width}x{height} frames (scaled to "
            f"{settings.detect_width} px wide for detection); for distant faces {how}, at the cost of more "
            "detection time per frame")


def detector_stats(detector: object) -> dict[str, Any]:
    """`detector_model` and the parity figures of a built detector (a watch, or one model with the watch off)."""
    inner: object | None = detector
    for _ in range(4):  # wrappers (tiles) keep the model they wrap in `.inner`
        if isinstance(inner, ParityWatch):
            return inner.stats()
        label = getattr(inner, "label", None)
        if isinstance(label, str) and label:
            return {"detector_model": label, "parity_state": "off", "parity_faces": 0, "parity_found": None,
                    "parity_confirmed": None}
        inner = getattr(inner, "inner", None)
        if inner is None:
            break
    return {}


def parity_summary(settings: OnnxDetectorConfig, models: ModelsConfig) -> str:
    """One line for `edge-mask doctor`: which model runs with `precision = "auto"`, why, and the parity figures."""
    fp32_path, int8_path = auto_candidates(settings.model, models)
    if int8_path is None:
        return "fp32 runs: no int8 model that passed its build-time parity gate is in the cache"
    speed = timing(int8_path, fp32_path, settings.threads, settings.providers)
    times = f"int8 {speed.int8_ms} ms, fp32 {speed.fp32_ms} ms per 640x480 inference, timed {speed.decided_at or '?'}"
    v = load_verdict(int8_path.parent, setup_key(int8_path, fp32_path, settings.threads, settings.providers))
    v = resume(v, speed) if v is not None else None
    off = " (the parity watch is off: detector.parity_every = 0)" if settings.parity_every == 0 else ""
    if v is None or v.state in ("proving", "fp32-fallback"):
        need = settings.parity_faces * (2 if v is not None and v.state == "fp32-fallback" else 1)
        done = v.fp32_faces if v else 0
        so_far = (f"; so far {100 * v.found_share:.1f}% found, {100 * v.confirmed_share:.1f}% confirmed"
                  if v and v.fp32_faces else "")
        again = f" after {v.fallbacks} fallback(s)" if v and v.fallbacks else ""
        return (f"fp32 runs: int8 not yet proven on this device{again} ({done} of {need} faces compared{so_far})"
                f"{off}; {times}")
    figures = (f"{v.fp32_faces} faces compared, {100 * v.found_share:.1f}% found, "
               f"{100 * v.confirmed_share:.1f}% confirmed, {v.decided_at}")
    if v.state == "fp32-slower":
        agrees = v.found_share >= REQUIRED_AGREEMENT and v.confirmed_share >= REQUIRED_AGREEMENT
        return (f"fp32 runs: int8 {'agrees' if agrees else 'does NOT agree'} on this device ({figures}) "
                f"but fp32 is faster ({times})")
    return f"int8 runs: proven on this device ({figures}) and faster ({times}){off}"
