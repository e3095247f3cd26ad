"""The broker's ACL and Mosquitto config, rendered for `edge-mask provision broker`.

Identity comes from the TLS client certificate only. `use_identity_as_username` makes the certificate's
CN the MQTT username, and `use_username_as_clientid` replaces whatever client id a client sends with that
username. So the ACL (keyed on the username) decides what a device may touch, and nobody can claim
another client's session: a device certificate that connects with the receiver's client id (or another
device's) is simply connected under its own CN, and the real owner of that id stays connected and keeps
its queue (tests/test_provision.py checks both with a real Mosquitto).

Why the broker is a relay, not the store: Mosquitto writes its persistence database only every
`autosave_interval` seconds (and on a clean shutdown), so a broker killed with SIGKILL, a power cut or
a full disk loses whatever it queued since the last save, and a broker has no way to tell a device so.
The copy of a frame that counts is therefore the device's spool: the device deletes a frame only when
the receiver, after storing it, says so on `<root>/<device>/ack` (`edge_mask.seal.Ack`), a topic only the
receivers may write. Persistence stays on because it saves needless re-sends after a clean restart, not
because anything depends on it; a shorter autosave interval would cost disk writes and buy no safety.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

TOPIC_ROOT = "edge-mask"


def render_acl(receivers: Sequence[str] = ("receiver",), topic_root: str = TOPIC_ROOT) -> str:
    """Mosquitto ACL: each identity gets the topics its role needs and nothing else.

    A device (username = certificate CN = client id) may write its frames (`<root>/<id>/frames` and
    below, where chunks go), its retained `status` (also its will) and its `stats`, and read its own
    subtree (its `ack` topic). It may not write any `ack` topic, its own included: an ack makes the device
    delete frames from its spool, so it must mean "the cloud stored it", which holds only if the receivers
    alone can send one (a copied device certificate could otherwise empty the real device's spool).

    Receivers read everything under the root, also through `$share/<group>/` filters (Mosquitto 2 checks
    a shared subscription against the filter without the `$share/<group>/` prefix, so `topic read
    <root>/#` covers it), and write only the devices' `ack` topics. `pattern` lines apply to every user,
    the receivers included; that is harmless because no device may be provisioned under a receiver's name.
    Anything not granted here is refused (MQTT 5: PUBACK/SUBACK 0x87).
    """
    lines = [
        "# edge-mask broker ACL (written by `edge-mask provision broker`).",
        "# Usernames and client ids are certificate common names",
        "# (use_identity_as_username true, use_username_as_clientid true).",
        "# Devices: write their frames, status and stats; read only below their own id (their acks).",
        f"pattern write {topic_root}/%u/frames",
        f"pattern write {topic_root}/%u/frames/#",
        f"pattern write {topic_root}/%u/status",
        f"pattern write {topic_root}/%u/stats",
        f"pattern read {topic_root}/%u/#",
        "",
    ]
    for user in receivers:
        lines += ["# receiver: reads every device's topics, answers on each device's ack topic", f"user {user}"]
        lines += [f"topic read {topic_root}/#", f"topic write {topic_root}/+/ack", ""]
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
    max_inflight_messages: int = 2048,
) -> str:
    """A Mosquitto 2 config with one mutual-TLS listener and no anonymous access.

    `persistence_dir` keeps QoS 1 sessions across a clean broker restart (frames queued for an offline
    receiver); it is a convenience, not the guarantee (see the module docstring: the device's spool is).
    `max_packet_size` bounds a single MQTT packet (frames are chunked below uplink.max_payload).
    `max_inflight_messages`: unacknowledged QoS 1 messages per client. The receiver acknowledges a chunk
    only once its frame is stored or dropped, so it holds up to its `max_pending_chunks` (1536 by default)
    unacknowledged; an MQTT 3.1.1 receiver gets no more than this number in flight, so it must stay above
    that cap or delivery stalls (an MQTT 5 receiver sets its own Receive Maximum in CONNECT).
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
        f"max_inflight_messages {max_inflight_messages}",
        "",
        f"listener {port} {bind_address}",
        "protocol mqtt",
        f"cafile {cafile}",
        f"certfile {certfile}",
        f"keyfile {keyfile}",
        "tls_version tlsv1.2",
        "require_certificate true",
        "use_identity_as_username true",
        "use_username_as_clientid true",
        "",
    ]
    return "\n".join(lines)
