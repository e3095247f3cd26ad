"""Detector tests: decode/NMS/geometry on synthetic arrays, and real onnxruntime YuNet on real photos.

The faces-dlib photos carry 43 hand-annotated faces (dlib imglab XML). dlib's boxes are tight squares
around eyes-to-mouth while YuNet's cover forehead to chin, so one small face sits at IoU 0.49; recall is
reported at IoU 0.5 and every face must be found at IoU 0.4.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_mask.capture import read_image
from edge_mask.config import ModelsConfig, OnnxDetectorConfig, OpenCVYuNetDetectorConfig
from edge_mask.core.boxes import iou_matrix, nms
from edge_mask.core.errors import ConfigError, UserError
from edge_mask.core.types import Detections
from edge_mask.detect import DETECTORS, create_detector, make_blob, plan_input, resolve_providers
from edge_mask.detect.yunet import decode, postprocess

# ------------------------------------------------------------------------------------- synthetic / unit


def _zero_outputs(width: int, height: int) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for stride in (8, 16, 32):
        n = (width // stride) * (height // stride)
        out[f"cls_{stride}"] = np.zeros((1, n, 1), np.float32)
        out[f"obj_{stride}"] = np.zeros((1, n, 1), np.float32)
        out[f"bbox_{stride}"] = np.zeros((1, n, 4), np.float32)
        out[f"kps_{stride}"] = np.zeros((1, n, 10), np.float32)
    return out


def test_decode_places_a_prior_at_its_cell() -> None:
    width, height = 128, 64
    out = _zero_outputs(width, height)
    cols = width // 16
    index = 2 * cols + 5  # row 2, column 5 at stride 16
    out["cls_16"][0, index, 0] = 0.81
    out["obj_16"][0, index, 0] = 1.0
    out["bbox_16"][0, index] = [0.5, 0.25, np.log(2.0), np.log(3.0)]
    out["kps_16"][0, index] = [0.0, 0.0, 1.0, 0.0, 0.5, 0.5, 0.0, 1.0, 1.0, 1.0]
    boxes, scores, kps = decode(out, width, height, threshold=0.5)
    assert scores.tolist() == pytest.approx([0.9])  # sqrt(0.81 * 1.0)
    cx, cy, w, h = (5 + 0.5) * 16, (2 + 0.25) * 16, 2 * 16, 3 * 16
    assert boxes[0].tolist() == pytest.approx([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
    assert kps[0, 0].tolist() == pytest.approx([5 * 16, 2 * 16])
    assert kps[0, 4].tolist() == pytest.approx([6 * 16, 3 * 16])


def test_decode_threshold_and_clipping() -> None:
    out = _zero_outputs(64, 64)
    out["cls_8"][0, 0, 0] = 1.7  # out-of-range values are clipped, not trusted
    out["obj_8"][0, 0, 0] = 0.49
    out["cls_32"][0, 3, 0] = 0.3
    out["obj_32"][0, 3, 0] = 0.3
    _, scores, _ = decode(out, 64, 64, threshold=0.5)
    assert scores.tolist() == pytest.approx([0.7], abs=1e-6)
    assert decode(out, 64, 64, threshold=0.75)[0].shape == (0, 4)


def test_decode_rejects_wrong_prior_count() -> None:
    with pytest.raises(ValueError, match="priors"):
        decode(_zero_outputs(64, 64), 96, 64, threshold=0.5)


def test_nms_keeps_best_of_overlaps_and_limits_count() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60], [0, 0, 10, 10.5]], np.float32)
    scores = np.array([0.6, 0.9, 0.7, 0.5], np.float32)
    assert nms(boxes, scores, 0.3, 10).tolist() == [1, 2]
    assert nms(boxes, scores, 0.3, 1).tolist() == [1]
    assert nms(boxes, scores, 0.99, 10).tolist() == [1, 2, 0, 3]
    assert nms(boxes[:0], scores[:0], 0.3, 10).tolist() == []



def test_nms_table_and_row_walk_agree_with_ties_and_overflow() -> None:
    """The all-pairs table (up to PAIRWISE_UP_TO candidates) and the row-by-row walk beyond it keep the
    same boxes in the same order, ties in score included; max_keep 0 keeps none."""
    from edge_mask.core import boxes as box_math

    rng = np.random.default_rng(7)
    for n in [0, 1, 2, 5, 40, 80, box_math.PAIRWISE_UP_TO + 40]:
        for _ in range(20 if n < 100 else 2):
            corner = rng.random((n, 2)) * 300
            found = np.concatenate([corner, corner + rng.random((n, 2)) * 60 + 1], axis=1).astype(np.float32)
            scores = np.round(rng.random(n), 1).astype(np.float32)  # many ties
            order = np.argsort(-scores, kind="stable")
            for keep in (1, 3, 41):
                expected = box_math._nms_by_rows(found, order, 0.3, keep)
                assert nms(found, scores, 0.3, keep).tolist() == expected.tolist()
    assert nms(np.zeros((3, 4), np.float32), np.ones(3, np.float32), 0.3, 0).tolist() == []

def test_iou_matrix() -> None:
    a = np.array([[0, 0, 10, 10]], np.float32)
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]], np.float32)
    assert iou_matrix(a, b)[0].tolist() == pytest.approx([1.0, 1 / 3, 0.0])
    assert iou_matrix(a, b[:0]).shape == (1, 0)


@pytest.mark.parametrize(
    ("size", "detect_width", "fixed", "expected"),
    [
        ((640, 480), 640, None, (1.0, 640, 480)),
        ((1280, 720), 640, None, (0.5, 640, 384)),  # 360 rows padded up to 384
        ((1920, 1080), 320, None, (1 / 6, 320, 192)),
        ((300, 200), 640, None, (1.0, 320, 224)),  # never upscaled, padded to stride 32
        ((1280, 720), 1280, (640, 640), (0.5, 640, 640)),  # letterboxed into the fixed input
        ((400, 800), 640, (640, 640), (0.8, 640, 640)),
    ],
)
def test_plan_input(size: tuple[int, int], detect_width: int, fixed: tuple[int, int] | None,
                    expected: tuple[float, int, int]) -> None:
    box = plan_input(size[0], size[1], detect_width, fixed)
    assert (box.scale, box.width, box.height) == pytest.approx(expected)
    assert box.width % 32 == 0 and box.height % 32 == 0
    assert box.resized_width <= box.width and box.resized_height <= box.height


def test_make_blob_pads_bottom_right() -> None:
    image = np.full((100, 200, 3), (10, 20, 30), np.uint8)
    box = plan_input(200, 100, 640)
    blob = make_blob(image, box)
    assert blob.shape == (1, 3, 128, 224) and blob.dtype == np.float32
    assert blob[0, :, 0, 0].tolist() == [10, 20, 30]  # BGR order kept, 0..255 values
    assert not blob[0, :, 100:, :].any() and not blob[0, :, :, 200:].any()


@pytest.mark.parametrize("size", [(500, 300), (1280, 720)])
def test_make_blob_lifts_dark_frames_as_the_lift_does(size: tuple[int, int]) -> None:
    """The blob's one-pass table (gamma lift or identity, then float) gives exactly the values of resizing,
    lifting the 8-bit frame when dark and converting it; a tensor reused from frame to frame, bright then
    dark then bright, keeps its zero padding."""
    import cv2

    from edge_mask.detect.yunet import lift_low_light

    width, height = size
    box = plan_input(width, height, 640)
    rng = np.random.default_rng(7)
    reused = np.zeros((1, 3, box.height, box.width), np.float32)  # as OnnxYuNet keeps one per letterbox
    for level in (200, 10, 200):
        image = np.clip(rng.normal(level, 8, (height, width, 3)), 0, 255).astype(np.uint8)
        small = image
        if (width, height) != (box.resized_width, box.resized_height):
            small = cv2.resize(image, (box.resized_width, box.resized_height), interpolation=cv2.INTER_AREA)
        expected = np.zeros((1, 3, box.height, box.width), np.float32)
        expected[0, :, : box.resized_height, : box.resized_width] = lift_low_light(small).transpose(2, 0, 1)
        assert np.array_equal(make_blob(image, box, low_light=True, out=reused), expected)
        assert np.array_equal(make_blob(image, box, low_light=True), expected)
        plain = make_blob(image, box, low_light=False)
        assert np.array_equal(plain, expected) == (level >= 60), "only a dark frame is lifted"


def test_postprocess_maps_back_and_returns_empty_shape() -> None:
    box = plan_input(1280, 720, 640)
    out = _zero_outputs(box.width, box.height)
    empty = postprocess(out, box, 1280, 720, 0.5, 0.3, 10)
    assert isinstance(empty, Detections)
    assert empty.boxes.shape == (0, 4) and empty.scores.shape == (0,) and empty.landmarks.shape == (0, 5, 2)
    out["cls_32"][0, 0, 0] = out["obj_32"][0, 0, 0] = 0.9
    out["bbox_32"][0, 0] = [0.5, 0.5, 0.0, 0.0]  # a 32x32 box centred on (16, 16) at detection scale
    found = postprocess(out, box, 1280, 720, 0.5, 0.3, 10)
    assert found.boxes.tolist() == [[0.0, 0.0, 64.0, 64.0]]
    assert found.boxes.dtype == np.float32 and found.landmarks.dtype == np.float32


def _faces(rows: list[tuple[float, float, float, float, float]]) -> Detections:
    boxes = np.array([r[:4] for r in rows], np.float32).reshape(-1, 4)
    return Detections(boxes, np.array([r[4] for r in rows], np.float32), np.zeros((len(rows), 5, 2), np.float32))


def test_face_agreement_rule_is_the_one_the_build_gate_uses() -> None:
    """The device's parity watch and the build-time gate count faces with the same functions."""
    from edge_mask.detect import agreement, frame_agreement, margin_at, matched
    from edge_mask.tools import parity

    assert (parity.agreement, parity.matched, parity.margin_at) == (agreement, matched, margin_at)
    assert margin_at(0.25) == pytest.approx(0.1) and margin_at(0.1) == pytest.approx(0.04)
    fp32 = _faces([(0, 0, 10, 10, 0.9), (20, 20, 30, 30, 0.3)])
    # int8: the first face just under the threshold but within the margin; a face fp32 does not have
    int8 = _faces([(0, 0, 10, 10, 0.2), (50, 50, 60, 60, 0.5)])
    assert frame_agreement(fp32, int8, 0.25, margin_at(0.25)) == (2, 1, 1, 0)
    assert frame_agreement(fp32, int8, 0.25, 0.0) == (2, 0, 1, 0)  # no margin: 0.2 is not 0.25
    assert agreement([fp32, fp32], [int8, fp32], 0.25, 0.1, 0.5) == (4, 3, 3, 2)
    assert frame_agreement(Detections.empty(), Detections.empty(), 0.25, 0.1) == (0, 0, 0, 0)


