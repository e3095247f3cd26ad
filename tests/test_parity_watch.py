"""The on-device parity watch (`precision = "auto"`): fp32 masks until int8 has agreed with it on this
device's own frames, then int8 masks if it is the faster, and fp32 comes back when the agreement drops.

Real onnxruntime, the real fp32 and int8 YuNet from the test model cache, real frames of the shared press
clip. Which model is "faster" is written into a copy of the cache as the timing record `precision auto`
would have left there, so the tests do not depend on the CPU they run on. Disagreement comes from a test
double behind the `Detector` interface: the real int8 model with every score lowered by 0.3.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edge_mask.capture import VideoReader
from edge_mask.config import EdgeConfig, ModelsConfig, OnnxDetectorConfig
from edge_mask.core.types import Detections, Image, RawFrame
from edge_mask.detect import (
    PARITY_FILE,
    OnnxYuNet,
    ParityVerdict,
    ParityWatch,
    Timing,
    WatchSettings,
    create_detector,
    detector_stats,
    load_verdict,
    margin_at,
    open_session,
    resolve_model,
)
from edge_mask.detect.verdict import AUTO_CHOICE_FILE, setup_key, write_entry
from edge_mask.mask import FaceMasker
from edge_mask.service.doctor import run_checks
from edge_mask.service.live import Service
from edge_mask.service.metrics import render_prometheus

FP32_FILE = "face_detection_yunet_2023mar_dynamic.onnx"
INT8_FILE = "yunet-int8.onnx"
THRESHOLD = 0.25
STATS_KEYS = {"detector_model", "parity_faces", "parity_found", "parity_confirmed", "parity_state"}


@pytest.fixture()
def cache(model_cache: ModelsConfig, tmp_path: Path) -> Path:
    """A private copy of the verified model cache, without earlier timing or parity verdicts."""
    target = tmp_path / "models"
    shutil.copytree(model_cache.cache_dir, target,
                    ignore=shutil.ignore_patterns(".lock", AUTO_CHOICE_FILE, PARITY_FILE))
    return target


@pytest.fixture(scope="module")
def clip(shared_data: Path) -> Path:
    return shared_data / "video" / "short_hamilton_clip.mp4"


def frames(clip: Path, limit: int | None = None) -> Iterator[Image]:
    yield from VideoReader(clip, max_frames=limit)


def faster(cache: Path, chosen: str, threads: int = 1) -> None:
    """Leave the timing record `precision auto` writes, saying `chosen` ran faster on this machine."""
    key = setup_key(cache / INT8_FILE, cache / FP32_FILE, threads, ("CPUExecutionProvider",))
    ms = {"int8": 4.0, "fp32": 6.0} if chosen == "int8" else {"int8": 6.0, "fp32": 4.0}
    write_entry(cache / AUTO_CHOICE_FILE, key, {"chosen": chosen, "int8_ms": ms["int8"], "fp32_ms": ms["fp32"],
                                                "threads": threads, "decided_at": "2026-01-01T00:00:00Z"})


def auto(**keys: object) -> OnnxDetectorConfig:
    return OnnxDetectorConfig.model_validate({"model": "yunet-int8", "precision": "auto", "threads": 1,
                                              "parity_every": 1, "parity_faces": 60, "parity_frames": 20, **keys})


def plain(cache: Path, file: str, threshold: float = THRESHOLD) -> OnnxYuNet:
    return OnnxYuNet(open_session(cache / file, 1), threshold, 0.3, 640, 200, sight=THRESHOLD, low_light=True)


class LoweredScores:
    """A `Detector` test double: a real model whose scores all come out 0.3 lower (a disagreeing int8)."""

    def __init__(self, inner: OnnxYuNet) -> None:
        self.inner = inner

    def detect(self, image: Image) -> Detections:
        found = self.inner.detect(image)
        return Detections(found.boxes, np.clip(found.scores - 0.3, 0.0, 1.0).astype(np.float32), found.landmarks)

    def close(self) -> None:
        self.inner.close()


def same(a: Detections, b: Detections) -> bool:
    return bool(np.array_equal(a.boxes, b.boxes) and np.array_equal(a.scores, b.scores))


# ------------------------------------------------------------------------------------------- the watch


def test_watch_proves_int8_switches_and_a_restart_resumes(cache: Path, clip: Path) -> None:
    faster(cache, "int8")
    models = ModelsConfig(cache_dir=cache)
    watch = create_detector(auto(), models)
    assert isinstance(watch, ParityWatch) and watch.state == "proving" and watch.model == "fp32"
    floor = OnnxDetectorConfig().weak_threshold  # the watch reports down to the weak-detection floor
    fp32, int8 = plain(cache, FP32_FILE, floor), plain(cache, INT8_FILE, floor)
    switched_at = None
    for index, image in enumerate(frames(clip, 200)):
        before = watch.model
        found = watch.detect(image)
        # masking uses only the active model, exactly as a plain detector at the product threshold sees it
        assert same(found, (fp32 if before == "fp32" else int8).detect(image))
        if watch.model == "int8" and switched_at is None:
            switched_at = index
        if switched_at is not None and index > switched_at + 10:
            break
    stats = detector_stats(watch)
    print(f"switched after {switched_at} frames: {json.dumps(stats)}")
    assert switched_at is not None, stats
    assert stats["detector_model"] == "int8" and stats["parity_state"] == "int8"
    assert stats["parity_faces"] >= 60 and stats["parity_found"] >= 0.99 and stats["parity_confirmed"] >= 0.99
    assert stats["parity_frames"] > 20  # fp32 kept shadowing int8 after the switch
    watch.close()
    saved = load_verdict(cache, setup_key(cache / INT8_FILE, cache / FP32_FILE, 1, ("CPUExecutionProvider",)))
    assert saved is not None and saved.state == "int8" and saved.fp32_faces == stats["parity_faces"]
    # a restart starts from the verdict (int8 masks at once) and keeps checking
    again = create_detector(auto(), models)
    assert isinstance(again, ParityWatch) and again.model == "int8"
    image = next(frames(clip, 1))
    again.detect(image)
    again.detect(image)
    assert same(again.detect(image), int8.detect(image))
    assert detector_stats(again)["parity_frames"] > saved.frames
    again.close()
    # without the watch (batch masking resolves a file), `auto` now picks the proven and faster int8
    assert resolve_model("yunet-int8", models, "auto", threads=1) == cache / INT8_FILE
    fp32.close()
    int8.close()


def test_int8_agrees_but_fp32_is_faster_so_fp32_masks(cache: Path, clip: Path) -> None:
    faster(cache, "fp32")
    models = ModelsConfig(cache_dir=cache)
    cfg = EdgeConfig.model_validate({"device_id": "d", "models": {"cache_dir": str(cache)},
                                     "detector": {"type": "onnx", **auto().model_dump()}})
    before = [c.line() for c in run_checks(cfg, ("model",))]
    assert any("int8 not yet proven on this device (0 of 60 faces compared)" in line for line in before), before
    watch = create_detector(auto(), models)
    assert isinstance(watch, ParityWatch)
    for image in frames(clip, 150):
        watch.detect(image)
        if watch.state != "proving":
            break
    stats = detector_stats(watch)
    assert stats["parity_state"] == "fp32-slower" and stats["detector_model"] == "fp32", stats
    compared = stats["parity_frames"]
    for image in frames(clip, 5):
        watch.detect(image)
    assert detector_stats(watch)["parity_frames"] == compared  # nothing to switch to: the shadow stopped
    watch.close()
    lines = [c.line() for c in run_checks(cfg, ("model",))]
    print("\n".join(lines))
    line = next(line for line in lines if "precision:" in line)
    # on 60 faces of this clip int8 agrees at about 98.5%: the verdict reports it either way, then stops
    assert line.split("precision: ")[1].startswith(("fp32 runs: int8 agrees on this device",
                                                    "fp32 runs: int8 does NOT agree on this device"))
    assert "but fp32 is faster" in line
    assert f"{stats['parity_faces']} faces compared" in line and "found" in line and "confirmed" in line


def test_disagreeing_int8_never_masks(cache: Path, clip: Path) -> None:
    floor = THRESHOLD - margin_at(THRESHOLD)
    saved: list[ParityVerdict] = []
    watch = ParityWatch(plain(cache, FP32_FILE, floor), LoweredScores(plain(cache, INT8_FILE, floor)),
                        WatchSettings(THRESHOLD, every=1, faces=60, frames=20), Timing("int8", 4.0, 6.0),
                        save=saved.append)
    for image in frames(clip, 80):
        watch.detect(image)
    stats = watch.stats()
    print(json.dumps(stats))
    assert stats["detector_model"] == "fp32" and stats["parity_state"] == "proving"
    assert stats["parity_faces"] >= 60 and stats["parity_found"] < 0.99
    watch.close()
    assert saved and saved[-1].state == "proving" and saved[-1].found < saved[-1].fp32_faces


def test_disagreeing_int8_that_is_slower_stops_the_shadow(cache: Path, clip: Path) -> None:
    """int8 would not run here even if it agreed (fp32 is faster): once enough faces were compared the shadow
    stops, instead of paying for it on every tenth frame forever; the verdict says it did not agree."""
    floor = THRESHOLD - margin_at(THRESHOLD)
    watch = ParityWatch(plain(cache, FP32_FILE, floor), LoweredScores(plain(cache, INT8_FILE, floor)),
                        WatchSettings(THRESHOLD, every=1, faces=60, frames=20), Timing("fp32", 6.0, 4.0),
                        save=lambda v: None)
    for image in frames(clip, 80):
        watch.detect(image)
        if watch.state != "proving":
            break
    stats = watch.stats()
    assert stats["parity_state"] == "fp32-slower" and stats["detector_model"] == "fp32", stats
    assert stats["parity_faces"] >= 60 and stats["parity_found"] < 0.99
    compared = stats["parity_frames"]
    for image in frames(clip, 5):
        watch.detect(image)
    assert watch.stats()["parity_frames"] == compared
    watch.close()


def test_int8_falls_back_to_fp32_when_agreement_drops(
    cache: Path, clip: Path, caplog: pytest.LogCaptureFixture
) -> None:
    floor = THRESHOLD - margin_at(THRESHOLD)
    proven = ParityVerdict(state="int8", fp32_faces=400, found=400, int8_faces=400, confirmed=400, frames=150,
                           frames_with_faces=150)
    saved: list[ParityVerdict] = []
    fp32 = plain(cache, FP32_FILE)
    watch = ParityWatch(plain(cache, FP32_FILE, floor), LoweredScores(plain(cache, INT8_FILE, floor)),
                        WatchSettings(THRESHOLD, every=1, faces=60, frames=20), Timing("int8", 4.0, 6.0),
                        verdict=proven, save=saved.append)
    assert watch.model == "int8"  # the last verdict: int8 masks from the first frame
    caplog.set_level(logging.WARNING, logger="edge_mask.detect.shadow")
    fell_back = False
    for image in frames(clip, 150):
        found = watch.detect(image)
        if fell_back:
            assert same(found, fp32.detect(image))
        fell_back = fell_back or watch.model == "fp32"
    stats = watch.stats()
    print(json.dumps(stats))
    assert fell_back and stats["parity_state"] == "fp32-fallback" and stats["detector_model"] == "fp32"
    assert stats["parity_fallbacks"] == 1 and stats["parity_needed_faces"] == 120
    assert stats["parity_window_found"] < 0.99
    assert len([r for r in caplog.records if "disagrees" in r.message]) == 1
    assert saved[0].state == "fp32-fallback" and saved[0].window_fp32_faces >= 60
    watch.close()
    fp32.close()


# ------------------------------------------------------------------------------ wiring: stats, forced


def test_live_stats_carry_the_model_and_the_parity_figures(cache: Path, clip: Path) -> None:
    faster(cache, "fp32")
    cfg = EdgeConfig.model_validate({"device_id": "d", "models": {"cache_dir": str(cache)},
                                     "detector": {"type": "onnx", **auto().model_dump()}})
    masker = FaceMasker(create_detector(cfg.detector, cfg.models), cfg.tracker, cfg.mask, 5000.0)
    service = Service(cfg, masker=masker)
    for seq, image in enumerate(frames(clip, 12)):
        assert masker.process(RawFrame(image, seq, 0.0, seq / 30)) is not None
    stats = service.stats()
    assert STATS_KEYS <= stats.keys()
    assert stats["detector_model"] == "fp32" and stats["parity_state"] == "proving" and stats["parity_faces"] > 0
    scrape = render_prometheus(stats)
    assert 'edge_mask_parity_state{value="proving"} 1' in scrape and "edge_mask_parity_faces " in scrape
    masker.close()


@pytest.mark.parametrize("precision", ["int8", "fp32"])
def test_forced_precision_has_no_watch(cache: Path, precision: str) -> None:
    faster(cache, "int8")
    detector = create_detector(auto(precision=precision), ModelsConfig(cache_dir=cache))
    assert not isinstance(detector, ParityWatch)
    assert detector_stats(detector) == {"detector_model": precision, "parity_state": "off", "parity_faces": 0,
                                        "parity_found": None, "parity_confirmed": None}
    detector.close()
    off = create_detector(auto(parity_every=0), ModelsConfig(cache_dir=cache))  # watch off: fp32 until proven
    assert detector_stats(off)["detector_model"] == "fp32"
    off.close()
    assert not (cache / PARITY_FILE).exists()
