#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the whole system once on this machine: provision a throwaway CA,
# recipient and device, start a TLS broker, play a clip as a camera through the device service, receive,
# verify and decrypt, and print where the masked frames, MP4 and contact sheet are.
# Extra arguments go to `edge-mask demo` (e.g. --frames 120 --json, --source clip.mp4, --out DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/edge-mask demo "$@"