def test_provider_names_and_errors() -> None:
    available = ["CPUExecutionProvider"]
    assert resolve_providers(["cpu"], available) == ["CPUExecutionProvider"]
    assert resolve_providers(["CUDAExecutionProvider"], ["CUDAExecutionProvider", "CPUExecutionProvider"]) == [
        "CUDAExecutionProvider", "CPUExecutionProvider"]
    with pytest.raises(UserError, match=r"TensorrtExecutionProvider not available.*available: CPUExecutionProvider"):
        resolve_providers(["tensorrt"], available)


def test_registry_names_backends() -> None:
    assert DETECTORS.names() == ["onnx", "opencv_yunet"]

    class Bogus:
        type = "dlib"

    with pytest.raises(ConfigError, match="onnx, opencv_yunet"):
        DETECTORS.create(Bogus(), ModelsConfig())


# ------------------------------------------------------------------------------------ real model, photos


def load_dlib_faces(folder: Path) -> dict[str, np.ndarray]:
    """Ground truth boxes (x1 y1 x2 y2) per image file from the imglab XML files in `folder`."""
    faces: dict[str, np.ndarray] = {}
    for xml in ("training.xml", "testing.xml"):
        for image in ET.parse(folder / xml).getroot().iter("image"):
            rows = []
            for box in image.iter("box"):
                left, top = float(box.get("left", 0)), float(box.get("top", 0))
                rows.append([left, top, left + float(box.get("width", 0)), top + float(box.get("height", 0))])
            faces[str(image.get("file"))] = np.array(rows, np.float32).reshape(-1, 4)
    return faces


