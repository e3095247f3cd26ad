"""The floor plan, checked on the source: rooms (folders), what each may import, no cycles, module size.

Why it matters: if capture could import the uplink, or the masker the network, a raw frame could take a
path to the wire that skips masking. The rules are about folders, not module names, so a new module in a
room obeys its room's rule without anyone editing this file. Imports are read with `ast` (lazy imports
inside functions included), so nothing here needs hardware.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "edge_mask"

GROUND = {"core", "config"}
STAGES = {"capture", "detect", "clinical", "mask", "seal", "uplink"}
COMPOSERS = {"service", "receiver", "provision"}
ROOMS = GROUND | STAGES | COMPOSERS | {"commands", "tools", "cli", "__main__", "__init__"}
CLI = {"cli", "commands", "__main__"}
NETWORK_LIBRARIES = {"paho", "socket", "ssl", "http", "urllib", "requests", "httpx", "aiohttp", "websockets"}
MAX_LINES = 400

# What each room may import besides itself (rooms only; the ground may always be imported).
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "config": {"core"},
    "capture": GROUND,
    "detect": GROUND,
    "clinical": GROUND | {"detect"},
    "mask": GROUND | {"detect", "clinical"},
    "seal": GROUND,
    "uplink": GROUND | {"seal"},
    "service": GROUND | STAGES,
    "receiver": GROUND | {"seal", "uplink"},
    "provision": GROUND | {"seal"},
}
NO_NETWORK = {"core", "config", "capture", "detect", "clinical", "mask"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def room_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def sources() -> list[Path]:
    return sorted(PKG.rglob("*.py"))


def known_modules() -> set[str]:
    return {module_name(p) for p in sources()}


def imports_of(text: str, known: set[str]) -> list[tuple[str, int]]:
    """(module imported, line) for every import in `text`; `from pkg import sub` counts as `pkg.sub`."""
    found: list[tuple[str, int]] = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            found.extend((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            subs = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in known]
            found.extend((name, node.lineno) for name in subs or [node.module])
    return found


def violations(module: str, text: str, known: set[str] | None = None) -> list[str]:
    """Every rule of the floor plan that `text`, as the source of `module`, breaks (empty when it keeps them)."""
    known = known_modules() | {module} if known is None else known
    me = room_of(module)
    problems: list[str] = []
    for name, line in imports_of(text, known):
        top = name.split(".")[0]
        if top in NETWORK_LIBRARIES and me in NO_NETWORK:
            problems.append(f"{module}:{line} imports the network library {name}; {me}/ must know no network")
        if top != "edge_mask":
            continue
        room = room_of(name)
        if room in (me, "__init__"):
            continue
        if room == "tools" and me not in {"commands", "tools"}:
            problems.append(f"{module}:{line} imports {name}; only commands/ and tests may use the tools wing")
        if room in CLI and me not in CLI:
            problems.append(f"{module}:{line} imports the CLI ({name})")
        if me in ALLOWED and room not in ALLOWED[me] and room not in CLI | {"tools"}:
            problems.append(f"{module}:{line} imports {name}; {me}/ may import only {sorted(ALLOWED[me])}")
        if me not in {"tools"} and room in STAGES | COMPOSERS and len(name.split(".")) > 2:
            problems.append(f"{module}:{line} reaches into {name}; import it from the face edge_mask.{room}")
    return problems


# ------------------------------------------------------------------------------------------------ the rules


@pytest.mark.parametrize("path", sources(), ids=lambda p: str(p.relative_to(PKG)))
def test_module_keeps_its_rooms_rules(path: Path) -> None:
    assert violations(module_name(path), path.read_text(encoding="utf-8")) == []


def test_every_room_is_a_folder_with_its_rule_in_the_docstring() -> None:
    rooms = {p.name for p in PKG.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert rooms == GROUND | STAGES | COMPOSERS | {"commands", "tools"}
    flat = {p.stem for p in PKG.glob("*.py")}
    assert flat == {"__init__", "__main__", "cli"}, f"modules outside every room: {flat}"
    for room in rooms - {"commands"}:
        doc = ast.get_docstring(ast.parse((PKG / room / "__init__.py").read_text(encoding="utf-8"))) or ""
        assert "Rule:" in doc, f"{room}/__init__.py must state the room's rule ('Rule: ...')"


def test_the_checker_catches_what_it_should() -> None:
    """Each rule, broken on purpose: a stage importing the network, another stage's internals, the tools."""
    known = known_modules()
    cases = {
        ("edge_mask.detect.yunet", "from edge_mask.uplink.mqtt import connect"): "may import only",
        ("edge_mask.detect.yunet", "import paho.mqtt.client as mqtt"): "network library",
        ("edge_mask.mask.engine", "import socket"): "network library",
        ("edge_mask.capture.opencv", "from edge_mask.seal import Sealer"): "may import only",
        ("edge_mask.service.live", "from edge_mask.mask.engine import FaceMasker"): "reaches into",
        ("edge_mask.service.live", "from edge_mask.tools.minibroker import MiniBroker"): "tools wing",
        ("edge_mask.receiver.receiver", "from edge_mask.cli import main"): "the CLI",
        ("edge_mask.core.types", "from edge_mask.config import EdgeConfig"): "may import only",
    }
    for (module, text), expected in cases.items():
        found = violations(module, text, known)
        assert any(expected in line for line in found), (module, text, found)
    assert violations("edge_mask.service.live", "from edge_mask.mask import FaceMasker", known) == []


