"""Uplink room: the crash-safe spool and the transports that empty it (MQTT today).

Rule: uplink/ moves sealed bytes only: it imports the ground (core/, config/) and the sealing room's face,
never capture/, detect/, mask/, service/, receiver/ or tools/. `mqtt.py` holds the one client setup,
CONNACK wait and reconnect policy, used by the uplink, the receiver and `doctor`.

Add a transport: a class with the `Uplink` protocol's methods, registered in `UPLINKS` by the config's
`uplink.type`.
"""

from edge_mask.uplink.mqtt import check_tls_files, connect, make_client, reason_failed
from edge_mask.uplink.mqtt_uplink import MqttUplink
from edge_mask.uplink.spool import Spool, SpoolRecord, SpoolStats, open_spool

__all__ = [
    "MqttUplink",
    "Spool",
    "SpoolRecord",
    "SpoolStats",
    "check_tls_files",
    "connect",
    "make_client",
    "open_spool",
    "reason_failed",
]
