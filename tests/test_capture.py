"""Capture backends and the resilient capture loop.

The OpenCV backend is tested on the real clip from ../shared; picamera2 against a fake module injected
into sys.modules that implements exactly the methods the backend uses (plus faulty variants that raise
"frontend has timed out" or stall silently, as reported by Raspberry Pi users).
"""

from __future__ import annotations

import sys
import threading
import types
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from edge_mask.capture import CAMERAS, CaptureLoop, create_camera, open_camera
from edge_mask.capture import opencv as opencv_backend
from edge_mask.capture.opencv import has_gstreamer, source_kind
from edge_mask.config import OpenCVCameraConfig, Picamera2CameraConfig, SyntheticCameraConfig
from edge_mask.core.backoff import Backoff
from edge_mask.core.errors import CameraError
from edge_mask.core.types import RawFrame


@pytest.fixture
def clip(shared_data: Path) -> Path:
    return shared_data / "video" / "short_hamilton_clip.mp4"


def collect(loop_frames: list[RawFrame], count: int, done: threading.Event) -> Any:
    def sink(frame: RawFrame) -> None:
        loop_frames.append(frame)
        if len(loop_frames) >= count:
            done.set()

    return sink


# ------------------------------------------------------------------------------------------------ opencv


def test_source_kinds_and_gstreamer_detection() -> None:
    assert source_kind("0") == "device"
    assert source_kind("/dev/video2") == "device"
    assert source_kind("rtsp://user:pw@10.0.0.5/stream1") == "url"
    assert source_kind("nvarguscamerasrc ! video/x-raw(memory:NVMM) ! nvvidconv ! appsink") == "gstreamer"
    assert source_kind("clips/room.mp4") == "file"
    assert has_gstreamer("  Video I/O:\n    GStreamer:                   YES (1.20.3)\n")
    assert not has_gstreamer("    GStreamer:                   NO\n")
    assert CAMERAS.names() == ["opencv", "picamera2", "synthetic"]


def test_gstreamer_pipeline_without_gstreamer_build_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    import cv2

    monkeypatch.setattr(cv2, "getBuildInformation", lambda: "Video I/O:\n    GStreamer:   NO\n")
    with pytest.raises(CameraError, match=r"no GStreamer support.*python3-opencv"):
        open_camera(OpenCVCameraConfig(source="nvarguscamerasrc ! nvvidconv ! appsink"))


def test_missing_file_and_device_name_the_fix(tmp_path: Path) -> None:
    with pytest.raises(CameraError, match="no such video file"):
        open_camera(OpenCVCameraConfig(source=str(tmp_path / "nope.mp4")))
    with pytest.raises(CameraError, match=r"does not exist.*v4l2-ctl"):
        open_camera(OpenCVCameraConfig(source="/dev/video97"))


