"""Provisioning bundles: a CA, the cloud recipient, devices and the broker, as directories of files.

Why directories of plain files: a clinic's IT person copies one folder to each machine (the device bundle
to the camera box, the broker bundle to the MQTT host, the recipient bundle to the cloud receiver) and can
see what is secret by its mode (0600). Each bundle's config refers to its files by relative path, so a
bundle can be moved as a whole. See provisioning/README.md for the layout.

Secrets are written 0600 in 0700 directories, never overwritten without `force`, and never logged.
"""

from __future__ import annotations

import json
import logging
import os
import pwd
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from edge_mask.config import DEVICE_ID_PATTERN, EdgeConfig, ReceiverConfig, load_config
from edge_mask.core.errors import KeyMaterialError, UserError
from edge_mask.provision import broker_conf, pki

log = logging.getLogger(__name__)

RECEIVER_NAME = "cloud-receiver"
"""Default MQTT identity (certificate CN) of the receiver; the ACL lets it read every device's topics."""
RECIPIENT_KEY = "recipient.key"
RECIPIENT_PUB = "recipient.pub"
SIGNING_KEY = "device-signing.key"
DEVICES_DIR = "devices"
NAMES_FILE = "names.json"
"""In the CA folder: every CN this CA issued to a device or a receiver, so one name never gets both roles."""


@dataclass
class Bundle:
    """What a provisioning step wrote: the directory, its files (secrets marked) and follow-up notes."""

    directory: Path
    files: dict[str, Path] = field(default_factory=dict)
    secrets: set[str] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)


def _toml_str(value: str | Path) -> str:
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


def _copy_public(src: Path, dst: Path, force: bool) -> Path:
    if dst.exists() and not force and dst.read_bytes() != src.read_bytes():
        raise KeyMaterialError(f"{dst} already exists and differs; pass --force to replace it")
    pki.write_file(dst, src.read_bytes(), force=True)
    return dst


# ------------------------------------------------------------------------------------------------- CA


def provision_ca(directory: Path, name: str = "edge-mask clinic CA", days: int = pki.CA_DAYS,
                 force: bool = False) -> Bundle:
    ca = pki.create_ca(directory, name=name, days=days, force=force)
    return Bundle(
        Path(directory),
        {"ca certificate": ca.cert_path, "ca key": ca.key_path},
        {"ca key"},
        [f"keep {ca.key_path} offline; copy only {ca.cert_path.name} to other machines"],
    )


# ------------------------------------------------------------------------------------ recipient / receiver


def claim_name(ca_dir: Path, name: str, role: str) -> None:
    """Record that this CA issues `name` as `role`; refuse a name already issued in the other role.

    Why: the broker's ACL grants by certificate CN, and a device whose CN were a receiver's name would get
    the receiver's rights (read every device's frames, write every device's acks).
    """
    path = Path(ca_dir) / NAMES_FILE
    try:
        names = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: unreadable ({exc}); restore it from the CA's backup") from None
    if not isinstance(names, dict):
        raise UserError(f"{path}: not a JSON object of name -> role; restore it from the CA's backup")
    taken = names.get(name)
    if taken is not None and taken != role:
        raise UserError(f"name {name!r} was already issued by this CA as a {taken}; choose another name for the {role}")
    if taken is None:
        names[name] = role
        pki.write_file(path, (json.dumps(names, indent=1, sort_keys=True) + "\n").encode(), force=True)


