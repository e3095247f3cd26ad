"""Dependency rules from CONTRIBUTING.md, checked on the source so a shortcut cannot creep in.

Why it matters: if capture could import the uplink, or the masker the network, a raw frame could take a
path to the wire that skips masking. These tests read imports with `ast`, so they need no hardware.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "edge_mask"

STAGES = {"capture", "detect", "track", "mask", "encode", "seal", "spool", "uplink"}
NETWORK = {"seal", "spool", "uplink", "receiver", "service", "encode"}
UPPER = {"cli", "commands", "service", "receiver", "provision", "demo", "evaluation", "bench", "doctor"}


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name.startswith("edge_mask")}


def _top(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else ""


def _sources() -> list[Path]:
    return sorted(PKG.rglob("*.py"))


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(PKG)))
def test_dependencies_point_down(path: Path) -> None:
    me = _top(_module_name(path))
    imported = {_top(name) for name in _imports(path)} - {me, ""}
    if me in STAGES or me in {"config", "types", "errors", "registry", "models"}:
        assert not imported & UPPER, f"{path.name} (a stage or shared module) imports {imported & UPPER}"
    if me in {"capture", "detect", "track", "mask", "models"}:
        assert not imported & NETWORK, f"{path.name} must know nothing of sealing or the network: {imported & NETWORK}"
    if me == "capture":
        assert not imported & (STAGES - {"capture"}), f"capture reaches other stages: {imported & STAGES}"


def test_only_the_masker_builds_masked_frames() -> None:
    users = [p for p in _sources() if "MASK_WITNESS" in p.read_text(encoding="utf-8")]
    assert sorted(p.name for p in users) == ["mask.py", "types.py"]


def test_package_imports_without_runtimes() -> None:
    """Importing every module must not pull onnxruntime or picamera2 (they load in backend factories)."""
    modules = [_module_name(p) for p in _sources() if p.name != "__main__.py"]
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "bad = [m for m in ('onnxruntime', 'picamera2', 'turbojpeg') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_raw_frames_refuse_pickling() -> None:
    import pickle

    import numpy as np

    types = importlib.import_module("edge_mask.types")
    frame = types.RawFrame(np.zeros((4, 4, 3), np.uint8), seq=0, captured_at=0.0, monotonic=0.0)
    with pytest.raises(TypeError, match="never be pickled"):
        pickle.dumps(frame)