def test_file_plays_at_its_own_rate_without_bursting(clip: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fake clock shows the pacing: 30 frames of a 30 fps clip take one second of sleeping."""
    clock = {"now": 1000.0}
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock["now"] += seconds

    fake_time = types.SimpleNamespace(monotonic=lambda: clock["now"], sleep=sleep, time=lambda: clock["now"])
    monkeypatch.setattr(opencv_backend, "time", fake_time)
    camera = open_camera(OpenCVCameraConfig(source=str(clip)))
    try:
        assert camera.fps == pytest.approx(30.0, abs=0.1)  # type: ignore[attr-defined]
        for _ in range(31):
            image = camera.read()
            assert image is not None and image.shape == (360, 640, 3)
        assert sum(slept) == pytest.approx(30 / 30.0, rel=0.01)
        # A consumer that was away for 2 s does not get a burst of old frames: the next read waits again.
        clock["now"] += 2.0
        slept.clear()
        camera.read()
        camera.read()
        assert sum(slept) == pytest.approx(1 / 30.0, rel=0.01)
    finally:
        camera.close()


def test_file_loops_or_ends_and_can_be_resized(clip: Path) -> None:
    camera = open_camera(OpenCVCameraConfig(source=str(clip), realtime=False, loop=True, width=320, height=240))
    try:
        shapes = {camera.read().shape for _ in range(280)}  # type: ignore[union-attr]  # clip has 275 frames
        assert shapes == {(240, 320, 3)}
    finally:
        camera.close()
    camera = open_camera(OpenCVCameraConfig(source=str(clip), realtime=False))
    frames = 0
    while camera.read() is not None:
        frames += 1
    camera.close()
    assert frames == 275
    camera.close()  # closing twice is safe


def test_capture_loop_numbers_frames_and_ends_with_the_file(clip: Path) -> None:
    frames: list[RawFrame] = []
    states: list[str] = []
    loop = CaptureLoop(
        lambda: create_camera(OpenCVCameraConfig(source=str(clip), realtime=False)),
        frames.append,
        read_timeout_s=5,
        retry_min_s=0.1,
        retry_max_s=1,
        on_state=lambda state, detail: states.append(state),
    )
    loop.start()
    try:
        for _ in range(200):
            if loop.ended:
                break
            threading.Event().wait(0.05)
    finally:
        loop.stop()
    assert [f.seq for f in frames] == list(range(275))
    assert all(isinstance(f, RawFrame) and f.captured_at > 1.6e9 for f in frames)
    assert states[:2] == ["running", "ended"]
    assert loop.health()["frames"] == 275 and loop.health()["errors"] == 0


# --------------------------------------------------------------------------------------------- picamera2


class FakeRequest:
    def __init__(self, camera: FakePicamera2, index: int) -> None:
        self.camera, self.index = camera, index

    def make_array(self, name: str) -> np.ndarray:
        assert name == "main"
        w, h = self.camera.configured["main"]["size"]
        image = np.zeros((h, w, 3), np.uint8)
        image[:, :, 0] = 200  # RGB888 is BGR in numpy: channel 0 is blue
        image[0, 0, 2] = self.index % 256
        return image

    def release(self) -> None:
        self.camera.released += 1


class FakePicamera2:
    """Implements exactly the methods edge_mask's backend uses; `mode` injects field faults."""

    instances: ClassVar[list[FakePicamera2]] = []
    mode = "ok"  # "ok", "timeout" (raises after 5 frames, first camera only), "stall" (first camera only)
    unblock = threading.Event()

    def __init__(self, camera_num: int) -> None:
        if camera_num > 0:
            raise IndexError("list index out of range")
        self.configured: dict[str, Any] = {}
        self.calls: list[str] = []
        self.started = False
        self.released = 0
        self.captured = 0
        FakePicamera2.instances.append(self)

    def create_video_configuration(self, main: dict[str, Any], controls: dict[str, Any], buffer_count: int) -> Any:
        self.calls.append("create_video_configuration")
        return {"main": dict(main), "controls": dict(controls), "buffer_count": buffer_count}

    def configure(self, config: dict[str, Any]) -> None:
        self.calls.append("configure")
        self.configured = config

    def start(self) -> None:
        self.calls.append("start")
        self.started = True

    def capture_request(self) -> FakeRequest:
        assert self.started, "capture before start"
        first = FakePicamera2.instances[0] is self
        if first and self.captured >= 5 and FakePicamera2.mode == "timeout":
            raise RuntimeError("Camera frontend has timed out!")
        if first and self.captured >= 5 and FakePicamera2.mode == "stall":
            FakePicamera2.unblock.wait(30)  # a silent stall: the call just does not return
        self.captured += 1
        threading.Event().wait(0.005)
        return FakeRequest(self, self.captured)

    def stop(self) -> None:
        self.calls.append("stop")
        self.started = False

    def close(self) -> None:
        self.calls.append("close")


@pytest.fixture
def fake_picamera2(monkeypatch: pytest.MonkeyPatch) -> Any:
    module = types.ModuleType("picamera2")
    module.Picamera2 = FakePicamera2  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "picamera2", module)
    FakePicamera2.instances = []
    FakePicamera2.mode = "ok"
    FakePicamera2.unblock = threading.Event()
    yield FakePicamera2
    FakePicamera2.unblock.set()


