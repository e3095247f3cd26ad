"""Fault injection on the device side: the cloud refuses its frames, its clock jumps, its disk fills up.

The rest of issue 12's red-team table (broker and receiver faults) is test_faults.py; the accounting is
the same: every frame the device spooled is stored by the cloud exactly once, or is still in the spool,
or (disk full only) was dropped oldest-first and counted.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from support.broker import RECEIVER_USER, Broker
from support.faults import (  # noqa: F401  (fixtures)
    REPO,
    Device,
    ReceiverThread,
    assert_stored_once,
    broker,
    clip,
    fleet,
    stored_keys,
    wait_delivered,
    wait_published,
    wait_until,
)
from support.fleet import Fleet, masker_config

from edge_mask.config import OpenCVCameraConfig, SpoolConfig
from edge_mask.seal import Sealer, generate_recipient, load_recipient_public_key, load_signing_key
from edge_mask.uplink.spool import SqliteSpool

DAY_S = 24 * 3600.0


def _receiver(devices: Fleet, mq: Broker, output: Path, **settings: Any) -> ReceiverThread:
    return ReceiverThread(devices.receiver_config(output, broker=mq.broker_config(RECEIVER_USER),
                                                  chunk_timeout_s=2.0, **settings))


# ------------------------------------------------------------------------------------ f. cloud refuses


def _device_toml(path: Path, shared_dir: Path, mq: Broker, recipient_pub: Path, signing_key: Path,
                 spool: Path) -> Path:
    cfg = masker_config(shared_dir)
    assert isinstance(cfg.camera, OpenCVCameraConfig)
    tls = mq.client_tls("dev1")
    path.write_text("\n".join([
        'device_id = "dev1"',
        "[camera]", 'type = "opencv"', f'source = "{cfg.camera.source}"',
        "[detector]", 'type = "onnx"', f'model = "{cfg.detector.model}"', 'precision = "fp32"', "threads = 1",
        "[seal]", f'recipient_public_key = "{recipient_pub}"', f'signing_key = "{signing_key}"',
        "[spool]", f'path = "{spool}"',
        "[uplink.broker]", f'host = "{mq.host}"', f"port = {mq.port}",
        "[uplink.broker.tls]", f'ca = "{tls.ca}"', f'cert = "{tls.cert}"', f'key = "{tls.key}"', "",
    ]))
    return path


def test_a_device_sealing_to_a_key_the_cloud_lacks_keeps_every_frame_and_says_so(
    broker: Broker, fleet: Fleet, clip: list[Any], shared_dir: Path, tmp_path: Path  # noqa: F811
) -> None:
    """Issue 12: 275 of 275 lost, device exit 0, `doctor` all OK. Now: the cloud answers `wrong_recipient`,
    the device keeps every frame and says so (stats, cloud-status.json, doctor); once the cloud holds
    that key, every frame is stored."""
    rotated_key, rotated_pub = generate_recipient(tmp_path / "rotated")  # a key the cloud does not hold (yet)
    sealer = Sealer("dev1", load_recipient_public_key(rotated_pub), load_signing_key(fleet.signing_keys["dev1"]))
    output, spool_dir = tmp_path / "received", tmp_path / "spool"
    receiver = _receiver(fleet, broker, output)
    device = Device(broker, "dev1", spool_dir, sealer).start()
    try:
        device.send(clip[:12])
        wait_until(lambda: device.uplink.stats().get("cloud_refusal") == "wrong_recipient", 20,
                   "the device to learn the refusal", device.uplink.stats)
        assert device.pending == 12  # nothing deleted
        status = json.loads((spool_dir / "cloud-status.json").read_text())
        assert status["refused"] == "wrong_recipient", status
        config = _device_toml(tmp_path / "edge.toml", shared_dir, broker, rotated_pub, fleet.signing_keys["dev1"],
                              spool_dir)
        doctor = subprocess.run([sys.executable, "-m", "edge_mask", "doctor", "--config", str(config)],
                                capture_output=True, text=True, timeout=120, cwd=REPO)
        fails = [line for line in doctor.stdout.splitlines() if line.startswith("FAIL")]
        assert doctor.returncode == 1 and any("wrong_recipient" in line for line in fails), doctor.stdout
        assert "Traceback" not in doctor.stderr
        receiver.stop()
        assert stored_keys(output, "dev1") == []
        # The fix at the cloud: the receiver now holds the key the device seals to.
        receiver = _receiver(fleet, broker, output, recipient_private_key=rotated_key)
        wait_delivered(device, output, timeout=60)
        receiver.stop()
    finally:
        device.stop()
    assert_stored_once(output, "dev1", device.spooled, "wrong recipient, then fixed")
    assert json.loads((spool_dir / "cloud-status.json").read_text())["refused"] is None


def test_a_device_the_cloud_has_not_enrolled_keeps_its_frames_until_it_is(
    broker: Broker, fleet: Fleet, clip: list[Any], tmp_path: Path  # noqa: F811
) -> None:
    """`unknown_device` is answered too; enrolling the device (no receiver restart) delivers the backlog."""
    record = fleet.devices_dir / "dev2.json"
    held = tmp_path / "dev2.json"
    record.rename(held)  # dev2 has a certificate and keys, but the cloud does not know it yet
    output = tmp_path / "received"
    receiver = _receiver(fleet, broker, output)
    device = Device(broker, "dev2", tmp_path / "spool", fleet.sealer("dev2")).start()
    try:
        device.send(clip[:8])
        wait_until(lambda: device.uplink.stats().get("cloud_refusal") == "unknown_device", 20,
                   "the device to learn the refusal", device.uplink.stats)
        assert device.pending == 8
        held.rename(record)  # enrolled: the receiver reloads its registry on change
        wait_delivered(device, output, timeout=60)
        receiver.stop()
    finally:
        device.stop()
    assert_stored_once(output, "dev2", device.spooled, "enrolled late")


# ----------------------------------------------------------------------------------------- g. clock


def test_the_wall_clock_jumping_8_days_forward_deletes_no_pending_frame(
    broker: Broker, fleet: Fleet, clip: list[Any], tmp_path: Path  # noqa: F811
) -> None:
    """Issue 12: 100 of 100 pending frames deleted as too old. The spool ages records on its own clock."""
    offset = [0.0]
    spool_cfg = SpoolConfig(path=tmp_path / "spool", max_age_s=7 * DAY_S)
    spool = SqliteSpool(spool_cfg, clock=lambda: time.time() + offset[0])
    device = Device(broker, "dev1", tmp_path / "spool", fleet.sealer("dev1"), spool=spool)
    try:
        device.send(clip[:10])  # the broker is there but the uplink is not started: a backlog
        offset[0] = 8 * DAY_S  # NTP steps the clock, or an RTC-less box boots with a wrong date
        time.sleep(1.2)  # past the spool's age-check interval
        device.send(clip[10:20])
        stats = spool.stats()
        assert stats.pending == 20 and stats.dropped_age == 0, stats
        output = tmp_path / "received"
        receiver = _receiver(fleet, broker, output)
        device.start()
        wait_delivered(device, output)
        receiver.stop()
    finally:
        device.stop()
    assert_stored_once(output, "dev1", device.spooled, "clock jump")


# ------------------------------------------------------------------------------------- h. disk full


def test_a_full_spool_disk_drops_the_oldest_frames_counts_them_and_logs_one_line(
    broker: Broker, fleet: Fleet, clip: list[Any], tmp_path: Path, caplog: pytest.LogCaptureFixture  # noqa: F811
) -> None:
    """Issue 12: the newest 139 dropped (not the oldest), one traceback per frame. SQLite's page cap makes
    the disk "full" (SQLITE_FULL) without filling one: the oldest go first, counted, one warning."""
    spool = SqliteSpool(SpoolConfig(path=tmp_path / "spool"), max_pages=60)  # ~240 KiB: about 10 frames
    device = Device(broker, "dev1", tmp_path / "spool", fleet.sealer("dev1"), spool=spool)
    try:
        with caplog.at_level(logging.INFO):
            device.send(clip[:30])
        stats = spool.stats()
        kept = stats.pending
        assert 0 < kept < 30 and stats.dropped_full == 30 - kept, stats
        full_lines = [r for r in caplog.records if r.levelno >= logging.WARNING and "full" in r.getMessage()]
        assert len(full_lines) == 1, [r.getMessage() for r in caplog.records]
        assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
        output = tmp_path / "received"
        receiver = _receiver(fleet, broker, output)
        device.start()
        wait_until(lambda: device.pending == 0, 45, "the kept frames confirmed", device.uplink.stats)
        receiver.stop()
    finally:
        device.stop()
    # Oldest first: what was kept is the newest `kept` frames, each stored once.
    assert_stored_once(output, "dev1", device.spooled[-kept:], "disk full")