def recall(detector: object, folder: Path, faces: dict[str, np.ndarray]) -> tuple[np.ndarray, int]:
    """Best IoU of each annotated face with any detection, and the number of detections."""
    best: list[float] = []
    total = 0
    for name, truth in faces.items():
        image = read_image(folder / name)
        assert image is not None, name
        found = detector.detect(image)  # type: ignore[attr-defined]
        total += len(found)
        ious = iou_matrix(truth, found.boxes)
        best.extend(ious.max(axis=1) if ious.shape[1] else np.zeros(len(truth)))
    return np.asarray(best), total


@pytest.fixture(scope="module")
def dlib_faces(shared_data: Path) -> tuple[Path, dict[str, np.ndarray]]:
    folder = shared_data / "faces-dlib"
    faces = load_dlib_faces(folder)
    assert sum(len(v) for v in faces.values()) == 43
    return folder, faces


@pytest.mark.parametrize(
    ("model", "precision"),
    [("yunet-fp32-dynamic", "fp32"), ("yunet-fp32", "fp32"), ("yunet-int8", "int8")],
)
def test_detector_finds_the_annotated_faces(model: str, precision: str, model_cache: ModelsConfig,
                                            dlib_faces: tuple[Path, dict[str, np.ndarray]]) -> None:
    folder, faces = dlib_faces
    # weak_threshold = threshold: the detector alone, without the tracker's weak-detection path
    settings = OnnxDetectorConfig(model=model, precision=precision, threshold=0.3, weak_threshold=0.3)  # type: ignore[arg-type]
    detector = create_detector(settings, model_cache)
    best, found = recall(detector, folder, faces)
    detector.close()
    print(f"{model}/{precision}: recall at IoU>=0.5 {int((best >= 0.5).sum())}/43, at IoU>=0.4 "
          f"{int((best >= 0.4).sum())}/43, min IoU {best.min():.2f}, {found} detections")
    assert (best >= 0.5).sum() >= 42
    assert (best >= 0.4).all()


