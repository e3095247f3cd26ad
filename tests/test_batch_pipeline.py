"""The pipelined batch video path (service/batch_video.py): same pixels as one frame at a time, and every
stage's failure fails closed or is raised in the caller, with no thread or raw frame left behind.

Real clip frames and real onnxruntime inference; the failing detectors wrap the real one and fail on one
chosen frame (matched by its pixels, since workers take frames in any order).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_mask.capture import MediaError, VideoReader
from edge_mask.cli import _command_in
from edge_mask.config import MaskerConfig, ModelsConfig, OnnxDetectorConfig, validate_config
from edge_mask.core.types import Detections, Image, MaskedFrame, RawFrame
from edge_mask.detect import Detector, create_detector
from edge_mask.mask import FaceMasker, Masker, build_masker
from edge_mask.service import build_batch_masker
from edge_mask.service.batch_video import mask_video
from edge_mask.service.lookahead import LookaheadDetector, plan_workers

CLIP = ("video", "asl", "eat.mkv")
BAD_FRAME = 5
BLACK = (0, 0, 0)


def config(models: ModelsConfig, on_failure: str = "mask_frame") -> MaskerConfig:
    cfg = MaskerConfig(models=models, detector=OnnxDetectorConfig(model="yunet-fp32-dynamic", precision="fp32"))
    data = cfg.model_dump()
    data["mask"]["on_failure"] = on_failure
    return validate_config(data, MaskerConfig, source="test")


class ListWriter:
    """Keeps what the encoder thread writes; `fail_at` makes the n-th write raise like a real writer."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.images: list[Image] = []
        self.fail_at = fail_at

    def write(self, image: Image) -> None:
        if self.fail_at is not None and len(self.images) == self.fail_at:
            raise MediaError("out.mp4: frame size changed mid-video (test)")
        self.images.append(image.copy())


class FailingDetector:
    """The real detector, except that it raises on one frame (recognised by its pixels)."""

    def __init__(self, inner: Detector, bad: Image) -> None:
        self.inner = inner
        self.bad = bad

    def detect(self, image: Image) -> Detections:
        if image.shape == self.bad.shape and np.array_equal(image, self.bad):
            raise RuntimeError("onnxruntime failed (test)")
        return self.inner.detect(image)

    def close(self) -> None:
        self.inner.close()


@dataclass
class _Info:
    fps: float


class BrokenReader:
    """Yields real frames, then raises mid-file the way a failing decoder would."""

    def __init__(self, frames: list[Image], fail_after: int) -> None:
        self.frames = frames
        self.fail_after = fail_after
        self.info = _Info(fps=30.0)

    def __iter__(self) -> Iterator[Image]:
        for index, image in enumerate(self.frames):
            if index == self.fail_after:
                raise OSError("input/output error (test)")
            yield image


@pytest.fixture(scope="module")
def clip(shared_data: Path) -> Path:
    return shared_data.joinpath(*CLIP)


@pytest.fixture(scope="module")
def frames(clip: Path) -> list[Image]:
    with VideoReader(clip) as reader:
        return list(reader)


def sequential(masker: Masker, clip: Path) -> list[MaskedFrame]:
    """What batch masking did before the pipeline: one frame at a time, in order, with video time."""
    out: list[MaskedFrame] = []
    with VideoReader(clip) as reader:
        masker.reset()
        masker.warm_up(reader.info.width, reader.info.height)
        for index, image in enumerate(reader):
            stamp = index / reader.info.fps
            masked = masker.process(RawFrame(image, seq=index, captured_at=stamp, monotonic=stamp))
            assert masked is not None
            out.append(masked)
    return out


def pipelined(masker: Masker, lookahead: LookaheadDetector | None, reader: Any,
              writer: ListWriter | None = None) -> tuple[ListWriter, list[MaskedFrame]]:
    writer = writer or ListWriter()
    seen: list[MaskedFrame] = []
    mask_video(Path("clip.mkv"), reader, writer, masker, lookahead, seen.append)  # type: ignore[arg-type]
    return writer, seen


def stage_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name in ("edge-mask-decode", "edge-mask-encode")]


