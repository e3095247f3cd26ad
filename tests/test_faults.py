"""Fault injection through the provisioned Mosquitto: the broker, the receiver and other clients misbehave.

Each test is one row of issue 12's red-team table, bounded in time and frame count, checked by
(stream, seq) accounting: every frame a device spooled is stored exactly once, and the device's spool is
empty at the end (it deletes a frame only when the cloud confirmed it). Device-side faults (refusals,
clock jumps, a full disk) are in test_faults_device.py. The sealing attacks (330 bit flips, forged ids,
wrong keys, replays, 10,000 fuzzed payloads: 0 stored) are tests/test_receiver.py's
`test_tampering_forgery_and_wrong_keys_are_rejected_with_their_reason`,
`test_duplicates_and_replays_are_dropped_even_after_a_restart` and
`test_fuzzed_messages_never_stop_the_receiver_or_store_anything_bogus`; they are not repeated here.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from support.broker import RECEIVER_USER, Broker
from support.faults import (  # noqa: F401  (fixtures)
    REPO,
    Device,
    ReceiverProcess,
    ReceiverThread,
    assert_stored_once,
    broker,
    clip,
    fleet,
    receiver_settings,
    stored_entries,
    stored_keys,
    wait_delivered,
    wait_published,
    wait_until,
    write_receiver_toml,
)
from support.fleet import Fleet
from support.proxy import HoldingRelay

from edge_mask.config import EncodeConfig
from edge_mask.seal import create_encoder

FRAMES_TOPIC = "edge-mask/{}/frames"


def _raw_client(mq: Broker, name: str, client_id: str, messages: list[str] | None = None,
                persistent: bool = False) -> mqtt.Client:
    """A paho client with certificate CN `name` asking for `client_id` (the broker names it `name`)."""
    tls = mq.client_tls(name)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    client.tls_set(ca_certs=str(tls.ca), certfile=str(tls.cert), keyfile=str(tls.key))
    connected = threading.Event()
    client.on_connect = lambda c, u, f, rc, p: connected.set()
    if messages is not None:
        client.on_message = lambda c, u, m: messages.append(m.topic)
    props = None
    if persistent:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 3600
    client.connect(mq.host, mq.port, keepalive=10, clean_start=not persistent, properties=props)
    client.loop_start()
    assert connected.wait(10), mq.log()[-2000:]
    return client


# ------------------------------------------------------------------------------------------- a. broker


def test_broker_sigkill_with_frames_queued_for_the_offline_receiver_loses_nothing(
    broker: Broker, fleet: Fleet, clip: list[Any], tmp_path: Path  # noqa: F811
) -> None:
    """Issue 12: 910 of 1925 lost. The broker saves its queue every 60 s; the device's spool is the store."""
    output = tmp_path / "received"
    cfg = fleet.receiver_config(output, broker=broker.broker_config(RECEIVER_USER), chunk_timeout_s=2.0)
    ReceiverThread(cfg).stop()  # its persistent session now exists, and the receiver is away
    device = Device(broker, "dev1", tmp_path / "spool", fleet.sealer("dev1")).start()
    try:
        device.send(clip[:20])
        wait_published(device, 20)
        time.sleep(0.3)  # the last PUBACKs
        assert device.pending == 20  # handed to the broker, not confirmed by the cloud: still spooled
        broker.kill()  # SIGKILL: the queue for the receiver was never saved
        broker.start()
        receiver = ReceiverThread(cfg)
        wait_delivered(device, output)
        assert device.uplink.stats()["frames_resent"] >= 1, device.uplink.stats()  # the fault did bite
        receiver.stop()
    finally:
        device.stop()
    assert_stored_once(output, "dev1", device.spooled, "broker killed")


# --------------------------------------------------------------------------------------- b. identity


