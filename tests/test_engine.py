"""FaceMasker fail-closed behaviour with fake detectors behind the Detector protocol.

The fakes are scripted so each failure (raise, stall past the deadline, still busy, wrong result, a bug in
masking) happens on a known frame; real-detector runs are in test_leaks.py and test_coverage.py.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np
import pytest

from edge_mask.config import MaskConfig, TrackerConfig
from edge_mask.core.types import Detections, Image, RawFrame
from edge_mask.mask.engine import FaceMasker

H, W = 120, 160
FACE = np.array([[60, 40, 100, 90]], np.float32)
COLOR = (255, 0, 255)


def one_face(box: np.ndarray = FACE) -> Detections:
    return Detections(box.astype(np.float32), np.array([0.9], np.float32), np.zeros((1, 5, 2), np.float32))


class Scripted:
    """Calls `script(call_index)`: returns Detections, raises, or sleeps as the script says."""

    def __init__(self, script: Callable[[int], object]) -> None:
        self.script = script
        self.calls = 0
        self.closed = False

    def detect(self, image: Image) -> Detections:
        index = self.calls
        self.calls += 1
        result = self.script(index)
        return result  # type: ignore[return-value]

    def close(self) -> None:
        self.closed = True


def frame(seq: int, fps: float = 30.0) -> RawFrame:
    image = np.random.default_rng(seq).integers(0, 256, (H, W, 3), dtype=np.uint8)
    return RawFrame(image, seq=seq, captured_at=1000.0 + seq / fps, monotonic=seq / fps)


def masker(script: Callable[[int], object], deadline_ms: float = 200.0, **mask: object) -> FaceMasker:
    cfg = MaskConfig(color=COLOR, **mask)  # type: ignore[arg-type]
    return FaceMasker(Scripted(script), TrackerConfig(), cfg, deadline_ms)


def fully_masked(image: np.ndarray) -> bool:
    return bool(np.all(image == np.array(COLOR, np.uint8)))


def face_masked(image: np.ndarray, box: np.ndarray = FACE) -> bool:
    x1, y1, x2, y2 = (int(v) for v in box[0])
    return bool(np.all(image[y1:y2, x1:x2] == np.array(COLOR, np.uint8)))


def test_detected_face_is_masked_and_counted() -> None:
    m = masker(lambda i: one_face())
    out = m.process(frame(0))
    assert out is not None and face_masked(out.image) and not out.fail_closed
    assert out.faces == 1
    stats = m.stats()
    assert stats["frames"] == 1 and stats["faces_masked"] == 1 and stats["fail_closed"] == 0
    assert stats["detect_ms_p50"] >= 0 and "mask_ms_p99" in stats
    m.close()
    assert m.detector.closed  # type: ignore[attr-defined]


def test_face_missed_for_one_frame_is_still_masked() -> None:
    m = masker(lambda i: one_face() if i != 1 else Detections.empty())
    outs = [m.process(frame(i)) for i in range(3)]
    assert all(o is not None and face_masked(o.image) for o in outs)
    assert outs[1] is not None and outs[1].faces == 1 and not outs[1].fail_closed
    assert m.stats()["faces_held"] == 1
    m.close()


def test_in_place_paints_the_frame_it_was_handed_and_never_keeps_a_partly_painted_one() -> None:
    """The batch masker paints each decoded frame's own pixels (no copy); the copying masker leaves the
    raw frame as it was; and a frame that fails closed comes back as a new, fully masked image."""
    copying = masker(lambda i: one_face())
    raw = frame(0)
    before = raw.image.copy()
    out = copying.process(raw)
    assert out is not None and out.image is not raw.image and np.array_equal(raw.image, before)
    copying.close()

    def script(i: int) -> object:
        if i == 1:
            raise RuntimeError("accelerator fell off the bus")
        return one_face()

    owning = FaceMasker(Scripted(script), TrackerConfig(), MaskConfig(color=COLOR), 200.0, in_place=True)
    raw = frame(0)
    out = owning.process(raw)
    assert out is not None and out.image is raw.image and face_masked(raw.image)
    failed_raw = frame(1)
    failed = owning.process(failed_raw)
    assert failed is not None and failed.fail_closed and failed.image is not failed_raw.image
    assert fully_masked(failed.image)
    owning.close()


class Timed(Scripted):
    """A `TimedDetector`: the masker waits on `detect_within` itself, with no detector-thread hop."""

    def __init__(self, script: Callable[[int], object]) -> None:
        super().__init__(script)
        self.timeouts: list[float] = []

    def detect_within(self, image: Image, timeout: float) -> Detections:
        self.timeouts.append(timeout)
        return self.detect(image)


def test_a_timed_detector_is_waited_on_directly_and_fails_closed_the_same_way() -> None:
    from edge_mask.detect import DeadlineMissed, DetectorBusy, TimedDetector, TooManyFaces

    failures: dict[int, BaseException] = {
        1: DeadlineMissed("no detections in time"), 2: DetectorBusy("every worker hangs"),
        3: RuntimeError("worker crashed"), 4: TooManyFaces(301, 300),
        5: TimeoutError("the detector's own timeout"),  # not the masker's deadline: a detector error
    }

    def script(i: int) -> object:
        if i in failures:
            raise failures[i]
        return one_face()

    detector = Timed(script)
    assert isinstance(detector, TimedDetector) and not isinstance(Scripted(script), TimedDetector)
    def detector_threads() -> int:
        return sum(t.name == "edge-mask-detector" for t in threading.enumerate())

    before = detector_threads()
    m = FaceMasker(detector, TrackerConfig(), MaskConfig(color=COLOR), 150.0)
    assert detector_threads() == before, "no idle detector thread beside the detector's own workers"
    outs = [m.process(frame(i)) for i in range(7)]
    assert outs[0] is not None and face_masked(outs[0].image) and not outs[0].fail_closed
    assert all(o is not None and o.fail_closed and fully_masked(o.image) for o in outs[1:6])
    assert outs[6] is not None and not outs[6].fail_closed and face_masked(outs[6].image)
    stats = m.stats()
    assert {r: stats[f"fail_closed_{r}"] for r in ("detector_timeout", "detector_busy", "detector_error",
                                                    "too_many_faces")} == {
        "detector_timeout": 1, "detector_busy": 1, "detector_error": 2, "too_many_faces": 1}
    assert detector.timeouts == [0.15] * 7, "every frame waits at most the masker's deadline"
    m.close()


def test_a_style_failing_half_way_never_leaves_a_partly_painted_frame_in_place() -> None:
    """In place, a mask error after the first face leaves the raw frame half painted; what comes back is a
    new, fully masked image, counted as a mask error."""
    two = np.array([[10, 10, 50, 60], [90, 40, 130, 90]], np.float32)
    m = FaceMasker(Scripted(lambda i: Detections(two, np.array([0.9, 0.9], np.float32),
                                                 np.zeros((2, 5, 2), np.float32))),
                   TrackerConfig(), MaskConfig(color=COLOR), 200.0, in_place=True)
    painted: list[int] = []
    style = m._painter._style
    real_paint = style.paint

    def paint_once(image: Image, *args: object, **kwargs: object) -> None:
        if painted:
            raise RuntimeError("a bug in the second face's style")
        painted.append(1)
        real_paint(image, *args, **kwargs)  # type: ignore[arg-type]

    style.paint = paint_once  # type: ignore[method-assign]
    raw = frame(0)
    out = m.process(raw)
    assert painted == [1], "the first face was painted on the raw frame before the failure"
    assert out is not None and out.fail_closed and out.image is not raw.image and fully_masked(out.image)
    assert m.stats()["fail_closed_mask_error"] == 1
    m.close()


def test_detector_error_masks_the_whole_frame() -> None:
    def script(i: int) -> object:
        if i == 1:
            raise RuntimeError("accelerator fell off the bus")
        return one_face()

    m = masker(script)
    outs = [m.process(frame(i)) for i in range(3)]
    assert outs[1] is not None and outs[1].fail_closed and fully_masked(outs[1].image)
    assert outs[2] is not None and not outs[2].fail_closed and face_masked(outs[2].image)
    assert m.stats()["fail_closed_detector_error"] == 1
    m.close()


def test_wrong_result_type_is_a_detector_error() -> None:
    m = masker(lambda i: [(60, 40, 100, 90)])
    out = m.process(frame(0))
    assert out is not None and out.fail_closed and fully_masked(out.image)
    assert m.stats()["fail_closed_detector_error"] == 1
    m.close()


def test_stall_past_deadline_then_busy_then_recovers() -> None:
    release = threading.Event()

    def script(i: int) -> object:
        if i == 0:
            release.wait(5)  # a hang inside native code
        return one_face()

    m = masker(script, deadline_ms=50)
    first = m.process(frame(0))
    assert first is not None and first.fail_closed and fully_masked(first.image)
    second = m.process(frame(1))  # the detector is still stuck in frame 0's call
    assert second is not None and second.fail_closed and fully_masked(second.image)
    stats = m.stats()
    assert stats["fail_closed_detector_timeout"] == 1 and stats["fail_closed_detector_busy"] == 1
    release.set()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        out = m.process(frame(2))
        assert out is not None
        if not out.fail_closed:
            break
        time.sleep(0.01)
    assert not out.fail_closed and face_masked(out.image)
    m.close()


def test_drop_policy_returns_none_and_counts() -> None:
    def script(i: int) -> object:
        raise ValueError("bad tensor")

    m = masker(script, on_failure="drop")
    assert m.process(frame(0)) is None
    stats = m.stats()
    assert stats["dropped"] == 1 and stats["fail_closed"] == 1 and stats["frames"] == 1
    m.close()


def test_a_bug_in_masking_fails_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    m = masker(lambda i: one_face())

    def broken(*args: object, **kwargs: object) -> None:
        raise IndexError("painter bug")

    monkeypatch.setattr(m._painter, "paint", broken)
    out = m.process(frame(0))
    assert out is not None and out.fail_closed and fully_masked(out.image)
    assert m.stats()["fail_closed_mask_error"] == 1
    m.close()


def test_fault_injection_yields_no_unmasked_frame() -> None:
    """10% of calls raise, 5% stall past the deadline: every output frame masks the face or everything."""
    rng = np.random.default_rng(42)
    plan = rng.random(200)

    def script(i: int) -> object:
        if i < len(plan) and plan[i] < 0.10:
            raise RuntimeError("injected")
        if i < len(plan) and plan[i] < 0.15:
            time.sleep(0.06)
        return one_face()

    m = masker(script, deadline_ms=30)
    outs = [m.process(frame(i)) for i in range(200)]
    assert all(o is not None for o in outs)
    failed = [o for o in outs if o is not None and o.fail_closed]
    assert all(fully_masked(o.image) for o in failed)
    assert all(face_masked(o.image) for o in outs if o is not None)
    stats = m.stats()
    assert stats["fail_closed"] == len(failed) >= int((plan < 0.15).sum()) - 5
    assert stats["fail_closed_detector_error"] >= 1 and stats["fail_closed_detector_timeout"] >= 1
    m.close()


def test_reconfigure_keeps_held_faces() -> None:
    m = masker(lambda i: one_face() if i == 0 else Detections.empty())
    m.process(frame(0))
    m.reconfigure(mask=MaskConfig(color=COLOR, style="solid", shape="rect"), tracker=TrackerConfig(hold_s=2.0))
    out = m.process(frame(1))
    assert out is not None and face_masked(out.image) and m.mask_cfg.shape == "rect"
    m.close()


def test_warm_up_and_reset() -> None:
    m = masker(lambda i: one_face() if i < 2 else Detections.empty())
    m.warm_up(W, H)
    m.process(frame(0))
    m.reset()
    out = m.process(frame(1))  # the warm-up used call 0; call 2 is empty and the track was forgotten
    assert out is not None and out.faces == 0
    m.close()


def test_a_masker_that_cannot_be_built_closes_the_detector_it_was_given(tmp_path: object) -> None:
    """`face_masker_around` owns its detector (the batch run's workers, the live detector): when the clinical
    reader cannot be built (its models are not in the cache), the detector is closed and the error names
    what to do."""
    from pathlib import Path

    from edge_mask.config import ClinicalConfig, MaskerConfig, ModelsConfig
    from edge_mask.core.errors import UserError
    from edge_mask.mask import face_masker_around

    detector = Scripted(lambda _: one_face())
    cfg = MaskerConfig(models=ModelsConfig(cache_dir=Path(str(tmp_path))), clinical=ClinicalConfig(signals="standard"))
    with pytest.raises(UserError, match="landmark"):
        face_masker_around(detector, cfg)
    assert detector.closed
    built = face_masker_around(Scripted(lambda _: one_face()), MaskerConfig())
    assert built.clinical is None
    built.close()
