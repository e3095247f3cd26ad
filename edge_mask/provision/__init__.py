"""Provisioning room: the clinic's CA, recipient keys, device bundles, broker config, model downloads.

Rule: provision/ imports the sealing room's face (key files) and the ground; never capture/, detect/,
mask/, uplink/, service/, receiver/ or tools/. Secrets are written 0600 in 0700 directories.
"""

from edge_mask.provision.download import read_url
from edge_mask.provision.enroll import (
    RECEIVER_NAME,
    provision_broker,
    provision_ca,
    provision_device,
    provision_recipient,
)

__all__ = [
    "RECEIVER_NAME",
    "provision_broker",
    "provision_ca",
    "provision_device",
    "provision_recipient",
    "read_url",
]
