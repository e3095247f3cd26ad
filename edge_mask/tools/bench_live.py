"""`edge-mask bench --live`: a clip played as a 30 fps camera through the whole service to a local broker.

Reports what the issue's targets are stated in: latency from capture to the cloud's confirmation (p50/p99,
from the service's own per-frame timing of spool deletions; `uplink_bench.CloudAcker` answers in place of
the receiver, in its own process), from capture through the broker (the header's capture time against the
moment the stand-in cloud received the frame: the device's and the link's part, without the cloud's
batching of answers), the capture -> spooled latency, frames dropped by reason (no drops is the 1280x720
target), and CPU use as process CPU time / wall time over the measured window (100% = one core; Mosquitto
and the stand-in cloud run in their own processes and are not counted).

Why a private plain-TCP Mosquitto on an ephemeral loopback port (`edge_mask.tools.broker.Mosquitto.plain`,
the launcher the demo and the tests use too): the benchmark must be runnable on a bare dev box or device
without certificates, and it measures the device, not TLS to a remote broker. A warm-up (model load,
first frames, broker connect) is excluded from every figure.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from edge_mask.config import BrokerConfig, EdgeConfig, validate_config
from edge_mask.core.errors import UserError
from edge_mask.core.stats import percentile, usable_cpus
from edge_mask.provision.enroll import mosquitto_path
from edge_mask.tools.broker import Mosquitto
from edge_mask.tools.uplink_bench import AckerProcess

log = logging.getLogger(__name__)


def run_live_bench(
    clip: Path,
    *,
    width: int | None = None,
    height: int | None = None,
    fps: float = 30.0,
    seconds: float = 20.0,
    warmup_s: float = 3.0,
    detector: dict[str, Any] | None = None,
    models_dir: Path | None = None,
    sections: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run the service on `clip` (looping, at `fps`) for `seconds` after warm-up; returns the figures."""
    from edge_mask.seal.keys import generate_recipient, generate_signing_key
    from edge_mask.service.live import Service

    if not Path(clip).is_file():
        raise UserError(f"--clip {clip}: no such video file")
    if mosquitto_path() is None:
        raise UserError("bench --live needs a local broker: install mosquitto (apt install mosquitto)")
    with tempfile.TemporaryDirectory(prefix="edge-mask-bench-") as tmp:
        work = Path(tmp)
        _, recipient_pub = generate_recipient(work / "cloud")
        generate_signing_key(work / "device-signing.key")
        with Mosquitto.plain(work) as broker:
            off_device_cores(broker.pid)
            camera: dict[str, Any] = {"type": "opencv", "source": str(clip), "loop": True, "fps": fps}
            if width and height:
                camera.update(width=width, height=height)
            settings: dict[str, Any] = {
                "device_id": "bench",
                "camera": camera,
                "seal": {"recipient_public_key": str(recipient_pub), "signing_key": str(work / "device-signing.key")},
                "spool": {"path": str(work / "spool")},
                "uplink": {"broker": {"host": "127.0.0.1", "port": broker.port}, "stats_interval_s": 3600.0},
                "service": {"stall_s": 30.0},
            }
            if detector:
                settings["detector"] = detector
            settings.update(sections or {})
            if models_dir:
                settings["models"] = {"cache_dir": str(models_dir)}
            cfg = validate_config(settings, EdgeConfig)
            # Frames leave the spool on the cloud's Ack: a stand-in answers as the receiver would, in a
            # process of its own (its CPU is not the device's), and notes when each frame came through the
            # broker (capture -> broker, the part of the latency the device and its link own).
            acker = AckerProcess(BrokerConfig(host="127.0.0.1", port=broker.port, tls=None), "store")
            acker.start()
            off_device_cores(acker.pid)
            arrivals: list[tuple[float, float]] = []
            try:
                report = _measure(Service(cfg), seconds, warmup_s, cfg)
            finally:
                arrivals = acker.stop()
            window = report.pop("window_wall")
            through = [arrival - captured for arrival, captured in arrivals if window[0] <= arrival <= window[1]]
            report["latency_capture_to_broker_p50_ms"] = _ms(percentile(through, 50))
            report["latency_capture_to_broker_p99_ms"] = _ms(percentile(through, 99))
            return report


def off_device_cores(pid: int | None) -> None:
    """Move the broker or the stand-in cloud off the CPUs this process is pinned to (`taskset -c 0 edge-mask
    bench --live` stands in for a device's core budget; the broker and the cloud are not on the device, and
    as children they would inherit the pin and compete for it). Unpinned, nothing changes."""
    if pid is None or not hasattr(os, "sched_getaffinity"):
        return
    own = os.sched_getaffinity(0)
    others = set(range(os.cpu_count() or 1)) - own
    if others:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(pid, others)


