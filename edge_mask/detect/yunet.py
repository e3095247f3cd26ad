"""YuNet backends: onnxruntime (fp32 or int8) and OpenCV's `FaceDetectorYN`, with their decode.

Why the decode lives here instead of in OpenCV: the product runs YuNet through onnxruntime so that the same
code path serves the fp32 and the project's own int8 model, with a choice of threads and execution
providers. `cv2.FaceDetectorYN` is kept as a second backend (fp32 only) that gives the same answers through
OpenCV's DNN module, useful where onnxruntime is not installed.

YuNet takes a BGR image as float NCHW with values 0..255 and returns, for each stride 8, 16 and 32, per grid
cell: `cls` and `obj` (already through a sigmoid), `bbox` (centre offset in cells, log width/height in
cells) and `kps` (five landmarks as offsets in cells). A face's score is sqrt(cls * obj).

Every backend takes a full-resolution frame, detects on a copy downscaled to at most `detect_width` pixels
wide (lifted when dark, `lift_low_light`), and returns `Detections` in the original frame's pixels. They
report faces down to the weak-detection floor; only those at the product's threshold (`sight`) count
against `max_faces`, because weaker ones are masked only where they extend a held face. onnxruntime is
imported inside the backend factory only, so `import edge_mask.detect` works without it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from edge_mask.config import ModelsConfig, OnnxDetectorConfig, OpenCVYuNetDetectorConfig
from edge_mask.core.boxes import nms
from edge_mask.core.errors import ModelError
from edge_mask.core.types import Detections, FloatArray, Image
from edge_mask.detect.base import DETECTORS, Detector, cap_faces, detection_floor
from edge_mask.detect.runtime import fixed_input_size, open_session

log = logging.getLogger(__name__)

STRIDES = (8, 16, 32)
ALIGN = 32
"""The network downsamples by 32, so a dynamic input must be a multiple of 32 in both directions."""
DARK_BELOW = 60.0
"""A detection input whose mean level (0..255) is under this is lifted before detection."""
LIFT_GAMMA = 2.0
_LIFT = np.array([round(255.0 * (i / 255.0) ** (1.0 / LIFT_GAMMA)) for i in range(256)], np.uint8)
_LIFT_FLOAT = _LIFT.astype(np.float32)
_LEVELS_FLOAT = np.arange(256, dtype=np.float32)


def is_dark(pixels: npt.NDArray[np.uint8]) -> bool:
    """Whether a detection input is dark enough to be lifted (mean level of every 8th pixel, 1/64 of the cost)."""
    return float(pixels[::8, ::8].mean()) < DARK_BELOW


def lift_low_light(pixels: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """A dark detection input brightened by a gamma curve; others unchanged (the same array).

    Why: YuNet scores dark faces low. In the shared press clip (mean level 16-38 of 255) the judge finds
    faces that YuNet scores 0.03-0.2; with gamma 2 it scores 120 of 123 such faces at 0.25 or more. Only the
    detector's copy is lifted: the picture that is masked and sent is never changed.
    """
    if not is_dark(pixels):
        return pixels
    lifted: npt.NDArray[np.uint8] = np.asarray(cv2.LUT(pixels, _LIFT), np.uint8)
    return lifted


# ------------------------------------------------------------------------------------------ geometry


@dataclass(frozen=True)
class Letterbox:
    """How a frame was fitted into the network input: scaled by `scale`, padded at the bottom and right.

    Padding only at the far edges keeps the mapping back to the frame a pure division by `scale`.
    """

    scale: float
    width: int
    """Network input width (multiple of 32)."""
    height: int
    resized_width: int
    resized_height: int


def plan_input(
    frame_width: int, frame_height: int, detect_width: int, fixed: tuple[int, int] | None = None
) -> Letterbox:
    """Choose the network input size for a frame.

    Frames wider than `detect_width` are scaled down (never up: upscaling costs time and finds nothing new).
    With a dynamic model the input is the scaled frame padded up to multiples of 32, so a small frame costs
    little. With a fixed-size model (`fixed` = (width, height)) the frame is letterboxed into that size.
    """
    if frame_width <= 0 or frame_height <= 0:
        raise ValueError(f"frame size must be positive, got {frame_width}x{frame_height}")
    scale = min(1.0, detect_width / frame_width)
    if fixed is not None:
        scale = min(scale, fixed[0] / frame_width, fixed[1] / frame_height)
    rw = max(1, min(round(frame_width * scale), fixed[0] if fixed else 1 << 30))
    rh = max(1, min(round(frame_height * scale), fixed[1] if fixed else 1 << 30))
    if fixed is not None:
        width, height = fixed
    else:
        width = -(-rw // ALIGN) * ALIGN
        height = -(-rh // ALIGN) * ALIGN
    return Letterbox(scale=scale, width=width, height=height, resized_width=rw, resized_height=rh)


def make_blob(
    image: Image, box: Letterbox, low_light: bool = False, out: npt.NDArray[np.float32] | None = None
) -> npt.NDArray[np.float32]:
    """Resize and pad a BGR frame into a 1x3xHxW float32 tensor of 0..255 values (lifted when dark).

    `out`, a tensor this function filled before for the same `box`, is reused: its padding is still zero.
    Each colour plane goes through one 256-entry float table straight into the tensor: the gamma lift (or
    the identity) and the conversion to float in a single pass. At 640x360 that is 0.6 ms a frame; lifting,
    then converting plane by plane took 1.1 ms, and a fresh tensor filled through a transposed view 1.3 ms
    more (a fifth of a detection).
    """
    pixels: npt.NDArray[Any] = image
    if (image.shape[1], image.shape[0]) != (box.resized_width, box.resized_height):
        pixels = cv2.resize(image, (box.resized_width, box.resized_height), interpolation=cv2.INTER_AREA)
    table = _LIFT_FLOAT if low_light and is_dark(pixels) else _LEVELS_FLOAT
    blob = np.zeros((1, 3, box.height, box.width), np.float32) if out is None else out
    for channel, plane in enumerate(cv2.split(pixels)):
        target = blob[0, channel, : box.resized_height, : box.resized_width]
        written = cv2.LUT(plane, table, dst=target)
        if written is not target:  # OpenCV could not write into the view (never seen; kept correct anyway)
            target[...] = written
    return blob


_PRIORS: dict[tuple[int, int, int], npt.NDArray[np.float32]] = {}


def _grid(width: int, height: int, stride: int) -> npt.NDArray[np.float32]:
    """Cell (column, row) for every prior of one stride, in the row-major order YuNet emits them."""
    key = (width, height, stride)
    grid = _PRIORS.get(key)
    if grid is None:
        cols, rows = width // stride, height // stride
        xs, ys = np.meshgrid(np.arange(cols, dtype=np.float32), np.arange(rows, dtype=np.float32))
        grid = np.stack([xs.ravel(), ys.ravel()], axis=1)
        if len(_PRIORS) > 64:
            _PRIORS.clear()
        _PRIORS[key] = grid
    return grid


def decode(
    outputs: Mapping[str, npt.NDArray[np.float32]], width: int, height: int, threshold: float
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Turn YuNet's per-stride outputs for a `width` x `height` input into boxes, scores and landmarks.

    Only priors scoring at least `threshold` are decoded (almost all of them are background). Returns
    boxes (N, 4) x1 y1 x2 y2, scores (N,), landmarks (N, 5, 2) in network-input pixels, unsorted.
    """
    all_boxes, all_scores, all_kps = [], [], []
    for stride in STRIDES:
        cls = np.clip(outputs[f"cls_{stride}"].reshape(-1), 0.0, 1.0)
        obj = np.clip(outputs[f"obj_{stride}"].reshape(-1), 0.0, 1.0)
        scores = np.sqrt(cls * obj)
        grid = _grid(width, height, stride)
        if scores.shape[0] != grid.shape[0]:
            raise ValueError(
                f"YuNet output for stride {stride} has {scores.shape[0]} priors, expected {grid.shape[0]} "
                f"for a {width}x{height} input"
            )
        keep = np.flatnonzero(scores >= threshold)
        if keep.size == 0:
            continue
        cells = grid[keep]
        bbox = outputs[f"bbox_{stride}"].reshape(-1, 4)[keep]
        kps = outputs[f"kps_{stride}"].reshape(-1, 5, 2)[keep]
        centre = (cells + bbox[:, :2]) * stride
        size = np.exp(np.minimum(bbox[:, 2:], 10.0)) * stride
        all_boxes.append(np.concatenate([centre - size / 2, centre + size / 2], axis=1))
        all_scores.append(scores[keep])
        all_kps.append((kps + cells[:, None, :]) * stride)
    if not all_boxes:
        return np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0, 5, 2), np.float32)
    return (
        np.concatenate(all_boxes).astype(np.float32),
        np.concatenate(all_scores).astype(np.float32),
        np.concatenate(all_kps).astype(np.float32),
    )


