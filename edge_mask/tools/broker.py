"""A private Mosquitto on the loopback interface, and free loopback ports: for the demo, benchmarks and tests.

Why one launcher: the demo, `edge-mask bench` (uplink and `--live`) and the test suite all need a real
broker for a few seconds or minutes. Each used to start Mosquitto its own way, and each had to get the
same details right: pick a port nobody uses (never 1883, where a real broker of the clinic or of the
developer may be listening), bind to 127.0.0.1 only (a throw-away anonymous broker must not be reachable
from the network), wait until the broker really accepts connections (a started process is not a
listening one), keep its stderr and log for the error message, and stop it with SIGTERM (Mosquitto then
saves its persistence database, which the broker-restart tests rely on) with SIGKILL as the last resort.

`Mosquitto(conf)` runs a config file as given (the one `edge-mask provision broker` renders, for
example); `Mosquitto.plain(dir)` writes an anonymous plain-TCP config and `Mosquitto.tls(dir, ...)` the
production mutual-TLS config (`edge_mask.provision.pki.render_mosquitto_conf`) with an ACL file. Every
config is checked before start: each listener must bind a loopback address and none may use port 1883.
The object is a context manager (start on enter, stop on exit); `start()`, `stop()` and `kill()` (SIGKILL,
a crash) may also be called by hand, any number of times, to simulate an outage on the same port.
"""

from __future__ import annotations

import ipaddress
import logging
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import IO

from edge_mask.core.errors import UserError
from edge_mask.provision import pki
from edge_mask.provision.enroll import current_user, mosquitto_path

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
MQTT_DEFAULT_PORT = 1883
"""The well-known MQTT port: a real broker may own it, so nothing here ever uses it."""
_LOG_TAIL_LINES = 20


def free_port() -> int:
    """An ephemeral TCP port on 127.0.0.1 that was free a moment ago (the kernel picks it; never 1883).

    The port is released before returning, so another process could take it in between; for a broker
    started right after, on a test or dev machine, that race is not worth a retry loop.
    """
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((LOOPBACK, 0))
            port = int(sock.getsockname()[1])
        if port != MQTT_DEFAULT_PORT:
            return port


class MosquittoError(UserError):
    """Mosquitto is missing, its config is unsafe for a private broker, or it did not start listening."""


def _is_loopback(address: str) -> bool:
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def loopback_listeners(text: str, where: str) -> list[tuple[str, int]]:
    """(address, port) of each listener in a Mosquitto config; raises unless all are loopback and not 1883.

    A listener without an address binds every interface, and a config without any listener (or with the
    old `port` option) makes Mosquitto use 1883: both are refused.
    """
    found: list[tuple[str, int]] = []
    for number, raw in enumerate(text.splitlines(), 1):
        words = raw.split("#", 1)[0].split()
        if not words:
            continue
        if words[0] == "port":
            raise MosquittoError(f"{where}:{number}: `port` listens on every interface; use `listener PORT 127.0.0.1`")
        if words[0] != "listener":
            continue
        if len(words) < 3 or not _is_loopback(words[2]):
            raise MosquittoError(f"{where}:{number}: `{raw.strip()}` is not bound to a loopback address")
        port = int(words[1])
        if port == MQTT_DEFAULT_PORT:
            raise MosquittoError(f"{where}:{number}: port {MQTT_DEFAULT_PORT} is reserved for real brokers")
        found.append((words[2], port))
    if not found:
        raise MosquittoError(f"{where}: no `listener PORT 127.0.0.1` line (Mosquitto would use port 1883)")
    return found


def _log_file(text: str) -> Path | None:
    for raw in text.splitlines():
        words = raw.split("#", 1)[0].split(None, 2)
        if len(words) == 3 and words[:2] == ["log_dest", "file"]:
            return Path(words[2].strip())
    return None


