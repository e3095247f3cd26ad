"""The systemd unit: it verifies, its sandbox exposure stays <= 2.0, and the notify client speaks sd_notify.

`systemd-analyze verify` insists that ExecStart's binary exists, so the unit is checked from a copy whose
edge-mask path points at an existing executable; everything else is the shipped file.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from edge_mask.service.notify import Notifier

UNIT = Path(__file__).resolve().parents[1] / "systemd" / "edge-mask.service"
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed (apt-get install systemd)")


def unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", "[")):
            key, value = line.split("=", 1)
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_unit_has_the_required_settings() -> None:
    s = unit_settings()
    assert s["Type"] == ["notify"] and s["Restart"] == ["on-failure"]
    assert int(s["WatchdogSec"][0]) > 0 and "StartLimitBurst" in s and "StartLimitIntervalSec" in s
    assert "video" in s["SupplementaryGroups"][0].split()
    assert s["StateDirectory"] == ["edge-mask"] and s["ProtectSystem"] == ["strict"]
    assert s["PrivateTmp"] == ["yes"] and s["NoNewPrivileges"] == ["yes"] and s["DevicePolicy"] == ["closed"]
    assert s["LimitCORE"] == ["0"], "a core dump of the service would hold raw face pixels"
    allowed = [v.split()[0] for v in s["DeviceAllow"]]
    assert "char-video4linux" in allowed and "char-media" in allowed and "char-dma_heap" in allowed
    assert not any("*" in v for v in allowed), "globs do not work in DeviceAllow"
    assert any("device-signing.key" in v for v in s["LoadCredential"])
    assert s["SystemCallFilter"][0] == "@system-service"
    assert any("run --check-config" in v for v in s["ExecStartPre"])


@needs_analyze
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    text = UNIT.read_text().replace("/opt/edge-mask/venv/bin/edge-mask", shutil.which("true") or "/bin/true")
    unit = tmp_path / "edge-mask.service"
    unit.write_text(text)
    result = subprocess.run([ANALYZE, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    problems = [line for line in result.stderr.splitlines() if "edge-mask.service" in line]
    assert result.returncode == 0 and not problems, result.stderr


@needs_analyze
def test_security_exposure_at_most_2() -> None:
    result = subprocess.run(
        [ANALYZE, "security", "--offline=yes", "--no-pager", str(UNIT)], capture_output=True, text=True, timeout=60
    )
    match = re.search(r"Overall exposure level for edge-mask\.service:\s*([0-9.]+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 2.0, result.stdout


def test_sd_notify_datagrams(tmp_path: Path) -> None:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify.sock"
    server.bind(str(path))
    server.settimeout(5)
    try:
        notifier = Notifier({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "30000000"})
        assert notifier.enabled and notifier.watchdog_interval_s == 15.0
        assert notifier.ready("30.0 fps")
        assert server.recv(4096) == b"READY=1\nSTATUS=30.0 fps"
        notifier.watchdog()
        assert server.recv(4096) == b"WATCHDOG=1"
        notifier.status("camera stalled\nagain")
        assert server.recv(4096) == b"STATUS=camera stalled again"
        notifier.close()
    finally:
        server.close()


def test_sd_notify_is_a_no_op_outside_systemd() -> None:
    notifier = Notifier({})
    assert not notifier.enabled and not notifier.ready() and not notifier.watchdog()
    assert Notifier({"NOTIFY_SOCKET": "@abstract-name"}).enabled
    assert Notifier({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}).watchdog_interval_s is None


def test_the_service_process_forbids_core_dumps() -> None:
    """`edge-mask run` and `edge-mask mask` call this first; in a child process, so this test's limits stay."""
    import subprocess
    import sys

    code = (
        "import resource; from edge_mask.service import forbid_core_dumps; forbid_core_dumps(); "
        "import ctypes, ctypes.util; libc = ctypes.CDLL(ctypes.util.find_library('c')); "
        "print(resource.getrlimit(resource.RLIMIT_CORE), libc.prctl(3, 0, 0, 0, 0))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert " ".join(out) == "(0, 0) 0", out  # PR_GET_DUMPABLE (3) answers 0: not dumpable
