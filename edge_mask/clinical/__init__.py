"""Clinical room: what a clinician reads in a face (eye openness, blinks, gaze, head pose, mouth opening),
measured on the device from landmarks, before the face is masked.

Rule: clinical/ imports only the ground (core/, config/) and detect/ (for onnxruntime sessions); never
capture/, mask/, seal/, uplink/, service/, receiver/, tools/ or any network library. Like detection it sees
raw pixels, so nothing it returns is a picture: only points (`landmarks.py`) and numbers (`signals.py`).

Status (issue 13): the masker reads the signals into each `MaskedFrame` (`clinical.signals`); they are not
yet sealed, drawn by a mask style or plotted at the cloud.
"""

from edge_mask.clinical.landmarks import Eye, FaceLandmarks, Landmarker
from edge_mask.clinical.reader import ClinicalReader, build_reader
from edge_mask.clinical.signals import Blink, FaceSession, Reading, eye_openness, gaze, head_pose, mouth_opening

__all__ = [
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
]
