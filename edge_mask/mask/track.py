"""Temporal safety without ballooning: keep every face masked through short detection gaps, and only faces.

Why a tracker at all: a detector misses a face now and then (motion blur, a hand in front, a turned head).
One frame without a mask is a leak, so a face that was seen stays masked for a while after its last
detection. Holding everything the detector reports, however weak, for 1.5 s and growing it masked a third of
every frame of the shared clips (hands and fabric fire at low scores). So evidence decides what is masked and
for how long, in the spirit of ByteTrack's two thresholds:

* Every detection at or above the detector's `threshold` (`sight`, 0.25) is masked in its own frame.
* Weaker detections, down to the detector's `weak_threshold`, are masked only where they extend a face
  that is being held (a face the detector scores 0.1-0.2 in a dark corner or cut by the frame edge is
  found at the same place frame after frame), or, from `refresh_score`, one seen at sight within
  `min_hold_s`; on their own they are never masked or held.
* Association runs in three rounds, strongest detections first, so a weak blob cannot take a face's track
  from the confident detection of that face.
* A track is *held* once it has a confident detection (>= `start_score`) or `confirm_hits` detections at
  sight within `confirm_window_s`: a hand that looks like a face for one frame is masked in that frame only.
* The hold counts from the last detection at sight (or, for a held face, at `refresh_score` or more), so
  weak blobs cannot keep a mask alive forever. It lasts `min_hold_s` for a track with one confident
  detection and grows to `hold_s` with `hold_hits` of them (a face in view).
* Coasting keeps the box size and moves it with a damped, capped velocity (at most `MAX_COAST_SHIFT` face
  sizes); it grows by `grow_per_s` of its size per second, never past `max_grow`.
* Gates are bounded in face sizes, in pixels (`max_gate_px`) and in size ratio, so a large box cannot capture
  detections across the frame.
* A scene cut (`scene.py`) ends the masks of the old shot's held faces: at once when the picture changed
  (`Cut.HARD`), after `CUT_GRACE_S` when only its brightness may have (`Cut.SOFT`, or `cut=True`). Their
  tracks stay matchable for the rest of their hold, so a face the detector finds again where it was, however
  weakly, continues its held track after a false cut. A face the detector misses on the frames right after a
  false hard cut is not covered by its old mask (see `scene.py` for when a cut is hard).
* Detections below `start_score` continue a track only where they overlap its predicted box
  (`WEAK_MATCH_IOU`); with tracks over `max_tracks`, tracks not held are forgotten before held ones.

Time comes from the frame's `monotonic` stamp, never from the wall clock here, so batch video uses video
time and tests use synthetic stamps.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from edge_mask.config import TrackerConfig
from edge_mask.core.boxes import iou_matrix
from edge_mask.core.types import FloatArray
from edge_mask.mask.scene import Cut

log = logging.getLogger(__name__)

CENTER_MATCH = 1.0
"""A detection whose centre lies within this many face sizes (and `max_gate_px`) of a track may match it."""
MAX_SIZE_RATIO = 2.0
"""A detection more than this many times larger or smaller than a track never matches it."""
VELOCITY_SMOOTHING = 0.6
"""Weight of the newest velocity measurement (exponential smoothing of the centre's velocity)."""
MAX_SPEED = 10.0
"""Cap on predicted motion, in face sizes per second, so one bad match cannot throw a mask across the frame."""
MAX_COAST_SHIFT = 0.25
"""A coasting box moves at most this many face sizes away from where the face was last seen."""
WEAK_MATCH_IOU = 0.3
"""A detection below `start_score` continues a track only when it overlaps the track's predicted box this
much: the centre gate would let a blob beside a missed face (a hand at 0.12, or at 0.3) take that face's
track, and the face would go unpainted while the blob is masked in its place. Confident detections keep the
centre gate, so a fast face is still followed."""
CUT_GRACE_S = 0.1
"""After a soft scene cut the old shot's held faces stay masked this long (3 frames at 30 fps) unless a
detection continues them: a false cut (a light switched on, an exposure jump) must not unmask a face the
detector misses on that frame. After a hard cut (another picture) they end at once: on the press clip the 13
masks of the old shot covered a third of the first three frames of the new one."""
CLOCK_SLACK_S = 1e-3
"""Time spans are compared with this much slack, in the direction that masks longer. Frame stamps are sums
(the capture start plus the frame's time), so a hold of exactly 6 frames at 30 fps (0.2 s) came out as
0.19999999 or 0.20000001 depending on the clock's value when the stream began: the same video held a mask
one frame more on one run than on another. With the slack a span that ends on a frame includes that frame."""
NEVER = -1.0e18


@dataclass
class Track:
    """One face: its last detected box, its centre velocity (pixels/s), and the evidence for it."""

    id: int
    box: FloatArray
    last_seen: float
    velocity: FloatArray = field(default_factory=lambda: np.zeros(2, np.float32))
    hits: int = 1
    confirmed: bool = False
    """Held when missed: it had a confident detection or `confirm_hits` at sight within the window."""
    confident_hits: int = 0
    """Detections at or above `start_score`: the evidence that sets how long the track is held."""
    last_strong: float = NEVER
    """When it was last detected at sight (or refreshed while held): the hold counts from here."""
    strong_at: deque[float] = field(default_factory=deque)
    cut_at: float = NEVER
    """When the last scene cut came while this track existed: from then on it is held only `cut_grace`
    unless detected again where it was."""
    cut_grace: float = CUT_GRACE_S
    """How long after that cut it is still held: `CUT_GRACE_S` after a soft cut, none after a hard one."""

    @property
    def size(self) -> float:
        return float(max(self.box[2] - self.box[0], self.box[3] - self.box[1], 1.0))

    def predict(self, now: float) -> FloatArray:
        """The last box moved by the capped velocity to `now`; its size is kept."""
        dt = max(0.0, now - self.last_seen)
        if dt == 0.0:
            return self.box
        limit = min(MAX_SPEED * dt, MAX_COAST_SHIFT) * self.size
        vx, vy = (float(v) for v in self.velocity)
        dx, dy = min(max(vx * dt, -limit), limit), min(max(vy * dt, -limit), limit)
        moved: FloatArray = self.box + np.array([dx, dy, dx, dy], np.float32)
        return moved


@dataclass(frozen=True)
class TrackResult:
    """What to mask this frame.

    `regions` are face boxes (x1, y1, x2, y2) in frame pixels, not yet padded into head regions: first the
    masked detections of this frame (in the order given), then the held tracks' coasting boxes.
    """

    regions: FloatArray
    held: int
    track_ids: tuple[int, ...] = field(default=())
    masked_detections: tuple[int, ...] = field(default=())
    """Indices (into this frame's detections) of the detections in `regions`, in order."""

    @property
    def detected(self) -> int:
        """Detections masked in this frame (weak ones that extend no held face are not)."""
        return len(self.masked_detections)


def grow(boxes: FloatArray, factor: npt.NDArray[np.float32]) -> FloatArray:
    """Scale each box about its centre by its own factor (>= 1)."""
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]) / 2 * factor[:, None]
    return np.concatenate([centre - half, centre + half], axis=1).astype(np.float32)