def provision_recipient(
    directory: Path,
    ca_dir: Path | None = None,
    broker_host: str = "localhost",
    broker_port: int = 8883,
    receiver_name: str = RECEIVER_NAME,
    force: bool = False,
) -> Bundle:
    """The cloud's HPKE X25519 key pair; with `ca_dir`, also the receiver's MQTT client certificate,
    a copy of the CA certificate, an empty `devices/` registry and a ready `receiver.toml`."""
    from edge_mask import seal

    directory = pki.private_dir(Path(directory))
    priv, pub = directory / RECIPIENT_KEY, directory / RECIPIENT_PUB
    for existing in (priv, pub):
        if existing.exists() and not force:
            raise KeyMaterialError(
                f"{existing} already exists; pass --force to replace it "
                "(frames sealed to the old key need the old key to decrypt)"
            )
    priv_path, pub_path = seal.generate_recipient(directory, force=force)
    key_id = seal.load_recipient_public_key(pub_path).key_id.hex()
    bundle = Bundle(directory, {"recipient private key": Path(priv_path), "recipient public key": Path(pub_path)},
                    {"recipient private key"})
    bundle.notes.append(f"recipient key id {key_id}; give {Path(pub_path).name} to every device, keep the key here")
    if ca_dir is None:
        bundle.notes.append("no --ca given: receiver certificate and receiver.toml not written")
        return bundle
    ca = pki.load_ca(ca_dir)
    claim_name(Path(ca_dir), receiver_name, "receiver")
    issued = pki.make_client_cert(ca, directory, receiver_name, "receiver", force=force)
    ca_copy = _copy_public(ca.cert_path, directory / pki.CA_CERT, force)
    devices = directory / DEVICES_DIR
    devices.mkdir(mode=0o700, exist_ok=True)
    conf = directory / "receiver.toml"
    text = render_receiver_toml(broker_host, broker_port, receiver_name)
    pki.write_file(conf, text.encode(), force=force)
    load_config(conf, ReceiverConfig)  # what we write must load
    bundle.files.update({"receiver certificate": issued.cert, "receiver key": issued.key, "ca certificate": ca_copy,
                         "receiver config": conf, "device registry": devices})
    bundle.secrets.add("receiver key")
    bundle.notes.append(f"run: edge-mask receive --config {conf}")
    return bundle


def render_receiver_toml(broker_host: str, broker_port: int, receiver_name: str = RECEIVER_NAME,
                         protocol: str = "5") -> str:
    return "\n".join([
        "# edge-mask receiver (written by `edge-mask provision recipient --ca`). Paths are relative to this file.",
        'topic_filter = "edge-mask/+/frames/#"',
        f"recipient_private_key = {_toml_str(RECIPIENT_KEY)}",
        f"devices_dir = {_toml_str(DEVICES_DIR)}   # one enrollment record per device",
        'output_dir = "received"',
        "write_mp4 = true",
        "",
        "[broker]",
        f"host = {_toml_str(broker_host)}",
        f"port = {int(broker_port)}",
        f"protocol = {_toml_str(protocol)}",
        f"client_id = {_toml_str(receiver_name)}",
        "",
        "[broker.tls]",
        'ca = "ca.crt"',
        'cert = "receiver.crt"',
        'key = "receiver.key"',
        "",
    ])


# --------------------------------------------------------------------------------------------- device