def test_detections_are_valid_and_downscaling_maps_back(model_cache: ModelsConfig, shared_data: Path) -> None:
    image = read_image(shared_data / "faces-dlib" / "2008_002506.jpg")
    big = cv2.resize(image, None, fx=3.0, fy=3.0, interpolation=cv2.INTER_CUBIC)  # 1500x1125
    settings = OnnxDetectorConfig(model="yunet-fp32-dynamic", precision="fp32", detect_width=500, weak_threshold=0.25)
    detector = create_detector(settings, model_cache)
    small, large = detector.detect(image), detector.detect(big)
    assert len(small) == 3 and len(large) == 3
    assert large.boxes.dtype == np.float32 and large.landmarks.shape == (3, 5, 2)
    # detecting on the 3x frame downscaled to 500 wide gives the same faces, mapped back to 3x pixels
    assert iou_matrix(small.boxes * 3, large.boxes).max(axis=1).min() > 0.9
    xs = large.landmarks[:, :, 0]
    assert ((xs >= large.boxes[:, None, 0]) & (xs <= large.boxes[:, None, 2])).all()
    assert detector.detect(np.zeros((240, 320, 3), np.uint8)).boxes.shape == (0, 4)
    detector.close()


def test_opencv_backend_agrees_with_onnx(model_cache: ModelsConfig, shared_data: Path) -> None:
    image = read_image(shared_data / "faces-dlib" / "2008_002470.jpg")
    # weak_threshold = threshold: the detectors alone, without the tracker's weak-detection path
    onnx = create_detector(OnnxDetectorConfig(model="yunet-fp32", precision="fp32", weak_threshold=0.25), model_cache)
    ocv = create_detector(OpenCVYuNetDetectorConfig(model="yunet-fp32", weak_threshold=0.25), model_cache)
    a, b = onnx.detect(image), ocv.detect(image)
    assert len(a) == len(b) == 6
    ious = iou_matrix(a.boxes, b.boxes)
    assert ious.max(axis=1).min() > 0.9
    order = ious.argmax(axis=1)
    assert np.abs(a.scores - b.scores[order]).max() < 0.02
    onnx.close()
    ocv.close()


def test_bad_provider_is_a_user_error(model_cache: ModelsConfig) -> None:
    settings = OnnxDetectorConfig(model="yunet-fp32-dynamic", precision="fp32", providers=("CUDAExecutionProvider",))
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("CUDA is available here")
    with pytest.raises(UserError, match=r"CUDAExecutionProvider not available.*available:.*CPUExecutionProvider"):
        create_detector(settings, model_cache)



def test_the_smallest_face_found_follows_the_detection_scale() -> None:
    """What `doctor` and the stats say: 10 px at the network's scale, wider in frames scaled down for it."""
    from edge_mask.detect import coverage_line, smallest_face_px

    plain, tiled = OnnxDetectorConfig(), OnnxDetectorConfig(tiles=True)
    assert smallest_face_px(plain, 640) == 10 and smallest_face_px(plain, 1920) == 30
    assert smallest_face_px(tiled, 1920) == 10
    assert "about 30 px" in coverage_line(plain, 1920, 1080) and "detector.tiles" in coverage_line(plain, 1920, 1080)
    assert coverage_line(tiled, 1920, 1080).startswith("faces from about 10 px")
    assert "found once every 6 frames and held in between" in coverage_line(tiled, 1600, 898)  # one tile a frame
    assert "on every frame" in coverage_line(OnnxDetectorConfig(tiles=True, tiles_per_frame=0), 1600, 898)
    # a portrait camera without tiles is detected at full size; no word of tiles it does not use
    assert coverage_line(plain, 480, 854) == "faces from about 10 px wide are found in 480x854 frames (full resolution)"
    # the OpenCV backend has no tiles: its advice must not name a key its config rejects
    ocv = coverage_line(OpenCVYuNetDetectorConfig(), 1920, 1080)
    assert "detector.tiles = true" not in ocv and "detector.type = 'onnx'" in ocv