def pair_scores(
    predicted: FloatArray, detected: FloatArray, min_iou: float, max_gate_px: float = float("inf"),
    overlap_only: npt.NDArray[np.bool_] | None = None,
) -> npt.NDArray[np.float64]:
    """(tracks, detections) matrix: how well each pair matches, -inf where it may not match at all.

    A pair qualifies when IoU >= `min_iou`, or when the centres are closer than CENTER_MATCH face sizes and
    `max_gate_px` pixels; never when one box is more than MAX_SIZE_RATIO times the other. Detections marked
    in `overlap_only` qualify only by overlap, IoU >= WEAK_MATCH_IOU (no centre gate). Qualifying pairs
    score IoU minus the normalised centre distance, so overlap wins and distance breaks ties.
    """
    if len(predicted) == 0 or len(detected) == 0:
        return np.zeros((len(predicted), len(detected)), np.float64)
    iou = iou_matrix(predicted, detected)
    pc = (predicted[:, :2] + predicted[:, 2:]) / 2
    dc = (detected[:, :2] + detected[:, 2:]) / 2
    p_size = np.maximum((predicted[:, 2:] - predicted[:, :2]).max(axis=1), 1.0)
    d_size = np.maximum((detected[:, 2:] - detected[:, :2]).max(axis=1), 1.0)
    pixels = np.linalg.norm(pc[:, None, :] - dc[None, :, :], axis=2)
    dist = pixels / p_size[:, None]
    ratio = np.maximum(p_size[:, None] / d_size[None, :], d_size[None, :] / p_size[:, None])
    near = (dist < CENTER_MATCH) & (pixels < max_gate_px)
    ok = ((iou >= min_iou) | near) & (ratio <= MAX_SIZE_RATIO)
    if overlap_only is not None:
        ok &= ~overlap_only[None, :] | (iou >= WEAK_MATCH_IOU)
    scores: npt.NDArray[np.float64] = np.where(ok, iou - 0.5 * dist, -np.inf)
    return scores


