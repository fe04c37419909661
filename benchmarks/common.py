"""What the benchmark scripts share: the machine description, child processes with a timeout, node counts.

Every measured tool runs in a fresh child process (the script itself, re-entered with ``--child``)
so that one tool's imports, caches and crashes cannot touch another's numbers, and a tool that
takes too long can be stopped and recorded as a timeout.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
from collections.abc import Iterable, Sequence
from importlib import metadata
from typing import Any

import onnx

TIMEOUT = "timeout"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions(packages: Iterable[str]) -> dict[str, str]:
    out = {}
    for p in packages:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = "not installed"
    return out


def machine_header(packages: Iterable[str]) -> str:
    """Markdown lines: date, CPU, cores, OS, Python and the versions of ``packages``."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    pkgs = ", ".join(f"{k} {v}" for k, v in versions(packages).items())
    return (f"- Date: {datetime.date.today().isoformat()}\n"
            f"- Machine: {cpu_model()}, {cores} cores available, "
            f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB RAM, "
            f"{platform.system()} {platform.release()}\n"
            f"- Python {platform.python_version()}; {pkgs}\n")


def peak_rss_mb() -> float:
    """This process's peak resident memory (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def emit(result: dict[str, Any]) -> None:
    """Child side: the result is the last line of stdout, as JSON."""
    sys.stdout.write("\n" + json.dumps(result) + "\n")
    sys.stdout.flush()


def run_child(script: str, args: Sequence[str], timeout: float) -> dict[str, Any]:
    """Parent side: run ``python script --child args...``; a dict with ``error`` (or ``error: timeout``)
    when the child did not finish cleanly."""
    cmd = [sys.executable, script, "--child", *args]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": TIMEOUT}
    lines = p.stdout.strip().splitlines()
    if p.returncode == 0 and lines:
        try:
            return json.loads(lines[-1])
        except json.JSONDecodeError:
            pass
    tail = [x for x in (p.stderr.strip().splitlines() or lines) if x.strip()]
    return {"error": f"exit {p.returncode}: {tail[-1].strip()[:200] if tail else 'no output'}"}


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def count_nodes(model: onnx.ModelProto) -> int:
    """Nodes that run: every graph and subgraph (If/Loop/Scan bodies), with a call of a model-local
    function counted as the nodes of its body. Wrapping nodes into functions hides no work."""
    functions = {(f.domain, f.name, getattr(f, "overload", "")): f for f in model.functions}
    memo: dict[tuple[str, str, str], int] = {}

    def nodes(node_list: Iterable[onnx.NodeProto]) -> int:
        n = 0
        for node in node_list:
            key = (node.domain, node.op_type, getattr(node, "overload", ""))
            if key in functions:
                if key not in memo:
                    memo[key] = 0  # a recursive function (invalid ONNX) must not loop forever
                    memo[key] = nodes(functions[key].node)
                n += memo[key]
            else:
                n += 1
            for a in node.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    n += nodes(a.g.node)
                elif a.type == onnx.AttributeProto.GRAPHS:
                    n += sum(nodes(g.node) for g in a.graphs)
        return n

    return nodes(model.graph.node)
