"""A frame leaves the device's spool only when the cloud says it stored it (real Mosquitto, TLS, ACL).

The cloud here is `CloudAcker` (edge_mask.tools.uplink_bench): a client with the receiver's certificate
that subscribes to every device's frames and answers on the device's ack topic the way the receiver does
(batched `seal.Ack` messages), or stays silent, or refuses with a reason. The device side is the real
`MqttUplink` with the real SQLite spool.

The broker's ACL is the provisioned one (`pki.render_acl`); if that does not yet let the receiver publish
acks, this module adds the one line that does (`topic write edge-mask/+/ack` for the receiver user).
"""

from __future__ import annotations

import json
import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.broker import RECEIVER_USER, Broker
from test_uplink import blobs, wait_for

from edge_mask.config import EdgeConfig, SpoolConfig, UplinkConfig
from edge_mask.provision import pki
from edge_mask.provision.enroll import mosquitto_path
from edge_mask.service.doctor import run_checks
from edge_mask.tools.uplink_bench import CloudAcker
from edge_mask.uplink.mqtt_uplink import MqttUplink
from edge_mask.uplink.spool import Spool, open_spool

ACK_WRITE = "topic write edge-mask/+/ack"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    if mosquitto_path() is None:
        pytest.skip("mosquitto is not installed (apt-get install -y mosquitto)")
    broker = Broker(tmp_path / "broker")
    acl = pki.render_acl((RECEIVER_USER,))
    if "/ack" not in acl:  # until the provisioned ACL grants it: the receiver (last user block) writes acks
        broker.acl_path.write_text(acl.rstrip("\n") + f"\n{ACK_WRITE}\n")
    try:
        broker.start()
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def cloud(broker: Broker) -> Iterator[CloudAcker]:
    acker = CloudAcker(broker.broker_config(RECEIVER_USER, client_id="test-cloud"), mode="silent")
    acker.start()
    yield acker
    acker.stop()


def device(broker: Broker, spool: Spool, **settings: object) -> MqttUplink:
    cfg = UplinkConfig.model_validate(
        {"broker": broker.broker_config("dev1"), "retry_min_s": 0.1, "retry_max_s": 0.3, **settings}
    )
    return MqttUplink(cfg, "dev1", spool)


def test_frames_leave_the_spool_only_on_the_clouds_ack(broker: Broker, cloud: CloudAcker, tmp_path: Path) -> None:
    spool = open_spool(SpoolConfig(path=tmp_path / "spool"))
    sent = blobs(30, size=5000)
    for blob in sent:
        spool.put(blob)  # type: ignore[arg-type]
    uplink = device(broker, spool, max_payload=2048)  # chunked: 3 MQTT messages per frame
    uplink.start()
    try:
        # Every chunk PUBACKed by the broker and every frame at the cloud, which says nothing: all kept.
        assert wait_for(lambda: uplink.stats()["awaiting_cloud"] == len(sent)), (uplink.stats(), broker.log())
        assert wait_for(lambda: len(cloud.received) == len(sent))
        assert spool.stats().pending == len(sent) and uplink.stats()["frames_confirmed"] == 0
        # The cloud answers (as the receiver would, late): now they go, and nothing was sent twice.
        cloud.mode = "store"
        stream = sent[0].stream_id
        from edge_mask.seal import Ack

        cloud._client.publish("edge-mask/dev1/ack", Ack(stored={stream.hex(): ((0, 9), (10, 29))}).pack(), qos=1)
        assert wait_for(lambda: spool.stats().pending == 0), uplink.stats()
        stats = uplink.stats()
        assert stats["frames_confirmed"] == len(sent) and stats["awaiting_cloud"] == 0 and stats["frames_resent"] == 0
        assert stats["last_confirmed_age_s"] is not None and stats["cloud_refusal"] is None
        assert set(cloud.received.values()) == {1}
        # New frames: the cloud confirms on its own from now on.
        for blob in blobs(10, stream=b"\x08" * 16):
            spool.put(blob)  # type: ignore[arg-type]
        assert wait_for(lambda: spool.stats().pending == 0), uplink.stats()
        assert uplink.stats()["frames_confirmed"] == len(sent) + 10
    finally:
        uplink.stop()
    assert spool.stats().acked == len(sent) + 10
    spool.close()


