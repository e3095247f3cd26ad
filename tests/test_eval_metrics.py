"""The evaluation's arithmetic on small synthetic cases: a known leak is found, a known miss lowers recall,
coverage is the share of hidden pixels, tracks link across gaps. Synthetic arrays are right here: these
test counting, not detection."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edge_mask.core.errors import UserError
from edge_mask.core.types import Detections
from edge_mask.tools.evaluation.detect_eval import load_ground_truth
from edge_mask.tools.evaluation.metrics import (
    TrackLinker,
    box_coverage,
    false_positive_regions,
    iou_matrix,
    leaked_in_frame,
    masked_pixels,
    rank1,
    ratio_stats,
    recall_at_iou,
    region_area_fraction,
    share_below,
    showing_original,
    summarize_clip,
)
from edge_mask.tools.evaluation.reid import deface_default, probe_labels

FACE_A = [10, 10, 50, 50]
FACE_B = [100, 20, 140, 60]


def test_iou_matrix_values() -> None:
    m = iou_matrix([[0, 0, 10, 10]], [[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]])
    assert m.shape == (1, 3)
    assert m[0].tolist() == pytest.approx([1.0, 50 / 150, 0.0])
    assert iou_matrix(np.zeros((0, 4)), [FACE_A]).shape == (0, 1)


def test_coverage_is_the_share_of_hidden_pixels() -> None:
    original = np.full((100, 200, 3), 120, np.uint8)
    masked = original.copy()
    masked[10:30, 10:50] = 0  # top half of FACE_A (40x40) replaced
    hidden = masked_pixels(original, masked)
    assert box_coverage(FACE_A, hidden) == pytest.approx(0.5)
    assert box_coverage(FACE_B, hidden) == 0.0
    masked[10:50, 10:50] = 0
    assert box_coverage(FACE_A, masked_pixels(original, masked)) == 1.0


def test_fill_colour_counts_as_hidden_even_where_the_original_had_it() -> None:
    original = np.full((60, 60, 3), 120, np.uint8)
    original[10:20, 10:50] = (255, 0, 255)  # already magenta before masking
    masked = original.copy()
    masked[20:50, 10:50] = (255, 0, 255)
    assert box_coverage(FACE_A, masked_pixels(original, masked)) == pytest.approx(0.75)
    assert box_coverage(FACE_A, masked_pixels(original, masked, (255, 0, 255))) == 1.0


def test_a_known_miss_lowers_recall() -> None:
    assert recall_at_iou([FACE_A, FACE_B], [FACE_A, FACE_B]) == (2, 2)
    assert recall_at_iou([FACE_A, FACE_B], [FACE_A]) == (1, 2)
    assert recall_at_iou([FACE_A, FACE_B], []) == (0, 2)
    shifted = [FACE_B[0] + 30, FACE_B[1], FACE_B[2] + 30, FACE_B[3]]  # IoU 1/7 with FACE_B
    assert recall_at_iou([FACE_A, FACE_B], [FACE_A, shifted]) == (1, 2)


def test_one_detection_cannot_match_two_faces() -> None:
    twins = [[10, 10, 50, 50], [12, 10, 52, 50]]
    assert recall_at_iou(twins, [[11, 10, 51, 50]], iou=0.5) == (1, 2)


def test_false_positive_regions_and_area() -> None:
    regions = np.array([[0, 0, 60, 60], [150, 70, 190, 100]], np.float32)
    flags = false_positive_regions(regions, [FACE_A])
    assert flags.tolist() == [False, True]
    assert region_area_fraction(regions[flags], 100, 200) == pytest.approx(40 * 30 / 20000)
    assert false_positive_regions(regions, []).all()


def test_a_known_leak_is_found_per_frame_and_per_track() -> None:
    # Two faces over four frames; face B shows through the mask in frame 2 only.
    originals = [[FACE_A, FACE_B]] * 4
    masked = [[], [], [[101, 21, 141, 61]], []]
    assert leaked_in_frame(originals[2], masked[2]).tolist() == [False, True]
    clip = summarize_clip("clip", list(zip(originals, masked, strict=True)))
    assert (clip.judged_frames, clip.judge_faces) == (4, 8)
    assert (clip.leaked_faces, clip.leaked_frames) == (1, 1)
    assert (clip.tracks, clip.leaked_tracks) == (2, 1)
    assert clip.masked_frame_faces == 0  # the leaked detection is a leak, not a reaction to the mask


def test_a_face_elsewhere_in_the_masked_frame_is_not_a_leak() -> None:
    clip = summarize_clip("clip", [([FACE_A], [FACE_B])])
    assert clip.leaked_faces == 0 and clip.masked_frame_faces == 1


def test_clean_clip_has_no_leaks() -> None:
    clip = summarize_clip("clip", [([FACE_A], [])] * 3)
    assert (clip.leaked_frames, clip.tracks, clip.leaked_tracks) == (0, 1, 0)


def test_tracks_survive_short_gaps_and_split_after_long_ones() -> None:
    linker = TrackLinker(iou=0.3, max_gap=2)
    first = linker.update(0, [FACE_A], [False])
    linker.update(1, [], [])
    again = linker.update(3, [[12, 10, 52, 50]], [True])  # 3 frames after its last sighting > max_gap
    assert again != first
    linker = TrackLinker(iou=0.3, max_gap=5)
    ids = [linker.update(i, [FACE_A, FACE_B] if i != 2 else [FACE_B], [i == 4, False] if i != 2 else [False])
           for i in range(6)]
    assert len(linker.tracks) == 2
    assert ids[0] == ids[5]
    assert [t.leaked for t in linker.tracks] == [True, False]
    with pytest.raises(ValueError, match="leak flags"):
        linker.update(9, [FACE_A], [True, False])


def test_reid_helpers() -> None:
    gallery = np.array([[0.0, 0.0], [1.0, 0.0]])
    assert rank1([0.9, 0.1], gallery, ["a", "b"]) == ("b", pytest.approx(np.hypot(0.1, 0.1)))
    assert share_below([0.2, 0.59, 0.6, 0.9]) == 0.5
    assert share_below([]) == 0.0
    assert ratio_stats([2.0, 8.0, 5.0]) == {"min": 2.0, "median": 5.0, "max": 8.0}
    assert probe_labels("kit_with_rose.jpg", ["kit_harington", "rose_leslie"]) == ("kit_harington", "rose_leslie")
    assert probe_labels("obama1.jpg", ["biden", "obama"]) == ("obama",)


class _FixedJudge:
    def detect(self, image: np.ndarray) -> Detections:
        return Detections(np.array([[40, 40, 80, 80]], np.float32), np.array([0.9], np.float32),
                          np.zeros((1, 5, 2), np.float32))


def test_deface_anchor_blurs_only_the_scaled_ellipse() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (120, 120, 3), dtype=np.uint8)
    out = deface_default(_FixedJudge())(image)
    changed = np.any(out != image, axis=2)
    assert changed[60, 60]  # box centre blurred
    assert not changed[:28].any() and not changed[93:].any()  # outside the 1.3x-scaled box (28..92)
    assert not changed[29, 29]  # box corner lies outside the ellipse


def test_ground_truth_formats(tmp_path: Path) -> None:
    (tmp_path / "a.xml").write_text(
        "<dataset><images><image file='x.jpg'><box top='5' left='10' width='20' height='30'/>"
        "<box top='0' left='0' width='4' height='4' ignore='1'/></image></images></dataset>"
    )
    (tmp_path / "b.json").write_text(json.dumps({"images": [{"file": "y.jpg", "boxes": [[1, 2, 3, 4]]}]}))
    items = load_ground_truth(tmp_path)
    assert [i.path.name for i in items] == ["x.jpg", "y.jpg"]
    assert items[0].boxes.tolist() == [[10, 5, 30, 35]]
    assert items[1].boxes.tolist() == [[1, 2, 4, 6]]
    (tmp_path / "c.json").write_text("{}")
    with pytest.raises(UserError, match=r"c\.json"):
        load_ground_truth(tmp_path)


def test_showing_original_tells_paint_from_a_face() -> None:
    """A judge box over a solid mask shows no original pixel; one over an unmasked or half-masked face does."""
    rng = np.random.default_rng(3)
    before = rng.integers(0, 255, (100, 200, 3), dtype=np.uint8)
    after = before.copy()
    after[10:90, 10:90] = 0  # a solid mask over the first face
    after[10:40, 110:190] = 0  # the top half (eyes) of the second face masked, the mouth left
    boxes = [[10, 10, 90, 90], [110, 10, 190, 90], [110, 50, 190, 90]]
    assert showing_original(before, after, boxes).tolist() == [False, True, True]
    # pixelate/blur add noise: a changed pixel is not original even if close to it
    noisy = before.copy()
    noisy[10:90, 10:90] = np.clip(noisy[10:90, 10:90].astype(int) + 1, 0, 255).astype(np.uint8)
    assert not showing_original(before, noisy, boxes[:1]).any()
