"""The `Detector` protocol and its `type`-keyed registry (backends register in their own modules)."""

from __future__ import annotations

from typing import Protocol

from edge_mask.config import ModelsConfig, OnnxDetectorConfig, OpenCVYuNetDetectorConfig
from edge_mask.core.registry import Registry
from edge_mask.core.types import Detections, Image


class Detector(Protocol):
    """Finds faces in one full-resolution BGR frame; boxes come back in that frame's pixels."""

    def detect(self, image: Image) -> Detections: ...

    def close(self) -> None: ...


class TooManyFaces(Exception):
    """More faces survived duplicate suppression than `detector.max_faces`.

    Why an error and not the strongest `max_faces`: the faces left out would be painted over by nobody, so
    a crowd beyond the cap would leak its weakest (smallest, farthest) faces. The masker treats it like any
    detector failure: the frame fails closed (fully masked or dropped) and is counted as `too_many_faces`.
    """

    def __init__(self, found: int, max_faces: int) -> None:
        super().__init__(f"more than {max_faces} faces (detector.max_faces) in one frame: {found}+")
        self.max_faces = max_faces


def check_face_count(count: int, max_faces: int) -> None:
    """Raise TooManyFaces when `count` (after suppression, searched up to max_faces + 1) exceeds the cap."""
    if count > max_faces:
        raise TooManyFaces(count, max_faces)


DETECTORS: Registry[Detector] = Registry("detector")


def create_detector(settings: OnnxDetectorConfig | OpenCVYuNetDetectorConfig, models: ModelsConfig) -> Detector:
    """Build the detector backend named by `settings.type`."""
    return DETECTORS.create(settings, models)