def test_a_device_certificate_claiming_the_receivers_client_id_takes_nothing(
    broker: Broker, fleet: Fleet, clip: list[Any], tmp_path: Path  # noqa: F811
) -> None:
    """Issue 12: 40 of 40 (receiver offline) and 46 of 347 (online) lost to dev2 connecting as `cloud-receiver`."""
    output = tmp_path / "received"
    cfg = fleet.receiver_config(output, broker=broker.broker_config(RECEIVER_USER), chunk_timeout_s=2.0)
    ReceiverThread(cfg).stop()
    stolen: list[str] = []
    device = Device(broker, "dev1", tmp_path / "spool", fleet.sealer("dev1")).start()
    thieves = []
    try:
        # Receiver offline: dev2 resumes "its" session and subscribes to everything.
        thief = _raw_client(broker, "dev2", RECEIVER_USER, stolen, persistent=True)
        thief.subscribe("edge-mask/#", qos=1)
        thieves.append(thief)
        device.send(clip[:15])
        wait_published(device, 15)
        receiver = ReceiverThread(cfg)
        # Receiver online: dev2 claims the id again, while frames flow.
        thieves.append(_raw_client(broker, "dev2", RECEIVER_USER, stolen))
        device.send(clip[15:30], pause_s=0.02)
        wait_delivered(device, output)
        receiver.stop()
    finally:
        device.stop()
        for client in thieves:
            client.disconnect()
            client.loop_stop()
    assert_stored_once(output, "dev1", device.spooled, "receiver id claimed")
    assert not [t for t in stolen if "/frames" in t], stolen
    log = broker.log()
    assert "Client cloud-receiver already connected" not in log  # nobody took the receiver's session
    assert log.count(" as dev2 (") == 2 and log.count(" as cloud-receiver (") == 2, log[-3000:]


# ------------------------------------------------------------------------------------------ c. receiver


def test_receiver_killed_between_two_chunks_of_a_frame_loses_nothing(
    fleet: Fleet, clip: list[Any], tmp_path: Path  # noqa: F811
) -> None:
    """Issue 12: 5 of 5 lost. Chunks of 8192 bytes; the receiver has the first chunk of a frame, not the
    second, when it is killed (a relay holds the device's traffic after the first chunk: no race)."""
    encoder = create_encoder(EncodeConfig(quality=100))
    big = [(masked, encoder.encode(masked)) for masked, _ in clip[:8]]
    assert min(len(jpeg) for _, jpeg in big) > 2 * 8192
    # Debug logging: the broker logs every PUBLISH it sends to the receiver.
    with Broker(tmp_path / "broker", log_types=("subscribe", "debug")) as dbg:
        output = tmp_path / "received"
        config = write_receiver_toml(tmp_path / "receiver.toml", dbg, receiver_settings(fleet, output))
        receiver = ReceiverProcess(config, dbg)
        receiver.start()
        relay = HoldingRelay(dbg.host, dbg.port)
        via_relay = dbg.broker_config("dev1").model_copy(update={"port": relay.port})
        device = Device(dbg, "dev1", tmp_path / "spool", fleet.sealer("dev1"), broker=via_relay,
                        max_payload=8192).start()
        try:
            assert device.uplink.wait_connected(10)
            sent = f"Sending PUBLISH to {RECEIVER_USER} "
            relay.arm(min_record=8192)  # the first full-size chunk passes, then the device is held
            device.send(big[:1])
            assert relay.held.wait(10)
            assert dbg.wait_for_log(sent, 10), dbg.log()[-2000:]
            time.sleep(0.5)  # the receiver reads and holds chunk 1 (not stored: its frame is incomplete)
            receiver.kill()
            relay.release()  # chunks 2.. reach the broker, which queues them for the receiver's session
            device.send(big[1:])
            wait_published(device, len(big))
            assert dbg.log().count(sent) == 1  # the dead receiver had exactly one chunk: the frame's first
            receiver.start()
            wait_delivered(device, output)
            summary = receiver.stop()
        finally:
            device.stop()
            receiver.kill()
            relay.close()
        assert_stored_once(output, "dev1", device.spooled, "receiver killed mid-frame")
        assert "Traceback" not in receiver.stderr()
        print(f"receiver killed holding the first chunk of a frame; after the restart: {summary}")


# --------------------------------------------------------------------------------------------- d. flood

FLOOD_CHUNKS = 20_000
_FLOODER = """
import sys, paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from edge_mask.seal import split_message
host, port, ca, cert, key, topic, count = sys.argv[1:8]
c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="flood", protocol=mqtt.MQTTv5)
c.tls_set(ca_certs=ca, certfile=cert, keyfile=key)
c.max_inflight_messages_set(100)
c.max_queued_messages_set(0)
c.connect(host, int(port), keepalive=30)
c.loop_start()
infos = []
for i in range(int(count)):
    # an 80-byte first chunk of a 4 KB message whose other 87 chunks never come
    chunk = split_message(i.to_bytes(4, "big") * 1024, 80)[0]
    infos.append(c.publish(topic, chunk, qos=1))
for info in infos:
    info.wait_for_publish(60)
c.disconnect()
c.loop_stop()
print("flooded", len(infos))
"""


