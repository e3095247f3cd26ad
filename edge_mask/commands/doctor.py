"""`edge-mask doctor --config FILE`: one line per check (camera, model, keys, TLS, broker, spool, cloud, clock).

Exits 0 when every check passed, 1 when any failed (each FAIL line names the fix).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

CHECKS = ("camera", "model", "keys", "broker", "spool", "cloud", "clock")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "doctor",
        help="check camera, model, keys, certificates, broker, disk, the cloud's answers and clock",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", required=True, type=Path, help="device config (TOML)")
    parser.add_argument(
        "--only", action="append", choices=CHECKS, metavar="CHECK", help=f"run only these checks ({', '.join(CHECKS)})"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from edge_mask.config import EdgeConfig, load_config
    from edge_mask.service import run_checks

    cfg = load_config(args.config, EdgeConfig)
    results = run_checks(cfg, tuple(args.only) if args.only else None)
    for check in results:
        print(check.line(), flush=True)
    failed = sum(not c.ok for c in results)
    print(f"{len(results) - failed} OK, {failed} FAIL")
    return 1 if failed else 0
