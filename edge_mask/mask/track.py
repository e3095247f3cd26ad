"""Temporal safety: keep every face masked through short detection gaps.

Why a tracker at all: a detector misses a face now and then (motion blur, a hand in front, a turned head).
One frame without a mask is a leak, so each face that was detected stays masked for `hold_s` seconds after
its last detection. While it is held, its box moves on with the velocity estimated from its recent matches
(constant-velocity prediction) and grows by `grow_per_s` of its size per second, because the longer we have
not seen a face, the less we know where it is.

Detections are matched to tracks by IoU (a low threshold) or, for fast motion where consecutive boxes no
longer overlap, by centre distance relative to the face size. Time comes from the frame's `monotonic`
stamp, never from the wall clock here, so batch video uses video time and tests use synthetic stamps.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from edge_mask.config import TrackerConfig
from edge_mask.core.boxes import iou_matrix
from edge_mask.core.types import FloatArray

log = logging.getLogger(__name__)

CENTER_MATCH = 1.0
"""A detection whose centre lies within this many face sizes of a track's predicted centre may match it."""
VELOCITY_SMOOTHING = 0.6
"""Weight of the newest velocity measurement (exponential smoothing of box velocity)."""
MAX_SPEED = 10.0
"""Cap on predicted motion, in face sizes per second, so one bad match cannot throw a mask across the frame."""


@dataclass
class Track:
    """One face: its last detected box, its box velocity (pixels/s per coordinate) and when it was seen."""

    id: int
    box: FloatArray
    velocity: FloatArray
    last_seen: float
    hits: int = 1

    def predict(self, now: float) -> FloatArray:
        """Where the box should be at `now`: moved by the capped velocity, not yet grown."""
        dt = max(0.0, now - self.last_seen)
        size = float(max(self.box[2] - self.box[0], self.box[3] - self.box[1], 1.0))
        shift = self.velocity * dt
        limit = MAX_SPEED * size * dt
        shift = np.clip(shift, -limit, limit)
        moved: FloatArray = (self.box + shift).astype(np.float32)
        return moved


@dataclass(frozen=True)
class TrackResult:
    """What to mask this frame.

    `regions` are face boxes (x1, y1, x2, y2) in frame pixels, not yet padded into head regions: first the
    detections of this frame (same order as given), then the held tracks' predicted and grown boxes.
    """

    regions: FloatArray
    detected: int
    held: int
    track_ids: tuple[int, ...] = field(default=())


def grow(boxes: FloatArray, factor: npt.NDArray[np.float32]) -> FloatArray:
    """Scale each box about its centre by its own factor (>= 1)."""
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]) / 2 * factor[:, None]
    return np.concatenate([centre - half, centre + half], axis=1).astype(np.float32)


def match(predicted: FloatArray, detected: FloatArray, min_iou: float) -> list[tuple[int, int]]:
    """Greedy one-to-one (track, detection) pairs, best first.

    A pair qualifies when IoU >= `min_iou` or the centres are closer than CENTER_MATCH face sizes; it is
    ranked by IoU minus the normalised centre distance, so overlap wins and distance breaks ties.
    """
    if len(predicted) == 0 or len(detected) == 0:
        return []
    iou = iou_matrix(predicted, detected)
    pc = (predicted[:, :2] + predicted[:, 2:]) / 2
    dc = (detected[:, :2] + detected[:, 2:]) / 2
    size = np.maximum((predicted[:, 2:] - predicted[:, :2]).max(axis=1), 1.0)
    dist = np.linalg.norm(pc[:, None, :] - dc[None, :, :], axis=2) / size[:, None]
    ok = (iou >= min_iou) | (dist < CENTER_MATCH)
    score = np.where(ok, iou - 0.5 * dist, -np.inf)
    pairs: list[tuple[int, int]] = []
    used_t: set[int] = set()
    used_d: set[int] = set()
    for flat in np.argsort(-score, axis=None):
        t, d = divmod(int(flat), score.shape[1])
        if not np.isfinite(score[t, d]):
            break
        if t in used_t or d in used_d:
            continue
        pairs.append((t, d))
        used_t.add(t)
        used_d.add(d)
    return pairs