def test_a_device_flooding_incomplete_chunks_does_not_cost_another_device_a_frame(
    broker: Broker, fleet: Fleet, clip: list[Any], tmp_path: Path  # noqa: F811
) -> None:
    """Issue 12: 5 of 420 lost, the rest delayed up to 3 minutes. dev2 sends 20k incomplete chunks (QoS 1)
    while dev1 sends a frame every 0.25 s. Asserted: all of dev1's frames stored once, within this test's
    bounded wait, and nothing of dev2's. Measured and printed (not asserted: speed is not a test here):
    each frame's delay from spool to store, against the issue's 5 s."""
    output = tmp_path / "received"
    config = write_receiver_toml(tmp_path / "receiver.toml", broker, receiver_settings(fleet, output))
    receiver = ReceiverProcess(config, broker)
    receiver.start()
    tls = broker.client_tls("dev2")
    flooder = subprocess.Popen(
        [sys.executable, "-c", _FLOODER, broker.host, str(broker.port), str(tls.ca), str(tls.cert), str(tls.key),
         FRAMES_TOPIC.format("dev2"), str(FLOOD_CHUNKS)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
    )
    device = Device(broker, "dev1", tmp_path / "spool", fleet.sealer("dev1")).start()
    try:
        assert broker.wait_for_log("as dev2 (", 20)
        device.send(clip[:16], pause_s=0.25)
        wait_delivered(device, output, timeout=60)
        flood_out, flood_err = flooder.communicate(timeout=120)
        summary = receiver.stop()
    finally:
        device.stop()
        receiver.kill()
        if flooder.poll() is None:
            flooder.kill()
            flooder.wait()
    assert f"flooded {FLOOD_CHUNKS}" in flood_out, flood_err[-2000:]
    assert_stored_once(output, "dev1", device.spooled, "during a flood")
    assert stored_keys(output, "dev2") == []
    delays = sorted(entry["received_at"] - device.spooled_at[(stream, entry["seq"])]
                    for stream, entry in stored_entries(output, "dev1"))
    print(f"dev1 spool-to-store delay during the flood: median {delays[len(delays) // 2]:.2f} s, "
          f"max {delays[-1]:.2f} s (issue 12 asks < 5 s); receiver: {summary}")
    assert "Traceback" not in receiver.stderr()


# ------------------------------------------------------------------------------------- e. open files

STREAMS = 150
RESTART_EVERY = 30


def test_a_long_running_receiver_under_ulimit_n_128_survives_many_device_restarts(
    broker: Broker, fleet: Fleet, clip: list[Any], tmp_path: Path  # noqa: F811
) -> None:
    """Issue 12: 20 of 20 frames of every device lost with `Too many open files`. Every device restart is
    a new stream with its own MP4 writer; 150 streams in a few seconds under RLIMIT_NOFILE 128: the cap on
    open writers (`max_open_writers`) must hold before the idle timeout closes any."""
    output = tmp_path / "received"
    settings = receiver_settings(fleet, output, write_mp4=True)  # writer_idle_s and max_open_writers: defaults
    config = write_receiver_toml(tmp_path / "receiver.toml", broker, settings)
    receiver = ReceiverProcess(config, broker, nofile=128)
    receiver.start()
    spooled: list[tuple[str, int]] = []
    device: Device | None = None
    try:
        for n in range(STREAMS):
            if n % RESTART_EVERY == 0:  # the device process restarts: same spool, new uplink
                if device is not None:
                    spooled += device.spooled
                    device.stop()
                device = Device(broker, "dev1", tmp_path / "spool", None).start()
            assert device is not None
            device.sealer = fleet.sealer("dev1")  # every restart of the pipeline is a new stream
            device.send([clip[n % len(clip)]], pause_s=0.03)
        assert device is not None
        wait_delivered(device, output, timeout=60)
        spooled += device.spooled
        summary = receiver.stop()
    finally:
        if device is not None:
            device.stop()
        receiver.kill()
    assert len({stream for stream, _ in spooled}) == STREAMS
    assert_stored_once(output, "dev1", spooled, "ulimit -n 128")
    errors = receiver.stderr()
    assert "Too many open files" not in errors and "Traceback" not in errors, errors[-3000:]
    print(f"{STREAMS} streams under ulimit -n 128: stored {summary.get('stored')}, "
          f"duplicates {summary.get('duplicates')}, rejected {summary.get('rejected')}")
