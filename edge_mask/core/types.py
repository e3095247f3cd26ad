"""Shared frame and detection types.

Three frame types mark where pixels are in the privacy pipeline:

* `RawFrame` comes from a camera and holds identifiable faces. It refuses to be pickled so it cannot be
  shipped to another process or written to disk by accident; only the masker consumes it.
* `MaskedFrame` is what the masker returns. Encoding, sealing and upload accept nothing else. Building one
  requires `MASK_WITNESS`, which only `edge_mask.mask.paint` uses (enforced by tests/test_architecture.py).
* `Detections` is the single validated detector result (boxes, scores, five landmarks per face).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

Image = npt.NDArray[np.uint8]
FloatArray = npt.NDArray[np.float32]


def _check_image(image: Any, what: str) -> None:
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{what}.image: expected a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            f"{what}.image: expected HxWx3 uint8 BGR, got shape {image.shape} dtype {image.dtype}"
        )


@dataclass(frozen=True, eq=False)
class RawFrame:
    """An unmasked camera frame. Lives in memory only, and only until the masker has seen it."""

    image: Image
    seq: int
    captured_at: float
    """Wall-clock capture time (seconds since the epoch), bound into the seal."""
    monotonic: float
    """`time.monotonic()` at capture, for latency and tracker timing."""

    def __post_init__(self) -> None:
        _check_image(self.image, "RawFrame")

    def __reduce__(self) -> Any:
        raise TypeError("RawFrame holds unmasked faces and must never be pickled, queued to a process or stored")

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])


class _Witness:
    """Proof of construction by the masker (see module docstring)."""

    __slots__ = ()


MASK_WITNESS = _Witness()


@dataclass(frozen=True)
class FaceSignals:
    """What a clinician reads in one face of one frame (issue 13), never a picture or a point of it.

    Standard tier: `openness` (right, left eye over each eye's own open baseline: 1 as open as usual, 0
    closed), `gaze` (iris offset against the session's median, eye widths, image right and down), `pose`
    (yaw, pitch, roll in degrees relative to the session's start), `mouth` (inner lip gap over mouth width),
    and a blink that ended with this frame. Ophthalmic tier adds `absolute_openness` (lid gap over eye width
    per eye). None where the reading is gated (head turned, eye occluded, baseline not yet learnt).
    """

    track_id: int
    openness: tuple[float | None, float | None] = (None, None)
    gaze: tuple[float, float] | None = None
    pose: tuple[float, float, float] | None = None
    mouth: float | None = None
    blink_onset: float | None = None
    blink_duration_s: float | None = None
    absolute_openness: tuple[float | None, float | None] | None = None


@dataclass(frozen=True, eq=False)
class MaskedFrame:
    """A frame in which every detected or held face region has been irreversibly masked.

    `fail_closed` is true when detection failed or timed out and the whole frame was masked instead.
    `regions` are the masked rectangles (x1, y1, x2, y2) in frame pixels; `landmarks` the detector's five
    points for faces seen this frame (may be fewer rows than `regions` while the tracker holds a face).
    """

    image: Image
    seq: int
    captured_at: float
    monotonic: float
    faces: int
    fail_closed: bool
    regions: FloatArray
    landmarks: FloatArray
    witness: _Witness = field(repr=False)
    signals: tuple[FaceSignals, ...] = ()
    """Clinical readings of the faces seen this frame (`clinical.signals`; empty when off)."""

    def __post_init__(self) -> None:
        if self.witness is not MASK_WITNESS:
            raise TypeError("MaskedFrame can only be built by edge_mask.mask.paint")
        _check_image(self.image, "MaskedFrame")

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])


@dataclass(frozen=True, eq=False)
class Detections:
    """Faces found in one frame, in that frame's pixel coordinates.

    boxes: (N, 4) float32 x1, y1, x2, y2; scores: (N,) float32 in [0, 1];
    landmarks: (N, 5, 2) float32 (right eye, left eye, nose tip, right and left mouth corner).
    """

    boxes: FloatArray
    scores: FloatArray
    landmarks: FloatArray

    def __post_init__(self) -> None:
        n = _rows(self.boxes, "boxes")
        _expect(self.boxes, "boxes", (n, 4))
        _expect(self.scores, "scores", (n,))
        _expect(self.landmarks, "landmarks", (n, 5, 2))
        if n and not np.all(self.boxes[:, 2:] >= self.boxes[:, :2]):
            raise ValueError("Detections.boxes: expected x2 >= x1 and y2 >= y1 for every box")

    @classmethod
    def empty(cls) -> Detections:
        return cls(
            boxes=np.zeros((0, 4), np.float32),
            scores=np.zeros((0,), np.float32),
            landmarks=np.zeros((0, 5, 2), np.float32),
        )

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def select(self, keep: npt.NDArray[Any]) -> Detections:
        """Subset by boolean mask or index array."""
        return Detections(self.boxes[keep], self.scores[keep], self.landmarks[keep])

    def scaled(self, sx: float, sy: float) -> Detections:
        """Map coordinates by per-axis scale factors (e.g. from detection resolution back to the frame)."""
        scale = np.array([sx, sy], np.float32)
        return Detections(
            (self.boxes.reshape(-1, 2, 2) * scale).reshape(-1, 4).astype(np.float32),
            self.scores,
            (self.landmarks * scale).astype(np.float32),
        )


def _rows(array: Any, name: str) -> int:
    if not isinstance(array, np.ndarray) or array.ndim == 0:
        raise TypeError(f"Detections.{name}: expected a numpy array, got {type(array).__name__}")
    return int(array.shape[0])


def _expect(array: Any, name: str, shape: tuple[int, ...]) -> None:
    if not isinstance(array, np.ndarray):
        raise TypeError(f"Detections.{name}: expected a numpy array, got {type(array).__name__}")
    if array.shape != shape:
        raise ValueError(f"Detections.{name}: expected shape {shape}, got {array.shape}")
    if array.dtype != np.float32:
        raise ValueError(f"Detections.{name}: expected dtype float32, got {array.dtype}")
