"""Metric arithmetic for the evaluation commands, free of models and I/O so it can be unit-tested.

Why its own module: a bug in how a leak or a miss is counted would make every report lie in the
product's favour. Everything here works on plain arrays (boxes as x1, y1, x2, y2 float32) and boolean
pixel masks, and is tested on small synthetic cases in tests/test_eval_metrics.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_mask.core.boxes import iou_matrix
from edge_mask.core.types import FloatArray, Image

BoolMask = npt.NDArray[np.bool_]


def as_boxes(boxes: Any) -> FloatArray:
    """Coerce to an (N, 4) float32 array (an empty input gives shape (0, 4))."""
    array = np.asarray(boxes, np.float32)
    return array.reshape(-1, 4)


def masked_pixels(original: Image, masked: Image, color: Sequence[int] | None = None) -> BoolMask:
    """Which pixels the masker replaced.

    A pixel counts as masked when it differs from the original, or (for solid fills) when it equals the
    fill colour exactly: a solid black mask over an already black pixel still hides it. Use a colour that
    is rare in photos (the coverage evaluation uses magenta) so the second rule cannot flatter the figure.
    """
    if original.shape != masked.shape:
        raise ValueError(f"original {original.shape} and masked {masked.shape} frames differ in shape")
    changed: BoolMask = np.any(original != masked, axis=2)
    if color is not None:
        changed |= np.all(masked == np.asarray(color, np.uint8)[None, None, :], axis=2)
    return changed


def box_coverage(box: Any, mask: BoolMask) -> float:
    """Share of the box's pixels (clipped to the frame) that are masked; 1.0 for a box fully outside."""
    height, width = mask.shape
    x1, y1, x2, y2 = as_boxes(box)[0]
    left, top = int(np.clip(np.floor(x1), 0, width)), int(np.clip(np.floor(y1), 0, height))
    right, bottom = int(np.clip(np.ceil(x2), 0, width)), int(np.clip(np.ceil(y2), 0, height))
    if right <= left or bottom <= top:
        return 1.0
    return float(mask[top:bottom, left:right].mean())


def recall_at_iou(truth: Any, found: Any, iou: float = 0.5) -> tuple[int, int]:
    """(matched, total): ground-truth boxes with a one-to-one greedy match of IoU >= `iou`."""
    truth, found = as_boxes(truth), as_boxes(found)
    if not len(truth):
        return 0, 0
    if not len(found):
        return 0, len(truth)
    overlaps = iou_matrix(truth, found)
    matched = 0
    used: set[int] = set()
    for t in np.argsort(-overlaps.max(axis=1), kind="stable"):
        order = np.argsort(-overlaps[t], kind="stable")
        for f in order:
            if overlaps[t, f] < iou:
                break
            if int(f) not in used:
                used.add(int(f))
                matched += 1
                break
    return matched, len(truth)


def false_positive_regions(regions: Any, truth: Any, min_inside: float = 0.5) -> BoolMask:
    """Mask regions that hide no ground-truth face: none of the truth boxes has `min_inside` of its area
    inside the region. Returns one flag per region."""
    regions, truth = as_boxes(regions), as_boxes(truth)
    if not len(regions):
        return np.zeros((0,), np.bool_)
    if not len(truth):
        return np.ones((len(regions),), np.bool_)
    ix1 = np.maximum(regions[:, None, 0], truth[None, :, 0])
    iy1 = np.maximum(regions[:, None, 1], truth[None, :, 1])
    ix2 = np.minimum(regions[:, None, 2], truth[None, :, 2])
    iy2 = np.minimum(regions[:, None, 3], truth[None, :, 3])
    inter = np.clip(ix2 - ix1, 0, None) * np.clip(iy2 - iy1, 0, None)
    area = np.maximum((truth[:, 2] - truth[:, 0]) * (truth[:, 3] - truth[:, 1]), 1e-9)
    result: BoolMask = ~np.any(inter / area[None, :] >= min_inside, axis=1)
    return result


def region_area_fraction(regions: Any, height: int, width: int) -> float:
    """Share of the frame covered by the union of the given boxes (clipped)."""
    canvas = np.zeros((height, width), np.bool_)
    for x1, y1, x2, y2 in as_boxes(regions):
        left, top = max(0, int(np.floor(x1))), max(0, int(np.floor(y1)))
        right, bottom = min(width, int(np.ceil(x2))), min(height, int(np.ceil(y2)))
        if right > left and bottom > top:
            canvas[top:bottom, left:right] = True
    return float(canvas.mean())


# ------------------------------------------------------------------------------------------------ leaks


def leaked_in_frame(original: Any, masked: Any, iou: float = 0.3) -> BoolMask:
    """For each judge detection in the original frame: is there a judge detection in the masked frame
    overlapping it by IoU >= `iou`? (A face the judge still sees where it saw one is a leak.)"""
    original, masked = as_boxes(original), as_boxes(masked)
    if not len(original) or not len(masked):
        return np.zeros((len(original),), np.bool_)
    result: BoolMask = iou_matrix(original, masked).max(axis=1) >= iou
    return result


