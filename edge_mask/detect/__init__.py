"""Detection room: finds faces in a full-resolution frame and returns one validated `Detections`.

Rule: detect/ imports only the ground (core/, config/); never capture/, mask/, seal/, uplink/, service/,
receiver/, tools/ or any network library. Model files are read from the verified cache (`models.py`);
downloading them is the provisioning tools' job (`edge_mask.provision.download`). onnxruntime is imported
inside backend factories and `runtime.open_session` only.

With `precision = "auto"` the onnx backend is a parity watch (`shadow.py`) over the fp32 and int8 models:
fp32 masks until int8 has agreed with it on this device's own frames, judged by the same rule as the
build-time gate (`agreement.py`); the verdicts live in the model cache (`verdict.py`).

Add a detector: a module here with a `@DETECTORS.register("name")` factory taking its config section, a
config class in `config/stages.py` added to `DetectorConfig`, and an import below so it registers.
"""

from edge_mask.detect import yunet as _yunet  # noqa: F401  (registers the onnx and opencv_yunet backends)
from edge_mask.detect.agreement import (
    MARGIN_SHARE,
    PARITY_IOU,
    PARITY_MARGIN,
    REQUIRED_AGREEMENT,
    agreement,
    frame_agreement,
    margin_at,
    matched,
)
from edge_mask.detect.base import (
    DETECTORS,
    DeadlineMissed,
    Detector,
    DetectorBusy,
    TimedDetector,
    TooManyFaces,
    create_detector,
)
from edge_mask.detect.models import ModelEntry, cache_path, check_cached, fetch, load_manifest
from edge_mask.detect.precision import Timing, auto_candidates, resolve_model, timing
from edge_mask.detect.report import coverage_line, detector_stats, parity_summary, smallest_face_px
from edge_mask.detect.runtime import fixed_input_size, open_session, resolve_providers
from edge_mask.detect.shadow import ParityWatch, WatchSettings
from edge_mask.detect.verdict import PARITY_FILE, ParityVerdict, load_verdict
from edge_mask.detect.yunet import Letterbox, OnnxYuNet, OpenCVYuNet, make_blob, plan_input

__all__ = [
    "DETECTORS",
    "MARGIN_SHARE",
    "PARITY_FILE",
    "PARITY_IOU",
    "PARITY_MARGIN",
    "REQUIRED_AGREEMENT",
    "DeadlineMissed",
    "Detector",
    "DetectorBusy",
    "Letterbox",
    "ModelEntry",
    "OnnxYuNet",
    "OpenCVYuNet",
    "ParityVerdict",
    "ParityWatch",
    "TimedDetector",
    "Timing",
    "TooManyFaces",
    "WatchSettings",
    "agreement",
    "auto_candidates",
    "cache_path",
    "check_cached",
    "coverage_line",
    "create_detector",
    "detector_stats",
    "fetch",
    "fixed_input_size",
    "frame_agreement",
    "load_manifest",
    "load_verdict",
    "make_blob",
    "margin_at",
    "matched",
    "open_session",
    "parity_summary",
    "plan_input",
    "resolve_model",
    "resolve_providers",
    "smallest_face_px",
    "timing",
]
