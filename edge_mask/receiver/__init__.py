"""Receiver room: the cloud side: subscribe, reassemble, verify, decrypt, drop duplicates, store, answer.

Rule: receiver/ imports the sealing room's face (to open frames), the uplink room's MQTT helpers and the
ground; never capture/, detect/, mask/, service/ or tools/. It holds the recipient private key; a device
never does.
"""

from edge_mask.receiver.plots import draw_signals
from edge_mask.receiver.receiver import Receiver, topic_device
from edge_mask.receiver.store import StorageError

__all__ = ["Receiver", "StorageError", "draw_signals", "topic_device"]
