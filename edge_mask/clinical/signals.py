"""Clinical signals from landmarks: eye openness, blinks, gaze, head pose and mouth opening, relative to the
session's own baseline, per face.

Why relative: people's eyes differ (a fixed openness cut-off calls narrow eyes closed), and a relative
reading says less about who someone is (issue 13: absolute per-eye openness linked halves of the same
person's clips 78% of the time, relative gaze 11%). So each eye's openness is divided by its own rolling
baseline (a high percentile of that eye's recent readings: the eye as it looks open), gaze is the iris offset
minus its median over the last `BASELINE_S` seconds (a look held longer becomes the new straight ahead),
head pose is relative to the pose at the session's start, mouth opening is the
opening above the mouth's own rest.

Readings are gated: none for a face turned more than `MAX_YAW_DEG` or rolled more than `MAX_ROLL_DEG` (the
models read profiles badly), and none for an eye whose contour is not a plausible eye (a hand over it).
Pure geometry on points (see `landmarks.py` for the models); no I/O, no clocks: time is passed in.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge_mask.clinical.landmarks import EYE_CORNERS, LOWER_LID, UPPER_LID, Eye, FaceLandmarks
from edge_mask.core.types import FloatArray

MAX_YAW_DEG = 30.0
MAX_ROLL_DEG = 30.0
BASELINE_S = 10.0
"""How far back each eye's open baseline looks."""
BASELINE_PERCENTILE = 80.0
"""The baseline is this percentile of the eye's recent openness: open, not wide-eyed, not mid-blink."""
MIN_BASELINE_READINGS = 15
"""Readings (half a second at 30 fps) before an eye's baseline is trusted: a session that starts mid-blink
must not learn "closed" as open."""
RATE_WINDOW_S = 60.0
MOUTH_REST_PERCENTILE = 10.0
"""The mouth at rest: this percentile of its recent opening; the reading is the opening above it (a
person's lips at rest differ, and an absolute gap would say whose they are)."""
CLOSED_BELOW = 0.5
"""An eye is closed when its openness is under this share of its baseline (both eyes, for a blink)."""
MAX_BLINK_S = 0.5
"""A closure longer than this is eyes closed, not a blink."""
PLAUSIBLE_OPENNESS = (0.0, 0.8)
"""Lid gap over eye width outside this range is not an eye (the contour of a hand, or of nothing)."""
CHIN, FOREHEAD = 152, 10
UPPER_LIP, LOWER_LIP = 13, 14
MOUTH_CORNERS = (61, 291)


def _eye_frame(points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float] | None:
    """(centre, axis pointing image-right, normal pointing image-down, width) of an eye's corner line;
    the same for both eyes whichever corner the contour starts at."""
    corner_a, corner_b = points[LOWER_LID[0]], points[LOWER_LID[-1]]
    width = float(np.hypot(*(corner_b - corner_a)))
    if width < 1e-6:
        return None
    axis = (corner_b - corner_a) / width
    if axis[0] < 0:
        axis = -axis
    return (corner_a + corner_b) / 2, axis, np.array([-axis[1], axis[0]]), width


def is_eye(eye: Eye, openness: float) -> bool:
    """A contour and iris that can be an eye: finite, with a plausible lid gap (not the outline of a hand)."""
    finite = bool(np.all(np.isfinite(eye.contour)) and np.all(np.isfinite(eye.iris)))
    return finite and PLAUSIBLE_OPENNESS[0] <= openness <= PLAUSIBLE_OPENNESS[1]


def eye_openness(contour: FloatArray) -> float:
    """Gap between the upper and the lower lid (medians across the eye) over the corner-to-corner width
    (0 = closed)."""
    points = np.asarray(contour, np.float64).reshape(-1, 2)
    frame = _eye_frame(points)
    if frame is None:
        return 0.0
    _, _, down, width = frame
    upper = points[list(UPPER_LID)] @ down
    lower = points[list(LOWER_LID[1:-1])] @ down
    return float(max(0.0, float(np.median(lower) - np.median(upper))) / width)


def gaze(eye: Eye) -> tuple[float, float]:
    """Iris centre offset from the eye's centre, image-right and image-down along the corner line, in eye
    widths."""
    points = np.asarray(eye.contour, np.float64).reshape(-1, 2)
    frame = _eye_frame(points)
    if frame is None:
        return 0.0, 0.0
    centre, right, down, width = frame
    offset = np.asarray(eye.iris, np.float64).reshape(-1, 2)[0] - centre
    return float(offset @ right) / width, float(offset @ down) / width


def head_pose(mesh: FloatArray) -> tuple[float, float, float]:
    """(yaw, pitch, roll) in degrees from the mesh's 3-D points (x, y, depth): yaw and roll from the line
    between the eyes (turned in depth, tilted in the picture), pitch from the line from forehead to chin.
    0, 0, 0 for a face looking straight at the camera; approximate, and read relative to the session's start."""
    points = np.asarray(mesh, np.float64).reshape(-1, 3)
    (r_out, r_in), (l_in, l_out) = EYE_CORNERS
    right = (points[r_out] + points[r_in]) / 2
    left = (points[l_in] + points[l_out]) / 2
    across = left - right
    if float(np.hypot(across[0], across[1])) < 1e-6:
        return 0.0, 0.0, 0.0
    yaw = math.degrees(math.atan2(across[2], math.hypot(across[0], across[1])))
    roll = math.degrees(math.atan2(across[1], across[0]))
    vertical = points[CHIN] - points[FOREHEAD]
    pitch = math.degrees(math.atan2(-vertical[2], math.hypot(vertical[0], vertical[1])))
    return yaw, pitch, roll


