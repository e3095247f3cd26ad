"""Run YuNet models on prepared input blobs and save their raw outputs: the half of the ARM parity check that
runs inside the emulated arm64 root (see `edge_mask.tools.arm_parity` and `scripts/arm64-parity.sh`).

Why a standalone file: the arm64 root has nothing but Python, numpy and onnxruntime, so this module imports
nothing else (no OpenCV, no edge_mask) and is copied there and run as a plain script. The x86 side imports
`run_models` from here, so both sides run the same code on the same bytes and only the CPU kernels differ.

Why the session options are spelled out: they mirror `edge_mask.detect.runtime.open_session` (full graph
optimisation, sequential execution, the config entries of `runtime.SESSION_CONFIG`, a batch of one; a test
holds the entries equal), so the kernels exercised are the ones the product's detector uses. Feature
detection: in a bare chroot onnxruntime's cpuinfo library cannot read /sys and falls back to the auxiliary
vector (HWCAP), which qemu fills from the emulated CPU (`QEMU_CPU`): that is how one run takes the plain
NEON int8 kernels (cortex-a72, Raspberry Pi 4), another the dot-product ones (cortex-a76, Raspberry Pi 5)
and another the i8mm ones (`max`). `cpu_features` records which it was.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import logging
import os
import platform
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

log = logging.getLogger(__name__)

META_KEY = "__meta__"
"""Key of the JSON metadata (platform, features, versions, timings) inside an outputs .npz."""

_AT_HWCAP, _AT_HWCAP2 = 16, 26
_ARM_HWCAP = {"asimddp": (_AT_HWCAP, 1 << 20), "sve": (_AT_HWCAP, 1 << 22), "i8mm": (_AT_HWCAP2, 1 << 13),
              "svei8mm": (_AT_HWCAP2, 1 << 9), "bf16": (_AT_HWCAP2, 1 << 14)}
_X86_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")


def output_key(model: str, index: int, name: str) -> str:
    """Key of one raw output tensor in an outputs .npz."""
    return f"{model}/{index:04d}/{name}"


def cpu_features() -> dict[str, Any]:
    """The machine and the CPU features that decide onnxruntime's kernels (aarch64: HWCAP bits)."""
    info: dict[str, Any] = {"machine": platform.machine(), "qemu_cpu": os.environ.get("QEMU_CPU", "")}
    if info["machine"] == "aarch64":
        try:
            getauxval = ctypes.CDLL(None).getauxval
            getauxval.restype = ctypes.c_ulong
            getauxval.argtypes = [ctypes.c_ulong]
            info["features"] = sorted(name for name, (which, bit) in _ARM_HWCAP.items() if getauxval(which) & bit)
        except (OSError, AttributeError) as exc:
            info["features"] = [f"unknown ({exc})"]
    else:
        try:
            text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
            flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
            info["features"] = [flag for flag in _X86_FLAGS if flag in flags]
        except OSError as exc:
            info["features"] = [f"unknown ({exc})"]
    return info


def open_model(path: Path, threads: int) -> Any:
    """An onnxruntime CPU session with the product's options (see the module docstring)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.x64quantprecision", "1")  # the exact int8 path on x86
    options.add_free_dimension_override_by_name("batch", 1)
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def load_blobs(path: Path) -> list[npt.NDArray[np.float32]]:
    """The prepared input tensors, in order; stored as uint8 (the detector's blobs hold whole 0..255 values)."""
    with np.load(path) as data:
        return [data[key].astype(np.float32) for key in sorted(data.files)]


def run_models(
    blobs: Sequence[npt.NDArray[np.float32]], models: Mapping[str, Path], threads: int = 2
) -> tuple[dict[str, npt.NDArray[np.float32]], dict[str, float]]:
    """Every model on every blob: raw outputs keyed by `output_key`, and seconds spent per model."""
    outputs: dict[str, npt.NDArray[np.float32]] = {}
    seconds: dict[str, float] = {}
    for model, path in models.items():
        session = open_model(path, threads)
        name_in = session.get_inputs()[0].name
        names = [o.name for o in session.get_outputs()]
        start = time.perf_counter()
        for index, blob in enumerate(blobs):
            for name, value in zip(names, session.run(names, {name_in: blob}), strict=True):
                outputs[output_key(model, index, name)] = np.asarray(value, np.float32)
            if (index + 1) % 25 == 0:
                log.info("%s: %d/%d blobs, %.0f s", model, index + 1, len(blobs), time.perf_counter() - start)
        seconds[model] = round(time.perf_counter() - start, 1)
        log.info("%s: %d blobs in %.1f s", model, len(blobs), seconds[model])
    return outputs, seconds


def save_outputs(path: Path, outputs: Mapping[str, npt.NDArray[np.float32]], meta: Mapping[str, Any]) -> None:
    """Raw outputs plus a JSON metadata entry, written to a temporary name and renamed into place."""
    tmp = path.with_name(path.name + ".tmp.npz")
    arrays: dict[str, Any] = {**outputs, META_KEY: np.array(json.dumps(dict(meta), sort_keys=True))}
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def load_outputs(path: Path) -> tuple[dict[str, npt.NDArray[np.float32]], dict[str, Any]]:
    """What `save_outputs` wrote: (raw outputs, metadata)."""
    with np.load(path) as data:
        outputs = {key: data[key] for key in data.files if key != META_KEY}
        meta: dict[str, Any] = json.loads(str(data[META_KEY])) if META_KEY in data.files else {}
    return outputs, meta


def run(blobs_path: Path, models: Mapping[str, Path], out: Path, threads: int) -> dict[str, Any]:
    """Run, save and return the metadata (what ran where, and how long it took)."""
    import onnxruntime as ort

    blobs = load_blobs(blobs_path)
    meta: dict[str, Any] = {**cpu_features(), "onnxruntime": ort.__version__, "numpy": np.__version__,
                            "python": platform.python_version(), "threads": threads, "blobs": len(blobs)}
    log.info("running %s on %d blobs: %s", ", ".join(models), len(blobs), meta)
    outputs, seconds = run_models(blobs, models, threads)
    meta["seconds"] = seconds
    save_outputs(out, outputs, meta)
    return meta


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run YuNet models on prepared blobs and save the raw outputs.")
    parser.add_argument("blobs", type=Path, help="blobs.npz written by 'arm_parity prepare'")
    parser.add_argument("out", type=Path, help="outputs .npz to write")
    parser.add_argument("--model", action="append", required=True, metavar="NAME=PATH", help="model to run (repeat)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    models = {}
    for item in args.model:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            parser.error(f"--model expects NAME=PATH, got {item!r}")
        models[name] = Path(path)
    meta = run(args.blobs, models, args.out, args.threads)
    print(json.dumps(meta, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
