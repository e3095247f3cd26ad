"""Reading the faces of one camera stream: the landmark models on each tracked face, one `FaceSession` per
track, the tier's fields and nothing more.

Why the tier is applied here: what leaves this module is what may leave the device. Standard readings are
relative to the face's own session (openness to its baseline, gaze to its median, pose to its start), and
rounded to the steps a reviewer reads (`STANDARD_STEPS`: lids in tenths, gaze in twentieths of an eye width,
the head in 5 degrees, the mouth in tenths): the device's fine values are a fingerprint of the moment and
of the person (on the ASL clips they linked 4 of 10 halves of a recording to the other half, chance 1; the
stepped values 2). Blinks are found on the fine values, before rounding. Only the ophthalmic tier, chosen in
config, keeps the fine values (nystagmus is a small, fast gaze movement) and adds absolute per-eye openness.
Points, contours and the mesh stay inside this room.

A failure reading one face (a model error) never fails the frame: the face is masked regardless, its
reading is left out and counted (`errors`).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np

from edge_mask.clinical.landmarks import Landmarker
from edge_mask.clinical.signals import FaceSession
from edge_mask.config import ClinicalConfig, ModelsConfig
from edge_mask.core.types import FaceSignals, FloatArray, Image

log = logging.getLogger(__name__)

PRESENCE_MIN = 0.0
"""The face model's presence logit below which a box is not read (sigmoid 0.5): on the ASL clips the
signers' faces score 3 to 20, hands the detector took for faces -11 to -1, and a face cut by the frame edge
about -1 (its points would be guesses)."""
STANDARD_STEPS = {"openness": 0.1, "gaze": 0.05, "pose": 5.0, "mouth": 0.1}
"""The resolution of each standard-tier value (see the module docstring)."""
FORGET_AFTER_S = 5.0
"""A track unseen this long is forgotten with its baselines (a new person may take its place)."""


class ClinicalReader:
    """Turns (frame, tracked face boxes) into one `FaceSignals` per face read."""

    def __init__(self, cfg: ClinicalConfig, landmarker: Landmarker) -> None:
        self.cfg = cfg
        self._landmarker = landmarker
        self._sessions: dict[int, tuple[FaceSession, float]] = {}
        self.errors = 0
        self.blinks = 0

    def read(self, image: Image, boxes: FloatArray, track_ids: tuple[int, ...], now: float
             ) -> list[tuple[int, FaceSignals]]:
        """(row, reading) for the largest `max_faces` of these faces (boxes in frame pixels, one track id
        each), in row order; a face whose reading failed is left out."""
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        sizes = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        chosen = [int(i) for i in np.argsort(-sizes, kind="stable")[: self.cfg.max_faces]]
        out: list[tuple[int, FaceSignals]] = []
        for index in sorted(chosen):
            track = track_ids[index]
            session = self._sessions.get(track, (FaceSession(), now))[0]
            self._sessions[track] = (session, now)
            try:
                reading = self._read_one(image, boxes[index], track, session, now)
            except Exception:
                self.errors += 1
                log.exception("clinical: reading face %d failed; left out of this frame's signals", track)
                continue
            if reading is not None:
                self.blinks += int(reading.blink_onset is not None)
                out.append((index, reading))
        self._sessions = {t: (s, seen) for t, (s, seen) in self._sessions.items() if now - seen <= FORGET_AFTER_S}
        return out

    def _read_one(self, image: Image, box: FloatArray, track: int, session: FaceSession, now: float
                  ) -> FaceSignals | None:
        marks = self._landmarker.face(image, box)
        if marks.presence < PRESENCE_MIN:
            return None  # masked all the same; there is no face here to read
        reading = session.update(marks, now)
        blink = reading.blink
        signals = FaceSignals(
            track_id=track, openness=reading.openness, gaze=reading.gaze, pose=reading.pose, mouth=reading.mouth,
            blink_onset=blink.onset if blink else None, blink_duration_s=blink.duration_s if blink else None,
            absolute_openness=reading.absolute if reading.pose is not None else None,
        )
        return signals if self.cfg.signals == "ophthalmic" else standard_tier(signals)

    def reset(self) -> None:
        """A new stream: every face's baselines start again."""
        self._sessions = {}

    def close(self) -> None:
        self._landmarker.close()


def _on_grid(value: float, step: float) -> float:
    return round(round(value / step) * step, 3)


def _step(value: float | None, step: float) -> float | None:
    return None if value is None else _on_grid(value, step)


def standard_tier(signals: FaceSignals) -> FaceSignals:
    """What the standard tier sends of a reading: the relative values in `STANDARD_STEPS`, the blink as
    found, no absolute openness."""
    lids, eyes, head, mouth = (STANDARD_STEPS[k] for k in ("openness", "gaze", "pose", "mouth"))
    gaze, pose = signals.gaze, signals.pose
    return replace(
        signals,
        openness=(_step(signals.openness[0], lids), _step(signals.openness[1], lids)),
        gaze=None if gaze is None else (_on_grid(gaze[0], eyes), _on_grid(gaze[1], eyes)),
        pose=None if pose is None else (_on_grid(pose[0], head), _on_grid(pose[1], head), _on_grid(pose[2], head)),
        mouth=_step(signals.mouth, mouth),
        absolute_openness=None,
    )


def build_reader(cfg: ClinicalConfig, models: ModelsConfig) -> ClinicalReader | None:
    """The reader for `clinical.signals`, or None when it is off. The models come from the verified cache."""
    if cfg.signals == "off":
        return None
    from edge_mask.detect import resolve_model

    face = resolve_model(cfg.face_model, models, "fp32")
    iris = resolve_model(cfg.iris_model, models, "fp32")
    log.debug("clinical: %s signals from %s and %s", cfg.signals, Path(face).name, Path(iris).name)
    return ClinicalReader(cfg, Landmarker(face, iris, cfg.threads))
