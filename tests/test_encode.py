"""JPEG encoders: only masked frames go in, decodable JPEGs of the same size come out, and `auto` picks
TurboJPEG when it loads and OpenCV otherwise. Frames are real frames of the shared clip, masked by
edge_mask.mask.paint (fixed boxes: detection is not under test)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from edge_mask.config import EncodeConfig, MaskConfig
from edge_mask.core.errors import ConfigError, UserError
from edge_mask.core.types import MaskedFrame, RawFrame
from edge_mask.mask.paint import Painter, mask_faces
from edge_mask.seal.encode import ENCODERS, OpenCVEncoder, create_encoder


def _turbo_available() -> bool:
    try:
        import turbojpeg

        turbojpeg.TurboJPEG()
    except (ImportError, OSError, RuntimeError, AttributeError):
        return False
    return True


TURBO = _turbo_available()


@pytest.fixture(scope="module")
def frame(shared_data: Path) -> MaskedFrame:
    from edge_mask.capture import VideoReader

    with VideoReader(shared_data / "video" / "short_hamilton_clip.mp4") as reader:
        image = next(iter(reader), None)
    assert image is not None
    raw = RawFrame(image, seq=0, captured_at=0.0, monotonic=0.0)
    box = np.array([[250, 30, 360, 170]], np.float32)
    return mask_faces(raw, box, np.zeros((1, 5, 2), np.float32), Painter(MaskConfig()))


def decode(data: bytes) -> np.ndarray:
    import cv2

    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None, "not a decodable JPEG"
    return image


NO_TURBO = "PyTurboJPEG or libturbojpeg missing (pip install '.[turbojpeg]'; apt install libturbojpeg0)"


@pytest.mark.parametrize(
    "kind", ["opencv", pytest.param("turbojpeg", marks=pytest.mark.skipif(not TURBO, reason=NO_TURBO))]
)
def test_encoders_make_faithful_jpegs_of_the_masked_frame(frame: MaskedFrame, kind: str) -> None:
    encoder = create_encoder(EncodeConfig(type=kind, quality=90))  # type: ignore[arg-type]
    assert encoder.name == kind
    data = encoder.encode(frame)
    assert data[:2] == b"\xff\xd8" and data[-2:] == b"\xff\xd9"
    image = decode(data)
    assert image.shape == frame.image.shape
    assert float(np.abs(image.astype(np.int16) - frame.image.astype(np.int16)).mean()) < 4.0
    # The masked region is still masked after compression (solid black ellipse centre).
    assert int(image[100, 305].max()) < 30
    low = create_encoder(EncodeConfig(type=kind, quality=30)).encode(frame)  # type: ignore[arg-type]
    assert len(low) < len(data)  # quality is honoured


def test_only_masked_frames_can_be_encoded(frame: MaskedFrame) -> None:
    encoder = OpenCVEncoder(80)
    raw = RawFrame(frame.image.copy(), seq=0, captured_at=0.0, monotonic=0.0)
    for bogus in (raw, frame.image):
        with pytest.raises(TypeError, match="only a MaskedFrame"):
            encoder.encode(bogus)  # type: ignore[arg-type]


def test_auto_prefers_turbojpeg_and_falls_back_to_opencv(
    frame: MaskedFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert create_encoder(EncodeConfig()).name == ("turbojpeg" if TURBO else "opencv")
    monkeypatch.setitem(sys.modules, "turbojpeg", None)  # as if PyTurboJPEG were not installed
    encoder = create_encoder(EncodeConfig(type="auto"))
    assert encoder.name == "opencv" and decode(encoder.encode(frame)).shape == frame.image.shape
    with pytest.raises(UserError, match=r"encode.type = 'turbojpeg': the PyTurboJPEG package is not installed"):
        create_encoder(EncodeConfig(type="turbojpeg"))


def test_unknown_encoder_names_the_choices() -> None:
    class Settings:
        type = "webp"

    with pytest.raises(ConfigError, match="expected one of: auto, opencv, turbojpeg"):
        ENCODERS.create(Settings())