def mouth_opening(mesh: FloatArray) -> float:
    """Inner lip gap over the mouth's width (0 = closed)."""
    points = np.asarray(mesh, np.float64).reshape(len(mesh), -1)[:, :2]
    width = float(np.hypot(*(points[MOUTH_CORNERS[1]] - points[MOUTH_CORNERS[0]])))
    return float(np.hypot(*(points[LOWER_LIP] - points[UPPER_LIP]))) / width if width > 1e-6 else 0.0


@dataclass(frozen=True)
class Blink:
    onset: float
    """Time (s) the eyes were first seen closed."""
    duration_s: float


@dataclass(frozen=True)
class Reading:
    """One face, one frame: the standard tier (relative values; None where gated), and `absolute`, what
    the ophthalmic tier adds."""

    openness: tuple[float | None, float | None]
    """Right and left eye openness over their own open baseline (1 = as open as usual, 0 = closed)."""
    gaze: tuple[float, float] | None
    """Mean iris offset of the eyes read, against its recent median, in eye widths (right, down)."""
    pose: tuple[float, float, float] | None
    """Yaw, pitch, roll in degrees relative to the session's first reading."""
    mouth: float | None
    """Mouth opening above the face's own rest (0 = as closed as usual)."""
    blink: Blink | None = None
    """A blink that ended with this frame."""
    absolute: tuple[float | None, float | None] = (None, None)
    """Right and left lid gap over eye width, for the eyes read (not relative: more identifying)."""


def _keep_recent(window: deque[Any], now: float, span: float = BASELINE_S) -> None:
    """Drop readings older than `span` seconds from a time-ordered window."""
    while window and now - window[0][0] > span:
        window.popleft()


@dataclass
class _EyeBaseline:
    readings: deque[tuple[float, float]] = field(default_factory=deque)

    def add(self, now: float, value: float) -> float | None:
        self.readings.append((now, value))
        _keep_recent(self.readings, now)
        if len(self.readings) < MIN_BASELINE_READINGS:
            return None
        baseline = float(np.percentile([v for _, v in self.readings], BASELINE_PERCENTILE))
        return value / baseline if baseline > 1e-6 else None


class FaceSession:
    """The signals of one tracked face over a session: baselines, the pose at start, blinks in progress."""

    def __init__(self) -> None:
        self._eyes = (_EyeBaseline(), _EyeBaseline())
        self._start_pose: tuple[float, float, float] | None = None
        self._gazes: deque[tuple[float, float, float]] = deque()
        self._mouths: deque[tuple[float, float]] = deque()
        self._closed_since: float | None = None
        self.blinks: deque[Blink] = deque()
        """Blinks of the last `RATE_WINDOW_S` seconds."""

    def update(self, landmarks: FaceLandmarks, now: float) -> Reading:
        yaw, pitch, roll = head_pose(landmarks.mesh)
        finite = bool(np.all(np.isfinite(landmarks.mesh))) and all(math.isfinite(v) for v in (yaw, pitch, roll))
        if not finite or abs(yaw) > MAX_YAW_DEG or abs(roll) > MAX_ROLL_DEG:
            self._closed_since = None  # a blink cannot be told through a turned head
            return Reading((None, None), None, None, None)
        if self._start_pose is None:
            self._start_pose = (yaw, pitch, roll)
        pose = (yaw - self._start_pose[0], pitch - self._start_pose[1], roll - self._start_pose[2])
        openness: list[float | None] = []
        absolute: list[float | None] = []
        seen: list[Eye] = []
        for eye, baseline in zip(landmarks.eyes, self._eyes, strict=True):
            raw = eye_openness(eye.contour)
            plausible = is_eye(eye, raw)
            openness.append(baseline.add(now, raw) if plausible else None)
            absolute.append(raw if plausible else None)
            seen += [eye] if plausible else []
        relative_gaze = None
        if seen:  # an occluded eye says nothing of where the other looks
            along, across = (float(v) for v in np.mean([gaze(eye) for eye in seen], axis=0))
            self._gazes.append((now, along, across))
            _keep_recent(self._gazes, now)
            centre = np.median(np.array([(a, c) for _, a, c in self._gazes]), axis=0)
            relative_gaze = (along - float(centre[0]), across - float(centre[1]))
        blink = self._blink(now, openness)
        mouth = mouth_opening(landmarks.mesh)
        self._mouths.append((now, mouth))
        _keep_recent(self._mouths, now)
        closed = float(np.percentile([m for _, m in self._mouths], MOUTH_REST_PERCENTILE))
        return Reading((openness[0], openness[1]), relative_gaze, pose, max(0.0, mouth - closed), blink,
                       (absolute[0], absolute[1]))

    def _blink(self, now: float, openness: list[float | None]) -> Blink | None:
        if any(value is None for value in openness):
            self._closed_since = None
            return None
        closed = all(value is not None and value < CLOSED_BELOW for value in openness)
        if closed:
            if self._closed_since is None:
                self._closed_since = now
            return None
        if self._closed_since is None:
            return None
        onset, self._closed_since = self._closed_since, None
        duration = now - onset
        if duration > MAX_BLINK_S:
            return None
        blink = Blink(onset, duration)
        self.blinks.append(blink)
        while self.blinks and now - self.blinks[0].onset > RATE_WINDOW_S:
            self.blinks.popleft()
        return blink

    def blink_rate(self, now: float) -> float:
        """Blinks per minute over the last `RATE_WINDOW_S` seconds."""
        recent = [b for b in self.blinks if now - b.onset <= RATE_WINDOW_S]
        return 60.0 * len(recent) / RATE_WINDOW_S
