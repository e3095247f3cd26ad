"""Receiver room: the cloud side: subscribe, reassemble, verify, decrypt, drop duplicates, store.

Rule: receiver/ imports the sealing room's face (to open frames), the uplink room's MQTT helpers and the
ground; never capture/, detect/, mask/, service/ or tools/. It holds the recipient private key; a device
never does.
"""

from edge_mask.receiver.receiver import Receiver, topic_device

__all__ = ["Receiver", "topic_device"]
