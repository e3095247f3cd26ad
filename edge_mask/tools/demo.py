"""`edge-mask demo`: the whole system on one machine, from nothing, in one command.

Why it exists: a clinic's IT person should see masking, sealing, upload and decryption work end to end
before touching any real camera. The demo provisions a throw-away CA, recipient and device (the same
functions as `edge-mask provision`), starts a TLS broker with client certificates (Mosquitto when it is
installed, else the embedded pure-Python broker), runs the real device service on a clip played as a
camera, runs the real receiver, and then counts:

  captured      frames read from the source
  masked_faces  faces masked in those frames (summed over frames)
  spooled       frames sealed and written to the device's crash-safe spool
  dropped       frames the device dropped before the spool (0 here: the clip is not paced in real time,
                so the camera waits for the masker instead of skipping frames)
  delivered     distinct frames that reached the receiver complete (stored + rejected)
  verified      delivered frames whose Ed25519 signature and enrollment checked out
  decrypted     verified frames whose HPKE seal opened and whose JPEG decodes from the receiver's disk
  lost          frames that were spooled but never delivered (must be 0)
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_mask.capture import Camera, MediaError, VideoReader, create_camera
from edge_mask.config import (
    EdgeConfig,
    ModelsConfig,
    OpenCVCameraConfig,
    ReceiverConfig,
    SyntheticCameraConfig,
    load_config,
)
from edge_mask.core.errors import CameraError, UserError
from edge_mask.core.types import Image
from edge_mask.provision import enroll as provision
from edge_mask.tools.broker import Mosquitto, MosquittoError, free_port

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"
DEFAULT_CLIP = SHARED / "data" / "video" / "short_hamilton_clip.mp4"
DEVICE_ID = "demo-cam-01"
CLINICAL_CLIP = SHARED / "data" / "video" / "asl" / "again.mkv"
"""`--clinical` plays a frontal face (a signer) by default: the clinical view reads eyes and pose."""
DEFAULT_LIVE_FRAMES = 150
Say = Callable[[str], None]


@dataclass(frozen=True)
class Source:
    camera: OpenCVCameraConfig | SyntheticCameraConfig
    description: str
    fps: float


class LimitedCamera:
    """Ends a source after `limit` frames (`--frames N`), counting across re-opens by the capture loop."""

    def __init__(self, factory: Callable[[], Camera], limit: int | None, counter: list[int]) -> None:
        self._inner = factory()
        self.name = self._inner.name
        self._limit, self._count = limit, counter

    def open(self) -> None:
        self._inner.open()

    def read(self) -> Image | None:
        if self._limit is not None and self._count[0] >= self._limit:
            return None
        image = self._inner.read()
        if image is not None:
            self._count[0] += 1
        return image

    def close(self) -> None:
        self._inner.close()


def choose_source(source: str | None, frames: int | None, say: Say) -> Source:
    """`--source` as given; else the shared clip; else camera 0 if it delivers a frame; else a synthetic pattern."""

    if source is not None:
        if source.isdigit():
            return Source(OpenCVCameraConfig(source=source), f"camera {source}", 30.0)
        path = Path(source).expanduser()
        if not path.is_file():
            raise UserError(f"--source {source}: no such video file; give a video path or a camera index like 0")
        return Source(OpenCVCameraConfig(source=str(path.resolve()), realtime=False), f"video {path}",
                      _video_fps(path))
    if DEFAULT_CLIP.is_file():
        say(f"source: the shared clip {DEFAULT_CLIP} played as a camera")
        return Source(OpenCVCameraConfig(source=str(DEFAULT_CLIP), realtime=False), f"video {DEFAULT_CLIP}",
                      _video_fps(DEFAULT_CLIP))
    if _camera_zero_works():
        say("source: camera 0 (the shared clip is not present)")
        return Source(OpenCVCameraConfig(source="0"), "camera 0", 30.0)
    say("source: a synthetic test pattern WITHOUT faces (no shared clip, no camera 0); expect masked_faces = 0")
    return Source(SyntheticCameraConfig(frames=frames or DEFAULT_LIVE_FRAMES, realtime=False), "synthetic", 30.0)


def _camera_zero_works() -> bool:
    """Whether camera 0 delivers a frame, probed with the camera backend the demo would then run it with
    (a camera is not a file, so not through the file reader)."""
    import sys

    if sys.platform.startswith("linux") and not Path("/dev/video0").exists():
        return False  # do not let OpenCV probe (and log errors about) a camera that is not there
    camera = create_camera(OpenCVCameraConfig(source="0"))
    try:
        camera.open()
        return camera.read() is not None
    except (CameraError, OSError):
        return False
    finally:
        camera.close()


def _video_fps(path: Path) -> float:
    """The clip's frame rate from its container (through the one file reader); 30 when implausible or unreadable."""
    try:
        with VideoReader(path, default_fps=30.0) as reader:
            fps = reader.info.fps
    except MediaError:
        return 30.0
    return fps if 1.0 <= fps <= 240.0 else 30.0


# ---------------------------------------------------------------------------------------------- model


