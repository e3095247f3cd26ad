"""Masking room: tracker, mask geometry and styles, and the fail-closed masker (`RawFrame` -> `MaskedFrame`).

Rule: mask/ imports the ground (core/, config/) and the detection room's face only; never seal/, uplink/,
receiver/, service/, tools/ or any network library. `paint.py` is the only module that may build a
`MaskedFrame` (tests/test_architecture.py).

Add a mask style: a class with the `Style` protocol registered in `styles.py`'s `STYLES`, and its name in
`MaskConfig.style`. Add a masker: a factory registered in `MASKERS` (`base.py`) and its name in
`MaskConfig.masker`.
"""

from edge_mask.mask.base import MASKERS, Masker, build_masker
from edge_mask.mask.engine import FaceMasker, face_masker_around
from edge_mask.mask.paint import Painter, mask_faces, mask_whole_frame
from edge_mask.mask.styles import STYLES, Style
from edge_mask.mask.track import Tracker

__all__ = [
    "MASKERS",
    "STYLES",
    "FaceMasker",
    "Masker",
    "Painter",
    "Style",
    "Tracker",
    "build_masker",
    "face_masker_around",
    "mask_faces",
    "mask_whole_frame",
]
