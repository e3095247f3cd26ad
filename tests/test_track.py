"""Tracker hold logic on synthetic boxes and timestamps: a face missed for a frame must stay masked."""

from __future__ import annotations

import numpy as np
import pytest

from edge_mask.config import MaskConfig, TrackerConfig
from edge_mask.core.boxes import iou_matrix as box_iou
from edge_mask.mask.paint import head_regions
from edge_mask.mask.track import Tracker, grow, match

FPS = 30.0


def boxes(*rows: tuple[float, float, float, float]) -> np.ndarray:
    return np.array(rows, np.float32).reshape(-1, 4)


def covers(region: np.ndarray, box: np.ndarray) -> bool:
    return bool(np.all(region[:2] <= box[:2]) and np.all(region[2:] >= box[2:]))


def test_a_face_missed_for_one_frame_is_still_masked() -> None:
    tracker = Tracker(TrackerConfig())
    face = boxes((100, 100, 160, 170))
    tracker.update(face, 0.0)
    result = tracker.update(boxes(), 1 / FPS)
    assert result.detected == 0 and result.held == 1
    assert covers(result.regions[0], face[0])


def test_hold_lasts_hold_s_then_the_track_is_forgotten() -> None:
    cfg = TrackerConfig(hold_s=0.8)
    tracker = Tracker(cfg)
    tracker.update(boxes((100, 100, 160, 170)), 0.0)
    held_until = 0.0
    for i in range(1, 60):
        now = i / FPS
        if len(tracker.update(boxes(), now).regions):
            held_until = now
    assert 0.8 - 1 / FPS <= held_until <= 0.8
    assert len(tracker) == 0


def test_the_default_hold_is_at_least_half_a_second() -> None:
    assert TrackerConfig().hold_s >= 0.5
    with pytest.raises(ValueError):
        TrackerConfig(hold_s=0.2)


def test_held_region_grows_with_time() -> None:
    tracker = Tracker(TrackerConfig(grow_per_s=0.5))
    tracker.update(boxes((100, 100, 200, 200)), 0.0)
    early = tracker.update(boxes(), 0.1).regions[0]
    late = tracker.update(boxes(), 0.6).regions[0]
    width = lambda r: float(r[2] - r[0])  # noqa: E731
    assert width(early) == pytest.approx(100 * 1.05, abs=0.5)
    assert width(late) == pytest.approx(100 * 1.3, abs=0.5)


def test_held_region_follows_constant_velocity_and_keeps_last_box() -> None:
    tracker = Tracker(TrackerConfig(grow_per_s=0.0))
    for i in range(5):  # moving right at 10 px per frame = 300 px/s
        tracker.update(boxes((100 + 10 * i, 100, 160 + 10 * i, 160)), i / FPS)
    last = boxes((140, 100, 200, 160))[0]
    # Two frames without detection: the face should be about 20 px further right.
    result = tracker.update(boxes(), 6 / FPS)
    region = result.regions[0]
    expected = boxes((160, 100, 220, 160))[0]
    assert covers(region, expected), (region, expected)
    assert covers(region, last), "the last seen box stays covered in case the face stopped"


def test_fast_face_without_overlap_matches_by_centre_distance() -> None:
    tracker = Tracker(TrackerConfig())
    first = tracker.update(boxes((100, 100, 150, 150)), 0.0)
    # Jumped 45 px: IoU 0, but within one face size of the old centre -> the same track, nothing held.
    second = tracker.update(boxes((145, 100, 195, 150)), 1 / FPS)
    assert second.held == 0
    assert second.track_ids[0] == first.track_ids[0]


def test_two_faces_keep_their_identities_and_a_far_new_face_starts_a_track() -> None:
    tracker = Tracker(TrackerConfig())
    a = tracker.update(boxes((10, 10, 60, 60), (300, 10, 350, 60)), 0.0)
    b = tracker.update(boxes((305, 12, 355, 62), (12, 10, 62, 60), (600, 300, 650, 350)), 1 / FPS)
    assert b.track_ids[0] == a.track_ids[1] and b.track_ids[1] == a.track_ids[0]
    assert b.track_ids[2] not in a.track_ids
    assert b.held == 0 and len(tracker) == 3


def test_one_face_missed_among_several_is_held() -> None:
    tracker = Tracker(TrackerConfig())
    tracker.update(boxes((10, 10, 60, 60), (300, 10, 350, 60)), 0.0)
    result = tracker.update(boxes((10, 10, 60, 60)), 1 / FPS)
    assert result.detected == 1 and result.held == 1
    assert covers(result.regions[1], boxes((300, 10, 350, 60))[0])


def test_intermittent_detections_never_leave_a_frame_without_the_face() -> None:
    """Detector finds the moving face only on every third frame; the painted head region (padded box)
    must cover the face in every frame."""
    tracker = Tracker(TrackerConfig())
    padding = MaskConfig().padding
    for i in range(90):
        x = 100 + 4 * i
        face = boxes((x, 200, x + 60, 270))
        result = tracker.update(face if i % 3 == 0 else boxes(), i / FPS)
        painted = head_regions(result.regions, 2000, 2000, padding)
        assert any(covers(r, face[0]) for r in painted), f"frame {i} leaks the face"


def test_track_limit_is_enforced() -> None:
    tracker = Tracker(TrackerConfig(max_tracks=3))
    tracker.update(boxes(*[(i * 100, 0, i * 100 + 50, 50) for i in range(5)]), 0.0)
    assert len(tracker) == 3


def test_time_going_backwards_does_not_break_prediction() -> None:
    tracker = Tracker(TrackerConfig())
    tracker.update(boxes((100, 100, 150, 150)), 5.0)
    result = tracker.update(boxes(), 4.0)
    assert result.held == 1 and np.all(np.isfinite(result.regions))


def test_geometry_helpers() -> None:
    a = boxes((0, 0, 10, 10))
    b = boxes((5, 0, 15, 10), (20, 20, 30, 30))
    assert box_iou(a, b)[0].tolist() == pytest.approx([1 / 3, 0.0])
    assert box_iou(a, boxes()).shape == (1, 0)
    assert grow(a, np.array([2.0], np.float32))[0].tolist() == [-5, -5, 15, 15]
    assert match(a, b, 0.1) == [(0, 0)]
    assert match(boxes(), b, 0.1) == []
