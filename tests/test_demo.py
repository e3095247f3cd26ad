"""`edge-mask demo` end to end, as a person (or a script) runs it: a subprocess, the last stdout line is JSON.

The counts are checked against each other: every captured frame is spooled, delivered, verified and
decrypted (decodable from the receiver's disk), nothing is lost, and faces were masked on a real clip.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from edge_mask.config import ModelsConfig

REPO = Path(__file__).resolve().parents[1]


def _demo(args: list[str], cache: ModelsConfig, out: Path) -> dict[str, Any]:
    env = {**os.environ, "EDGE_MASK_MODEL_CACHE": str(cache.cache_dir)}
    proc = subprocess.run(
        [sys.executable, "-m", "edge_mask", "-q", "demo", *args, "--json", "--out", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=280,
    )
    assert proc.returncode == 0, f"demo failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    summary: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return summary


def _clip_arg(shared_data: Path) -> str:
    clip = shared_data / "video" / "short_hamilton_clip.mp4"
    if not clip.is_file():
        pytest.skip(f"{clip} not found")
    relative = Path("..") / "shared" / "data" / "video" / "short_hamilton_clip.mp4"
    return str(relative) if (REPO / relative).resolve() == clip.resolve() else str(clip)


@pytest.mark.slow
def test_demo_delivers_every_frame_of_the_clip(shared_data: Path, model_cache: ModelsConfig, tmp_path: Path) -> None:
    summary = _demo(["--frames", "120", "--source", _clip_arg(shared_data)], model_cache, tmp_path / "run")
    for key in ("captured", "masked_faces", "delivered", "verified", "decrypted", "lost"):
        assert isinstance(summary[key], int), key
    assert summary["captured"] == 120
    assert summary["spooled"] == 120 and summary["dropped"] == 0
    assert summary["delivered"] == summary["verified"] == summary["decrypted"] == 120
    assert summary["lost"] == 0 and summary["rejected"] == 0 and summary["gaps"] == 0
    assert summary["masked_faces"] > 0  # the clip shows about 1.8 faces per frame
    # which model masked, and why: the int8 model passed its gate, so `auto` chose by measured speed
    assert summary["detector"].split(" ")[0] in ("int8", "fp32")
    assert "precision auto: " in summary["detector"] and " ms" in summary["detector"]
    assert summary["output_dir"] == str(tmp_path / "run")
    frames = sorted(Path(summary["frames_dir"]).glob("*.jpg"))
    assert len(frames) == 120
    assert Path(summary["video"]).stat().st_size > 0
    sheet = Path(summary["contact_sheet"])
    assert sheet.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the device only ever held the recipient's public key
    assert not (tmp_path / "run" / "device" / "recipient.key").exists()


@pytest.mark.slow
def test_demo_with_the_embedded_broker(shared_data: Path, model_cache: ModelsConfig, tmp_path: Path) -> None:
    """What a machine without Mosquitto runs: the pure-Python broker, same guarantees."""
    summary = _demo(["--frames", "40", "--source", _clip_arg(shared_data), "--broker", "embedded"], model_cache,
                    tmp_path / "run")
    assert summary["broker"] == "embedded"
    assert summary["captured"] == summary["delivered"] == summary["verified"] == summary["decrypted"] == 40
    assert summary["lost"] == 0 and summary["masked_faces"] > 0


@pytest.mark.slow
def test_demo_clinical_shows_the_template_and_plots_the_signals(
    shared_data: Path, model_cache: ModelsConfig, tmp_path: Path
) -> None:
    """`edge-mask demo --clinical`: a signer's clip through the whole system with clinical signals and the
    clinical style; every frame delivered, and the cloud side draws the stream's signals."""
    import cv2
    import numpy as np

    from edge_mask.mask.template import SKIN

    summary = _demo(["--clinical", "--frames", "40"], model_cache, tmp_path / "run")
    assert summary["captured"] == summary["delivered"] == summary["verified"] == summary["decrypted"] == 40
    assert summary["lost"] == 0 and summary["masked_faces"] >= 40
    assert "asl" in summary["source"]
    frame = cv2.imread(str(sorted(Path(summary["frames_dir"]).glob("*.jpg"))[20]))
    assert np.sum(np.all(np.abs(frame.astype(int) - SKIN) <= 6, axis=2)) > 500, "the schematic face is drawn"
    plot = Path(summary["signals_plot"])
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_refuses_a_non_empty_out_dir(tmp_path: Path) -> None:
    (tmp_path / "something").write_text("x")
    proc = subprocess.run([sys.executable, "-m", "edge_mask", "demo", "--out", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "directory is not empty" in proc.stderr and "Traceback" not in proc.stderr


def test_default_source_falls_back_to_a_synthetic_pattern(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the shared clip and without a working camera 0 the demo says it uses a synthetic pattern."""
    from edge_mask.tools import demo

    monkeypatch.setattr(demo, "DEFAULT_CLIP", Path("/nonexistent/clip.mp4"))
    monkeypatch.setattr(demo, "_camera_zero_works", lambda: False)
    said: list[str] = []
    source = demo.choose_source(None, 25, said.append)
    assert source.camera.type == "synthetic" and source.camera.frames == 25
    assert any("synthetic" in line and "WITHOUT faces" in line for line in said)
