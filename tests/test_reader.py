"""The one reader of video files and photos (edge_mask/capture/files.py): what its callers rely on.

Batch masking, evaluation, the benchmarks and int8 calibration all read through `VideoReader` and
`read_image`, so the features they use (looping, a frame limit, sampled indices, a decoded frame count,
video timestamps, one-line errors) are pinned here on a small real clip (eat.mkv: 47 frames, 30 fps).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_mask.capture import MediaError, VideoReader, read_image


@pytest.fixture(scope="module")
def clip(shared_data: Path) -> Path:
    return shared_data / "video" / "asl" / "eat.mkv"


@pytest.fixture(scope="module")
def all_frames(clip: Path) -> list[np.ndarray]:
    with VideoReader(clip) as reader:
        return list(reader)


def test_frames_info_and_count(clip: Path, all_frames: list[np.ndarray]) -> None:
    with VideoReader(clip) as reader:
        assert (reader.info.width, reader.info.height, reader.info.fps) == (640, 480, 30.0)
        assert reader.info.frames == 47
        assert reader.count() == 47
    assert len(all_frames) == 47
    assert all(f.dtype == np.uint8 and f.shape == (480, 640, 3) and f.flags.c_contiguous for f in all_frames)


def test_loop_max_frames_sample_and_timestamps(clip: Path, all_frames: list[np.ndarray]) -> None:
    with VideoReader(clip, loop=True, max_frames=100) as reader:
        looped = list(reader)
    assert len(looped) == 100
    assert np.array_equal(looped[47], all_frames[0]) and np.array_equal(looped[99], all_frames[99 - 94])

    with VideoReader(clip) as reader:
        picked = list(reader.sample([40, 0, 13, 500]))
    assert len(picked) == 3
    assert all(np.array_equal(a, all_frames[i]) for a, i in zip(picked, (0, 13, 40), strict=True))

    with VideoReader(clip, max_frames=3) as reader:
        stamps = [(index, stamp) for index, stamp, _ in reader.timed()]
    assert stamps == [(0, 0.0), (1, 1 / 30), (2, 2 / 30)]


def test_closed_looping_reader_stops(clip: Path) -> None:
    reader = VideoReader(clip, loop=True)
    frames = iter(reader)
    next(frames)
    reader.close()
    assert next(frames, None) is None


def test_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(MediaError, match=r"missing\.mp4: no such video file"):
        VideoReader(tmp_path / "missing.mp4")
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 40)
    with pytest.raises(MediaError, match=r"broken\.mp4: cannot decode any video frame"):
        VideoReader(broken)
    with pytest.raises(MediaError, match=r"missing\.jpg: cannot read"):
        read_image(tmp_path / "missing.jpg")
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(MediaError, match=r"bad\.jpg: not a readable image"):
        read_image(tmp_path / "bad.jpg")


def test_read_image_gives_bgr_for_grey_and_alpha(tmp_path: Path) -> None:
    import cv2

    grey = np.full((8, 6), 77, np.uint8)
    rgba = np.zeros((8, 6, 4), np.uint8)
    rgba[..., 2] = 200
    cv2.imwrite(str(tmp_path / "grey.png"), grey)
    cv2.imwrite(str(tmp_path / "alpha.png"), rgba)
    assert read_image(tmp_path / "grey.png").shape == (8, 6, 3)
    alpha = read_image(str(tmp_path / "alpha.png"))
    assert alpha.shape == (8, 6, 3) and int(alpha[0, 0, 2]) == 200