def _graph() -> dict[str, set[str]]:
    known = known_modules()
    graph: dict[str, set[str]] = {}
    for path in sources():
        me = module_name(path)
        graph[me] = {name for name, _ in imports_of(path.read_text(encoding="utf-8"), known) if name in known} - {me}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                item = stack.pop()
                on_stack.discard(item)
                component.append(item)
                if item == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle() -> None:
    """Lazy imports count too: a cycle hidden in a function still ties two modules together.

    The package root imports nothing; a face imports its room's modules, so a module that imports its own
    room's face (instead of the sibling module) closes a cycle and is caught here."""
    assert _cycles(_graph()) == []


def test_cycle_finder_finds_one() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_modules_stay_small() -> None:
    sizes = {str(p.relative_to(PKG)): len(p.read_text(encoding="utf-8").splitlines()) for p in sources()}
    big = {name: lines for name, lines in sizes.items() if lines > MAX_LINES}
    assert big == {}, f"modules over {MAX_LINES} lines: {big}"


def test_only_the_masker_builds_masked_frames() -> None:
    users = [p.relative_to(PKG).as_posix() for p in sources() if "MASK_WITNESS" in p.read_text(encoding="utf-8")]
    assert sorted(users) == ["core/types.py", "mask/paint.py"]


def _import_all(modules: Iterable[str]) -> str:
    return (
        "import importlib, sys\n"
        f"for m in {sorted(modules)!r}: importlib.import_module(m)\n"
        "bad = [m for m in ('onnxruntime', 'picamera2', 'turbojpeg') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )


def test_package_imports_without_runtimes() -> None:
    """Importing every module must not pull onnxruntime or picamera2 (they load in backend factories)."""
    modules = [module_name(p) for p in sources() if p.name != "__main__.py"]
    subprocess.run([sys.executable, "-c", _import_all(modules)], check=True)


def test_device_service_does_not_load_the_tools() -> None:
    """What `edge-mask run` loads on a device: the service and its stages, none of the tools wing."""
    code = (
        "import sys, edge_mask.service, edge_mask.commands.run\n"
        "assert not [m for m in sys.modules if m.startswith('edge_mask.tools')]"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_raw_frames_refuse_pickling() -> None:
    import pickle

    import numpy as np

    types = importlib.import_module("edge_mask.core.types")
    frame = types.RawFrame(np.zeros((4, 4, 3), np.uint8), seq=0, captured_at=0.0, monotonic=0.0)
    with pytest.raises(TypeError, match="never be pickled"):
        pickle.dumps(frame)