def ensure_model(models: ModelsConfig, say: Say) -> str:
    """The detector precision to run: int8 when the cache has a passing one (building it from the shared
    mirror and photos when missing), else fp32 (fetched from the mirror when missing)."""
    from edge_mask.detect.models import cache_path, check_cached, fetch, load_manifest
    from edge_mask.provision.download import read_url

    manifest = load_manifest()
    mirrors = [SHARED / "models"] if (SHARED / "models").is_dir() else []
    int8 = manifest.get("yunet-int8")
    if check_cached(int8, models, manifest)[0]:
        return "auto"
    for model_id in ("yunet-fp32", "yunet-fp32-dynamic"):
        entry = manifest.get(model_id)
        if not check_cached(entry, models, manifest)[0]:
            say(f"model: fetching {model_id} into {models.cache_dir} (sha256-verified)")
            fetch(entry, models, manifest, extra_sources=mirrors, opener=None if mirrors else read_url)
    # the same split as the project's own model build: calibrate on identity photos, check parity on
    # other photos and video frames
    calib = [p for p in (SHARED / "data" / "identities", SHARED / "data" / "video") if p.is_dir()]
    parity = [p for p in (SHARED / "data" / "faces-dlib", SHARED / "data" / "video") if p.is_dir()]
    if not calib or not parity:
        say("model: no calibration photos for int8 (../shared absent); running the fp32 model")
        return "fp32"
    from edge_mask.tools.quantize import quantize_model

    say(f"model: building the int8 model from {manifest.get('yunet-fp32-dynamic').file} (about a minute, once)")
    src = cache_path(manifest.get("yunet-fp32-dynamic"), models)
    report = quantize_model(src, cache_path(int8, models), calibration=calib, parity=parity,
                            progress=lambda m: log.info("%s", m))
    if not report.get("passed"):
        say("model: the int8 model failed its parity check; running the fp32 model")
        return "fp32"
    head = report["parity"]
    say(f"model: the int8 model passed its parity gate at threshold {head['threshold']} (recall {head['recall']:.3f}, "
        f"precision {head['precision']:.3f} against fp32); precision 'auto' times both and runs the faster "
        "(the detector's log line says which)")
    return "auto"


# --------------------------------------------------------------------------------------------- broker


@contextmanager
def running_broker(root: Path, ca_dir: Path, port: int, kind: str, say: Say) -> Iterator[str]:
    """Mosquitto (rendered by `provision broker`) when installed, else the embedded broker. Yields its name."""
    mosquitto = provision.mosquitto_path() if kind in ("auto", "mosquitto") else None
    if kind == "mosquitto" and mosquitto is None:
        raise UserError("--broker mosquitto: mosquitto is not installed (apt install mosquitto) ; use --broker auto")
    bundle = provision.provision_broker(ca_dir, "localhost", root / "broker", port=port, bind_address="127.0.0.1",
                                        run_as=provision.current_user() if mosquitto else None)
    files = bundle.files
    if mosquitto is not None:
        try:
            broker = Mosquitto(files["mosquitto config"], port, exe=mosquitto)
            broker.start()
        except MosquittoError as exc:
            first, _, rest = exc.message.partition("\n")
            raise UserError(f"{first}; try --broker embedded\n{rest}") from exc
        with broker:
            say(f"broker: Mosquitto on 127.0.0.1:{port} (TLS, client certificates, per-device ACL)")
            yield "mosquitto"
        return
    from edge_mask.tools.minibroker import MiniBroker

    with MiniBroker(cafile=files["ca certificate"], certfile=files["broker certificate"],
                    keyfile=files["broker key"], port=port, readers=(provision.RECEIVER_NAME,)):
        say(f"broker: embedded pure-Python broker on 127.0.0.1:{port} (TLS, client certificates, per-device ACL)")
        yield "embedded"


# ------------------------------------------------------------------------------------------------ run


