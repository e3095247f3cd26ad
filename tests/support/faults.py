"""Pieces for fault-injection tests: a receiver process to SIGKILL, an in-process device, frame accounting.

Every fault test answers one question by (stream, seq) accounting: of the frames a device put into its
spool, how many did the cloud store (exactly once), how many are still pending on the device, how many
were lost. `spooled` (what the device wrote) and `stored_keys` (the receiver's index files) are the two
sides; a frame is lost when it is in neither the store nor the spool.

`ReceiverProcess` runs the real `edge-mask receive` command, so it can be killed with SIGKILL (a crash
loses whatever the process held in memory) and started again under resource limits (`ulimit -n`).
`ReceiverThread` runs the receiver in-process when no signal is involved (faster, and its summary is
at hand). `Device` is a device's spool plus its MQTT uplink, sealing real masked frames; it uses only the
public faces of the product's rooms.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from edge_mask.config import ReceiverConfig, SpoolConfig, UplinkConfig
from edge_mask.provision.enroll import mosquitto_path
from edge_mask.receiver import Receiver
from edge_mask.uplink import MqttUplink, Spool, open_spool
from support.broker import RECEIVER_USER, Broker
from support.fleet import Fleet, make_fleet, masked_clip, masker_config

REPO = Path(__file__).resolve().parents[2]
CLIP_FRAMES = 40
SUBSCRIPTION = "1 edge-mask/+/frames/#"
"""How Mosquitto logs a receiver's QoS 1 subscription (after the client id, which is the certificate CN)."""