def showing_original(before: Any, after: Any, boxes: Any, min_share: float = 0.25) -> BoolMask:
    """For each judge box found in the masked frame `after`: does its centre still show the original?

    The judge reads a solid oval on a body as a face (score up to 0.87 on the press clip), and such a
    "face" exposes nobody: every pixel of it is paint. A detection counts as showing the person only when at
    least `min_share` of the pixels in the central half of its box (half the width, half the height) are
    byte-identical to the original frame `before`. Masks replace every pixel they cover (solid fill, noise
    on pixelate and blur), so a face with any visible part of its centre still counts.
    """
    boxes = as_boxes(boxes)
    flags = np.zeros((len(boxes),), np.bool_)
    height, width = before.shape[:2]
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        w, h = x2 - x1, y2 - y1
        cx1, cy1 = int(max(0, x1 + w / 4)), int(max(0, y1 + h / 4))
        cx2, cy2 = int(min(width, np.ceil(x2 - w / 4))), int(min(height, np.ceil(y2 - h / 4)))
        if cx2 <= cx1 or cy2 <= cy1:
            continue
        same = np.all(before[cy1:cy2, cx1:cx2] == after[cy1:cy2, cx1:cx2], axis=2)
        flags[i] = float(same.mean()) >= min_share
    return flags


@dataclass
class Track:
    """One face followed through a clip by the judge; `leaked_frames` lists frames where it leaked."""

    track_id: int
    box: FloatArray
    last_frame: int
    frames: list[int] = field(default_factory=list)
    leaked_frames: list[int] = field(default_factory=list)

    @property
    def leaked(self) -> bool:
        return bool(self.leaked_frames)


class TrackLinker:
    """Links per-frame judge detections into tracks by IoU, greedy best-first.

    Why tracks: the privacy question is "was this person exposed at all", so a face that leaks in one
    frame of a hundred is one leaked person, and counting per track keeps that visible beside the
    per-frame figure. A track survives `max_gap` frames without a detection (the judge also blinks).
    """

    def __init__(self, iou: float = 0.3, max_gap: int = 5):
        self.iou = iou
        self.max_gap = max_gap
        self.tracks: list[Track] = []

    def update(self, frame: int, boxes: Any, leaked: Any) -> list[int]:
        """Add one frame's detections with their leak flags; returns the track id of each detection."""
        boxes = as_boxes(boxes)
        flags = np.asarray(leaked, np.bool_).reshape(-1)
        if flags.shape[0] != boxes.shape[0]:
            raise ValueError(f"{boxes.shape[0]} boxes but {flags.shape[0]} leak flags")
        live = [t for t in self.tracks if frame - t.last_frame <= self.max_gap]
        ids = [-1] * len(boxes)
        if live and len(boxes):
            overlaps = iou_matrix(boxes, np.stack([t.box for t in live]))
            pairs = sorted(
                ((float(overlaps[i, j]), i, j) for i in range(len(boxes)) for j in range(len(live))), reverse=True
            )
            taken: set[int] = set()
            for value, i, j in pairs:
                if value < self.iou:
                    break
                if ids[i] >= 0 or j in taken:
                    continue
                ids[i] = live[j].track_id
                taken.add(j)
        for i, box in enumerate(boxes):
            if ids[i] < 0:
                track = Track(track_id=len(self.tracks), box=box, last_frame=frame)
                self.tracks.append(track)
                ids[i] = track.track_id
            track = self.tracks[ids[i]]
            track.box = box
            track.last_frame = frame
            track.frames.append(frame)
            if flags[i]:
                track.leaked_frames.append(frame)
        return ids


@dataclass
class ClipLeaks:
    """Leak counts for one clip."""

    name: str
    frames: int = 0
    judged_frames: int = 0
    judge_faces: int = 0
    leaked_faces: int = 0
    leaked_frames: int = 0
    masked_frame_faces: int = 0
    """Judge detections in masked frames that overlap no original detection (reactions to the mask)."""
    fail_closed_frames: int = 0
    """Frames masked whole (or dropped) because detection failed or missed its deadline."""
    tracks: int = 0
    leaked_tracks: int = 0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def summarize_clip(name: str, per_frame: Sequence[tuple[Any, Any]], iou: float = 0.3, max_gap: int = 5) -> ClipLeaks:
    """Count leaks from per-frame (original judge boxes, masked judge boxes); frame index = position."""
    summary = ClipLeaks(name=name)
    linker = TrackLinker(iou=iou, max_gap=max_gap)
    for index, (original, masked) in enumerate(per_frame):
        flags = leaked_in_frame(original, masked, iou)
        linker.update(index, original, flags)
        summary.judged_frames += 1
        summary.judge_faces += len(flags)
        summary.leaked_faces += int(flags.sum())
        summary.leaked_frames += int(flags.any())
        summary.masked_frame_faces += int((~leaked_in_frame(masked, original, iou)).sum())
    summary.frames = summary.judged_frames
    summary.tracks = len(linker.tracks)
    summary.leaked_tracks = sum(t.leaked for t in linker.tracks)
    return summary


# ------------------------------------------------------------------------------------------ re-identification


def share_below(distances: Any, threshold: float = 0.6) -> float:
    """Share of distances under the face_recognition match threshold (0.6 by its convention)."""
    values = np.asarray(distances, np.float64).reshape(-1)
    return float((values < threshold).mean()) if values.size else 0.0


def rank1(probe: Any, gallery: Any, labels: Sequence[str]) -> tuple[str, float]:
    """Nearest gallery identity (Euclidean distance on 128-d encodings) and its distance."""
    gallery = np.asarray(gallery, np.float64)
    if not len(gallery):
        raise ValueError("empty gallery")
    distances = np.linalg.norm(gallery - np.asarray(probe, np.float64)[None, :], axis=1)
    best = int(np.argmin(distances))
    return labels[best], float(distances[best])


def ratio_stats(values: Sequence[float]) -> dict[str, float]:
    """min / median / max of a list of ratios (e.g. frames/s of ours over deface's, one per round)."""
    array = np.asarray(values, np.float64)
    if not array.size:
        raise ValueError("no values")
    return {"min": float(array.min()), "median": float(np.median(array)), "max": float(array.max())}
