"""Uplink room: the crash-safe spool and the transports that empty it (MQTT today).

Rule: uplink/ moves sealed bytes only: it imports the ground (core/, config/) and the sealing room's face,
never capture/, detect/, mask/, service/, receiver/ or tools/. `mqtt.py` holds the one client setup and
CONNACK wait (`wait_for_connack`), used by the uplink, the receiver and `doctor`; the reconnect policy is
the ground's `edge_mask.core.backoff.Backoff`. `confirm.py` keeps what waits for the cloud's Ack and the
cloud's verdict (`cloud-status.json`, read by `doctor` through `read_cloud_status`).

Add a transport: a class with the `Uplink` protocol's methods, registered in `UPLINKS` by the config's
`uplink.type`.
"""

from edge_mask.uplink import mqtt_uplink as _mqtt_uplink  # noqa: F401  (registers the mqtt transport)
from edge_mask.uplink.base import UPLINKS, Uplink, create_uplink
from edge_mask.uplink.confirm import CloudStatus, fix_for, ids_in_ranges, read_cloud_status
from edge_mask.uplink.mqtt import (
    NO_MATCHING_SUBSCRIBERS,
    check_tls_files,
    connect,
    make_client,
    not_delivered,
    open_connection,
    reason_failed,
    wait_for_connack,
)
from edge_mask.uplink.mqtt_uplink import MqttUplink
from edge_mask.uplink.spool import Spool, SpoolRecord, SpoolStats, open_spool
from edge_mask.uplink.spool_db import spool_in_use

__all__ = [
    "NO_MATCHING_SUBSCRIBERS",
    "UPLINKS",
    "CloudStatus",
    "MqttUplink",
    "Spool",
    "SpoolRecord",
    "SpoolStats",
    "Uplink",
    "check_tls_files",
    "connect",
    "create_uplink",
    "fix_for",
    "ids_in_ranges",
    "make_client",
    "not_delivered",
    "open_connection",
    "open_spool",
    "read_cloud_status",
    "reason_failed",
    "spool_in_use",
    "wait_for_connack",
]