def greedy(scores: npt.NDArray[np.float64]) -> list[tuple[int, int]]:
    """One-to-one (row, column) pairs from a `pair_scores` matrix, best first."""
    pairs: list[tuple[int, int]] = []
    if scores.size == 0:
        return pairs
    used_t: set[int] = set()
    used_d: set[int] = set()
    for flat in np.argsort(-scores, axis=None):
        t, d = divmod(int(flat), scores.shape[1])
        if not np.isfinite(scores[t, d]):
            break
        if t in used_t or d in used_d:
            continue
        pairs.append((t, d))
        used_t.add(t)
        used_d.add(d)
    return pairs


class Tracker:
    """Holds, predicts and (within a cap) grows face boxes between detections (see module docstring)."""

    def __init__(self, cfg: TrackerConfig) -> None:
        self.cfg = cfg
        self._tracks: list[Track] = []
        self._next_id = 0

    def __len__(self) -> int:
        return len(self._tracks)

    def reset(self) -> None:
        """Forget all faces (a new video or camera stream starts)."""
        self._tracks = []

    def hold_of(self, track: Track) -> float:
        """How long a held track stays masked after its last strong detection: `min_hold_s` with one
        confident detection (or none), up to `hold_s` with `hold_hits` of them."""
        cfg = self.cfg
        if cfg.hold_hits <= 1:
            share = 1.0 if track.confident_hits >= 1 else 0.0
        else:
            share = min(1.0, max(track.confident_hits - 1, 0) / (cfg.hold_hits - 1))
        shortest = min(cfg.min_hold_s, cfg.hold_s)
        return shortest + (cfg.hold_s - shortest) * share

    def holding(self, track: Track, now: float, across_cuts: bool = False) -> bool:
        """Whether the track is within its hold: missed, it is still masked; matched weakly, it is shown.
        `across_cuts`: as if no scene cut had come since it was last seen at sight."""
        if not track.confirmed or now - track.last_strong > self.hold_of(track) + CLOCK_SLACK_S:
            return False
        if across_cuts or track.last_strong >= track.cut_at:
            return True
        return track.cut_grace >= 0 and now - track.cut_at <= track.cut_grace + CLOCK_SLACK_S

    def update(
        self,
        boxes: FloatArray,
        now: float,
        scores: npt.NDArray[np.float32] | None = None,
        cut: Cut | bool = False,
        sight: float = 0.0,
    ) -> TrackResult:
        """Feed this frame's detections (boxes (N, 4), scores (N,); no scores = all confident) at monotonic
        time `now`, with `cut` when the frame starts a new shot (`True`: a soft cut); get the boxes to mask.
        Detections scoring below `sight` are masked only where they extend a held track."""
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        scores = np.ones(len(boxes), np.float32) if scores is None else np.asarray(scores, np.float32).reshape(-1)
        if cut and self._tracks:
            grace = -1.0 if cut == Cut.HARD else CUT_GRACE_S
            log.debug("scene cut: the holds of %d tracks of the old shot end in %.2f s", len(self._tracks),
                      max(grace, 0.0))
            for track in self._tracks:
                track.cut_at, track.cut_grace = now, grace
        # Kept for matching while the hold would run without the cut: a face missed for longer than the confirm
        # window that the detector finds again where it was after a (false) cut continues its held track.
        self._tracks = [t for t in self._tracks if self.holding(t, now, across_cuts=True)
                        or now - t.last_seen <= self.cfg.confirm_window_s + CLOCK_SLACK_S]
        predicted = (
            np.stack([t.predict(now) for t in self._tracks]) if self._tracks else np.zeros((0, 4), np.float32)
        )
        pairs: list[tuple[int, int]] = []
        start = self.cfg.start_score
        weak = scores < sight
        gated = scores < start  # below start_score, only an overlapping detection continues a track
        table = pair_scores(predicted, boxes, self.cfg.match_iou, self.cfg.max_gate_px, overlap_only=gated)
        for chosen in (~gated, gated & ~weak, weak):
            pairs += self._associate(table, np.flatnonzero(chosen), {t for t, _ in pairs})
        shown = {d for d in range(len(boxes)) if scores[d] >= sight}
        for t, d in pairs:
            track = self._tracks[t]
            if self.holding(track, now, across_cuts=True):
                track.cut_at = NEVER  # seen again where it was: not a face of an old shot
            self._observe(track, boxes[d], now, float(scores[d]), sight)
            if self.holding(track, now) or self._continues(track, now, float(scores[d])):
                shown.add(d)
        matched_t = {t for t, _ in pairs}
        matched_d = {d for _, d in pairs}
        held = [i for i, t in enumerate(self._tracks) if i not in matched_t and self.holding(t, now)]
        held_regions = self._held_regions(held, predicted, now)
        ids: dict[int, int] = {d: self._tracks[t].id for t, d in pairs}
        held_ids = tuple(self._tracks[i].id for i in held)
        for d in range(len(boxes)):
            if d not in matched_d:
                ids[d] = self._start(boxes[d], now, float(scores[d]), sight).id
        self._enforce_limit(now)
        order = sorted(shown)
        track_ids = tuple(ids[d] for d in order) + held_ids
        regions = np.concatenate([boxes[order], held_regions], axis=0)
        return TrackResult(regions.astype(np.float32), held=len(held_regions),
                           track_ids=track_ids, masked_detections=tuple(order))

    # ------------------------------------------------------------------------------------------ internals

    def _associate(
        self, table: npt.NDArray[np.float64], detections: npt.NDArray[np.intp], taken: set[int]
    ) -> list[tuple[int, int]]:
        """Match one round's detections to the tracks no earlier round took; indices in the full lists."""
        tracks = [t for t in range(table.shape[0]) if t not in taken]
        if not tracks or len(detections) == 0:
            return []
        found = greedy(table[np.ix_(np.asarray(tracks, np.intp), detections)])
        return [(tracks[t], int(detections[d])) for t, d in found]

    def _continues(self, track: Track, now: float, score: float) -> bool:
        """A detection at `refresh_score` or more that continues a face seen at sight within `min_hold_s`,
        held or not yet: a dim face flickering around the threshold (0.31, 0.23, 0.45 on three frames of
        the press clip's dark corner) stays masked between its detections at sight."""
        shortest = min(self.cfg.min_hold_s, self.cfg.hold_s)
        return score >= self.cfg.refresh_score and now - track.last_strong <= shortest + CLOCK_SLACK_S

    def _start(self, box: FloatArray, now: float, score: float, sight: float) -> Track:
        track = Track(self._new_id(), box.astype(np.float32).copy(), now)
        self._credit(track, now, score, sight)
        self._tracks.append(track)
        return track

    def _observe(self, track: Track, box: FloatArray, now: float, score: float, sight: float) -> None:
        dt = now - track.last_seen
        if dt > 1e-6:
            measured = ((box[:2] + box[2:]) - (track.box[:2] + track.box[2:])) / 2 / dt
            track.velocity = (
                VELOCITY_SMOOTHING * measured + (1 - VELOCITY_SMOOTHING) * track.velocity
                if track.hits > 1
                else measured
            ).astype(np.float32)
        # A held face refreshed by a weak detection (0.2 and up): the hold restarts, its evidence does not grow.
        if score < sight and score >= self.cfg.refresh_score and self.holding(track, now):
            track.last_strong = now
        track.box = box.astype(np.float32).copy()
        track.last_seen = now
        track.hits += 1
        self._credit(track, now, score, sight)

    def _credit(self, track: Track, now: float, score: float, sight: float) -> None:
        """Count a detection as evidence: at sight it restarts the hold; confident or repeated, it confirms."""
        if score < sight:
            return
        track.last_strong = now
        track.strong_at.append(now)
        while track.strong_at and now - track.strong_at[0] > self.cfg.confirm_window_s + CLOCK_SLACK_S:
            track.strong_at.popleft()
        if score >= self.cfg.start_score:
            track.confident_hits += 1
        if score >= self.cfg.start_score or len(track.strong_at) >= self.cfg.confirm_hits:
            track.confirmed = True

    def _held_regions(self, held: list[int], predicted: FloatArray, now: float) -> FloatArray:
        """Coasting boxes of held, unmatched tracks, grown a little with age (capped)."""
        if not held:
            return np.zeros((0, 4), np.float32)
        age = np.array([max(0.0, now - self._tracks[i].last_seen) for i in held], np.float32)
        factor = np.minimum(1.0 + self.cfg.grow_per_s * age, self.cfg.max_grow).astype(np.float32)
        return grow(predicted[held], factor)

    def _enforce_limit(self, now: float) -> None:
        """Keep at most `max_tracks` (bounded memory and time): tracks not held go before held ones, each
        kind longest-unseen first, so a burst of weak blobs cannot push a held face out."""
        extra = len(self._tracks) - self.cfg.max_tracks
        if extra > 0:
            self._tracks.sort(key=lambda t: (self.holding(t, now), t.last_seen), reverse=True)
            log.warning("tracker: %d tracks over the limit of %d forgotten", extra, self.cfg.max_tracks)
            del self._tracks[self.cfg.max_tracks :]

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id
