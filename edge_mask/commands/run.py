"""`edge-mask run --config FILE [--check-config]`: the live device service.

`--check-config` validates the config and checks, without the network, the files it names: they exist,
the keys are of the right type (Ed25519 signing key, X25519 recipient *public* key: no cloud private key on
a device), private keys are mode 0600, the TLS certificate and CA parse and are valid now, the TLS key
belongs to the certificate. It prints one line and exits 0 (warnings, such as a certificate expiring
within 14 days, go to stderr), or one line per problem naming the file and the fix and exits 2: usable as
`ExecStartPre=` so systemd refuses to start a broken configuration instead of restarting it in a loop.
Signals: SIGTERM/SIGINT stop cleanly within 5 s, SIGHUP reloads the config where that is safe.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "run",
        help="run the live device service (camera -> mask -> seal -> spool -> MQTT)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", required=True, type=Path, help="device config (TOML)")
    parser.add_argument("--check-config", action="store_true", help="validate the config and exit")
    # exit_fast (cli.exit_now): native libraries (onnxruntime, OpenCV) may still own threads whose
    # destructors ran into std::terminate (SIGABRT, exit -6) at interpreter teardown after a clean SIGTERM
    # stop; by then everything that matters is durable (the service closed the spool, said goodbye).
    parser.set_defaults(func=run, exit_fast=True)


def run(args: argparse.Namespace) -> int:
    from edge_mask.config import EdgeConfig, load_config
    from edge_mask.service import forbid_core_dumps

    forbid_core_dumps()  # raw frames live in this process's memory: a core file would hold faces
    cfg = load_config(args.config, EdgeConfig)
    if args.check_config:
        check_files(cfg)
        print(f"edge-mask: config OK: {args.config} (device {cfg.device_id}, camera {cfg.camera.type})")
        return 0
    if not args.verbose and not args.quiet:
        logging.getLogger("edge_mask").setLevel(cfg.service.log_level)

    from edge_mask.commands.interrupts import handle_signals
    from edge_mask.service import Service

    service = Service(cfg, config_path=args.config)
    actions = {
        signal.SIGTERM: service.request_stop,
        signal.SIGINT: service.request_stop,
        signal.SIGHUP: service.request_reload,
    }
    with handle_signals(actions):
        return service.run()


def check_files(cfg: Any) -> None:
    """The key and certificate files the config names must exist and hold what they should."""
    from edge_mask.core.errors import ConfigError
    from edge_mask.service import config_checks

    named = {
        "seal.recipient_public_key": cfg.seal.recipient_public_key,
        "seal.signing_key": cfg.seal.signing_key,
    }
    tls = cfg.uplink.broker.tls
    if tls is not None:
        named.update({f"uplink.broker.tls.{k}": getattr(tls, k) for k in ("ca", "cert", "key")})
    missing = [f"{key} = {path}" for key, path in named.items() if not Path(path).is_file()]
    if missing:
        raise ConfigError(
            f"file not found: {'; '.join(missing)}; provision the device (edge-mask provision) or fix the paths"
        )
    results = config_checks(cfg)
    for warning in (c for c in results if c.ok):
        print(f"edge-mask: warning: {warning.line()[5:]}", file=sys.stderr)
    problems = [c.line()[5:] for c in results if not c.ok]
    if problems:
        raise ConfigError("\n".join(problems))
