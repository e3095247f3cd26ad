"""The embedded broker's per-client state: subscriptions, sessions that outlive a connection, connections."""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from dataclasses import dataclass, field

from edge_mask.tools.minibroker_codec import Connect, Message

MAX_INFLIGHT = 100


@dataclass
class Subscription:
    filter: str
    qos: int
    no_local: bool = False
    group: str | None = None


@dataclass
class Session:
    """What outlives a connection when the client asked for a persistent session."""

    client_id: str
    username: str
    persistent: bool
    v5: bool = False
    subs: dict[str, Subscription] = field(default_factory=dict)  # key: full filter incl. $share prefix
    queue: deque[Message] = field(default_factory=deque)
    queued_bytes: int = 0
    inflight: dict[int, Message] = field(default_factory=dict)
    max_inflight: int = MAX_INFLIGHT
    conn: Connection | None = None
    _ids: itertools.cycle[int] = field(default_factory=lambda: itertools.cycle(range(1, 65536)))

    def next_id(self) -> int:
        for pid in self._ids:  # pragma: no branch - 65535 ids, at most MAX_INFLIGHT in use
            if pid not in self.inflight:
                return pid
        raise RuntimeError("unreachable")


class Connection:
    """One TLS client connection; owned by the broker's event loop."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.session: Session | None = None
        self.info: Connect | None = None
        self.username = ""
        self.clean_exit = False
        self.qos2_pending: set[int] = set()

    def send(self, data: bytes) -> None:
        if not self.writer.is_closing():
            self.writer.write(data)

    def close(self) -> None:
        if not self.writer.is_closing():
            self.writer.close()
