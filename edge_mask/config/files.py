"""The config files: a device's (`EdgeConfig`), a batch run's (`MaskerConfig`), the cloud's
(`ReceiverConfig`), and loading them with errors that name file, key, value and what is expected.

Relative paths in a config file are resolved against the file's directory, so a provisioned bundle
(`config.toml` beside its keys) can be moved as a whole. Single keys can be overridden from the
environment: `EDGE_MASK__CAMERA__FPS=15` sets `camera.fps`.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, Field, ValidationError, model_validator

from edge_mask.config.base import ENV_PREFIX, ConfigPath, Positive, PositiveInt, Section
from edge_mask.config.stages import (
    BrokerConfig,
    CameraConfig,
    ClinicalConfig,
    DetectorConfig,
    EncodeConfig,
    MaskConfig,
    ModelsConfig,
    OnnxDetectorConfig,
    OpenCVCameraConfig,
    SealConfig,
    ServiceConfig,
    SpoolConfig,
    TrackerConfig,
    UplinkConfig,
)
from edge_mask.core.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 (Raspberry Pi OS bookworm ships 3.11)
    import tomli as tomllib

DEVICE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class MaskerConfig(Section):
    """What the masker reads: `edge-mask mask --config`, evaluation and benchmarks. A batch user has no
    device, so no `device_id` is asked for; a device's config file is accepted too (its other sections are
    left unvalidated, see `load_config(..., only_used=True)`)."""

    detector: DetectorConfig = OnnxDetectorConfig()
    models: ModelsConfig = ModelsConfig()
    tracker: TrackerConfig = TrackerConfig()
    mask: MaskConfig = MaskConfig()
    clinical: ClinicalConfig = ClinicalConfig()


class EdgeConfig(MaskerConfig):
    """Everything a device needs: `edge-mask run --config config.toml`."""

    device_id: Annotated[str, Field(pattern=DEVICE_ID_PATTERN)]
    camera: CameraConfig = OpenCVCameraConfig()
    encode: EncodeConfig = EncodeConfig()
    seal: SealConfig = SealConfig()
    spool: SpoolConfig = SpoolConfig()
    uplink: UplinkConfig = UplinkConfig()
    service: ServiceConfig = ServiceConfig()

    def topic_prefix(self) -> str:
        return self.uplink.topic_prefix.format(device_id=self.device_id)


class ReceiverConfig(Section):
    """The cloud side: `edge-mask receive --config receiver.toml`.

    `devices_dir` holds one enrollment record (JSON) per device, written by `edge-mask provision device`;
    it is re-read within `registry_poll_s` of a change (revoke = remove the file, renew = replace it).
    `share_group` subscribes as `$share/<group>/...` so several receivers split the load.

    Answers: stored frames are confirmed to each device on `<prefix>/ack`, batched per device every
    `ack_interval_s` (or at 256 waiting sequence numbers). Reassembly of chunked frames is capped globally
    (`max_pending_bytes`, `max_pending_chunks`) and per device (`device_max_pending_*`), and each device is
    rate limited (`device_rate_*`, a token bucket holding `device_rate_burst_s` seconds of its rate): chunks
    over a limit are dropped and the device re-sends them. `receive_maximum` (MQTT 5) is how many unacknowledged
    messages the broker may have in flight to the receiver; it must stay above `max_pending_chunks`, because a
    chunk is acknowledged only when its frame is stored or dropped. Capture times more than
    `max_future_skew_s` ahead of, or `max_clock_skew_s` behind, the receiver's clock are refused (`replay`,
    answered as `clock_skew`). An MP4 writer closes after `writer_idle_s` without frames, and at most
    `max_open_writers` are open. After `max_storage_failures` storage errors in a row (disk full, permissions)
    the receiver stops with an error instead of retrying forever.
    """

    broker: BrokerConfig = BrokerConfig()
    topic_filter: str = "edge-mask/+/frames/#"
    share_group: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")] | None = None
    recipient_private_key: ConfigPath = Path("recipient.key")
    devices_dir: ConfigPath = Path("devices")
    output_dir: ConfigPath = Path("received")
    write_mp4: bool = False
    mp4_fps: Positive = 30.0
    max_message_bytes: PositiveInt = 256 * 1024
    max_frame_bytes: PositiveInt = 32 * 1024 * 1024
    max_pending_bytes: PositiveInt = 256 * 1024 * 1024
    chunk_timeout_s: Positive = 30.0
    max_clock_skew_s: Positive = 7 * 24 * 3600.0
    max_future_skew_s: Positive = 300.0
    ack_interval_s: Positive = 0.05
    max_pending_chunks: PositiveInt = 1536
    device_max_pending_bytes: PositiveInt = 64 * 1024 * 1024
    device_max_pending_chunks: PositiveInt = 256
    device_rate_chunks_per_s: Positive = 2000.0
    device_rate_bytes_per_s: Positive = 64 * 1024 * 1024
    device_rate_burst_s: Positive = 2.0
    receive_maximum: Annotated[int, Field(ge=16, le=65535)] = 2048
    writer_idle_s: Positive = 30.0
    max_open_writers: PositiveInt = 64
    registry_poll_s: Positive = 2.0
    max_storage_failures: PositiveInt = 10

    @model_validator(mode="after")
    def _consistent_limits(self) -> ReceiverConfig:
        if self.max_pending_chunks >= self.receive_maximum:
            raise ValueError(
                f"max_pending_chunks ({self.max_pending_chunks}) must stay below receive_maximum "
                f"({self.receive_maximum}), or held chunks stop the broker from delivering the rest"
            )
        if self.device_rate_bytes_per_s * self.device_rate_burst_s < self.max_message_bytes:
            raise ValueError(
                "device_rate_bytes_per_s * device_rate_burst_s must be at least max_message_bytes, "
                "or a full-size payload could never pass the rate limit"
            )
        return self


# ------------------------------------------------------------------------------------------------ loading

ModelT = TypeVar("ModelT", bound=BaseModel)


def load_config(
    path: str | Path,
    model: type[ModelT] = EdgeConfig,  # type: ignore[assignment]
    env: Mapping[str, str] | None = None,
    only_used: bool = False,
) -> ModelT:
    """Read, override from the environment, and validate a TOML config file.

    With `only_used`, top-level sections that belong to another command's config (a device's `[camera]`
    or `[uplink]` read by a batch run, say) are left out unvalidated; a key no config knows is still an
    error. Raises ConfigError with one line per problem: `FILE: KEY = VALUE: what is expected`.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found; pass --config with the path to your config.toml") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc.strerror}); check its permissions") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc}); fix the syntax at that line") from None
    _apply_env(data, os.environ if env is None else env, path)
    if only_used:
        data = {k: v for k, v in data.items() if k in model.model_fields or k not in _ALL_SECTIONS}
    return validate_config(data, model, source=str(path), base_dir=path.resolve().parent)


