"""`edge-mask mask` on real photos and videos: outputs, metadata, progress, JSON and bad inputs.

Inputs are copied from ../shared/data into the test's temporary folder (under names that must not leak
into the outputs); the detector is the project's int8 YuNet from the test model cache.
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_mask.capture import VideoReader, read_image
from edge_mask.cli import main
from edge_mask.config import ModelsConfig
from edge_mask.service.outputs import encode_image, expand_inputs, output_path

SECRET = b"GPS 51.5007N 0.1246W patient-jane-doe"


def with_exif(jpeg: bytes, payload: bytes) -> bytes:
    """Insert an APP1 'Exif' segment carrying `payload` right after the JPEG's SOI marker."""
    body = b"Exif\x00\x00" + payload
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body + jpeg[2:]


def write_config(path: Path, models: ModelsConfig) -> Path:
    path.write_text(
        'device_id = "batch-test"\n'
        "[models]\n"
        f'cache_dir = "{models.cache_dir}"\n'
        "[detector]\n"
        'model = "yunet-int8"\n'
        'precision = "int8"\n'
        "deadline_ms = 5000\n"
    )
    return path


@pytest.fixture(scope="module")
def inputs(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("inputs")
    photo = (shared_data / "faces-dlib" / "2008_004176.jpg").read_bytes()
    (folder / "patient-jane-doe.jpg").write_bytes(with_exif(photo, SECRET))
    shutil.copy(shared_data / "video" / "asl" / "eat.mkv", folder / "patient-john-roe.mkv")
    with VideoReader(shared_data / "video" / "asl" / "hungry.mkv", max_frames=8) as reader:
        frames = [cv2.cvtColor(cv2.resize(image, (320, 240)), cv2.COLOR_BGR2RGB) for image in reader]
    assert len(frames) == 8
    import imageio.v3 as iio

    iio.imwrite(folder / "ward-round.gif", np.stack(frames), duration=100, loop=0)
    (folder / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 40)
    (folder / "notes.txt").write_text("not media")
    return folder


def test_batch_masks_photos_and_videos_and_reports_bad_inputs(
    inputs: Path, model_cache: ModelsConfig, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    outdir = tmp_path / "out"
    empty = tmp_path / "empty"
    empty.mkdir()
    config = write_config(tmp_path / "edge.toml", model_cache)
    args = [
        "mask", str(inputs / "patient-jane-doe.jpg"), str(inputs / "patient-john-roe.mkv"),
        str(inputs / "ward-round.gif"), str(inputs / "broken.mp4"), str(tmp_path / "missing.mp4"), str(empty),
        "-o", str(outdir), "--config", str(config), "--json", "--style", "pixelate",
    ]
    code = main(args)
    captured = capsys.readouterr()
    assert code == 1, "bad inputs make the exit non-zero"
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert {"files", "frames", "faces", "fail_closed", "fps"} <= summary.keys()
    assert summary["files"] == 3
    assert summary["frames"] == 1 + 47 + 8
    assert summary["faces"] >= 7 + 47, "7 faces in the photo, a signer in every clip frame"
    assert summary["fps"] > 0

    errors = [line for line in captured.err.splitlines() if line.startswith("edge-mask: error:")]
    for bad in ("broken.mp4", "missing.mp4", str(empty)):
        assert sum(bad in line for line in errors) == 1, (bad, errors)
    assert "frames" in captured.err, "a progress bar is drawn for videos"

    assert sorted(p.name for p in outdir.iterdir()) == ["patient-jane-doe.jpg", "patient-john-roe.mp4",
                                                          "ward-round.mp4"]
    photo = read_image(outdir / "patient-jane-doe.jpg")
    original = read_image(inputs / "patient-jane-doe.jpg")
    assert photo.shape == original.shape
    assert np.mean(np.abs(photo.astype(int) - original.astype(int))) > 1, "the photo was masked"

    for name, source, frames, fps in (("patient-john-roe.mp4", "patient-john-roe.mkv", 47, 30.0),
                                      ("ward-round.mp4", "ward-round.gif", 8, 10.0)):
        with VideoReader(outdir / name) as out, VideoReader(inputs / source) as src:
            assert out.info.width == src.info.width
            assert out.info.height == src.info.height
            assert out.info.fps == pytest.approx(fps, rel=0.01)
            count = sum(1 for _ in out)
        assert count == frames


def test_outputs_carry_no_metadata_or_original_names(
    inputs: Path, model_cache: ModelsConfig, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    outdir = tmp_path / "out"
    config = write_config(tmp_path / "edge.toml", model_cache)
    source = inputs / "patient-jane-doe.jpg"
    assert b"Exif" in source.read_bytes() and SECRET in source.read_bytes()
    code = main(["mask", str(source), str(inputs / "patient-john-roe.mkv"), "-o", str(outdir),
                 "--config", str(config), "--no-progress"])
    assert code == 0
    assert "masked 2 file(s)" in capsys.readouterr().out
    image = (outdir / "patient-jane-doe.jpg").read_bytes()
    assert b"Exif" not in image and SECRET not in image and b"\xff\xe1" not in image[:4096]
    video = (outdir / "patient-john-roe.mp4").read_bytes()
    for needle in (b"patient-john-roe", b"patient", b"eat.mkv", str(inputs).encode()):
        assert needle not in video, f"{needle!r} found inside the output container"
    assert not list(outdir.glob(".*partial*")), "no temporary files are left behind"


def test_output_never_overwrites_its_input(
    inputs: Path, model_cache: ModelsConfig, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    photo = folder / "a.jpg"
    shutil.copy(inputs / "patient-jane-doe.jpg", photo)
    before = photo.read_bytes()
    code = main(["mask", str(folder), "-o", str(folder), "--config",
                 str(write_config(tmp_path / "edge.toml", model_cache))])
    assert code == 1
    assert "would overwrite the input" in capsys.readouterr().err
    assert photo.read_bytes() == before


def test_input_expansion_and_output_names(tmp_path: Path) -> None:
    (tmp_path / "b.PNG").write_bytes(b"")
    (tmp_path / "a.mkv").write_bytes(b"")
    (tmp_path / "c.txt").write_bytes(b"")
    (tmp_path / "sub").mkdir()
    files, problems = expand_inputs([tmp_path, tmp_path / "nope.jpg", tmp_path / "c.txt", tmp_path / "sub"])
    assert [p.name for p in files] == ["a.mkv", "b.PNG"]
    assert len(problems) == 3
    assert "nope.jpg: no such file" in problems[0]
    assert "unsupported file type '.txt'" in problems[1]
    assert "holds no media files" in problems[2]
    out = tmp_path / "out"
    assert output_path(Path("x/clip.avi"), out) == out / "clip.mp4"
    assert output_path(Path("x/clip.gif"), out) == out / "clip.mp4"
    assert output_path(Path("x/photo.jpeg"), out) == out / "photo.jpeg"


def test_encoded_images_have_no_metadata_segments() -> None:
    image = np.random.default_rng(0).integers(0, 256, (32, 48, 3), dtype=np.uint8)
    jpeg = encode_image(image, ".jpg")
    assert jpeg[:2] == b"\xff\xd8" and b"Exif" not in jpeg and b"\xff\xe1" not in jpeg
    png = encode_image(image, ".png")
    assert b"tEXt" not in png and b"eXIf" not in png and b"iTXt" not in png


def test_the_clinical_style_in_a_batch_run_draws_the_schematic_face(
    shared_data: Path, model_cache: ModelsConfig, repo_root: Path, tmp_path: Path
) -> None:
    """`edge-mask mask --style clinical` reads the signals it draws (standard tier), and a batch run with any
    other style reads none, whatever the config says (nothing in a batch output would carry them)."""
    from edge_mask.commands.mask import batch_config
    from edge_mask.mask.template import SKIN
    from edge_mask.tools.landmark_models import ensure_landmark_models

    ensure_landmark_models(model_cache, shared_data / "faces-dlib", repo_root / ".cache" / "wheels")
    config = write_config(tmp_path / "edge.toml", model_cache)
    assert batch_config(config, "clinical", None).clinical.signals == "standard"
    with config.open("a") as handle:
        handle.write('[clinical]\nsignals = "ophthalmic"\n')
    assert batch_config(config, "clinical", None).clinical.signals == "ophthalmic"
    assert batch_config(config, "solid", None).clinical.signals == "off"

    clip = tmp_path / "again.mkv"
    shutil.copy(shared_data / "video" / "asl" / "again.mkv", clip)
    outputs = {}
    for style in ("solid", "clinical"):
        assert main(["mask", str(clip), "-o", str(tmp_path / style), "--config", str(config), "--style", style,
                     "--no-progress"]) == 0
        with VideoReader(tmp_path / style / "again.mp4") as reader:
            outputs[style] = list(reader)
    assert len(outputs["solid"]) == len(outputs["clinical"]) == 77
    # template pixels: grey skin where the solid run painted the head black
    drawn = [int((np.all(solid < 30, axis=2) & np.all(np.abs(clinical.astype(int) - SKIN) <= 12, axis=2)).sum())
             for solid, clinical in zip(outputs["solid"], outputs["clinical"], strict=True)]
    # the face is read and drawn on nearly every frame (measured: every one, 5,000-43,000 pixels)
    assert sum(count > 300 for count in drawn) >= 0.9 * len(drawn), drawn
