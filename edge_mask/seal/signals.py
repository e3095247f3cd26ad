"""The clinical signals inside the sealed metadata (format 1), and reading them back at the cloud.

Why a format of its own: the signals are the one part of the metadata a clinician reads over time, so it is
versioned apart from the wire version (`"signals": {"v": 1, "faces": [...]}`) and documented with a test
vector in docs/format.md. Each face is a small JSON object, values rounded to 3 decimals, null where the
device gated the reading:

    {"id": track, "o": [right, left], "g": [x, y], "p": [yaw, pitch, roll], "m": mouth,
     "b": [seconds before this frame the blink began, its duration] or null, "a": [right, left] or null}

`o` relative openness, `g` relative gaze (eye widths), `p` degrees relative to the session's start, `m`
mouth opening, `a` absolute openness (ophthalmic tier only). About 80 bytes a face.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from edge_mask.core.types import FaceSignals

VERSION = 1
MAX_FACES = 64
"""More faces than this in one frame's signals is not a device's reading: refused."""
MAX_VALUE = 1.0e6
"""Larger magnitudes (angles, seconds, shares) are not readings: refused before any arithmetic on them."""
CSV_COLUMNS = ("seq", "captured_at", "track_id", "openness_right", "openness_left", "gaze_x", "gaze_y", "yaw",
               "pitch", "roll", "mouth", "blink_began_s_ago", "blink_duration_s", "absolute_openness_right",
               "absolute_openness_left")
"""The receiver's per-stream `signals.csv`: one row per face per frame."""


class SignalsError(ValueError):
    """Signals metadata that is not format 1; the frame is kept, its signals are not."""


def _round(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else round(float(value), 3)


def _values(values: Sequence[float | None] | None) -> list[float | None] | None:
    return None if values is None else [_round(v) for v in values]


def encode(signals: Sequence[FaceSignals], now: float) -> dict[str, Any]:
    """The metadata value for the faces read in a frame captured at monotonic time `now`."""
    faces = []
    for face in signals:
        blink = None
        if face.blink_onset is not None and face.blink_duration_s is not None:
            blink = [_round(now - face.blink_onset), _round(face.blink_duration_s)]
        faces.append({"id": int(face.track_id), "o": _values(face.openness), "g": _values(face.gaze),
                      "p": _values(face.pose), "m": _round(face.mouth), "b": blink,
                      "a": _values(face.absolute_openness)})
    return {"v": VERSION, "faces": faces}


def _numbers(value: Any, count: int, where: str) -> list[float | None] | None:
    if value is None:
        return None
    if not isinstance(value, list) or len(value) != count:
        raise SignalsError(f"{where}: expected a list of {count} numbers or null")
    out: list[float | None] = []
    for item in value:
        if item is None:
            out.append(None)
            continue
        if type(item) not in (int, float) or not -MAX_VALUE <= item <= MAX_VALUE:  # NaN fails the range too
            raise SignalsError(f"{where}: {str(item)[:20]!r} is not a reading")
        out.append(float(item))
    return out


def decode(value: Any) -> list[dict[str, Any]]:
    """Rows (CSV_COLUMNS minus seq and captured_at) from a metadata `signals` value; SignalsError if it is
    not format 1."""
    if not isinstance(value, dict) or type(value.get("v")) is not int or value.get("v") != VERSION \
            or not isinstance(value.get("faces"), list):
        raise SignalsError(f"signals: not format {VERSION}")
    if len(value["faces"]) > MAX_FACES:
        raise SignalsError(f"signals: {len(value['faces'])} faces in one frame (at most {MAX_FACES})")
    rows = []
    for n, face in enumerate(value["faces"]):
        where = f"signals face {n}"
        if not isinstance(face, dict) or type(face.get("id")) is not int or not 0 <= face["id"] < 2**31:
            raise SignalsError(f"{where}: no track id")
        openness = _numbers(face.get("o"), 2, where) or [None, None]
        gaze = _numbers(face.get("g"), 2, where) or [None, None]
        pose = _numbers(face.get("p"), 3, where) or [None, None, None]
        mouth = (_numbers([face.get("m")], 1, where) or [None])[0]
        blink = _numbers(face.get("b"), 2, where) or [None, None]
        absolute = _numbers(face.get("a"), 2, where) or [None, None]
        rows.append(dict(zip(CSV_COLUMNS[2:], [face["id"], *openness, *gaze, *pose, mouth, *blink, *absolute],
                             strict=True)))
    return rows
