"""Masking room: tracker, mask geometry and styles, and the fail-closed masker (`RawFrame` -> `MaskedFrame`).

Rule: mask/ imports the ground (core/, config/) and the detection room's face only; never seal/, uplink/,
receiver/, service/, tools/ or any network library. `paint.py` is the only module that may build a
`MaskedFrame` (tests/test_architecture.py).

Add a mask style: a painter function registered in `paint.py`'s `STYLES`, and its name in
`MaskConfig.style`.
"""

from edge_mask.mask.engine import FaceMasker, build_masker
from edge_mask.mask.paint import Painter, mask_faces, mask_whole_frame
from edge_mask.mask.track import Tracker

__all__ = ["FaceMasker", "Painter", "Tracker", "build_masker", "mask_faces", "mask_whole_frame"]