def test_pipeline_writes_the_same_pixels_as_one_frame_at_a_time(model_cache: ModelsConfig, clip: Path) -> None:
    cfg = config(model_cache)
    reference = build_masker(cfg)
    try:
        expected = sequential(reference, clip)
    finally:
        reference.close()
    masker, lookahead = build_batch_masker(cfg)
    assert lookahead is not None and lookahead.workers >= 1
    try:
        with VideoReader(clip) as reader:
            writer, seen = pipelined(masker, lookahead, reader)
    finally:
        masker.close()
    assert len(writer.images) == len(expected) == 47
    for index, (got, want) in enumerate(zip(writer.images, expected, strict=True)):
        assert np.array_equal(got, want.image), f"frame {index} differs from the sequential masker's"
    assert [m.faces for m in seen] == [m.faces for m in expected]
    assert [m.seq for m in seen] == list(range(47)), "frames stay in order"
    assert not any(m.fail_closed for m in seen)
    assert stage_threads() == []


def failing_masker(cfg: MaskerConfig, bad: Image, workers: int = 2) -> tuple[FaceMasker, LookaheadDetector]:
    """The batch masker's shape (FaceMasker around a LookaheadDetector) over detectors failing on `bad`."""
    lookahead = LookaheadDetector([FailingDetector(create_detector(cfg.detector, cfg.models), bad)
                                   for _ in range(workers)])
    return FaceMasker(lookahead, cfg.tracker, cfg.mask, cfg.detector.deadline_ms, in_place=True), lookahead


def test_a_failing_worker_fails_its_frame_closed(model_cache: ModelsConfig, frames: list[Image], clip: Path) -> None:
    cfg = config(model_cache)
    masker, lookahead = failing_masker(cfg, frames[BAD_FRAME])
    try:
        with VideoReader(clip) as reader:
            writer, seen = pipelined(masker, lookahead, reader)
        stats = masker.stats()
    finally:
        masker.close()
    assert len(writer.images) == len(frames)
    assert seen[BAD_FRAME].fail_closed and not any(m.fail_closed for i, m in enumerate(seen) if i != BAD_FRAME)
    assert np.all(writer.images[BAD_FRAME] == np.array(BLACK, np.uint8)), "a failed frame is written fully masked"
    assert stats["fail_closed_detector_error"] == 1


class HangingDetector:
    """The real detector, except that it hangs on one frame until `release` is set."""

    def __init__(self, inner: Detector, bad: Image, release: threading.Event) -> None:
        self.inner = inner
        self.bad = bad
        self.release = release

    def detect(self, image: Image) -> Detections:
        if image.shape == self.bad.shape and np.array_equal(image, self.bad):
            self.release.wait(60)
        return self.inner.detect(image)

    def close(self) -> None:
        self.inner.close()


class ReleasingWriter(ListWriter):
    """Releases the hung detector once the frame it hung on has been written (fully masked by then)."""

    def __init__(self, release: threading.Event, at: int) -> None:
        super().__init__()
        self.release = release
        self.at = at

    def write(self, image: Image) -> None:
        super().write(image)
        if len(self.images) > self.at:
            self.release.set()


def test_a_hung_worker_trips_the_masker_deadline(model_cache: ModelsConfig, frames: list[Image], clip: Path) -> None:
    cfg = config(model_cache)
    cfg = cfg.model_copy(update={"detector": cfg.detector.model_copy(update={"deadline_ms": 2000.0})})
    release = threading.Event()  # whichever worker takes the frame hangs on it
    lookahead = LookaheadDetector([HangingDetector(create_detector(cfg.detector, cfg.models), frames[BAD_FRAME],
                                                   release) for _ in range(2)])
    masker = FaceMasker(lookahead, cfg.tracker, cfg.mask, cfg.detector.deadline_ms, in_place=True)
    writer = ReleasingWriter(release, BAD_FRAME)
    try:
        with VideoReader(clip) as reader:
            _, seen = pipelined(masker, lookahead, reader, writer)
        stats = masker.stats()
    finally:
        release.set()
        masker.close()
    assert len(writer.images) == len(frames)
    assert seen[BAD_FRAME].fail_closed and stats["fail_closed_detector_timeout"] == 1
    assert not any(m.fail_closed for m in seen[:BAD_FRAME]), "frames before the hang are masked normally"
    for masked, image in zip(seen, writer.images, strict=True):
        if masked.fail_closed:  # the hung frame (and any refused while every worker hung)
            assert np.all(image == np.array(BLACK, np.uint8))
    assert not seen[-1].fail_closed, "detection resumes once the worker comes back"


