"""User-facing errors.

A `UserError` is something the person running edge_mask can fix (a bad config value, a missing camera,
a wrong key). Its message is one line that names the thing and the fix. The CLI prints it without a
traceback and exits with `exit_code`. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """An error the operator can fix; the message is shown as-is on one line."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        lines = (" ".join(line.split()) for line in str(message).splitlines())
        super().__init__("\n".join(line for line in lines if line))

    @property
    def message(self) -> str:
        return str(self.args[0])


class ConfigError(UserError):
    """The configuration file or an override is invalid."""


class CameraError(UserError):
    """The camera cannot be opened or stopped delivering frames."""


class ModelError(UserError):
    """A model file is missing, corrupt or fails its checks."""


class KeyMaterialError(UserError):
    """A key or certificate is missing, malformed, of the wrong type or expired."""


class MessageError(Exception):
    """A received message is rejected; `reason` is a short stable label used in counters."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