Key = tuple[str, int]
"""A frame's identity: (stream id in hex, seq)."""


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, detail: Callable[[], object] = str) -> None:
    """Poll `predicate` until true; fail naming `what` (and `detail()`) after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}: {detail()}")
        time.sleep(0.05)


# ------------------------------------------------------------------------------------------ accounting


def stored_entries(output: Path, device: str) -> list[tuple[str, dict[str, Any]]]:
    """Every index line the receiver wrote for `device`: (stream hex, entry)."""
    found: list[tuple[str, dict[str, Any]]] = []
    for index in sorted(output.glob(f"{device}/*/index.jsonl")):
        for line in index.read_text().splitlines():
            if line.strip():
                found.append((index.parent.name, json.loads(line)))
    return found


def stored_keys(output: Path, device: str) -> list[Key]:
    """(stream, seq) of every stored frame of `device`, one item per index line (duplicates kept)."""
    return [(stream, int(entry["seq"])) for stream, entry in stored_entries(output, device)]


def assert_stored_once(output: Path, device: str, expected: Iterable[Key], what: str = "") -> None:
    """0 lost and 0 stored twice: the index lines of `device` are exactly `expected`, each once."""
    keys = stored_keys(output, device)
    want = set(expected)
    twice = sorted({k for k in keys if keys.count(k) > 1})
    lost = sorted(want - set(keys))
    extra = sorted(set(keys) - want)
    assert not lost and not twice and not extra, f"{what}: lost {lost}, stored twice {twice}, unexpected {extra}"


# --------------------------------------------------------------------------------------------- receiver


def receiver_settings(fleet: Fleet, output: Path, **settings: Any) -> dict[str, Any]:
    """Receiver config values for tests: short chunk timeout and clock skew as given, fleet keys."""
    return {
        "recipient_private_key": str(fleet.recipient_key),
        "devices_dir": str(fleet.devices_dir),
        "output_dir": str(output),
        "chunk_timeout_s": 2.0,
        **settings,
    }


def write_receiver_toml(path: Path, broker: Broker, settings: dict[str, Any], name: str = RECEIVER_USER) -> Path:
    """A receiver.toml (top-level scalars from `settings`) connecting to `broker` as certificate CN `name`."""
    tls = broker.client_tls(name)
    lines = [f"{key} = {json.dumps(value)}" for key, value in settings.items()]
    lines += ["[broker]", f'host = "{broker.host}"', f"port = {broker.port}", "keepalive_s = 5",
              "connect_timeout_s = 5.0", "[broker.tls]", f'ca = "{tls.ca}"', f'cert = "{tls.cert}"',
              f'key = "{tls.key}"', ""]
    ReceiverConfig.model_validate({**settings, "broker": {"host": broker.host, "port": broker.port}})
    path.write_text("\n".join(lines))
    return path


class ReceiverProcess:
    """`python -m edge_mask receive --config ...` as a child process that a test may SIGKILL and restart.

    Its output goes to files beside the config (a pipe nobody reads would block the receiver once a
    flood of warnings fills it); `stderr()` is every run's log, `summaries` the JSON of clean stops.
    """

    def __init__(self, config: Path, broker: Broker, name: str = RECEIVER_USER, nofile: int | None = None) -> None:
        self.config, self.broker, self.name, self.nofile = config, broker, name, nofile
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0
        self.summaries: list[dict[str, Any]] = []

    def _out(self, run: int, stream: str) -> Path:
        return self.config.parent / f"receiver-{run}.{stream}"

    def start(self, timeout: float = 30.0) -> None:
        """Start and return once the broker logged the receiver's (new) subscription."""
        seen = self.broker.log().count(f"{self.name} {SUBSCRIPTION}")
        limit = self.nofile

        def limits() -> None:
            if limit is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

        self.runs += 1
        with self._out(self.runs, "out").open("wb") as out, self._out(self.runs, "err").open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "edge_mask", "receive", "--config", str(self.config), "--json"],
                stdout=out, stderr=err, cwd=REPO, preexec_fn=limits,
            )
        if not self.broker.wait_for_log(f"{self.name} {SUBSCRIPTION}", timeout, count=seen + 1):
            self.kill()
            raise AssertionError(f"receiver did not subscribe: {self.stderr()[-3000:]}\n{self.broker.log()[-2000:]}")

    def kill(self) -> None:
        """SIGKILL: what the process held in memory is gone; the broker keeps its session."""
        if self.proc is not None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
            self.proc = None

    def stop(self, timeout: float = 30.0) -> dict[str, Any]:
        """SIGTERM (a clean stop) and the printed JSON summary."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
            self.proc = None
            out = self._out(self.runs, "out").read_text()
            if out.strip():
                self.summaries.append(json.loads(out))
        return self.summaries[-1] if self.summaries else {}

    def stderr(self) -> str:
        """The log of every run so far."""
        return "\n".join(self._out(run, "err").read_text(errors="replace") for run in range(1, self.runs + 1))


class ReceiverThread:
    """The receiver in this process, in a thread; `stop()` is a clean disconnect (its session stays)."""

    def __init__(self, cfg: ReceiverConfig) -> None:
        self.receiver = Receiver(cfg, retry_max_s=1.0)
        self._stop = threading.Event()
        self.summary: dict[str, Any] = {}
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        wait_until(self.receiver.connected.is_set, 20, "the receiver's subscription")

    def _run(self) -> None:
        self.summary = self.receiver.run(self._stop)

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        self._thread.join(30)
        return self.summary


# ----------------------------------------------------------------------------------------------- device


class Device:
    """A device's spool and MQTT uplink in this process; `send` seals and spools real masked frames.

    Re-creating a Device on the same `spool_dir` with a new `sealer` is a device restart: same spool, new
    stream. `spooled` lists every (stream, seq) put into the spool, `spooled_at` its wall time.
    """

    def __init__(self, mq: Broker, device_id: str, spool_dir: Path, sealer: Any, spool: Spool | None = None,
                 **uplink: Any) -> None:
        """`uplink`: UplinkConfig values over the test defaults (`broker` too: a BrokerConfig, e.g. via a relay)."""
        self.device_id = device_id
        self.sealer = sealer
        self.spool = spool if spool is not None else open_spool(SpoolConfig(path=spool_dir))
        settings: dict[str, Any] = {"broker": mq.broker_config(device_id), "retry_min_s": 0.2,
                                    "retry_max_s": 1.0, "ack_timeout_s": 1.5, **uplink}
        self.uplink = MqttUplink(UplinkConfig.model_validate(settings), device_id, self.spool)
        self.spooled: list[Key] = []
        self.spooled_at: dict[Key, float] = {}
        self._started = False

    def start(self) -> Device:
        self.uplink.start()
        self._started = True
        return self

    def send(self, frames: Sequence[tuple[Any, bytes]], pause_s: float = 0.0) -> list[Key]:
        """Seal and spool `frames` ((MaskedFrame, JPEG) pairs); returns their (stream, seq)."""
        keys: list[Key] = []
        for masked, jpeg in frames:
            sealed = self.sealer.seal(masked, jpeg)
            self.spool.put(sealed)
            key = (bytes(sealed.stream_id).hex(), int(sealed.seq))
            self.spooled_at[key] = time.time()
            keys.append(key)
            if pause_s:
                time.sleep(pause_s)
        self.spooled += keys
        return keys

    @property
    def pending(self) -> int:
        return int(self.spool.stats().pending)

    def stop(self, close_spool: bool = True) -> None:
        if self._started:
            self.uplink.stop()
            self._started = False
        if close_spool:
            self.spool.close()


# --------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def clip(shared_dir: Path) -> list[tuple[Any, bytes]]:
    """40 consecutive frames of the real clip, masked by the project's masker and JPEG-encoded (~15 KB).

    The detection deadline is lifted: on a loaded CI machine a missed 250 ms deadline masks the whole frame
    (fail closed), and a solid frame is a few hundred bytes, too small for the chunking tests."""
    cfg = masker_config(shared_dir)
    cfg = cfg.model_copy(update={"detector": cfg.detector.model_copy(update={"deadline_ms": 30_000.0})})
    return list(masked_clip(cfg, frames=CLIP_FRAMES))


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """The provisioned Mosquitto (TLS, CN = username = client id, per-device ACL) on a loopback port."""
    if mosquitto_path() is None:
        pytest.skip("mosquitto is not installed (apt-get install -y mosquitto)")
    with Broker(tmp_path / "broker") as started:
        yield started


@pytest.fixture
def fleet(tmp_path: Path) -> Fleet:
    """The cloud's recipient key and two enrolled devices, dev1 and dev2."""
    return make_fleet(tmp_path / "fleet", devices=("dev1", "dev2"))


def wait_published(device: Device, frames: int, timeout: float = 20.0) -> None:
    """Wait until the device's uplink handed `frames` frames to the broker (not: the cloud stored them)."""
    wait_until(lambda: device.uplink.stats()["frames_published"] >= frames, timeout, "frames published",
               device.uplink.stats)


def wait_delivered(device: Device, output: Path, timeout: float = 45.0) -> None:
    """Wait until the cloud stored every frame `device` spooled and the device deleted them all."""
    want = set(device.spooled)

    def missing() -> set[Key]:
        return want - set(stored_keys(output, device.device_id))

    wait_until(lambda: device.pending == 0 and not missing(), timeout, "every frame stored and confirmed",
               lambda: {"pending": device.pending, "not stored": len(missing()), **device.uplink.stats()})

