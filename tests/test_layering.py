"""The import rule: a module imports only from its own floor or the floors below it.

Floors, lowest first: ir < pass infrastructure < pattern API < pass families < testing kit <
runtime. A pass family is a sub-package of passes/ (cleanup, fuse, memory, precision); families
do not borrow from each other (a helper two families need moves down), and the modules of ir/
import each other without cycles. Every module of passes/ sits on a named floor. Imports are
read with ast, so an import inside a function or under TYPE_CHECKING counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"ir": "optgraph.ir", "passes": "optgraph.passes", "runtime": "optgraph.runtime"}
FLOORS = ("ir", "infrastructure", "pattern", "families", "testing", "runtime")
INFRASTRUCTURE = {"optgraph.passes.base", "optgraph.passes.registry", "optgraph.passes.manager",
                  "optgraph.passes.shapes"}
FAMILIES = {"cleanup", "fuse", "memory", "precision"}
AGGREGATES = {"optgraph.passes", "optgraph.passes.builtin"}  # they register every family


def module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = [PACKAGES[rel.parts[0]], *rel.parts[1:]]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def sources(root: Path = ROOT) -> dict[str, Path]:
    """Every non-test module of the package."""
    return {module_name(p, root): p for top in PACKAGES for p in sorted((root / top).rglob("*.py"))
            if not p.name.endswith("_test.py")}


def floor(module: str) -> str:
    if module.startswith("optgraph.ir"):
        return "ir"
    if module.startswith("optgraph.runtime"):
        return "runtime"
    if module.startswith("optgraph.passes.testing"):
        return "testing"
    if module in INFRASTRUCTURE:
        return "infrastructure"
    if module == "optgraph.passes.pattern":
        return "pattern"
    if family(module).split(".")[-1] in FAMILIES or module in AGGREGATES:
        return "families"
    return "unplaced"


def family(module: str) -> str:
    """The family a pass module belongs to: its sub-package of passes/."""
    return ".".join(module.split(".")[:3])


def imports(path: Path, known: set[str]) -> set[str]:
    """The optgraph modules ``path`` imports (``from pkg import sub`` names the submodule)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("optgraph"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("optgraph"):
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                found.add(sub if sub in known else node.module)
    return {m for m in found if m != "optgraph"}


def violations(root: Path = ROOT) -> list[str]:
    mods = sources(root)
    known = set(mods)
    found = []
    ir_graph = nx.DiGraph()
    for mod, path in mods.items():
        if floor(mod) == "unplaced":
            found.append(f"{mod} is on no floor: put it in a family sub-package or name it infrastructure")
            continue
        for target in imports(path, known):
            src, dst = floor(mod), floor(target)
            if FLOORS.index(dst) > FLOORS.index(src):
                found.append(f"{mod} ({src}) imports {target} ({dst})")
            elif (src == dst == "families" and mod not in AGGREGATES and target not in AGGREGATES
                  and family(mod) != family(target)):
                found.append(f"{mod} borrows from another family: {target}")
            if src == dst == "ir" and target != "optgraph.ir" and mod != "optgraph.ir":
                ir_graph.add_edge(mod, target)
    found += [f"ir import cycle: {' -> '.join(c)}" for c in nx.simple_cycles(ir_graph)]
    return sorted(found)


def test_no_import_runs_the_wrong_way() -> None:
    assert violations() == []


@pytest.mark.parametrize(("module", "line", "expected"), [
    ("passes/pattern.py", "from optgraph.passes.cleanup.dce import removable", "imports optgraph.passes.cleanup.dce"),
    ("passes/testing/check.py", "from optgraph.runtime import tensorrt", "imports optgraph.runtime.tensorrt"),
    ("passes/cleanup/cse.py", "from optgraph.passes.fuse import concat", "borrows from another family"),
    ("ir/tensor.py", "from optgraph.ir.core import Value", "ir import cycle"),
    ("ir/core.py", "def f():\n    from optgraph.ir.order import sort", "ir import cycle"),
    ("passes/stray.py", "import numpy", "is on no floor"),
    ("passes/memory/liveness.py", "from optgraph.passes.precision import fp16", "borrows from another family"),
])
def test_a_wrong_way_import_is_caught(tmp_path: Path, module: str, line: str, expected: str) -> None:
    for top in PACKAGES:
        for p in (ROOT / top).rglob("*.py"):
            copy = tmp_path / p.relative_to(ROOT)
            copy.parent.mkdir(parents=True, exist_ok=True)
            copy.write_text(p.read_text())
    target = tmp_path / module
    target.write_text((target.read_text() if target.exists() else "") + "\n\n" + line + "\n")
    found = violations(tmp_path)
    assert any(expected in v for v in found), found