def test_a_dropping_config_stops_the_file_with_one_line(model_cache: ModelsConfig, frames: list[Image],
                                                       clip: Path) -> None:
    masker, lookahead = failing_masker(config(model_cache, on_failure="drop"), frames[BAD_FRAME])
    try:
        with VideoReader(clip) as reader, pytest.raises(MediaError, match=f"frame {BAD_FRAME} failed"):
            pipelined(masker, lookahead, reader)
        assert lookahead.pending == 0, "no raw frame is kept after the error"
    finally:
        masker.close()
    assert stage_threads() == []


def test_a_decode_error_is_raised_after_the_frames_before_it(model_cache: ModelsConfig, frames: list[Image]) -> None:
    masker, lookahead = build_batch_masker(config(model_cache))
    writer = ListWriter()
    try:
        with pytest.raises(OSError, match="input/output error"):
            pipelined(masker, lookahead, BrokenReader(frames, fail_after=12), writer)
        assert lookahead is not None and lookahead.pending == 0
    finally:
        masker.close()
    assert len(writer.images) <= 12
    assert stage_threads() == []


def test_an_encode_error_stops_every_stage(model_cache: ModelsConfig, clip: Path) -> None:
    masker, lookahead = build_batch_masker(config(model_cache))
    try:
        with VideoReader(clip) as reader, pytest.raises(MediaError, match="frame size changed"):
            pipelined(masker, lookahead, reader, ListWriter(fail_at=3))
        assert lookahead is not None and lookahead.pending == 0
    finally:
        masker.close()
    assert stage_threads() == []


def test_lookahead_detects_frames_it_was_not_told_about(model_cache: ModelsConfig, frames: list[Image]) -> None:
    masker, lookahead = build_batch_masker(config(model_cache))
    assert lookahead is not None
    try:
        announced = frames[10]
        lookahead.ahead(announced)
        assert lookahead.pending == 1
        first = lookahead.detect(announced)
        again = lookahead.detect(announced.copy())  # a copy was never announced: detected there and then
        assert lookahead.pending == 0
        assert np.array_equal(first.boxes, again.boxes) and len(first) >= 1
    finally:
        masker.close()


class GatedDetector:
    """A fake worker detector: blocks on the frames whose first pixel is in `gated` until `gate` is set, and
    records the first pixel of every frame it detects (a frame's number)."""

    def __init__(self, gate: threading.Event, gated: set[int]) -> None:
        self.gate, self.gated = gate, gated
        self.seen: list[int] = []
        self.started = threading.Event()
        """Set once a worker is inside a gated frame."""

    def detect(self, image: Image) -> Detections:
        number = int(image[0, 0, 0])
        self.seen.append(number)
        if number in self.gated:
            self.started.set()
            self.gate.wait(10)
        if number == 9:
            raise TimeoutError("the detector's own timeout")
        return Detections.empty()

    def close(self) -> None:
        pass


def numbered(n: int) -> Image:
    return np.full((8, 8, 3), n, np.uint8)