def test_picamera2_uses_the_documented_api(fake_picamera2: Any) -> None:
    cfg = Picamera2CameraConfig(width=320, height=240, fps=25, buffer_count=3)
    camera = open_camera(cfg)
    image = camera.read()
    camera.read()
    camera.close()
    fake = fake_picamera2.instances[0]
    assert fake.configured == {
        "main": {"size": (320, 240), "format": "RGB888"},
        "controls": {"FrameRate": 25.0},
        "buffer_count": 3,
    }
    assert fake.calls == ["create_video_configuration", "configure", "start", "stop", "close"]
    assert fake.released == 2  # every request goes back to libcamera
    assert image is not None and image.shape == (240, 320, 3) and image[5, 5, 0] == 200  # BGR kept as is


def test_picamera2_missing_module_or_camera_explains_the_fix(
    monkeypatch: pytest.MonkeyPatch, fake_picamera2: Any
) -> None:
    with pytest.raises(CameraError, match=r"camera_num = 1.*rpicam-hello"):
        open_camera(Picamera2CameraConfig(camera_num=1))
    monkeypatch.setitem(sys.modules, "picamera2", None)  # makes `import picamera2` raise ImportError
    with pytest.raises(CameraError, match=r"sudo apt install python3-picamera2.*--system-site-packages"):
        create_camera(Picamera2CameraConfig())


@pytest.mark.parametrize("mode", ["timeout", "stall"])
def test_camera_fault_is_detected_reported_and_recovered(fake_picamera2: Any, mode: str) -> None:
    """'frontend has timed out' (an exception) and a silent stall (a call that never returns) both lead to
    a reported fault, a reopen with backoff, and frames again with sequence numbers that keep counting."""
    fake_picamera2.mode = mode
    frames: list[RawFrame] = []
    states: list[tuple[str, str | None]] = []
    done = threading.Event()
    loop = CaptureLoop(
        lambda: create_camera(Picamera2CameraConfig(width=64, height=48)),
        collect(frames, 20, done),
        read_timeout_s=0.5,
        retry_min_s=0.05,
        retry_max_s=0.2,
        on_state=lambda state, detail: states.append((state, detail)),
    )
    loop.start()
    try:
        assert done.wait(30), f"no recovery: {loop.health()}"
    finally:
        loop.stop()
    health = loop.health()
    expected = "stalled" if mode == "stall" else "retrying"
    assert [s for s, _ in states][:3] == ["running", expected, "running"]
    assert health["errors"] >= 1 and health["reconnects"] >= 1
    assert health["stalls"] == (1 if mode == "stall" else 0)
    if mode == "timeout":
        assert "frontend has timed out" in (health["last_error"] or "")
    assert [f.seq for f in frames[:20]] == list(range(20))
    first = fake_picamera2.instances[0]
    assert "stop" in first.calls and "close" in first.calls  # the broken camera was released


def test_unplugged_camera_backs_off_exponentially_without_spinning() -> None:
    """A camera that cannot be opened is retried with growing, capped delays (waits, not a busy loop)."""
    delays: list[float] = []
    stop = threading.Event()

    def wait(event: threading.Event, delay: float) -> bool:
        delays.append(delay)
        if len(delays) >= 8:
            stop.set()
            return True
        return False

    def unplugged() -> Any:
        raise CameraError("/dev/video0 does not exist")

    loop = CaptureLoop(unplugged, lambda f: None, read_timeout_s=1, retry_min_s=0.5, retry_max_s=8, wait=wait)
    loop.start()
    assert stop.wait(10)
    loop.stop()
    assert all(0.4 <= d <= 8 for d in delays)
    assert delays[3] > delays[0] * 4 and max(delays) <= 8
    assert loop.health()["errors"] == 8 and "does not exist" in loop.health()["last_error"]


def test_backoff_resets_and_caps() -> None:
    backoff = Backoff(1, 4)
    values = [backoff.next() for _ in range(5)]
    assert values[0] <= 1 and 3.2 <= values[-1] <= 4
    backoff.reset()
    assert backoff.next() <= 1


def test_synthetic_camera_moves_and_ends() -> None:
    camera = open_camera(SyntheticCameraConfig(width=96, height=64, frames=3, realtime=False))
    a, b, c = camera.read(), camera.read(), camera.read()
    assert a is not None and b is not None and c is not None
    assert a.shape == (64, 96, 3) and not np.array_equal(a, b)
    assert camera.read() is None