def postprocess(
    outputs: Mapping[str, npt.NDArray[np.float32]],
    box: Letterbox,
    frame_width: int,
    frame_height: int,
    threshold: float,
    nms_iou: float,
    max_faces: int,
    sight: float = 0.0,
) -> Detections:
    """Decode, suppress duplicates, map back to frame pixels and clip boxes to the frame.

    At most `max_faces` come back, and more at `sight` or above fail the frame closed (`base.cap_faces`).
    """
    boxes, scores, kps = decode(outputs, box.width, box.height, threshold)
    if len(scores) == 0:
        return Detections.empty()
    keep = nms(boxes, scores, nms_iou, max_faces + 1)
    keep = keep[: cap_faces(scores[keep], max_faces, sight)]
    boxes, scores, kps = boxes[keep] / box.scale, scores[keep], kps[keep] / box.scale
    limit = np.array([frame_width, frame_height, frame_width, frame_height], np.float32)
    boxes = np.clip(boxes, 0.0, limit)
    return Detections(boxes.astype(np.float32), scores.astype(np.float32), kps.astype(np.float32))


class OnnxYuNet:
    """YuNet through onnxruntime (fp32 or int8, dynamic or fixed input size)."""

    def __init__(
        self, session: Any, threshold: float, nms_iou: float, detect_width: int, max_faces: int, label: str = "",
        sight: float = 0.0, low_light: bool = False,
    ) -> None:
        self._session = session
        self.label = label
        """"int8" or "fp32" when known (the live service's stats report it as `detector_model`)."""
        self._input = session.get_inputs()[0].name
        self._outputs = [o.name for o in session.get_outputs()]
        self._fixed = fixed_input_size(session)
        self.threshold = threshold
        self.nms_iou = nms_iou
        self.detect_width = detect_width
        self.max_faces = max_faces
        self.sight = sight
        """Faces scoring this or more count against `max_faces` (the product's threshold)."""
        self.low_light = low_light
        self._blobs = threading.local()  # one reusable input tensor per thread and letterbox

    def detect(self, image: Image) -> Detections:
        height, width = image.shape[:2]
        box = plan_input(width, height, self.detect_width, self._fixed)
        reused = getattr(self._blobs, "by_box", None)
        if reused is None or reused[0] != box:
            reused = (box, np.zeros((1, 3, box.height, box.width), np.float32))
            self._blobs.by_box = reused
        blob = make_blob(image, box, self.low_light, out=reused[1])
        values = self._session.run(self._outputs, {self._input: blob})
        outputs = dict(zip(self._outputs, values, strict=True))
        return postprocess(outputs, box, width, height, self.threshold, self.nms_iou, self.max_faces, self.sight)

    def close(self) -> None:
        self._session = None


