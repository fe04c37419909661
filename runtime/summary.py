"""The before/after summary ``optgraph run`` prints: counts that match the file, fused units
grouped by pattern, model size, and the time spent.

Two node counts, because they answer different questions: *top-level nodes* are what the file's
main graph holds (what a viewer shows), *ops with function bodies inlined* are what a runtime
executes once every fused unit (a model-local function) is expanded. Fused units are hash-named
per signature (``optgraph.ConvRelu_062f09f8``); the summary groups them by pattern (``ConvRelu``).
"""

from __future__ import annotations

import os
import re
import sys
from collections import Counter
from dataclasses import dataclass
from typing import Any, TextIO

from optgraph import ir
from optgraph.ir.core import walk_graphs
from optgraph.ir.opset import is_onnx

FUSED_DOMAIN = "optgraph"
_HASHED = re.compile(r"(.+)_[0-9a-f]{8}")


@dataclass
class Counts:
    """What one model holds: top-level op types (fused units by pattern) and both node counts."""

    ops: dict[str, int]
    top_level: int
    inlined: int

    def to_dict(self) -> dict[str, Any]:
        return {"ops": self.ops, "top_level_nodes": self.top_level, "ops_inlined": self.inlined}


def op_label(node: ir.Node) -> str:
    """``Conv`` for ONNX ops, ``ConvRelu (fused)`` for optgraph's fused units, ``domain:Op`` else."""
    if is_onnx(node):
        return node.op_type
    m = _HASHED.fullmatch(node.op_type)
    if node.domain == FUSED_DOMAIN and m:
        return f"{m.group(1)} (fused)"
    return f"{node.domain}:{node.op_type}"


def counts(model: ir.Model) -> Counts:
    """Top-level op histogram and node counts; nested subgraphs count with their node."""
    inlined: dict[tuple[str, str, str], int] = {}

    def size(graph: ir.Graph) -> int:
        total = 0
        for g in walk_graphs(graph):
            for n in g:
                key = (n.domain, n.op_type, n.overload)
                fn = model.functions.get(key)
                if fn is None:
                    total += 1
                    continue
                if key not in inlined:
                    inlined[key] = 1  # a recursive function counts as one op instead of looping
                    inlined[key] = size(fn.graph)
                total += inlined[key]
        return total

    ops = Counter(op_label(n) for n in model.graph)
    return Counts(dict(sorted(ops.items())), len(model.graph), size(model.graph))


def disk_size(path: str, external: bool) -> int:
    """Bytes of a model file plus the external data files it references (read from the file only
    when ``external`` says it may have some: the protobuf is then small)."""
    import onnx

    total = os.path.getsize(path)
    if not external:
        return total
    proto = onnx.load(path, load_external_data=False)
    folder = os.path.dirname(os.path.abspath(path))
    locations = {e.value for t in _tensors(proto) for e in t.external_data if e.key == "location"}
    return total + sum(os.path.getsize(os.path.join(folder, loc)) for loc in sorted(locations)
                       if os.path.isfile(os.path.join(folder, loc)))


def _tensors(proto: Any) -> list[Any]:
    return [t for t in proto.graph.initializer if t.data_location == 1]  # TensorProto.EXTERNAL


def human_bytes(n: int | None) -> str:
    if n is None:
        return "?"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"


def format_report(data: dict[str, Any], file: TextIO | None = None) -> None:
    """Print a pipeline report: what each pass did, then the before/after table (rich)."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    out = file or sys.stdout
    console = Console(file=out, highlight=False, soft_wrap=True)
    lines = [f"{data['input']} -> {data['output']}  (passes: {data['pipeline']})"]
    for rec in data["passes"]:
        if rec["changed"] or rec["stats"]:
            where = f" [{rec['group']} #{rec['iteration']}]" if rec["group"] else ""
            if rec.get("required_by"):
                where += f" (required by {rec['required_by']})"
            stats = ", ".join(f"{k}={v}" for k, v in rec["stats"].items())
            lines.append(f"  {rec['name']}{where}: {rec['nodes_before']} -> {rec['nodes_after']} nodes in all graphs"
                         f" in {rec['seconds'] * 1000:.1f} ms  {stats}")
    for group, ok in data["converged"].items():
        if not ok:
            lines.append(f"  warning: '{group}' did not converge in {data['iterations'][group]} iterations")
    if "check" in data:
        lines.append(f"  check: equivalent on onnxruntime ({data['check']['message']})")
    console.print("\n".join(lines), markup=False)
    before, after = data["before"], data["after"]
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    table.add_column("op", no_wrap=True)
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    for op in sorted({*before["ops"], *after["ops"]}):
        a, b = before["ops"].get(op, 0), after["ops"].get(op, 0)
        style = "bold" if a != b else None
        table.add_row(op, str(a), str(b), style=style)
    table.add_section()
    table.add_row("top-level nodes", str(before["top_level_nodes"]), str(after["top_level_nodes"]))
    table.add_row("ops, function bodies inlined", str(before["ops_inlined"]), str(after["ops_inlined"]))
    table.add_row("model size", human_bytes(data.get("size_before")), human_bytes(data.get("size_after")))
    console.print(table)
    console.print(f"time: {data['seconds']:.3f} s in passes, {data['wall_seconds']:.3f} s wall", markup=False)
