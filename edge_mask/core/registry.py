"""A tiny explicit registry that maps a config `type` string to a backend factory.

Why explicit: the set of backends a deployment may use is visible in one place per stage, a typo in
config fails with the list of valid names, and factories can do their heavy imports lazily.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from edge_mask.core.errors import ConfigError

log = logging.getLogger(__name__)

T = TypeVar("T")
Factory = Callable[..., T]


class Registry(Generic[T]):
    """Backends of one stage, keyed by the config's `type`."""

    def __init__(self, stage: str) -> None:
        self.stage = stage
        self._factories: dict[str, Factory[T]] = {}

    def register(self, type_name: str) -> Callable[[Factory[T]], Factory[T]]:
        def decorator(factory: Factory[T]) -> Factory[T]:
            if type_name in self._factories:
                raise ValueError(f"{self.stage} backend {type_name!r} registered twice")
            self._factories[type_name] = factory
            return factory

        return decorator

    def names(self) -> list[str]:
        return sorted(self._factories)

    def create_named(self, type_name: str, *args: Any, **kwargs: Any) -> T:
        """Build the backend registered as `type_name` (for settings whose selector is not called `type`)."""
        factory = self._factories.get(type_name)
        if factory is None:
            raise ConfigError(
                f"{self.stage} = {type_name!r} is not known; expected one of: {', '.join(self.names())}"
            )
        log.debug("creating %s %s", self.stage, type_name)
        return factory(*args, **kwargs)

    def create(self, settings: Any, *args: Any, **kwargs: Any) -> T:
        """Build the backend named by `settings.type`, passing the settings and any extra arguments."""
        type_name = getattr(settings, "type", None)
        factory = self._factories.get(str(type_name))
        if factory is None:
            raise ConfigError(
                f"{self.stage}.type = {type_name!r} is not a known {self.stage} backend; "
                f"expected one of: {', '.join(self.names())}"
            )
        log.debug("creating %s backend %s", self.stage, type_name)
        return factory(settings, *args, **kwargs)
