"""JPEG encoding of masked frames, the step right before sealing.

Only a `MaskedFrame` can be encoded (type annotation and a runtime check): an encoder that accepted any
array would be a way for unmasked pixels to reach the wire. Backends: `turbojpeg` (PyTurboJPEG over
libjpeg-turbo, the fastest on a Raspberry Pi) and `opencv` (always available). `auto` picks TurboJPEG when
both the Python package and the shared library load, else OpenCV. Imports happen inside the factories so
`import edge_mask` needs neither.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from edge_mask.config import EncodeConfig
from edge_mask.core.errors import UserError
from edge_mask.core.registry import Registry
from edge_mask.core.types import MaskedFrame

log = logging.getLogger(__name__)


class Encoder(Protocol):
    """Turns a masked frame into JPEG bytes."""

    name: str

    def encode(self, frame: MaskedFrame) -> bytes: ...


ENCODERS: Registry[Encoder] = Registry("encode")


def _require_masked(frame: Any) -> MaskedFrame:
    if not isinstance(frame, MaskedFrame):
        raise TypeError(f"only a MaskedFrame can be encoded, got {type(frame).__name__}")
    return frame


class OpenCVEncoder:
    name = "opencv"

    def __init__(self, quality: int) -> None:
        import cv2

        self._cv2 = cv2
        self._params = [int(cv2.IMWRITE_JPEG_QUALITY), int(quality)]

    def encode(self, frame: MaskedFrame) -> bytes:
        frame = _require_masked(frame)
        ok, buf = self._cv2.imencode(".jpg", frame.image, self._params)
        if not ok:
            raise RuntimeError(f"OpenCV failed to JPEG-encode a {frame.width}x{frame.height} frame")
        return bytes(buf)


class TurboJPEGEncoder:
    name = "turbojpeg"

    def __init__(self, quality: int) -> None:
        self._turbo, self._mod = _load_turbojpeg()
        self._quality = int(quality)

    def encode(self, frame: MaskedFrame) -> bytes:
        frame = _require_masked(frame)
        data = self._turbo.encode(
            frame.image, quality=self._quality, pixel_format=self._mod.TJPF_BGR, jpeg_subsample=self._mod.TJSAMP_420
        )
        return bytes(data)


def _load_turbojpeg() -> tuple[Any, Any]:
    """Return (TurboJPEG instance, module) or raise UserError saying what to install."""
    try:
        import turbojpeg
    except ImportError:
        raise UserError(
            "encode.type = 'turbojpeg': the PyTurboJPEG package is not installed; "
            "`pip install 'edge_mask[turbojpeg]'` and install libturbojpeg (apt install libturbojpeg0), "
            "or set encode.type = 'auto'"
        ) from None
    try:
        return turbojpeg.TurboJPEG(), turbojpeg
    except (OSError, RuntimeError, AttributeError) as exc:  # missing or mismatched libturbojpeg
        raise UserError(
            f"encode.type = 'turbojpeg': libturbojpeg cannot be loaded ({exc}); "
            "install it (apt install libturbojpeg0) or set encode.type = 'auto'"
        ) from None


@ENCODERS.register("opencv")
def _opencv(settings: EncodeConfig) -> Encoder:
    return OpenCVEncoder(settings.quality)


@ENCODERS.register("turbojpeg")
def _turbojpeg(settings: EncodeConfig) -> Encoder:
    return TurboJPEGEncoder(settings.quality)


@ENCODERS.register("auto")
def _auto(settings: EncodeConfig) -> Encoder:
    try:
        encoder: Encoder = TurboJPEGEncoder(settings.quality)
    except UserError as exc:
        log.info("JPEG encoder: OpenCV (TurboJPEG unavailable: %s)", exc.message.split(";")[0])
        return OpenCVEncoder(settings.quality)
    log.info("JPEG encoder: TurboJPEG")
    return encoder


def create_encoder(settings: EncodeConfig) -> Encoder:
    """The encoder named by `settings.type` (ConfigError listing the choices for an unknown name)."""
    return ENCODERS.create(settings)