def test_unconfirmed_frames_are_sent_again_after_ack_timeout(
    broker: Broker, cloud: CloudAcker, tmp_path: Path
) -> None:
    spool = open_spool(SpoolConfig(path=tmp_path / "spool"))
    sent = blobs(12)
    for blob in sent:
        spool.put(blob)  # type: ignore[arg-type]
    uplink = device(broker, spool, ack_timeout_s=0.3)
    uplink.start()
    try:
        # No answer: each frame goes out again after 0.3 s, then 0.6 s ... (the spool keeps all of them).
        assert wait_for(lambda: len(cloud.received) == len(sent) and min(cloud.received.values()) >= 3), (
            dict(cloud.received), uplink.stats())
        assert spool.stats().pending == len(sent) and uplink.stats()["frames_resent"] >= 2 * len(sent)
        cloud.mode = "store"  # the receiver is back: the next re-send is confirmed (duplicates count as stored)
        assert wait_for(lambda: spool.stats().pending == 0), uplink.stats()
    finally:
        uplink.stop()
    assert uplink.stats()["frames_confirmed"] == len(sent)
    spool.close()


@pytest.mark.parametrize("confirm", ["cloud", "broker"])
def test_puback_no_matching_subscribers_is_not_a_delivery(broker: Broker, tmp_path: Path, confirm: str) -> None:
    """Nobody subscribes to the frames: Mosquitto answers PUBACK 0x10 and drops them; the device keeps them."""
    spool = open_spool(SpoolConfig(path=tmp_path / "spool"))
    sent = blobs(5)
    for blob in sent:
        spool.put(blob)  # type: ignore[arg-type]
    uplink = device(broker, spool, confirm=confirm)
    uplink.start()
    try:
        assert wait_for(lambda: uplink.stats()["frames_undelivered"] >= 3), (uplink.stats(), broker.log())
        assert spool.stats().pending == len(sent) and spool.stats().acked == 0
        assert uplink.stats()["awaiting_cloud"] == 0
        late = CloudAcker(broker.broker_config(RECEIVER_USER, client_id="test-cloud"),
                          mode="store" if confirm == "cloud" else "silent")
        late.start()  # a receiver subscribes: the next attempt after the back-off is delivered
        try:
            assert wait_for(lambda: spool.stats().pending == 0), uplink.stats()
        finally:
            late.stop()
    finally:
        uplink.stop()
    spool.close()


def test_a_refusal_keeps_the_frames_and_says_so_in_log_stats_status_and_doctor(
    broker: Broker, cloud: CloudAcker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="edge_mask.uplink")
    spool_dir = tmp_path / "spool"
    spool = open_spool(SpoolConfig(path=spool_dir))
    sent = blobs(20)
    for blob in sent:
        spool.put(blob)  # type: ignore[arg-type]
    cloud.mode, cloud.reason = "refuse", "wrong_recipient"
    uplink = device(broker, spool, ack_timeout_s=0.2)
    edge = EdgeConfig.model_validate({"device_id": "dev1", "spool": {"path": str(spool_dir)}})
    uplink.start()
    try:
        # Refused again and again (re-sent every 0.2 s, 0.4 s ...): still one log line, frames kept, connected.
        assert wait_for(lambda: uplink.stats()["cloud_refused"] >= 3 * len(sent)), uplink.stats()
        stats = uplink.stats()
        assert stats["cloud_refusal"] == "wrong_recipient" and stats["connected"]
        assert spool.stats().pending == len(sent) and stats["frames_confirmed"] == 0
        refusals = [r.getMessage() for r in caplog.records if "refuses this device's frames" in r.getMessage()]
        assert len(refusals) == 1 and "wrong_recipient" in refusals[0] and "recipient.pub" in refusals[0]
        status_file = spool_dir / "cloud-status.json"
        assert stat.S_IMODE(os.stat(status_file).st_mode) == 0o600
        status = json.loads(status_file.read_text())
        assert status["refused"] == "wrong_recipient" and status["since"] and status["last_confirmed_at"] is None
        (line,) = run_checks(edge, ("cloud",))
        assert line.line().startswith("FAIL cloud: cloud refuses this device's frames: wrong_recipient since ")
        assert "fix: re-provision the device with the cloud's current recipient.pub" in line.line()

        cloud.reason = "unknown_device"  # another reason: another line, another fix
        assert wait_for(lambda: uplink.stats()["cloud_refusal"] == "unknown_device"), uplink.stats()
        (line,) = run_checks(edge, ("cloud",))
        assert "unknown_device" in line.line() and "fix: enroll the device at the cloud" in line.line()

        cloud.mode = "store"  # the cloud is fixed: the kept frames are delivered after all
        assert wait_for(lambda: spool.stats().pending == 0), uplink.stats()
        assert uplink.stats()["cloud_refusal"] is None
    finally:
        uplink.stop()
    refusals = [r.getMessage() for r in caplog.records if "refuses this device's frames" in r.getMessage()]
    assert len(refusals) == 2, refusals
    status = json.loads((spool_dir / "cloud-status.json").read_text())
    assert status["refused"] is None and status["last_confirmed_at"]
    (line,) = run_checks(edge, ("cloud",))
    assert line.ok and "the cloud stores this device's frames" in line.line()
    spool.close()