_ALL_SECTIONS = set(EdgeConfig.model_fields) | set(ReceiverConfig.model_fields)


def validate_config(
    data: Mapping[str, Any], model: type[ModelT], source: str = "<config>", base_dir: Path | None = None
) -> ModelT:
    """Validate a dict (already parsed) into `model`; errors name source, key, value and expectation."""
    data = _default_tags(data, model)
    try:
        return model.model_validate(dict(data), context={"base_dir": base_dir})
    except ValidationError as exc:
        raise ConfigError("\n".join(_describe(exc, data, source))) from None


def _default_tags(data: Mapping[str, Any], model: type[BaseModel]) -> Mapping[str, Any]:
    """A `[camera]` or `[detector]` table without `type` means the default backend (a discriminated union
    cannot guess it, and "unable to extract tag" would hide the real error, e.g. a typo in a key)."""
    out = dict(data)
    for name in ("camera", "detector"):
        field = model.model_fields.get(name)
        section = out.get(name)
        if field is not None and isinstance(section, Mapping) and "type" not in section:
            default = getattr(field.default, "type", None)
            if default is not None:
                out[name] = {"type": default, **section}
    return out


def _apply_env(data: dict[str, Any], env: Mapping[str, str], path: Path) -> None:
    for name, raw in env.items():
        if not name.startswith(ENV_PREFIX):
            continue
        keys = [k.lower() for k in name[len(ENV_PREFIX) :].split("__") if k]
        if not keys:
            continue
        node = data
        for key in keys[:-1]:
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{name}: {'.'.join(keys)} overrides a non-table key in {path}")
            node = child
        node[keys[-1]] = _env_value(raw)


def _env_value(raw: str) -> Any:
    """Environment values are TOML/JSON scalars or arrays when they parse as such, else strings."""
    try:
        return json.loads(raw)
    except ValueError:
        pass
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


_TAGS = re.compile(r"^(opencv|picamera2|synthetic|onnx|opencv_yunet)$")


def _describe(exc: ValidationError, data: Mapping[str, Any], source: str) -> list[str]:
    lines = []
    for err in exc.errors(include_url=False):
        loc = [str(p) for p in err["loc"]]
        # Discriminated unions add the tag as a path element (camera.opencv.fps); drop it.
        loc = [p for i, p in enumerate(loc) if not (i > 0 and _TAGS.match(p) and loc[i - 1] in ("camera", "detector"))]
        key = ".".join(loc) or "(top level)"
        kind = err["type"]
        if kind == "extra_forbidden":
            lines.append(f"{source}: unknown key '{key}'; remove it or check its spelling")
            continue
        if kind == "missing":
            lines.append(f"{source}: missing required key '{key}'")
            continue
        value = err.get("input")
        scalar = isinstance(value, (str, int, float, bool)) or value is None
        shown = json.dumps(value) if scalar else type(value).__name__
        msg = err["msg"]
        if kind == "union_tag_invalid":
            expected = err.get("ctx", {}).get("expected_tags")
            msg = f"unknown {loc[-1] if loc else 'section'} type; expected one of {expected}"
            key = f"{key}.type"
            shown = json.dumps(_lookup(data, [*loc, "type"]))
        lines.append(f"{source}: {key} = {shown}: {msg}")
    return lines


def _lookup(data: Mapping[str, Any], loc: list[str]) -> Any:
    node: Any = data
    for part in loc:
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        else:
            return None
    return node
