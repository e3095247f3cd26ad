"""Config building blocks: the strict `Section` base, path and number types, `${VAR}` expansion.

Why pydantic with `extra="forbid"` and frozen models: a typo in an exam-room config (`fsp = 30`) must stop
the service at start with a message naming the file, key and value, not silently fall back to a default;
and settings must not change under a running pipeline except through an explicit reload.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo

ENV_PREFIX = "EDGE_MASK__"
DEFAULT_MODEL_CACHE = Path(os.environ.get("EDGE_MASK_MODEL_CACHE", "~/.cache/edge-mask/models")).expanduser()

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _expand_env_refs(text: str) -> str:
    """Replace `${NAME}` with the environment variable, so a systemd unit can point keys at
    `${CREDENTIALS_DIRECTORY}/device.key` or the spool at `${STATE_DIRECTORY}/spool`."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in os.environ:
            raise ValueError(f"${{{name}}} is not set in the environment (systemd sets it for the service)")
        return os.environ[name]

    return _ENV_REF.sub(value, text)


def _resolve_path(value: Path, info: ValidationInfo) -> Path:
    value = Path(_expand_env_refs(str(value))).expanduser()
    base = (info.context or {}).get("base_dir")
    if base is not None and not value.is_absolute():
        value = Path(base) / value
    return value


ConfigPath = Annotated[Path, AfterValidator(_resolve_path)]
Positive = Annotated[float, Field(gt=0)]
PositiveInt = Annotated[int, Field(gt=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]


class Section(BaseModel):
    """Base for every config section: unknown keys are errors and settings are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, revalidate_instances="always")