def test_a_restart_sends_what_was_awaiting_the_cloud_once_more(
    broker: Broker, cloud: CloudAcker, tmp_path: Path
) -> None:
    """Awaiting state is memory only: after a restart the spool's backlog goes out again; the cloud answers
    the duplicates as stored and they leave the spool."""
    cfg = SpoolConfig(path=tmp_path / "spool")
    spool = open_spool(cfg)
    for blob in blobs(8):
        spool.put(blob)  # type: ignore[arg-type]
    first = device(broker, spool)
    first.start()
    assert wait_for(lambda: first.stats()["awaiting_cloud"] == 8), first.stats()
    first.stop(clean=False)
    spool.close()
    cloud.mode = "store"
    again = open_spool(cfg)
    second = device(broker, again)
    second.start()
    try:
        assert wait_for(lambda: again.stats().pending == 0), second.stats()
    finally:
        second.stop()
    assert set(cloud.received.values()) == {2}  # each frame exactly once per process
    again.close()


def test_awaiting_max_bounds_what_is_out_unconfirmed(broker: Broker, cloud: CloudAcker, tmp_path: Path) -> None:
    spool = open_spool(SpoolConfig(path=tmp_path / "spool"))
    sent = blobs(12)
    for blob in sent:
        spool.put(blob)  # type: ignore[arg-type]
    uplink = device(broker, spool, awaiting_max=5)
    uplink.start()
    try:
        assert wait_for(lambda: uplink.stats()["awaiting_cloud"] == 5), uplink.stats()
        assert len(cloud.received) == 5 and sorted(seq for _, seq in cloud.received) == [0, 1, 2, 3, 4]
        cloud.mode = "store"
        from edge_mask.seal import Ack

        cloud._client.publish("edge-mask/dev1/ack", Ack(stored={sent[0].stream_id.hex(): ((0, 4),)}).pack(), qos=1)
        assert wait_for(lambda: spool.stats().pending == 0), uplink.stats()  # the window moved on
    finally:
        uplink.stop()
    assert set(cloud.received.values()) == {1}
    spool.close()


def test_timed_spool_times_frames_to_the_clouds_confirmation(tmp_path: Path) -> None:
    from edge_mask.service.queues import TimedSpool

    latencies: list[float] = []
    timed = TimedSpool(open_spool(SpoolConfig(path=tmp_path / "spool")), latencies.append)
    assert timed.directory == tmp_path / "spool"
    for blob in blobs(6):
        timed.put_timed(blob, 0.0)  # type: ignore[arg-type]
    assert timed.delete_ranges(b"\x07" * 16, [(1, 3)]) == 3 and len(latencies) == 3
    assert timed.delete_ranges(b"\x07" * 16, [(0, 2**63)]) == 3 and len(latencies) == 6
    timed.close()