class Mosquitto:
    """One Mosquitto process running `conf` on a loopback address (see module docstring)."""

    def __init__(self, conf: Path, port: int | None = None, *, exe: str | None = None) -> None:
        self.conf = Path(conf)
        text = self.conf.read_text(encoding="utf-8")
        listeners = loopback_listeners(text, str(self.conf))
        chosen = [item for item in listeners if port is None or item[1] == port]
        if not chosen:
            raise MosquittoError(f"{self.conf}: no loopback listener on port {port}")
        address, self.port = chosen[0]
        self.host = LOOPBACK if address == "localhost" else address
        self.log_file = _log_file(text)
        self._exe = exe
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None

    # ------------------------------------------------------------------------------------ config files

    @classmethod
    def plain(cls, directory: Path, *, port: int | None = None, max_queued_messages: int = 100_000) -> Mosquitto:
        """Anonymous plain TCP without persistence: benchmarks measure the device, not TLS or a disk."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        directory = directory.resolve()  # Mosquitto resolves relative paths against its own cwd
        port = free_port() if port is None else port
        lines = [
            "# edge-mask private broker (edge_mask.tools.broker): plain TCP, anonymous, loopback only.",
            f"user {current_user()}",  # as root, Mosquitto would otherwise drop to `mosquitto`
            "per_listener_settings false",
            "allow_anonymous true",
            "persistence false",
            f"log_dest file {directory / 'mosquitto.log'}",
            f"max_queued_messages {max_queued_messages}",
            "",
            f"listener {port} {LOOPBACK}",
            "",
        ]
        conf = directory / "mosquitto.conf"
        conf.write_text("\n".join(lines), encoding="utf-8")
        return cls(conf, port)

    @classmethod
    def tls(
        cls,
        directory: Path,
        *,
        cafile: Path,
        certfile: Path,
        keyfile: Path,
        acl_file: Path,
        port: int | None = None,
        persistence: bool = True,
        extra: str = "",
    ) -> Mosquitto:
        """The production mutual-TLS config (client certificates, identity as username, `acl_file`).

        `persistence` keeps sessions in `directory/data` across a stop and start; `extra` is appended
        verbatim (tests add `log_type subscribe` to wait for subscriptions in the log).
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        directory = directory.resolve()  # Mosquitto resolves relative paths against its own cwd
        data = directory / "data"
        if persistence:
            data.mkdir(exist_ok=True)
        text = pki.render_mosquitto_conf(
            port=free_port() if port is None else port,
            cafile=cafile,
            certfile=certfile,
            keyfile=keyfile,
            acl_file=acl_file,
            bind_address=LOOPBACK,
            persistence_dir=data if persistence else None,
            log_file=directory / "mosquitto.log",
            user=current_user(),  # as root, Mosquitto would otherwise drop to `mosquitto`
        )
        conf = directory / "mosquitto.conf"
        conf.write_text(text + ("\n" + extra if extra else ""), encoding="utf-8")
        return cls(conf)

    # --------------------------------------------------------------------------------------- lifecycle

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self, timeout_s: float = 10.0) -> None:
        """Start Mosquitto and return once it accepts TCP connections; no-op when already running."""
        if self.running:
            return
        exe = self._exe or mosquitto_path()
        if exe is None:
            raise MosquittoError("mosquitto is not installed (apt install mosquitto)")
        self._stderr = tempfile.TemporaryFile()
        self._proc = subprocess.Popen([exe, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=self._stderr)
        log.debug("mosquitto: started pid %d with %s", self._proc.pid, self.conf)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                why = self._stderr_text() or f"exit status {self._proc.returncode}"
                self.stop()
                raise MosquittoError(f"mosquitto exited at start ({why})\n{self._log_tail()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    log.info("mosquitto: listening on %s:%d", self.host, self.port)
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise MosquittoError(f"mosquitto did not listen on {self.host}:{self.port} within {timeout_s:g} s\n"
                             f"{self._log_tail()}")

    def stop(self) -> None:
        """SIGTERM (Mosquitto saves its persistence database), then SIGKILL if it hangs; no-op when stopped."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                log.warning("mosquitto: pid %d ignored SIGTERM; killing it", proc.pid)
                proc.kill()
                proc.wait(timeout=10)
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def kill(self) -> None:
        """SIGKILL, as a crash or power cut would: nothing queued since the last autosave is written.

        For fault-injection tests (a broker is a relay, not the store: see `edge_mask.provision.broker_conf`).
        No-op when stopped; `start()` afterwards restarts on the same port from the last saved database.
        """
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def log(self) -> str:
        """The broker's log file (for failing assertions and error messages)."""
        if self.log_file is None:
            return "(no mosquitto log file configured)"
        try:
            return self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return "(no mosquitto log)"

    def __enter__(self) -> Mosquitto:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _stderr_text(self) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace").strip()

    def _log_tail(self) -> str:
        return "\n".join(self.log().splitlines()[-_LOG_TAIL_LINES:])
