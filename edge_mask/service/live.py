"""The live device service: capture -> mask -> encode+seal -> spool -> uplink, in threads.

Why this shape:
* Stages are threads joined by bounded queues. The only place frames are dropped is the raw queue in
  front of the masker, and it drops the OLDEST raw frame (latest frame wins): when masking falls behind,
  the device skips frames instead of sending stale ones, and never skips masking. Downstream queues block,
  so a slow disk or encoder pushes back into that same raw queue. Raw frames exist only in memory.
* Health is end to end: `READY=1` after the first frame is masked and spooled, `WATCHDOG=1` only while
  frames reached the spool within `service.stall_s`. A dead camera or a hung detector therefore stops the
  pings and systemd restarts the service, while the capture loop's own retries handle short faults.
* SIGTERM: stop the camera, let the masker finish the frame in hand, seal and spool what was already
  masked (the spool is durable on return), publish `stopped`, and return within 5 s even if a stage hangs.
* SIGHUP: re-read the config; mask and tracker settings and the log level apply live (the masker keeps
  its tracked faces); anything else is logged as needing a restart.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_mask.capture import Camera, CaptureLoop, create_camera
from edge_mask.config import EdgeConfig, load_config
from edge_mask.core.errors import UserError
from edge_mask.core.types import MaskedFrame, RawFrame
from edge_mask.service.metrics import PipelineMetrics, PrometheusServer
from edge_mask.service.notify import Notifier
from edge_mask.service.queues import LatestQueue, TimedSpool

if TYPE_CHECKING:
    from edge_mask.mask import Masker
    from edge_mask.seal import Sealer
    from edge_mask.uplink import Uplink

log = logging.getLogger(__name__)

STOP_BUDGET_S = 4.5
DRAIN_ON_END_S = 30.0  # a finite source (a file) waits this long for the spool to empty before exiting
_TICK_S = 0.1
_DONE = object()  # end-of-stream marker between stages
LIVE_RELOAD = ("mask", "tracker", "service.log_level")


class Service:
    """One running pipeline. `run()` blocks in the calling (main) thread until stopped or the source ends."""

    def __init__(
        self,
        cfg: EdgeConfig,
        *,
        config_path: Path | None = None,
        notifier: Notifier | None = None,
        camera_factory: Callable[[], Camera] | None = None,
        masker: Masker | None = None,
    ) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.notifier = notifier or Notifier()
        self.metrics = PipelineMetrics()
        self._camera_factory = camera_factory or (lambda: create_camera(self.cfg.camera))
        self._masker = masker
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._ready = False
        self._last_spooled: float | None = None
        self._abandon = threading.Event()  # set when stopping gives up on a hung stage
        self._raw = LatestQueue(cfg.service.raw_queue, lambda: self.metrics.drop("masking_behind"))
        self._masked: queue.Queue[Any] = queue.Queue(maxsize=4)
        self._sealed: queue.Queue[Any] = queue.Queue(maxsize=cfg.service.sealed_queue)
        self._threads: list[threading.Thread] = []
        self.capture: CaptureLoop | None = None
        self.spool: TimedSpool | None = None
        self.uplink: Uplink | None = None
        self._prometheus: PrometheusServer | None = None
        self._watchdog_sent = 0.0
        self.stopped_cleanly = False

    # ------------------------------------------------------------------------------------------ control

    def request_stop(self) -> None:
        self._stop.set()

    def request_reload(self) -> None:
        self._reload.set()

    @property
    def ready(self) -> bool:
        return self._ready

    def stats(self) -> dict[str, Any]:
        """Everything the stats topic and the Prometheus endpoint report."""
        out = self.metrics.snapshot()
        out["camera"] = self.capture.health() if self.capture else {"state": "starting"}
        out["raw_queue"] = len(self._raw)
        out["broker"] = "connected" if self.uplink is not None and self.uplink.connected else "disconnected"
        if self.spool is not None:
            out.update(self.spool.stats().as_dict())
        if self._masker is not None:
            from edge_mask.detect import detector_stats, smallest_face_px

            out["masker"] = dict(self._masker.stats())
            # which model masks (int8/fp32) and the on-device parity watch's figures and state
            out.update(detector_stats(getattr(self._masker, "detector", None)))
            width = getattr(self.cfg.camera, "width", None)
            if isinstance(width, int):
                out["smallest_face_px"] = smallest_face_px(self.cfg.detector, width)
        out["flowing"] = self.flowing()
        return out

    def flowing(self) -> bool:
        """A frame with a working detection reached the spool within `service.stall_s`: the condition for
        WATCHDOG=1. Fail-closed frames (whole frame masked because the detector failed or hung) keep the
        timeline but do not count: a detector that stopped working must get the service restarted."""
        last = self._last_spooled
        return last is not None and time.monotonic() - last < self.cfg.service.stall_s

    # -------------------------------------------------------------------------------------------- run

    def run(self) -> int:
        """Start every stage, supervise until SIGTERM (or the end of a finite source), stop; exit code."""
        self._start_stages()
        next_status = 0.0
        stalled_logged = False
        ended_at: float | None = None
        try:
            while not self._stop.wait(_TICK_S):
                now = time.monotonic()
                if self._reload.is_set():
                    self._reload.clear()
                    self.reload()
                if self._ready and self.flowing():
                    self._ping_watchdog(now)
                    stalled_logged = False
                elif self._ready and not stalled_logged:
                    stalled_logged = True
                    log.error("pipeline stalled: no frame spooled for %.0f s; withholding the watchdog",
                              self.cfg.service.stall_s)
                if now >= next_status:
                    next_status = now + 1.0
                    self.notifier.status(self._status_line())
                if self.capture is not None and self.capture.ended and self._pipeline_idle():
                    if ended_at is None:
                        ended_at = now
                        log.info("camera source ended; uploading the rest of the spool")
                    if self._spool_pending() == 0 or now - ended_at > DRAIN_ON_END_S:
                        log.info("camera source ended; stopping")
                        break
        finally:
            self.shutdown(discard_raw=not (self.capture is not None and self.capture.state == "ended"))
        return 0 if self.stopped_cleanly else 1

    def _start_stages(self) -> None:
        from edge_mask.uplink import create_uplink, open_spool

        sealer, encoder = self._build_sealing()
        if self._masker is None:
            from edge_mask.mask import build_masker

            self._masker = build_masker(self.cfg)
        self.spool = TimedSpool(open_spool(self.cfg.spool), self.metrics.acked_latency.add)
        # The uplink publishes {prefix}/stats every uplink.stats_interval_s, merging in self.stats().
        self.uplink = create_uplink(self.cfg.uplink, self.cfg.device_id, self.spool, stats_source=self.stats)
        self.uplink.start()
        if self.cfg.service.prometheus_port:
            self._prometheus = PrometheusServer(
                self.cfg.service.prometheus_host, self.cfg.service.prometheus_port, self.stats
            )
            self._prometheus.start()
        for name, target, args in (
            ("mask", self._mask_stage, ()),
            ("seal", self._seal_stage, (sealer, encoder)),
            ("spool", self._spool_stage, ()),
        ):
            thread = threading.Thread(target=target, args=args, name=f"edge-mask-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        camera_cfg = self.cfg.camera
        blocking = not camera_cfg.is_realtime()
        self.capture = CaptureLoop(
            self._camera_factory,
            lambda frame: self._on_frame(frame, blocking),
            read_timeout_s=camera_cfg.read_timeout_s,
            retry_min_s=camera_cfg.retry_min_s,
            retry_max_s=camera_cfg.retry_max_s,
            on_state=self._on_camera_state,
        )
        self.capture.start()
        log.info("service started: device %s, camera %s", self.cfg.device_id, camera_cfg.type)

    def _build_sealing(self) -> tuple[Sealer, Any]:
        from edge_mask.seal import Sealer, create_encoder, load_recipient_public_key, load_signing_key

        recipient = load_recipient_public_key(self.cfg.seal.recipient_public_key)
        signing = load_signing_key(self.cfg.seal.signing_key)
        sealer = Sealer(
            self.cfg.device_id, recipient, signing, self.cfg.seal.aead, include_metadata=self.cfg.seal.include_metadata
        )
        return sealer, create_encoder(self.cfg.encode)

    # ----------------------------------------------------------------------------------------- stages

    def _on_frame(self, frame: RawFrame, blocking: bool) -> None:
        self.metrics.count("frames_captured")
        self.metrics.capture_fps.tick()
        self._raw.put(frame, block=blocking, stop=self._stop)

    def _mask_stage(self) -> None:
        assert self._masker is not None
        first = True
        while not self._raw.drained:
            raw = self._raw.get(timeout=0.2)
            if raw is None:
                continue
            masker = self._masker
            if first:
                first = False
                masker.warm_up(raw.width, raw.height)  # the first inference at a size is slow
            try:
                masked = masker.process(raw)
            except Exception:
                # A masker bug must not let the raw frame through: drop it and count it.
                log.exception("masker failed; frame %d dropped", raw.seq)
                self.metrics.drop("mask_error")
                continue
            finally:
                del raw  # the raw frame dies here
            if self._abandon.is_set():
                return
            if masked is None:
                self.metrics.drop("detector_failure")
                continue
            self.metrics.count("frames_masked")
            self.metrics.count("faces_masked", masked.faces)
            if masked.fail_closed:
                self.metrics.count("fail_closed")
            self._masked.put(masked)
        self._masked.put(_DONE)

    def _seal_stage(self, sealer: Sealer, encoder: Any) -> None:
        while True:
            item = self._masked.get()
            if item is _DONE:
                break
            masked: MaskedFrame = item
            try:
                sealed = sealer.seal(masked, encoder.encode(masked))
            except Exception:
                log.exception("encode/seal failed; frame %d dropped", masked.seq)
                self.metrics.drop("seal_error")
                continue
            self._sealed.put((sealed, masked.monotonic, masked.fail_closed))
        self._sealed.put(_DONE)

    def _spool_stage(self) -> None:
        assert self.spool is not None
        while True:
            item = self._sealed.get()
            if item is _DONE:
                break
            sealed, captured, fail_closed = item
            try:
                record_id = self.spool.put_timed(sealed, captured)
            except Exception:
                log.exception("spool write failed; frame %d dropped", sealed.seq)
                self.metrics.drop("spool_error")
                continue
            if record_id < 0:  # no room even after dropping the oldest (the spool logged the episode once)
                self.metrics.drop("spool_full")
                continue
            if self.uplink is not None:
                self.uplink.wake()
            now = time.monotonic()
            self.metrics.count("frames_spooled")
            self.metrics.fps.tick()
            self.metrics.spooled_latency.add(now - captured)
            if not fail_closed:
                self._last_spooled = now
            if not self._ready:
                self._ready = True
                self.notifier.ready(self._status_line())
                log.info("first frame masked and spooled: ready")

    def _spool_pending(self) -> int:
        return self.spool.stats().pending if self.spool is not None else 0

    def _pipeline_idle(self) -> bool:
        """Every captured frame is spooled or counted as dropped (none in a queue or in a stage's hands)."""
        snap = self.metrics.snapshot()
        return bool(snap["frames_captured"] == snap["frames_spooled"] + snap["dropped_total"])

    # ----------------------------------------------------------------------------------------- health

    def _ping_watchdog(self, now: float) -> None:
        interval = self.notifier.watchdog_interval_s or 1.0
        if now - self._watchdog_sent >= min(interval, 1.0):
            self._watchdog_sent = now
            self.notifier.watchdog()

    def _on_camera_state(self, state: str, detail: str | None) -> None:
        if state in ("retrying", "stalled"):
            self.metrics.count(f"camera_{state}")
        log.info("camera state: %s%s", state, f" ({detail})" if detail else "")
        if self.uplink is not None and state not in ("stopped",):
            # Faults go out at once on the stats topic, not only at the next interval.
            self.uplink.publish_stats({**self.stats(), "event": f"camera_{state}", "event_detail": detail})

    def _status_line(self) -> str:
        camera = self.capture.state if self.capture else "starting"
        broker = "connected" if self.uplink is not None and self.uplink.connected else "disconnected"
        return f"{self.metrics.fps.rate():.1f} fps, camera {camera}, broker {broker}"

    # --------------------------------------------------------------------------------------- shutdown

    def shutdown(self, discard_raw: bool = True) -> None:
        """Stop within STOP_BUDGET_S: camera, masker (frame in hand), seal, spool, then the uplink."""
        deadline = time.monotonic() + STOP_BUDGET_S
        self.notifier.stopping()
        if self.capture is not None:
            self.capture.stop(timeout=1.0)
        discarded = self._raw.close(discard=discard_raw)
        if discarded:
            self.metrics.drop("shutdown", discarded)
        clean = True
        downstream = [self._masked, self._sealed]  # the queue each stage feeds (the spool stage feeds none)
        for index, thread in enumerate(self._threads):
            thread.join(max(0.3, deadline - 1.5 - time.monotonic()))
            if thread.is_alive():
                clean = False
                log.error("stage %s did not finish in time; abandoning it", thread.name)
                self._abandon.set()
                if index < len(downstream):
                    try:  # let the stages after the hung one finish what they hold
                        downstream[index].put_nowait(_DONE)
                    except queue.Full:
                        pass
        if self.uplink is not None:
            stopper = threading.Thread(target=self.uplink.stop, kwargs={"clean": True}, daemon=True)
            stopper.start()
            stopper.join(max(0.2, deadline - 0.3 - time.monotonic()))
            clean = clean and not stopper.is_alive()
        if self._prometheus is not None:
            self._prometheus.stop()
        spool_stage_done = not self._threads or not self._threads[-1].is_alive()
        spool_stats = self.spool.stats().as_dict() if self.spool is not None and spool_stage_done else {}
        if self.spool is not None and spool_stage_done:
            self.spool.close()  # the masker never touches the spool: a hung masker does not keep it open
        if self._masker is not None and clean:
            self._masker.close()
        log.info("stopped: %s", {**self.metrics.snapshot(), **spool_stats})
        self.stopped_cleanly = clean

    # ----------------------------------------------------------------------------------------- reload

    def reload(self) -> list[str]:
        """Apply the safe subset of a changed config file; returns the keys that need a restart."""
        if self.config_path is None:
            return []
        try:
            new = load_config(self.config_path, EdgeConfig)
        except UserError as exc:
            log.error("reload rejected, keeping the running config: %s", exc.message)
            return []
        old = self.cfg
        if new.service.log_level != old.service.log_level:
            logging.getLogger("edge_mask").setLevel(new.service.log_level)
        if (new.mask, new.tracker) != (old.mask, old.tracker) and self._masker is not None:
            # keeps the tracked faces: no gap in the masks at the switch
            self._masker.reconfigure(tracker=new.tracker, mask=new.mask)
            log.info("reload: mask/tracker settings applied")
        restart = _changed_sections(old, new)
        self.cfg = old.model_copy(
            update={
                "mask": new.mask,
                "tracker": new.tracker,
                "service": old.service.model_copy(update={"log_level": new.service.log_level}),
            }
        )
        if restart:
            log.warning("reload: %s changed; these need a restart (systemctl restart edge-mask)", ", ".join(restart))
        return restart


def _changed_sections(old: EdgeConfig, new: EdgeConfig) -> list[str]:
    changed = []
    for name in type(old).model_fields:
        if name in ("mask", "tracker"):
            continue
        a, b = getattr(old, name), getattr(new, name)
        if name == "service":
            a, b = a.model_copy(update={"log_level": "INFO"}), b.model_copy(update={"log_level": "INFO"})
        if a != b:
            changed.append(name)
    return changed