class Tracker:
    """Holds, predicts and grows face boxes between detections (see module docstring)."""

    def __init__(self, cfg: TrackerConfig) -> None:
        self.cfg = cfg
        self._tracks: list[Track] = []
        self._next_id = 0

    def __len__(self) -> int:
        return len(self._tracks)

    def reset(self) -> None:
        """Forget all faces (a new video or camera stream starts)."""
        self._tracks = []

    def update(self, boxes: FloatArray, now: float) -> TrackResult:
        """Feed this frame's detected face boxes (N, 4) at monotonic time `now`; get the boxes to mask."""
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        # Forget tracks that have not been seen for longer than the hold time.
        self._tracks = [t for t in self._tracks if now - t.last_seen <= self.cfg.hold_s]
        predicted = (
            np.stack([t.predict(now) for t in self._tracks]) if self._tracks else np.zeros((0, 4), np.float32)
        )
        pairs = match(predicted, boxes, self.cfg.match_iou)
        matched_t = {t for t, _ in pairs}
        matched_d = {d for _, d in pairs}
        for t, d in pairs:
            self._observe(self._tracks[t], boxes[d], now)
        held = [i for i in range(len(self._tracks)) if i not in matched_t]
        held_regions = self._held_regions(held, predicted, now)
        ids: dict[int, int] = {d: self._tracks[t].id for t, d in pairs}
        held_ids = tuple(self._tracks[i].id for i in held)
        for d in range(len(boxes)):
            if d not in matched_d:
                track = Track(self._new_id(), boxes[d].copy(), np.zeros(4, np.float32), now)
                self._tracks.append(track)
                ids[d] = track.id
        self._enforce_limit()
        track_ids = tuple(ids[d] for d in range(len(boxes))) + held_ids
        regions = np.concatenate([boxes, held_regions], axis=0) if len(held_regions) else boxes.copy()
        return TrackResult(regions.astype(np.float32), detected=len(boxes), held=len(held_regions), track_ids=track_ids)

    # ------------------------------------------------------------------------------------------ internals

    def _observe(self, track: Track, box: FloatArray, now: float) -> None:
        dt = now - track.last_seen
        if dt > 1e-6:
            measured = (box - track.box) / dt
            track.velocity = (
                VELOCITY_SMOOTHING * measured + (1 - VELOCITY_SMOOTHING) * track.velocity
                if track.hits > 1
                else measured
            ).astype(np.float32)
        track.box = box.astype(np.float32).copy()
        track.last_seen = now
        track.hits += 1

    def _held_regions(self, held: list[int], predicted: FloatArray, now: float) -> FloatArray:
        """Predicted boxes of unmatched tracks, grown with age and joined with the last seen box.

        Joining with the last box keeps the face covered even when the velocity estimate is wrong (a
        person who stops moving exactly when the detector loses them).
        """
        if not held:
            return np.zeros((0, 4), np.float32)
        age = np.array([max(0.0, now - self._tracks[i].last_seen) for i in held], np.float32)
        factor = (1.0 + self.cfg.grow_per_s * age).astype(np.float32)
        moved = grow(predicted[held], factor)
        last = np.stack([self._tracks[i].box for i in held])
        return np.concatenate([np.minimum(moved[:, :2], last[:, :2]), np.maximum(moved[:, 2:], last[:, 2:])], axis=1)

    def _enforce_limit(self) -> None:
        """Keep at most `max_tracks`, forgetting the longest-unseen ones first (bounded memory and time)."""
        extra = len(self._tracks) - self.cfg.max_tracks
        if extra > 0:
            self._tracks.sort(key=lambda t: t.last_seen, reverse=True)
            log.warning("tracker: %d tracks over the limit of %d forgotten", extra, self.cfg.max_tracks)
            del self._tracks[self.cfg.max_tracks :]

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id