def _measure(service: Any, seconds: float, warmup_s: float, cfg: EdgeConfig) -> dict[str, Any]:
    result: dict[str, int] = {}
    thread = threading.Thread(target=lambda: result.setdefault("rc", service.run()), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 180
        while not service.ready:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise UserError("bench --live: the service never spooled a frame; run `edge-mask doctor` first")
            time.sleep(0.05)
        time.sleep(warmup_s)
        start = _mark(service)
        time.sleep(seconds)
        end = _mark(service)
    finally:
        service.request_stop()
        thread.join(10)
    m = service.metrics
    acked = _since(m.acked_latency, end["acked_n"] - start["acked_n"])
    spooled = _since(m.spooled_latency, end["spooled_n"] - start["spooled_n"])
    wall = end["wall"] - start["wall"]
    dropped = {k: end["dropped"].get(k, 0) - start["dropped"].get(k, 0) for k in end["dropped"]}
    camera = cfg.camera
    return {
        "resolution": _resolution(camera),
        "target_fps": getattr(camera, "fps", None),
        "seconds": round(wall, 1),
        "frames_captured": end["captured"] - start["captured"],
        "frames_spooled": end["spooled"] - start["spooled"],
        "frames_acked": len(acked),
        "fps": round((end["spooled"] - start["spooled"]) / wall, 2) if wall else 0.0,
        "dropped": {k: v for k, v in dropped.items() if v},
        "latency_capture_to_acked_p50_ms": _ms(percentile(acked, 50)),
        "latency_capture_to_acked_p99_ms": _ms(percentile(acked, 99)),
        "latency_capture_to_spooled_p50_ms": _ms(percentile(spooled, 50)),
        "latency_capture_to_spooled_p99_ms": _ms(percentile(spooled, 99)),
        "cpu_percent_of_one_core": round(100.0 * (end["cpu"] - start["cpu"]) / wall, 1) if wall else 0.0,
        "cores": usable_cpus(),
        "machine_cores": os.cpu_count(),
        "window_wall": (start["time"], end["time"]),
    }


def _resolution(camera: Any) -> str:
    width, height = getattr(camera, "width", None), getattr(camera, "height", None)
    return f"{width}x{height}" if width and height else "native"


def _mark(service: Any) -> dict[str, Any]:
    snap = service.metrics.snapshot()
    times = os.times()
    return {
        "wall": time.monotonic(),
        "time": time.time(),
        "cpu": times.user + times.system,
        "captured": snap["frames_captured"],
        "spooled": snap["frames_spooled"],
        "dropped": dict(snap["dropped"]),
        "acked_n": service.metrics.acked_latency.count,
        "spooled_n": service.metrics.spooled_latency.count,
    }


def _since(window: Any, new: int) -> list[float]:
    """The latencies added in the measured window (the window keeps the last 2048: enough for ~60 s)."""
    return window.values()[-new:] if new > 0 else []


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 1)


def format_report(report: dict[str, Any]) -> str:
    """Human-readable lines for the CLI."""
    lines = [
        f"live: {report['resolution']} @ {report['target_fps']:g} fps target, {report['seconds']} s measured "
        f"({report['cores']} of the machine's {report.get('machine_cores', report['cores'])} cores)",
        f"  frames: {report['frames_captured']} captured, {report['frames_spooled']} spooled, "
        f"{report['frames_acked']} confirmed by the cloud, {report['fps']} fps end to end",
        f"  dropped: {report['dropped'] or 'none'}",
        f"  latency capture->cloud ack: p50 {report['latency_capture_to_acked_p50_ms']} ms, "
        f"p99 {report['latency_capture_to_acked_p99_ms']} ms",
        f"  latency capture->broker:    p50 {report['latency_capture_to_broker_p50_ms']} ms, "
        f"p99 {report['latency_capture_to_broker_p99_ms']} ms (through the broker to the cloud's subscriber)",
        f"  latency capture->spooled:    p50 {report['latency_capture_to_spooled_p50_ms']} ms, "
        f"p99 {report['latency_capture_to_spooled_p99_ms']} ms",
        f"  CPU: {report['cpu_percent_of_one_core']}% of one core (process time / wall; broker not counted)",
    ]
    return "\n".join(lines)


def pin(cpus: str) -> None:
    """Run this process (the whole service) on the CPUs in `cpus` ("0", "0,1" or "0-3", as `taskset -c`
    takes them): one pinned core here stands in for a Raspberry Pi 5's four. The broker and the stand-in
    cloud move off them."""
    try:
        wanted: set[int] = set()
        for part in (p.strip() for p in cpus.split(",")):
            first, _, last = part.partition("-")
            if part:
                wanted.update(range(int(first), int(last or first) + 1))
        os.sched_setaffinity(0, wanted)
    except (ValueError, OSError, AttributeError) as exc:
        raise UserError(f"--cpus {cpus}: not CPUs this machine can pin to ({exc}); "
                        f"pass numbers from 0 to {(os.cpu_count() or 1) - 1}, e.g. --cpus 0") from None


def live_command(args: Any) -> int:
    """`edge-mask bench SOURCE --live [--width W --height H] [--fps F] [--cpus LIST] [--config FILE] [--seconds S]
    [--json]`; the config's detector, models, tracker, mask and clinical sections apply."""
    import json

    from edge_mask.config import load_config

    if (args.width is None) != (args.height is None):
        raise UserError("--width and --height go together; pass both (e.g. --width 640 --height 480) or neither")
    if args.seconds <= 0:
        raise UserError(f"--seconds {args.seconds}: pass a positive number of seconds")
    if getattr(args, "cpus", None):
        pin(args.cpus)
    detector: dict[str, Any] | None = None
    models_dir: Path | None = None
    sections: dict[str, Any] = {}
    if args.config is not None:
        cfg = load_config(args.config, EdgeConfig)
        detector = cfg.detector.model_dump(mode="json")
        models_dir = cfg.models.cache_dir
        sections = {name: getattr(cfg, name).model_dump(mode="json") for name in ("tracker", "mask", "clinical")}
    if args.fps <= 0:
        raise UserError(f"--fps {args.fps}: pass a positive frame rate")
    report = run_live_bench(
        Path(args.source), width=args.width, height=args.height, fps=args.fps, seconds=args.seconds,
        detector=detector, models_dir=models_dir, sections=sections,
    )
    print(json.dumps(report) if args.json else format_report(report))
    return 0
