"""POSIX signals for the long-running commands (`run`, `receive`), handled without taking a lock.

Why not `signal.signal(SIGTERM, lambda *_: stop.set())`: Python runs a signal handler in the main thread
between two bytecodes, and the main thread of these commands spends its life in `stop.wait(...)`, which
holds the event's lock for a few bytecodes on every wake-up. A handler calling `stop.set()` at that
moment waits for a lock its own thread holds, forever: the service ignored SIGTERM and systemd had to
kill it (seen once in CI; a script that sends SIGHUP in bursts hangs half of its runs). Here the handler
only writes one byte to a pipe, which needs no lock; a small thread reads the pipe and does the work.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator, Mapping
from types import FrameType

log = logging.getLogger(__name__)

_QUIT = b"\0"


@contextlib.contextmanager
def handle_signals(actions: Mapping[signal.Signals, Callable[[], None]]) -> Iterator[None]:
    """While inside, each signal in `actions` calls its action from a helper thread; on exit the previous
    handlers come back. The actions may take locks, log, or set events freely."""
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    codes = {sig: bytes([index + 1]) for index, sig in enumerate(actions)}
    by_code = {code: actions[sig] for sig, code in codes.items()}

    def on_signal(signum: int, frame: FrameType | None) -> None:
        with contextlib.suppress(OSError):  # a full pipe (64 KiB of unread requests) drops this one
            os.write(write_fd, codes[signal.Signals(signum)])

    def dispatch() -> None:
        while True:
            code = os.read(read_fd, 1)
            if not code or code == _QUIT:
                return
            try:
                by_code[code]()
            except Exception:  # a failed action must not leave the next SIGTERM unheard
                log.exception("handling a signal failed")

    thread = threading.Thread(target=dispatch, name="edge-mask-signals", daemon=True)
    thread.start()
    previous = {sig: signal.signal(sig, on_signal) for sig in actions}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        os.set_blocking(write_fd, True)
        os.write(write_fd, _QUIT)
        thread.join(5.0)
        os.close(write_fd)
        if not thread.is_alive():
            os.close(read_fd)