@DETECTORS.register("onnx")
def _onnx_factory(settings: OnnxDetectorConfig, models: ModelsConfig) -> Detector:
    """One model, or with `precision = "auto"` and a passing int8 model the parity watch over both (shadow.py)."""
    from edge_mask.detect.precision import auto_candidates, looks_like_path, precision_of, resolve_model

    def make(path: Path, threshold: float, label: str) -> Detector:
        session = open_session(path, settings.threads, settings.providers)
        log.info("detector: onnxruntime YuNet %s (%s), threads=%d, providers=%s", path.name, label, settings.threads,
                 session.get_providers())
        detector: Detector = OnnxYuNet(session, threshold, settings.nms_iou, settings.detect_width,
                                       settings.max_faces, label, settings.threshold, settings.low_light)
        if settings.tiles:
            from edge_mask.detect.tiles import TiledDetector

            detector = TiledDetector(detector, settings.detect_width, settings.nms_iou, settings.max_faces,
                                     settings.threshold, settings.tiles_per_frame)
        return detector

    if settings.precision == "auto" and settings.parity_every > 0 and not looks_like_path(settings.model):
        fp32_path, int8_path = auto_candidates(settings.model, models)
        if int8_path is not None:
            from edge_mask.detect.shadow import build_watch

            return build_watch(settings, fp32_path, int8_path, make)
    path = resolve_model(
        settings.model, models, settings.precision, threads=settings.threads, providers=settings.providers
    )
    return make(path, detection_floor(settings), precision_of(path, models))


