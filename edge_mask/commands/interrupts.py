"""POSIX signals for the long-running commands (`run`, `receive`), handled without taking a lock.

Why not `signal.signal(SIGTERM, lambda *_: stop.set())`: Python runs a signal handler in the main thread
between two bytecodes, and the main thread of these commands spends its life in `stop.wait(...)`, which
holds the event's lock for a few bytecodes on every wake-up. A handler calling `stop.set()` at that
moment waits for a lock its own thread holds, forever: the service ignored SIGTERM and systemd had to
kill it (seen once in CI). Here the handler only marks the signal pending and writes one byte to a pipe,
neither of which needs a lock; a small thread wakes on the pipe and runs the actions of the pending signals.
A full pipe loses no signal: the mark is set whether or not the byte fits.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator, Mapping
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)

JOIN_S = 5.0
"""How long leaving the context waits for an action still running (the thread is a daemon after that)."""


@contextlib.contextmanager
def handle_signals(actions: Mapping[signal.Signals, Callable[[], None]]) -> Iterator[None]:
    """While inside, each signal in `actions` calls its action from a helper thread; on exit the previous
    handlers come back. The actions may take locks, log, or set events freely. Main thread only (where
    Python runs signal handlers)."""
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("handle_signals: signal handlers can only be installed from the main thread")
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    pending: dict[signal.Signals, bool] = {}

    def on_signal(signum: int, frame: FrameType | None) -> None:
        pending[signal.Signals(signum)] = True
        with contextlib.suppress(OSError):  # a full pipe: the helper has wake-ups enough to find the mark
            os.write(write_fd, b"!")

    def dispatch() -> None:
        while os.read(read_fd, 512):  # b"" once the write end is closed: the context is left
            for sig, action in actions.items():
                if pending.pop(sig, False):
                    try:
                        action()
                    except Exception:  # a failed action must not leave the next SIGTERM unheard
                        log.exception("handling %s failed", sig.name)

    thread = threading.Thread(target=dispatch, name="edge-mask-signals", daemon=True)
    thread.start()
    previous: dict[signal.Signals, Any] = {}
    try:
        for sig in actions:
            previous[sig] = signal.signal(sig, on_signal)
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        os.close(write_fd)
        thread.join(JOIN_S)
        if not thread.is_alive():
            os.close(read_fd)
