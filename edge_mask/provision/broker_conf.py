"""The broker's ACL and Mosquitto config, rendered for `edge-mask provision broker`.

Why the ACL is keyed on the certificate's CN: Mosquitto's `use_identity_as_username` makes the CN the
username, so a device can publish only under the id its certificate was issued for (see pki.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

TOPIC_ROOT = "edge-mask"


def render_acl(receivers: Sequence[str] = ("receiver",), topic_root: str = TOPIC_ROOT) -> str:
    """Mosquitto ACL: a device (username = certificate CN) writes only under `<root>/<its id>/`.

    Receivers may read (and subscribe to) everything under the root, also through `$share/<group>/`
    filters: Mosquitto 2 checks a shared subscription's ACL against the filter without the
    `$share/<group>/` prefix, so `topic read <root>/#` covers it (tests/test_provision.py checks this).
    Devices may also read their own subtree (status echo); nobody else can read anything.
    """
    lines = [
        "# edge-mask broker ACL (written by `edge-mask provision broker`).",
        "# Usernames are certificate common names (use_identity_as_username true).",
        "# Devices: write and read only below their own id.",
        f"pattern readwrite {topic_root}/%u/#",
        "",
    ]
    for user in receivers:
        lines += ["# receiver: reads every device's frames and status", f"user {user}"]
        lines += [f"topic read {topic_root}/#", ""]
    return "\n".join(lines)


def render_mosquitto_conf(
    *,
    port: int,
    cafile: Path,
    certfile: Path,
    keyfile: Path,
    acl_file: Path,
    bind_address: str = "0.0.0.0",
    persistence_dir: Path | None = None,
    log_file: Path | None = None,
    user: str | None = None,
    max_packet_size: int = 256 * 1024,
    max_queued_messages: int = 100_000,
) -> str:
    """A Mosquitto 2 config with one mutual-TLS listener and no anonymous access.

    `persistence_dir` keeps QoS 1 sessions across a broker restart (frames queued for an offline receiver).
    `max_packet_size` bounds a single MQTT packet (frames are chunked below uplink.max_payload).
    """
    lines = ["# edge-mask broker (written by `edge-mask provision broker`)."]
    if user:
        lines.append(f"user {user}")
    lines += ["per_listener_settings false", "allow_anonymous false", f"acl_file {acl_file}"]
    if persistence_dir is not None:
        location = str(persistence_dir).rstrip("/")
        lines += ["persistence true", f"persistence_location {location}/", "autosave_interval 60"]
    else:
        lines.append("persistence false")
    if log_file is not None:
        lines.append(f"log_dest file {log_file}")
    lines += [
        "log_type error", "log_type warning", "log_type notice", "log_type information",
        "connection_messages true",
        f"max_packet_size {max_packet_size}",
        f"max_queued_messages {max_queued_messages}",
        "max_inflight_messages 100",
        "",
        f"listener {port} {bind_address}",
        "protocol mqtt",
        f"cafile {cafile}",
        f"certfile {certfile}",
        f"keyfile {keyfile}",
        "tls_version tlsv1.2",
        "require_certificate true",
        "use_identity_as_username true",
        "",
    ]
    return "\n".join(lines)