# ----------------------------------------------------------------------------------------------- OpenCV


class OpenCVYuNet:
    """YuNet through `cv2.FaceDetectorYN`; same downscaling and mapping back as the onnxruntime backend."""

    def __init__(self, model_path: str, threshold: float, nms_iou: float, detect_width: int, max_faces: int,
                 sight: float = 0.0, low_light: bool = False) -> None:
        self._model_path = model_path
        self._sight = sight
        self._low_light = low_light
        self._threshold = threshold
        self._nms_iou = nms_iou
        self._top_k = max(max_faces * 10, 500)
        self._max_faces = max_faces
        self.detect_width = detect_width
        self._size = (320, 320)
        self._net: Any = cv2.FaceDetectorYN.create(model_path, "", self._size, threshold, nms_iou, self._top_k)

    def detect(self, image: Image) -> Detections:
        height, width = image.shape[:2]
        box = plan_input(width, height, self.detect_width)
        small: npt.NDArray[Any] = image
        if (box.resized_width, box.resized_height) != (width, height):
            small = cv2.resize(image, (box.resized_width, box.resized_height), interpolation=cv2.INTER_AREA)
        if self._low_light:
            small = lift_low_light(small)
        size = (box.resized_width, box.resized_height)
        if size != self._size:
            self._net.setInputSize(size)
            self._size = size
        _, faces = self._net.detect(small)
        if faces is None or len(faces) == 0:
            return Detections.empty()
        faces = np.asarray(faces, np.float32)
        faces = faces[np.argsort(-faces[:, 14], kind="stable")]
        faces = faces[: cap_faces(faces[:, 14], self._max_faces, self._sight)]
        xy, wh = faces[:, 0:2], np.maximum(faces[:, 2:4], 0.0)
        limit = np.array([width, height, width, height], np.float32)
        boxes: FloatArray = np.clip(np.concatenate([xy, xy + wh], axis=1) / box.scale, 0.0, limit).astype(np.float32)
        landmarks = (faces[:, 4:14].reshape(-1, 5, 2) / box.scale).astype(np.float32)
        scores = np.clip(faces[:, 14], 0.0, 1.0).astype(np.float32)
        return Detections(boxes, scores, landmarks)

    def close(self) -> None:
        self._net = None


@DETECTORS.register("opencv_yunet")
def _opencv_factory(settings: OpenCVYuNetDetectorConfig, models: ModelsConfig) -> Detector:
    from edge_mask.detect.precision import resolve_model

    path = resolve_model(settings.model, models, "fp32")
    if settings.threads:
        cv2.setNumThreads(settings.threads)
    try:
        detector = OpenCVYuNet(str(path), detection_floor(settings), settings.nms_iou, settings.detect_width,
                               settings.max_faces, settings.threshold, settings.low_light)
    except cv2.error as exc:
        raise ModelError(f"{path}: OpenCV cannot load this model as YuNet ({exc.err}); use the fp32 model") from exc
    log.info("detector: OpenCV FaceDetectorYN %s, threads=%d", path.name, settings.threads)
    return detector