def provision_device(
    name: str,
    ca_dir: Path,
    recipient_pub: Path,
    out_dir: Path | None = None,
    broker_host: str = "localhost",
    broker_port: int = 8883,
    devices_dir: Path | None = None,
    force: bool = False,
    extra_toml: str = "",
) -> Bundle:
    """A device bundle: TLS key + CSR + certificate (CN = device id), Ed25519 frame-signing key, the
    recipient's public key, the CA certificate, `config.toml`, and the enrollment record.

    The enrollment record goes to `devices_dir` (the receiver's registry) when given, else to
    `<out>/enrollment/` for the operator to copy to the receiver's `devices/`.
    """
    import re

    from edge_mask import seal

    if not re.match(DEVICE_ID_PATTERN, name):
        raise UserError(
            f"device name {name!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    if name == RECEIVER_NAME or name.startswith(RECEIVER_NAME + "-"):
        raise UserError(f"device name {name!r} is reserved for receivers' identities; choose another name")
    ca = pki.load_ca(ca_dir)  # fails first, before anything is written
    claim_name(Path(ca_dir), name, "device")
    recipient = seal.load_recipient_public_key(Path(recipient_pub))
    out = pki.private_dir(Path(out_dir) if out_dir is not None else Path(name))
    conf = out / "config.toml"
    signing = out / SIGNING_KEY
    for existing in (conf, signing):
        if existing.exists() and not force:
            raise KeyMaterialError(f"{existing} already exists; pass --force to replace the device's keys")
    issued = pki.make_device_cert(ca, out, name, force=force)
    signing_pub = seal.generate_signing_key(signing, force=force)
    ca_copy = _copy_public(ca.cert_path, out / pki.CA_CERT, force)
    pub_copy = _copy_public(Path(recipient_pub), out / RECIPIENT_PUB, force)
    text = render_device_toml(name, broker_host, broker_port) + extra_toml
    pki.write_file(conf, text.encode(), force=force)
    load_config(conf, EdgeConfig)  # what we write must load
    enrollment = seal.Enrollment(name, signing_pub, issued.fingerprint_sha256)
    enroll_dir = Path(devices_dir) if devices_dir is not None else out / "enrollment"
    enroll_dir.mkdir(parents=True, exist_ok=True)
    record = enrollment.save(enroll_dir, force=force)
    bundle = Bundle(out, {
        "config": conf, "device certificate": issued.cert, "device key": issued.key, "device csr": issued.csr,
        "signing key": signing, "ca certificate": ca_copy, "recipient public key": pub_copy,
        "enrollment record": record,
    }, {"device key", "signing key"})
    bundle.notes.append(f"sealing to recipient key id {recipient.key_id.hex()}")
    if devices_dir is None:
        bundle.notes.append(f"copy {enroll_dir}/* to the receiver's devices/ directory")
    bundle.notes.append(f"copy {out} to the device and run: edge-mask run --config config.toml")
    return bundle


def render_device_toml(device_id: str, broker_host: str, broker_port: int, protocol: str = "5") -> str:
    return "\n".join([
        "# edge-mask device (written by `edge-mask provision device`). Paths are relative to this file.",
        f"device_id = {_toml_str(device_id)}",
        "",
        "[camera]",
        'type = "opencv"',
        'source = "0"   # /dev/video0; or an rtsp:// URL, or a video file',
        "",
        "[seal]",
        f"recipient_public_key = {_toml_str(RECIPIENT_PUB)}",
        f"signing_key = {_toml_str(SIGNING_KEY)}",
        "",
        "[spool]",
        'path = "spool"   # under systemd: "${STATE_DIRECTORY}/spool"',
        "",
        "[uplink.broker]",
        f"host = {_toml_str(broker_host)}",
        f"port = {int(broker_port)}",
        f"protocol = {_toml_str(protocol)}",
        f"client_id = {_toml_str(device_id)}",
        "",
        "[uplink.broker.tls]",
        'ca = "ca.crt"',
        'cert = "device.crt"',
        'key = "device.key"',
        "",
    ])


# --------------------------------------------------------------------------------------------- broker


def provision_broker(
    ca_dir: Path,
    host: str,
    out_dir: Path | None = None,
    port: int = 8883,
    bind_address: str = "0.0.0.0",
    receivers: tuple[str, ...] = (RECEIVER_NAME,),
    run_as: str | None = None,
    force: bool = False,
) -> Bundle:
    """Server certificate for `host` (+ localhost/127.0.0.1), the ACL and a `mosquitto.conf`.

    Mosquitto resolves file names against its working directory, so the config names the files by their
    absolute paths where they are written; move the directory and re-run, or edit the paths.
    `run_as`: the `user` line (Mosquitto drops root privileges to it; it must be able to read the files).
    """
    ca = pki.load_ca(ca_dir)
    out = pki.private_dir(Path(out_dir) if out_dir is not None else Path("broker"))
    conf, acl = out / "mosquitto.conf", out / "acl"
    for existing in (conf, acl):
        if existing.exists() and not force:
            raise KeyMaterialError(f"{existing} already exists; pass --force to replace it")
    issued = pki.make_server_cert(ca, out, host, force=force)
    ca_copy = _copy_public(ca.cert_path, out / pki.CA_CERT, force)
    pki.write_file(acl, broker_conf.render_acl(receivers).encode(), force=force)
    data = out / "data"
    data.mkdir(mode=0o700, exist_ok=True)
    root = out.resolve()
    text = broker_conf.render_mosquitto_conf(
        port=port, bind_address=bind_address, cafile=root / ca_copy.name, certfile=root / issued.cert.name,
        keyfile=root / issued.key.name, acl_file=root / acl.name, persistence_dir=root / "data",
        log_file=root / "mosquitto.log", user=run_as,
    )
    pki.write_file(conf, text.encode(), force=force)
    bundle = Bundle(out, {"mosquitto config": conf, "acl": acl, "broker certificate": issued.cert,
                          "broker key": issued.key, "ca certificate": ca_copy}, {"broker key"})
    bundle.notes.append(f"run: mosquitto -c {conf}  (listens on {bind_address}:{port})")
    if run_as is None:
        bundle.notes.append(f"as root, Mosquitto runs as user 'mosquitto': chown -R mosquitto {root}")
    return bundle


def current_user() -> str:
    return pwd.getpwuid(os.geteuid()).pw_name


def mosquitto_path() -> str | None:
    return shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if os.access("/usr/sbin/mosquitto", os.X_OK) else None
    )