def run_demo(
    frames: int | None = None,
    source: str | None = None,
    out: Path | None = None,
    broker: str = "auto",
    say: Say = lambda message: log.info("%s", message),
    clinical: bool = False,
) -> dict[str, Any]:
    """Provision, start broker + receiver + device service, run the source, and return the summary. With
    `clinical`, the device reads clinical signals and masks in the clinical style, and the summary adds the
    stream's signals plot."""
    from edge_mask.receiver.receiver import Receiver
    from edge_mask.service.live import Service

    if frames is not None and frames <= 0:
        raise UserError("--frames must be a positive number of frames")
    root = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="edge-mask-demo-"))
    if root.exists() and any(root.iterdir()):
        raise UserError(f"--out {root}: directory is not empty; give a new or empty directory")
    root.mkdir(parents=True, exist_ok=True)
    root = root.resolve()
    if clinical and source is None and CLINICAL_CLIP.is_file():
        source = str(CLINICAL_CLIP)
    src = choose_source(source, frames, say)
    port = free_port()

    say(f"provisioning a throw-away CA, recipient, receiver and device {DEVICE_ID} in {root}")
    provision.provision_ca(root / "ca", name="edge-mask demo CA (throw-away)", days=2)
    provision.provision_recipient(root / "cloud", ca_dir=root / "ca", broker_host="127.0.0.1", broker_port=port)
    provision.provision_device(DEVICE_ID, root / "ca", root / "cloud" / provision.RECIPIENT_PUB,
                               out_dir=root / "device", broker_host="127.0.0.1", broker_port=port,
                               devices_dir=root / "cloud" / provision.DEVICES_DIR)
    device_cfg = load_config(root / "device" / "config.toml", EdgeConfig)
    precision = ensure_model(device_cfg.models, say)
    device_cfg = device_cfg.model_copy(update={
        "camera": src.camera,
        "detector": device_cfg.detector.model_copy(update={"precision": precision}),
    })
    if clinical:
        from edge_mask.tools.landmark_models import ensure_landmark_models

        ensure_landmark_models(device_cfg.models, announce=lambda message: say(f"model: {message}"))
        device_cfg = device_cfg.model_copy(update={
            "clinical": device_cfg.clinical.model_copy(update={"signals": "standard"}),
            "mask": device_cfg.mask.model_copy(update={"style": "clinical"}),
        })
    receiver_cfg = load_config(root / "cloud" / "receiver.toml", ReceiverConfig)
    receiver_cfg = receiver_cfg.model_copy(update={"mp4_fps": src.fps})
    counter = [0]
    with running_broker(root, root / "ca", port, broker, say) as broker_kind:
        receiver = Receiver(receiver_cfg, retry_max_s=2.0)
        stop = threading.Event()
        thread = threading.Thread(target=receiver.run, args=(stop,), name="demo-receiver", daemon=True)
        thread.start()
        try:
            if not receiver.connected.wait(30):
                raise UserError("the receiver could not subscribe at the demo broker within 30 s; see the log")
            say(f"device: masking {src.description}" + (f" (first {frames} frames)" if frames else ""))
            service = Service(device_cfg, camera_factory=lambda: LimitedCamera(
                lambda: create_camera(device_cfg.camera), frames, counter))
            service.run()
            stats = service.stats()
            _wait_delivered(receiver, int(stats.get("frames_spooled", 0)), timeout=60.0)
        finally:
            stop.set()
            thread.join(timeout=15)
    summary = _summary(root, receiver_cfg, stats, receiver.summary(), broker_kind, src.description)
    summary["detector"] = _detector_line(device_cfg, precision, stats)
    if clinical:
        from edge_mask.receiver import draw_signals

        streams = sorted(receiver_cfg.output_dir.glob(f"{DEVICE_ID}/*/signals.csv"))
        summary["signals_plot"] = str(draw_signals(streams[0].parent, root / "signals.png")) if streams else None
    return summary


def _detector_line(cfg: EdgeConfig, precision: str, stats: dict[str, Any]) -> str:
    """Which model masked the demo's frames, and why (the line `edge-mask doctor` prints for `auto`)."""
    from edge_mask.config import OnnxDetectorConfig
    from edge_mask.detect import parity_summary

    model = str(stats.get("detector_model") or "?")
    if precision != "auto" or not isinstance(cfg.detector, OnnxDetectorConfig):
        return f"{model} (no int8 model passed its parity gate here; see the 'model:' lines above)"
    return f"{model} (precision auto: {parity_summary(cfg.detector, cfg.models)})"


def _wait_delivered(receiver: Any, expected: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        summary = receiver.summary()
        if summary["stored"] + summary["rejected_total"] >= expected:
            return
        time.sleep(0.1)
    log.warning("demo: the receiver did not get every spooled frame within %.0f s", timeout)


def _summary(root: Path, cfg: ReceiverConfig, stats: dict[str, Any], received: dict[str, Any],
             broker_kind: str, source: str) -> dict[str, Any]:
    from edge_mask.tools.demo_report import count_decodable, find_outputs, write_contact_sheet

    stored = int(received["stored"])
    rejected = int(received["rejected_total"])
    frames_dir, videos, images = find_outputs(cfg.output_dir)
    decrypted = count_decodable(images)
    spooled = int(stats.get("frames_spooled", 0))
    delivered = stored + rejected
    sheet = write_contact_sheet(images, root / "contact_sheet.png")
    return {
        "captured": int(stats.get("frames_captured", 0)),
        "masked_faces": int(stats.get("faces_masked", 0)),
        "fail_closed": int(stats.get("fail_closed", 0)),
        "spooled": spooled,
        "dropped": int(stats.get("dropped_total", 0)),
        "delivered": delivered,
        "verified": stored,
        "decrypted": decrypted,
        "rejected": rejected,
        "duplicates": int(received["duplicates"]),
        "gaps": int(received["gaps_total"]),
        "lost": max(spooled - delivered, 0) + int(received["gaps_total"]),
        "spool_pending": int(stats.get("spool_pending", 0) or 0),
        "broker": broker_kind,
        "source": source,
        "output_dir": str(root),
        "frames_dir": str(frames_dir) if frames_dir else None,
        "video": str(videos[0]) if videos else None,
        "contact_sheet": str(sheet) if sheet else None,
    }
