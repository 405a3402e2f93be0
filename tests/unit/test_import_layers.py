"""The modules of each hypervisor driver form layers: no import circle, each imports alone.

Every import between a driver's modules counts, also one inside a function or
under ``if TYPE_CHECKING`` (a circle that only types close is still a circle
for the next reader and the next refactoring).  The walk is over the source
(ast), so an import that only runs on one code path is seen too; then each
module is imported on its own, in a fresh interpreter, before any other
module of the drivers, which fails on a circle that leaves a module
half-initialised.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("qemu", "lxc", "uml", "esx")


def _modules(pkg: str) -> dict[str, Path]:
    """Module name (``__init__`` for the package) -> its file."""
    return {p.stem: p for p in sorted((REPO / "drivers" / pkg).glob("*.py"))}


def _imports(path: Path, pkg: str, names: set[str]) -> set[str]:
    """The modules of ``pkg`` that the module at ``path`` imports, anywhere in it."""
    out: set[str] = set()
    absolute = f"pyvirtd.drivers.{pkg}"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:
                base = node.module
            elif node.level == 0 and node.module and (
                    node.module == absolute or node.module.startswith(absolute + ".")):
                base = node.module[len(absolute) + 1:] or None
            else:
                continue
            if base:                    # from .x import y  ->  x
                out.add(base.split(".")[0])
            else:                       # from . import x, y  ->  x, y (or the package)
                out.update(a.name if a.name in names else "__init__" for a in node.names)
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith(absolute + "."):
                    out.add(a.name[len(absolute) + 1:].split(".")[0])
    out.discard(path.stem)
    return out


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph``, as the path that closes it, or None."""
    state: dict[str, int] = {}          # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


@pytest.mark.parametrize("pkg", PACKAGES)
def test_no_import_circle(pkg: str) -> None:
    mods = _modules(pkg)
    graph = {name: _imports(path, pkg, set(mods)) for name, path in mods.items()}
    assert _cycle(graph) is None, f"import circle in drivers/{pkg}: {' -> '.join(_cycle(graph))}"


def test_the_walk_finds_a_circle() -> None:
    """The check itself can fail: a circle through a function-level import is found."""
    assert _cycle({"driver": {"launch"}, "launch": {"guest", "driver"}, "guest": set()}) == \
        ["driver", "launch", "driver"]
    assert _cycle({"driver": {"launch"}, "launch": {"guest"}, "guest": set()}) is None


# Imports each module with none of the drivers' modules loaded yet (the
# libraries and pyvirtd's core stay loaded: one interpreter, not one each, keeps
# this quick), and prints the ones that fail.
_IMPORT_EACH = """
import importlib, json, sys, traceback
failed = {}
for name in sys.argv[1:]:
    for loaded in [m for m in sys.modules if m.startswith(("pyvirtd.drivers.qemu",
                                                           "pyvirtd.drivers.lxc",
                                                           "pyvirtd.drivers.uml",
                                                           "pyvirtd.drivers.esx"))]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception:
        failed[name] = traceback.format_exc()
print(json.dumps(failed))
"""


def test_each_module_imports_alone() -> None:
    modules = [f"pyvirtd.drivers.{pkg}" + ("" if name == "__init__" else f".{name}")
               for pkg in PACKAGES for name in _modules(pkg)]
    proc = subprocess.run([sys.executable, "-c", _IMPORT_EACH, *modules], capture_output=True,
                          text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr
    failed = json.loads(proc.stdout)
    assert not failed, "\n".join(failed.values())


@pytest.mark.parametrize("module", ("pyvirtd.drivers.lxc.controller",
                                    "pyvirtd.drivers.uml.launcher"))
def test_helper_processes_stay_light(module: str) -> None:
    """The LXC controller lives as long as its container, in its memory cgroup; the
    UML launcher runs in front of every kernel: importing them (and their package)
    must not pull in the daemon (drivers/lxc/__init__.py, drivers/uml/__init__.py)."""
    code = (f"import sys, {module}; "
            "print(sorted(m for m in ('trio', 'lxml', 'pyvirtd.rpc._generated', "
            "'pyvirtd.driver') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
