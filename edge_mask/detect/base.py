"""The `Detector` protocol and its `type`-keyed registry (backends register in their own modules)."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from edge_mask.config import ModelsConfig, OnnxDetectorConfig, OpenCVYuNetDetectorConfig
from edge_mask.core.registry import Registry
from edge_mask.core.types import Detections, FloatArray, Image


class Detector(Protocol):
    """Finds faces in one full-resolution BGR frame; boxes come back in that frame's pixels."""

    def detect(self, image: Image) -> Detections: ...

    def close(self) -> None: ...


@runtime_checkable
class TimedDetector(Protocol):
    """A detector that runs frames on threads of its own (a batch run's look-ahead workers) and can wait
    for one frame's result within a deadline: the masker then waits on it directly instead of handing each
    frame to its detector thread first (two thread hand-offs a frame less, 2.6% of a batch run)."""

    def detect(self, image: Image) -> Detections: ...

    def detect_within(self, image: Image, timeout: float) -> Detections:
        """This frame's detections, or what the detector raised for it; `DeadlineMissed` when they are not
        ready within `timeout` seconds, `DetectorBusy` when every worker is still on a frame that missed
        its deadline (the frame is then not waited for at all)."""
        ...

    def close(self) -> None: ...


class DeadlineMissed(TimeoutError):
    """A `TimedDetector` had no detections for the frame within the deadline (the frame fails closed as
    `detector_timeout`; a TimeoutError the detector raises itself stays a `detector_error`)."""


class DetectorBusy(Exception):
    """Every worker of a `TimedDetector` is still on a frame that missed its deadline (a hang): new frames
    fail closed at once as `detector_busy` instead of each waiting out a deadline."""


class TooManyFaces(Exception):
    """More faces survived duplicate suppression than `detector.max_faces`.

    Why an error and not the strongest `max_faces`: the faces left out would be painted over by nobody, so
    a crowd beyond the cap would leak its weakest (smallest, farthest) faces. The masker treats it like any
    detector failure: the frame fails closed (fully masked or dropped) and is counted as `too_many_faces`.
    """

    def __init__(self, found: int, max_faces: int) -> None:
        super().__init__(f"more than {max_faces} faces (detector.max_faces) in one frame: {found}+")
        self.max_faces = max_faces


def cap_faces(scores: FloatArray, max_faces: int, sight: float) -> int:
    """How many of these faces (after suppression, best first, searched up to max_faces + 1) to keep.

    Faces scoring `sight` or more count against `max_faces`: more raise TooManyFaces. Below it, the weakest
    beyond `max_faces` in all are left out; they could only extend faces the tracker already holds.
    """
    count = int(np.count_nonzero(scores >= sight))
    if count > max_faces:
        raise TooManyFaces(count, max_faces)
    return min(len(scores), max_faces)


def detection_floor(settings: OnnxDetectorConfig | OpenCVYuNetDetectorConfig) -> float:
    """The lowest score a backend reports: the weak-detection floor, or the threshold if that is lower."""
    return min(settings.threshold, settings.weak_threshold)


DETECTORS: Registry[Detector] = Registry("detector")


def create_detector(settings: OnnxDetectorConfig | OpenCVYuNetDetectorConfig, models: ModelsConfig) -> Detector:
    """Build the detector backend named by `settings.type`."""
    return DETECTORS.create(settings, models)
