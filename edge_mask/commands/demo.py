"""`edge-mask demo`: provision, broker, device service and receiver on this machine, end to end.

  edge-mask demo                       # the shared clip (else camera 0, else a synthetic pattern)
  edge-mask demo --frames 120 --json   # for scripts: the last stdout line is one JSON object
  edge-mask demo --source clip.mp4 --out demo-run
  edge-mask demo --clinical            # a signer's clip: the clinical style and the signals plot

Everything is written under a new directory (a temporary one unless --out): the throw-away CA and keys,
the device's spool, and the receiver's decrypted masked frames, MP4 and a contact sheet PNG.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo", help="run the whole system locally: provision, broker, device, receiver",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--frames", type=int, default=None, metavar="N", help="stop the source after N frames")
    parser.add_argument("--source", default=None, metavar="PATH",
                        help="a video file (played as a camera) or a camera index; default: the shared clip")
    parser.add_argument("--out", type=Path, default=None, metavar="DIR",
                        help="new or empty directory for everything the demo writes (default: a temp dir)")
    parser.add_argument("--broker", choices=["auto", "mosquitto", "embedded"], default="auto",
                        help="auto: Mosquitto when installed, else the embedded broker")
    parser.add_argument("--json", action="store_true", help="end with one JSON line (the summary)")
    parser.add_argument("--clinical", action="store_true",
                        help="read clinical signals, mask in the clinical style and plot the signals at the cloud")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from edge_mask.tools.demo import run_demo

    def say(message: str) -> None:
        print(f"demo: {message}", file=sys.stderr if args.json else sys.stdout, flush=True)

    summary = run_demo(frames=args.frames, source=args.source, out=args.out, broker=args.broker, say=say,
                       clinical=args.clinical)
    ok = summary["lost"] == 0 and summary["delivered"] == summary["verified"] == summary["decrypted"]
    if args.json:
        print(json.dumps(summary, sort_keys=True), flush=True)
        return 0 if ok else 1
    print()
    print(f"source            {summary['source']} via the {summary['broker']} broker")
    print(f"captured          {summary['captured']} frames read from the source")
    print(f"masked faces      {summary['masked_faces']} (summed over frames; {summary['fail_closed']} frames "
          "fully masked because detection failed)")
    print(f"detector          {summary['detector']}")
    print(f"spooled           {summary['spooled']} sealed frames in the device's spool "
          f"({summary['dropped']} dropped before it)")
    print(f"delivered         {summary['delivered']} frames reached the receiver")
    print(f"verified          {summary['verified']} with a valid device signature")
    print(f"decrypted         {summary['decrypted']} opened and decodable on disk")
    print(f"lost              {summary['lost']} (spooled but not delivered; must be 0)")
    print(f"masked frames     {summary['frames_dir']}")
    print(f"video             {summary['video']}")
    print(f"contact sheet     {summary['contact_sheet']}")
    if args.clinical:
        print(f"signals plot      {summary.get('signals_plot')}")
    print(f"everything        {summary['output_dir']}")
    print("OK" if ok else "PROBLEM: see the counts above and the log")
    return 0 if ok else 1
