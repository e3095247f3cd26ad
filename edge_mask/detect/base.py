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


DETECTORS: Registry[Detector] = Registry("detector")


def create_detector(settings: OnnxDetectorConfig | OpenCVYuNetDetectorConfig, models: ModelsConfig) -> Detector:
    """Build the detector backend named by `settings.type`."""
    return DETECTORS.create(settings, models)
