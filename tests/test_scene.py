"""Scene cuts on the real clips: the press clip's three hard cuts are found, the ASL clips (hands moving in
front of a still signer) have none."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_mask.capture import VideoReader
from edge_mask.config import TrackerConfig
from edge_mask.mask.scene import CutDetector


def cuts_in(path: Path) -> list[int]:
    detector = CutDetector(TrackerConfig().cut_threshold)
    return [index for index, frame in enumerate(VideoReader(path)) if detector(frame)]


def test_press_clip_cuts(shared_data: Path) -> None:
    assert cuts_in(shared_data / "video" / "short_hamilton_clip.mp4") == [20, 82, 211]


def test_no_cut_in_the_asl_clips(shared_data: Path) -> None:
    found = {p.name: cuts_in(p) for p in sorted((shared_data / "video" / "asl").glob("*.mkv"))}
    assert found and all(c == [] for c in found.values()), found


def test_threshold_zero_turns_it_off() -> None:
    detector = CutDetector(0.0)
    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 255, (36, 64, 3), dtype=np.uint8) for _ in range(3)]
    assert [detector(f) for f in frames] == [False, False, False]


@pytest.mark.parametrize("value", [0.0, 255.0])
def test_a_jump_to_black_or_white_is_a_cut(value: float) -> None:
    detector = CutDetector(0.08)
    detector(np.full((36, 64, 3), 128, np.uint8))
    assert detector(np.full((36, 64, 3), value, np.uint8))
