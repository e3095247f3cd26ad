"""Detection room: finds faces in a full-resolution frame and returns one validated `Detections`.

Rule: detect/ imports only the ground (core/, config/); never capture/, mask/, seal/, uplink/, service/,
receiver/, tools/ or any network library. Model files are read from the verified cache (`models.py`);
downloading them is the provisioning tools' job (`edge_mask.provision.download`). onnxruntime is imported
inside backend factories and `runtime.open_session` only.

Add a detector: a module here with a `@DETECTORS.register("name")` factory taking its config section, a
config class in `config/stages.py` added to `DetectorConfig`, and an import below so it registers.
"""

from edge_mask.detect import yunet as _yunet  # noqa: F401  (registers the onnx and opencv_yunet backends)
from edge_mask.detect.base import DETECTORS, Detector, create_detector
from edge_mask.detect.models import ModelEntry, cache_path, check_cached, fetch, load_manifest
from edge_mask.detect.precision import resolve_model
from edge_mask.detect.runtime import fixed_input_size, open_session, resolve_providers
from edge_mask.detect.yunet import Letterbox, OnnxYuNet, OpenCVYuNet, make_blob, plan_input

__all__ = [
    "DETECTORS",
    "Detector",
    "Letterbox",
    "ModelEntry",
    "OnnxYuNet",
    "OpenCVYuNet",
    "cache_path",
    "check_cached",
    "create_detector",
    "fetch",
    "fixed_input_size",
    "load_manifest",
    "make_blob",
    "open_session",
    "plan_input",
    "resolve_model",
    "resolve_providers",
]
