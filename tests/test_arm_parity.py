"""The ARM parity comparison (`edge_mask.tools.arm_parity`) on synthetic results, in well under a second.

Why only the comparison: the emulated ARM run takes many minutes under qemu and needs root, so CI never runs
it (`scripts/arm64-parity.sh` is run by hand); what CI can check is that the comparison counts faces,
score shifts and raw differences right, and that its gate fails when ARM and x86 disagree.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import numpy as np
import pytest

import edge_mask.tools.arm_parity_runner as runner
from edge_mask.config import ModelsConfig
from edge_mask.core.types import Detections
from edge_mask.tools.arm_parity import compare_model, raw_difference
from edge_mask.tools.arm_parity_runner import load_outputs, output_key, save_outputs
from edge_mask.tools.parity import matched


def dets(*faces: tuple[float, float, float, float, float]) -> Detections:
    """Detections from (x1, y1, x2, y2, score) tuples."""
    if not faces:
        return Detections.empty()
    arr = np.asarray(faces, np.float32)
    return Detections(arr[:, :4].copy(), arr[:, 4].copy(), np.zeros((len(arr), 5, 2), np.float32))


REF = [dets((0, 0, 10, 10, 0.9), (50, 50, 70, 70, 0.3)), dets((5, 5, 25, 25, 0.6)), dets()]


def test_identical_runs_pass_with_zero_differences() -> None:
    rows = compare_model("int8", REF, REF, (0.0, 12, 12), thresholds=(0.25, 0.5))
    assert [r.passed for r in rows] == [True, True]
    assert (rows[0].x86_faces, rows[0].arm_faces, rows[0].x86_found_on_arm) == (3, 3, 3)
    assert (rows[1].x86_faces, rows[1].arm_found_on_x86) == (2, 2)
    assert rows[0].score_diff_max == 0.0 and rows[0].identical_tensors == 12


def test_small_shift_passes_and_is_reported() -> None:
    cand = [dets((0, 0, 10, 11, 0.895), (50, 50, 70, 70, 0.29)), dets((5, 5, 25, 25, 0.61)), dets()]
    rows = compare_model("fp32", REF, cand, (0.01, 0, 12), thresholds=(0.25,), tolerance=0.02)
    assert rows[0].passed
    assert rows[0].score_diff_max == pytest.approx(0.01, abs=1e-6)
    assert rows[0].raw_diff_max == 0.01


def test_a_face_lost_on_arm_fails() -> None:
    cand = [dets((0, 0, 10, 10, 0.9)), dets((5, 5, 25, 25, 0.6)), dets()]
    row = compare_model("int8", REF, cand, (0.0, 12, 12), thresholds=(0.25,))[0]
    assert (row.x86_found_on_arm, row.x86_faces) == (2, 3)
    assert row.recall == pytest.approx(2 / 3) and row.precision == 1.0
    assert not row.passed


def test_a_face_found_only_on_arm_or_moved_too_far_fails() -> None:
    extra = [REF[0], REF[1], dets((100, 100, 120, 120, 0.8))]
    assert not compare_model("int8", REF, extra, (0.0, 12, 12), thresholds=(0.25,))[0].passed
    shifted = [dets((0, 0, 10, 10, 0.8), (50, 50, 70, 70, 0.3)), REF[1], REF[2]]
    row = compare_model("int8", REF, shifted, (0.0, 12, 12), thresholds=(0.25,), tolerance=0.02)[0]
    assert row.recall == 1.0 and row.score_diff_max == pytest.approx(0.1, abs=1e-6)
    assert not row.passed


def test_score_diffs_ignore_unmatched_boxes() -> None:
    cand = [dets((30, 30, 40, 40, 0.9)), dets((5, 5, 25, 25, 0.5)), dets()]
    assert matched(REF, cand, 0.25, 0.5)[1] == pytest.approx([0.1], abs=1e-6)


def test_raw_difference_counts_identical_tensors_and_checks_keys() -> None:
    a = {"int8/0000/cls_8": np.zeros((1, 4, 1), np.float32), "int8/0000/obj_8": np.ones((1, 4, 1), np.float32)}
    b = {"int8/0000/cls_8": np.zeros((1, 4, 1), np.float32), "int8/0000/obj_8": np.full((1, 4, 1), 1.5, np.float32)}
    assert raw_difference(a, b) == (0.5, 1, 2)
    with pytest.raises(ValueError, match="different outputs"):
        raw_difference(a, {"int8/0000/cls_8": a["int8/0000/cls_8"]})


def test_outputs_round_trip_with_metadata(tmp_path: Path) -> None:
    key = output_key("fp32", 3, "bbox_16")
    assert key == "fp32/0003/bbox_16"
    save_outputs(tmp_path / "o.npz", {key: np.arange(4, dtype=np.float32)}, {"machine": "aarch64"})
    outputs, meta = load_outputs(tmp_path / "o.npz")
    assert meta == {"machine": "aarch64"} and np.array_equal(outputs[key], np.arange(4, dtype=np.float32))


def test_runner_stays_standalone() -> None:
    """The runner is copied alone into the arm64 root, which has only numpy and onnxruntime."""
    tree = ast.parse(Path(runner.__file__).read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    assert names - set(sys.stdlib_module_names) == {"numpy", "onnxruntime"}


def test_runner_sessions_mirror_the_products(model_cache: ModelsConfig) -> None:
    """The standalone runner spells out the product's session settings (it cannot import them); every config
    entry of `runtime.SESSION_CONFIG` (the exact int8 path on x86 among them) must be set the same there, or
    the ARM comparison measures other kernels than the product runs."""
    from edge_mask.detect.runtime import SESSION_CONFIG, open_session

    model = Path(model_cache.cache_dir) / "yunet-int8.onnx"
    for session in (runner.open_model(model, 1), open_session(model, 1)):
        options = session.get_session_options()
        assert {key: options.get_session_config_entry(key) for key in SESSION_CONFIG} == SESSION_CONFIG
