#!/usr/bin/env bash
# Parity of the fp32 and int8 YuNet models on ARM kernels (emulated with qemu-user) against this x86 machine.
#
# Why: the int8 parity gate runs on the x86 build machine and proves nothing about onnxruntime's ARM kernels,
# which are what the devices run. This builds a minimal arm64 Debian root (cached under .cache/), installs
# numpy + onnxruntime (the x86 venv's versions) there, runs both models on the parity set's exact input
# tensors under each emulated CPU in ARM_CPUS, and compares the raw outputs and decoded faces with x86
# (edge_mask/tools/arm_parity.py). Not part of CI. Timings under emulation mean nothing; the numbers do.
#
# Usage: sudo scripts/arm64-parity.sh        (idempotent: the root, wheels and venv are reused)
# Environment: ARM_CPUS (default "cortex-a72 cortex-a76 max": plain NEON, dot-product, i8mm int8 kernels),
#              MIRROR (default: the Debian URI in this machine's apt sources), THREADS (default 2),
#              PYTHON (default .venv/bin/python). Exit 0 when every model passes, 1 on FAIL, 2 when not root.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$REPO/.venv/bin/python}"
CACHE="$REPO/.cache"
ROOT="$CACHE/arm64-root"
WHEELS="$CACHE/arm64-wheels"
WORK="$CACHE/arm-parity"
ARM_CPUS="${ARM_CPUS:-cortex-a72 cortex-a76 max}"
THREADS="${THREADS:-2}"
AVENV=/opt/parity-venv
START=$SECONDS

if [ "$(id -u)" -ne 0 ]; then
    echo "arm64-parity.sh: must run as root (apt-get, binfmt_misc, debootstrap and chroot need it)" >&2
    exit 2
fi

if [ -z "${ARM_CPUS// /}" ]; then
    echo "arm64-parity.sh: ARM_CPUS is empty; name at least one qemu CPU (qemu-aarch64-static -cpu help)" >&2
    exit 2
fi

phase() { echo "== [$((SECONDS - START))s] $*"; }
quiet_cpuinfo() {  # onnxruntime's cpuinfo cannot read /sys in the bare root and falls back to HWCAP: expected
    grep --line-buffered -v -e 'Error in cpuinfo' -e 'cpuid_info warning' -e 'cpuinfo_initialize failed' >&2 || true
}

debian_mirror() {
    local uri
    uri="$( { grep -hsE '^[[:space:]]*URIs:' /etc/apt/sources.list.d/*.sources | awk '{for (i = 2; i <= NF; i++) print $i}'
              grep -hsE '^[[:space:]]*deb[[:space:]]' /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
                  | sed -E 's/\[[^]]*\]//' | awk '{print $2}'; } \
            | grep -E '/debian/?$' | grep -v security | head -n1 || true)"
    echo "${uri:-http://deb.debian.org/debian}"
}

phase "host packages"
missing=()
for pkg in qemu-user-static binfmt-support debootstrap; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi

phase "binfmt for aarch64"
[ -e /proc/sys/fs/binfmt_misc/register ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
grep -qx enabled /proc/sys/fs/binfmt_misc/qemu-aarch64 2>/dev/null || update-binfmts --enable qemu-aarch64
grep -qx enabled /proc/sys/fs/binfmt_misc/qemu-aarch64

phase "arm64 root at $ROOT"
if [ ! -x "$ROOT/usr/bin/python3" ]; then
    MIRROR="${MIRROR:-$(debian_mirror)}"
    echo "debootstrap arm64 bookworm from $MIRROR (about 3-4 minutes)"
    rm -rf "$ROOT.partial"
    mkdir -p "$CACHE"
    if ! debootstrap --arch=arm64 --variant=minbase --include=python3,python3-venv,python3-pip \
            bookworm "$ROOT.partial" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1; then
        tail -n 30 "$CACHE/debootstrap.log" >&2
        echo "arm64-parity.sh: debootstrap failed; full log in $CACHE/debootstrap.log" >&2
        exit 1
    fi
    mv "$ROOT.partial" "$ROOT"   # renamed only when complete, so a present root is a whole one
fi
chroot "$ROOT" /usr/bin/python3 -c 'import platform, sys; print("arm64 root:", platform.machine(), sys.version.split()[0])'

ORT_VERSION="$("$PY" -c 'import onnxruntime; print(onnxruntime.__version__)')"
NP_VERSION="$("$PY" -c 'import numpy; print(numpy.__version__)')"
phase "aarch64 wheels: onnxruntime $ORT_VERSION, numpy $NP_VERSION"
if ! compgen -G "$WHEELS/onnxruntime-$ORT_VERSION-cp311-*aarch64*.whl" >/dev/null \
        || ! compgen -G "$WHEELS/numpy-$NP_VERSION-cp311-*aarch64*.whl" >/dev/null; then
    mkdir -p "$WHEELS"
    "$PY" -m pip download -q --only-binary=:all: --platform manylinux_2_28_aarch64 --python-version 3.11 \
        -d "$WHEELS" "onnxruntime==$ORT_VERSION" "numpy==$NP_VERSION"
fi

phase "venv in the arm64 root ($AVENV)"
check="import sys, numpy, onnxruntime; sys.exit(onnxruntime.__version__ != '$ORT_VERSION' or numpy.__version__ != '$NP_VERSION')"
if ! chroot "$ROOT" "$AVENV/bin/python" -c "$check" 2>/dev/null; then
    rm -rf "$ROOT/opt/wheels"
    mkdir -p "$ROOT/opt/wheels"
    cp "$WHEELS"/*.whl "$ROOT/opt/wheels/"
    chroot "$ROOT" /usr/bin/python3 -m venv --clear "$AVENV"
    chroot "$ROOT" "$AVENV/bin/pip" install -q --no-index --find-links /opt/wheels \
        "onnxruntime==$ORT_VERSION" "numpy==$NP_VERSION"
    chroot "$ROOT" "$AVENV/bin/python" -c "$check" 2> >(quiet_cpuinfo)
fi

phase "prepare the parity set's input tensors on x86"
"$PY" -m edge_mask.tools.arm_parity prepare --work "$WORK"
rm -rf "$ROOT/opt/parity"
mkdir -p "$ROOT/opt/parity"
cp "$WORK/blobs.npz" "$WORK/fp32.onnx" "$WORK/int8.onnx" "$REPO/edge_mask/tools/arm_parity_runner.py" "$ROOT/opt/parity/"

runs=()
for cpu in $ARM_CPUS; do
    phase "run fp32 and int8 under qemu-aarch64 -cpu $cpu"
    rm -f "$WORK/arm64-$cpu.npz"
    QEMU_CPU="$cpu" chroot "$ROOT" "$AVENV/bin/python" /opt/parity/arm_parity_runner.py \
        /opt/parity/blobs.npz "/opt/parity/outputs-$cpu.npz" \
        --model fp32=/opt/parity/fp32.onnx --model int8=/opt/parity/int8.onnx --threads "$THREADS" \
        2> >(quiet_cpuinfo)
    mv "$ROOT/opt/parity/outputs-$cpu.npz" "$WORK/arm64-$cpu.npz"
    runs+=("$WORK/arm64-$cpu.npz")
done

phase "compare with x86"
status=0
"$PY" -m edge_mask.tools.arm_parity compare --work "$WORK" --threads "$THREADS" "${runs[@]}" || status=$?
phase "done (exit $status)"
exit "$status"
