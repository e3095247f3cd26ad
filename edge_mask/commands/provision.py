"""`edge-mask provision ca|recipient|device|broker`: create the keys, certificates and configs.

  edge-mask provision ca pki/ca
  edge-mask provision recipient cloud --ca pki/ca --broker-host mqtt.clinic.example
  edge-mask provision device cam-01 --ca pki/ca --recipient cloud/recipient.pub --devices cloud/devices \\
      --broker-host mqtt.clinic.example
  edge-mask provision broker --ca pki/ca --host mqtt.clinic.example --out broker

Secret files are written 0600 (directories 0700) and never printed; nothing is overwritten without --force.
See provisioning/README.md for what goes where.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "provision", help="create the CA, recipient keys, device bundles and broker config",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="what", metavar="WHAT", required=True)

    ca = sub.add_parser("ca", help="a private certificate authority (ECDSA P-256)")
    ca.add_argument("dir", type=Path, help="directory for ca.crt and ca.key")
    ca.add_argument("--name", default="edge-mask clinic CA", help="the CA's common name")
    ca.add_argument("--days", type=int, default=3650, help="validity in days (default 3650)")
    ca.add_argument("--force", action="store_true", help="replace an existing CA")
    ca.set_defaults(func=run_ca)

    rec = sub.add_parser("recipient", help="the cloud's HPKE key pair (+ receiver certificate and config with --ca)")
    rec.add_argument("dir", type=Path, help="directory for recipient.key / recipient.pub (the receiver's bundle)")
    rec.add_argument("--ca", type=Path, help="CA directory: also write receiver.crt/.key and receiver.toml")
    rec.add_argument("--name", default=None, help="receiver's MQTT identity (default cloud-receiver)")
    _broker_args(rec)
    rec.add_argument("--force", action="store_true", help="replace existing keys")
    rec.set_defaults(func=run_recipient)

    dev = sub.add_parser("device", help="a device bundle: TLS cert, signing key, config.toml, enrollment")
    dev.add_argument("name", help="device id (certificate CN and MQTT username)")
    dev.add_argument("--ca", type=Path, required=True, help="CA directory (from `provision ca`)")
    dev.add_argument("--recipient", type=Path, required=True, help="the recipient's recipient.pub")
    dev.add_argument("--out", type=Path, default=None, help="bundle directory (default ./NAME)")
    dev.add_argument("--devices", type=Path, default=None,
                     help="the receiver's devices/ directory to enroll into (default OUT/enrollment)")
    _broker_args(dev)
    dev.add_argument("--force", action="store_true", help="replace the device's existing keys")
    dev.set_defaults(func=run_device)

    brk = sub.add_parser("broker", help="server certificate, mosquitto.conf and ACL")
    brk.add_argument("--ca", type=Path, required=True, help="CA directory (from `provision ca`)")
    brk.add_argument("--host", required=True, help="the broker's host name or IP address as clients dial it")
    brk.add_argument("--out", type=Path, default=None, help="bundle directory (default ./broker)")
    brk.add_argument("--port", type=int, default=8883, help="TLS listener port (default 8883)")
    brk.add_argument("--bind", default="0.0.0.0", help="listen address (default 0.0.0.0)")
    brk.add_argument("--receiver", action="append", default=None, metavar="NAME",
                     help="receiver identity allowed to read all devices (repeatable; default cloud-receiver)")
    brk.add_argument("--user", default=None, help="`user` line: the account Mosquitto drops privileges to")
    brk.add_argument("--force", action="store_true", help="replace existing files")
    brk.set_defaults(func=run_broker)


def _broker_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--broker-host", default="localhost", help="MQTT broker host (default localhost)")
    parser.add_argument("--broker-port", type=int, default=8883, help="MQTT broker TLS port (default 8883)")


def _report(bundle: Any) -> int:
    print(f"wrote {bundle.directory}/")
    for label, path in bundle.files.items():
        secret = "  (secret, 0600)" if label in bundle.secrets else ""
        print(f"  {label:24} {path}{secret}")
    for note in bundle.notes:
        print(f"  - {note}")
    sys.stdout.flush()
    return 0


def run_ca(args: argparse.Namespace) -> int:
    from edge_mask.provision import provision_ca

    return _report(provision_ca(args.dir, name=args.name, days=args.days, force=args.force))


def run_recipient(args: argparse.Namespace) -> int:
    from edge_mask.provision import RECEIVER_NAME, provision_recipient

    return _report(provision_recipient(
        args.dir, ca_dir=args.ca, broker_host=args.broker_host, broker_port=args.broker_port,
        receiver_name=args.name or RECEIVER_NAME, force=args.force,
    ))


def run_device(args: argparse.Namespace) -> int:
    from edge_mask.provision import provision_device

    return _report(provision_device(
        args.name, args.ca, args.recipient, out_dir=args.out, broker_host=args.broker_host,
        broker_port=args.broker_port, devices_dir=args.devices, force=args.force,
    ))


def run_broker(args: argparse.Namespace) -> int:
    from edge_mask.provision import RECEIVER_NAME, provision_broker

    receivers = tuple(args.receiver) if args.receiver else (RECEIVER_NAME,)
    return _report(provision_broker(
        args.ca, args.host, out_dir=args.out, port=args.port, bind_address=args.bind,
        receivers=receivers, run_as=args.user, force=args.force,
    ))
