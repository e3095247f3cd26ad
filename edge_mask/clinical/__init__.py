"""Clinical room: what a clinician reads in a face (eye openness, blinks, gaze, head pose, mouth opening),
measured on the device from landmarks, before the face is masked.

Rule: clinical/ imports only the ground (core/, config/) and detect/ (for onnxruntime sessions); never
capture/, mask/, seal/, uplink/, service/, receiver/, tools/ or any network library. Like detection it sees
raw pixels, so nothing it returns is a picture: only points (`landmarks.py`) and numbers (`signals.py`).

The masker reads the signals into each `MaskedFrame` (`clinical.signals`); the seal carries them
(`seal/signals.py`), the `clinical` mask style draws them, the receiver writes and plots them.
"""

from edge_mask.clinical.landmarks import Eye, FaceLandmarks, Landmarker
from edge_mask.clinical.reader import STANDARD_STEPS, ClinicalReader, build_reader, standard_tier
from edge_mask.clinical.signals import Blink, FaceSession, Reading, eye_openness, gaze, head_pose, mouth_opening

__all__ = [
    "STANDARD_STEPS",
    "Blink",
    "ClinicalReader",
    "Eye",
    "FaceLandmarks",
    "FaceSession",
    "Landmarker",
    "Reading",
    "build_reader",
    "eye_openness",
    "gaze",
    "head_pose",
    "mouth_opening",
    "standard_tier",
]