def test_lookahead_deadline_cancels_what_no_worker_started_and_refuses_frames_while_every_worker_hangs() -> None:
    from edge_mask.detect import DeadlineMissed, DetectorBusy

    gate = threading.Event()
    fake = GatedDetector(gate, gated={1})
    lookahead = LookaheadDetector([fake])
    frames = [numbered(n) for n in range(5)]
    try:
        for image in frames[1:3]:
            lookahead.ahead(image)
        assert fake.started.wait(5)
        with pytest.raises(DeadlineMissed):  # frame 1 hangs its (only) worker
            lookahead.detect_within(frames[1], 0.05)
        started = time.monotonic()
        with pytest.raises(DetectorBusy):  # every worker is on an overdue frame: no wait at all
            lookahead.detect_within(frames[2], 5.0)
        for _ in range(50):  # a hang meets frames at decode speed: none is queued or kept
            refused = numbered(4)
            lookahead.ahead(refused)
            with pytest.raises(DetectorBusy):
                lookahead.detect_within(refused, 5.0)
        assert time.monotonic() - started < 1.0
        # only frame 2's job waits in the queue (announced before the hang was seen), cancelled, frame let go
        assert lookahead._jobs.qsize() == 1 and lookahead.pending == 0
        gate.set()
        deadline = time.monotonic() + 5.0
        while True:  # refused until the hung frame has come back, then detected again
            try:
                assert len(lookahead.detect_within(frames[3], 5.0)) == 0
                break
            except DetectorBusy:
                assert time.monotonic() < deadline, "the worker never came back"
                time.sleep(0.01)
        assert fake.seen == [1, 3], "refused frames were cancelled before any worker started them"
        with pytest.raises(TimeoutError) as raised:  # a detector's own TimeoutError is its error, not the deadline
            lookahead.detect_within(numbered(9), 5.0)
        assert not isinstance(raised.value, DeadlineMissed)
    finally:
        gate.set()
        lookahead.close()


def test_a_frame_that_missed_its_deadline_before_a_worker_took_it_is_never_detected() -> None:
    from edge_mask.detect import DeadlineMissed

    gate = threading.Event()
    fake = GatedDetector(gate, gated={1})
    lookahead = LookaheadDetector([fake])
    try:
        one, two = numbered(1), numbered(2)
        lookahead.ahead(one)
        lookahead.ahead(two)
        assert fake.started.wait(5)  # the worker has taken frame 1 and hangs on it; frame 2 waits in the queue
        with pytest.raises(DeadlineMissed):
            lookahead.detect_within(two, 0.05)
        gate.set()
        assert len(lookahead.detect_within(one, 5.0)) == 0
        assert len(lookahead.detect_within(numbered(3), 5.0)) == 0
        assert fake.seen == [1, 3]
    finally:
        gate.set()
        lookahead.close()


def test_workers_take_the_cpus_before_threads() -> None:
    assert plan_workers(cpus=1) == (1, 1)
    assert plan_workers(cpus=2) == (2, 1)
    assert plan_workers(cpus=4) == (4, 1)
    assert plan_workers(cpus=16) == (4, 4)


def test_the_cli_builds_only_the_parser_it_runs() -> None:
    assert _command_in(["mask", "a.mp4", "-o", "out"]) == "mask"
    assert _command_in(["-q", "-vv", "bench", "compare"]) == "bench"
    assert _command_in(["--help"]) is None
    assert _command_in(["--version"]) is None
    assert _command_in(["maskx"]) is None
    assert _command_in([]) is None


def test_the_mask_process_exits_fast_with_everything_written(model_cache: ModelsConfig, clip: Path,
                                                            tmp_path: Path) -> None:
    """`python -m edge_mask mask` ends without interpreter teardown (cli.exit_now): its JSON line still
    reaches a pipe, the exit code is kept, and the output is committed and complete."""
    import json
    import subprocess
    import sys

    toml = tmp_path / "edge.toml"
    toml.write_text(f'[models]\ncache_dir = "{model_cache.cache_dir}"\n'
                    '[detector]\nmodel = "yunet-fp32-dynamic"\nprecision = "fp32"\n')
    done = subprocess.run([sys.executable, "-m", "edge_mask", "-q", "mask", str(clip), str(tmp_path / "gone.mp4"),
                           "-o", str(tmp_path / "out"), "--config", str(toml), "--json"],
                          capture_output=True, text=True, check=False, timeout=120)
    assert done.returncode == 1, done.stderr  # the missing input
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["files"] == 1 and summary["frames"] == 47 and summary["errors"] == 1
    assert "gone.mp4: no such file" in done.stderr
    with VideoReader(tmp_path / "out" / "eat.mp4") as out:
        assert out.count() == 47
    assert not list((tmp_path / "out").glob(".*partial*"))
