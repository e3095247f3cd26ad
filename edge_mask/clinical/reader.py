"""Reading the faces of one camera stream: the landmark models on each tracked face, one `FaceSession` per
track, the tier's fields and nothing more.

Why the tier is applied here: what leaves this module is what may leave the device. Standard readings are
relative to the face's own session (openness to its baseline, gaze to its median, pose to its start); only
the ophthalmic tier, chosen in config, adds absolute per-eye openness. Points, contours and the mesh stay
inside this room.

A failure reading one face (a model error) never fails the frame: the face is masked regardless, its
reading is left out and counted (`errors`).
"""

from __future__ import annotations

import logging
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
        absolute = reading.absolute if self.cfg.signals == "ophthalmic" and reading.pose is not None else None
        blink = reading.blink
        return FaceSignals(
            track_id=track, openness=reading.openness, gaze=reading.gaze, pose=reading.pose, mouth=reading.mouth,
            blink_onset=blink.onset if blink else None, blink_duration_s=blink.duration_s if blink else None,
            absolute_openness=absolute,
        )

    def reset(self) -> None:
        """A new stream: every face's baselines start again."""
        self._sessions = {}

    def close(self) -> None:
        self._landmarker.close()


def build_reader(cfg: ClinicalConfig, models: ModelsConfig) -> ClinicalReader | None:
    """The reader for `clinical.signals`, or None when it is off. The models come from the verified cache."""
    if cfg.signals == "off":
        return None
    from edge_mask.detect import resolve_model

    face = resolve_model(cfg.face_model, models, "fp32")
    iris = resolve_model(cfg.iris_model, models, "fp32")
    log.debug("clinical: %s signals from %s and %s", cfg.signals, Path(face).name, Path(iris).name)
    return ClinicalReader(cfg, Landmarker(face, iris, cfg.threads))
