"""Scene cuts on the real clips: the press clip's three cuts are found and are hard (another picture), the
ASL clips (hands moving in front of a still signer) have none; a jump in brightness alone is a soft cut."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_mask.capture import VideoReader
from edge_mask.config import TrackerConfig
from edge_mask.mask.scene import Cut, CutDetector


def cuts_in(path: Path) -> list[tuple[int, Cut]]:
    detector = CutDetector(TrackerConfig().cut_threshold)
    return [(index, cut) for index, frame in enumerate(VideoReader(path)) if (cut := detector(frame))]


def test_press_clip_cuts(shared_data: Path) -> None:
    assert cuts_in(shared_data / "video" / "short_hamilton_clip.mp4") == [(20, Cut.HARD), (82, Cut.HARD),
                                                                            (211, Cut.HARD)]


@pytest.mark.parametrize(("gain", "offset"), [(2.2, 0.0), (0.4, 0.0), (1.0, 60.0), (1.6, -40.0)])
def test_a_brightness_jump_on_a_real_frame_is_a_soft_cut(shared_data: Path, gain: float, offset: float) -> None:
    """A light switched on or an exposure step: the same picture, brighter or darker (clipped at white and
    black as a camera clips), is a soft cut, so the old shot's holds keep their grace."""
    frame = next(iter(VideoReader(shared_data / "video" / "asl" / "again.mkv")))
    detector = CutDetector(TrackerConfig().cut_threshold)
    assert detector(frame) == Cut.NONE
    jumped = np.clip(frame.astype(np.float32) * gain + offset, 0, 255).astype(np.uint8)
    assert detector(jumped) == Cut.SOFT


def test_no_cut_in_the_asl_clips(shared_data: Path) -> None:
    found = {p.name: cuts_in(p) for p in sorted((shared_data / "video" / "asl").glob("*.mkv"))}
    assert found and all(c == [] for c in found.values()), found


def test_threshold_zero_turns_it_off() -> None:
    detector = CutDetector(0.0)
    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 255, (36, 64, 3), dtype=np.uint8) for _ in range(3)]
    assert [detector(f) for f in frames] == [Cut.NONE, Cut.NONE, Cut.NONE]


def test_another_picture_is_a_hard_cut() -> None:
    """Two unrelated textured pictures of the same brightness: the structure changed, the cut is hard."""
    detector = CutDetector(0.08)
    rng = np.random.default_rng(3)
    first = cv2.resize(rng.integers(0, 255, (9, 16, 3), dtype=np.uint8), (64, 36), interpolation=cv2.INTER_NEAREST)
    second = cv2.resize(rng.integers(0, 255, (9, 16, 3), dtype=np.uint8), (64, 36), interpolation=cv2.INTER_NEAREST)
    assert detector(first) == Cut.NONE
    assert detector(second) == Cut.HARD
    assert detector(second) == Cut.NONE


@pytest.mark.parametrize("value", [0.0, 255.0])
def test_a_jump_to_black_or_white_is_a_soft_cut(value: float) -> None:
    """A flat frame has no structure to compare: the cut may be a lens cap or the lights, so it is soft."""
    detector = CutDetector(0.08)
    rng = np.random.default_rng(2)
    detector(rng.integers(60, 200, (36, 64, 3), dtype=np.uint8))
    assert detector(np.full((36, 64, 3), value, np.uint8)) == Cut.SOFT
