"""Activation memory of real CNNs: optgraph's arena plans beside TensorRT-RTX's, and planning time at scale.

    python benchmarks/memory.py [--models benchmarks/models] [--out docs/benchmarks/memory.md]
                                [--no-execute] [--no-tensorrt] [--sizes 1600 16000 64000]
                                [--files MODEL.onnx ...]

Models are the legacy-exporter files of benchmarks/models.py (exported into --models when
missing): ResNet-50, GoogLeNet, Inception-v3 and DenseNet-121 at batch 1, fp32. Each is planned
after ``fuse-conv-bn`` (BN folded, activations still separate nodes: the graph the issue's
reference lower bounds are measured on) and after the whole ``fuse`` group (conv+activation units
become single function calls, so their intermediate tensor is gone from the graph itself).

Per graph: the file-order lower bound without aliasing (the reference figure), the arena each
strategy reaches without aliasing, then with in-place, concat and split aliases + memory-aware order, and
whether executing that plan in its arena matches onnxruntime. TensorRT-RTX's figure is the
"Total Activation Memory" its builder reports for the exported file (it does its own fusion).
The synthetic series times planning alone (sizes, lifetimes, aliases, both strategies).

``--files`` adds any exported models (torchvision, timm, ultralytics, transformers; dynamic dims
at 1, as TensorRT's one-point profile takes them) to a table of the arena ``optgraph plan``
computes beside TensorRT-RTX's activation memory, for the file as given and after ``default``.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import onnx

sys.path.insert(0, str(Path(__file__).parent))
import models as zoo  # noqa: E402  (benchmarks/models.py)

from optgraph import ir  # noqa: E402
from optgraph.ir import progress  # noqa: E402
from optgraph.passes import run_passes  # noqa: E402
from optgraph.passes.memory.liveness import tensor_infos  # noqa: E402
from optgraph.passes.memory import plan_memory  # noqa: E402

MODELS = ("resnet50", "googlenet", "inception_v3", "densenet121")
PIPELINES = ("fuse-conv-bn", "fuse")
MIB = 1 << 20
DOC = Path(__file__).parent.parent / "docs" / "benchmarks" / "memory.md"


@dataclass
class Row:
    model: str
    pipeline: str
    nodes: int
    file_lb: int
    bare: dict[str, int]  # strategy -> arena, file order, no aliases
    plan_lb: int
    planned: dict[str, int]  # strategy -> arena, all aliases + memory order
    order: str
    inplace: int
    concat: int
    split: int
    seconds: float
    executed: str = "not run"
    tensorrt: int | None = None


@dataclass
class Timing:
    nodes: int
    infos: float
    file: float
    memory: float
    arena: int
    lower_bound: int


def model_path(name: str, folder: Path) -> Path:
    path = folder / f"{name}.legacy.onnx"
    if not path.exists():
        entry = zoo.export(name, "legacy", folder)
        if entry.error:
            raise SystemExit(f"exporting {name} failed: {entry.error}")
    return path


def measure(name: str, path: Path, pipeline: str, execute: bool) -> Row:
    model = ir.load(path)
    run_passes(model, pipeline)
    infos = tensor_infos(model)
    bare = plan_memory(model, infos, inplace=False, concat=False, split=False)
    start = time.perf_counter()
    plan = plan_memory(model, infos, order="memory")
    seconds = time.perf_counter() - start
    row = Row(name, pipeline, len(model.graph), bare.file_order_lower_bound, bare.strategies, plan.lower_bound,
              plan.strategies, "memory" if plan.schedule != list(model.graph) else "file",
              sum(a.kind == "inplace" for a in plan.aliases), sum(a.kind == "concat" for a in plan.aliases),
              sum(a.kind == "split" for a in plan.aliases), seconds)
    if execute:
        from optgraph.runtime.executor import check_by_execution

        result = check_by_execution(model, plan, n_inputs=1)
        row.executed = "matches" if result else f"MISMATCH: {result.message}"
    return row


@dataclass
class Versus:
    """``optgraph plan`` (default options) beside TensorRT-RTX, for one file as given and after ``default``."""

    model: str
    nodes: tuple[int, int]
    lower_bound: tuple[int, int]
    planned: tuple[int, int]
    strategy: tuple[str, str]
    folded: tuple[bool, bool]  # sizes needed the shape computations folded
    tensorrt: tuple[int | None, int | None]
    error: str = ""


def plan_and_build(path: Path, tmp: Path, build: bool = True, sizes: dict[str, int] | None = None) -> Versus:
    """Plan ``path`` the way ``optgraph plan`` does and build it, as given and after ``default``."""
    from optgraph.passes.base import PassContext
    from optgraph.passes.memory.liveness import plannable_infos

    results = []
    for pipeline in ("none", "default"):
        model = ir.load(path)
        dims = {d: (sizes or {}).get(d, 1) for v in model.graph.inputs for d in (v.shape or ()) if isinstance(d, str)}
        if pipeline != "none":
            run_passes(model, pipeline)
        built = tmp / f"{path.stem}.{pipeline}.onnx"
        ir.save(model, built)
        nodes = len(model.graph)
        ctx = PassContext(dims=dims)
        ctx.bind(model)
        plan = plan_memory(model, plannable_infos(model, ctx), dims=dims)
        results.append((nodes, plan.lower_bound, plan.arena_size, plan.strategy, len(model.graph) != nodes,
                        tensorrt_activation(built, dims) if build else None))
    a, b = results
    return Versus(path.stem, (a[0], b[0]), (a[1], b[1]), (a[2], b[2]), (a[3], b[3]), (a[4], b[4]), (a[5], b[5]))


def versus_table(rows: list[Versus]) -> list[str]:
    def ratio(planned: int, trt: int | None) -> str:
        return "n/a" if not trt else f"{planned / trt:.2f}"

    lines = ["## optgraph plan beside TensorRT-RTX, every model", "",
             "`optgraph plan MODEL` with its defaults (strategy `best`, file order, all aliases; dynamic dims from",
             "`--dim`, else 1) against the \"Total Activation Memory\" TensorRT-RTX's builder reports for the same",
             "file, as given and after `optgraph run` (`default`). \"folded\": sizes needed the shape computations",
             "folded first, which `plan` now does itself. TensorRT's figure includes its kernels' scratch memory and",
             "its own fusions, so the two measure different graphs; the ratio shows how much of TensorRT's total is",
             "the arena.", "",
             "| model | nodes | planned MiB (strategy) | LB MiB | TensorRT MiB | plan / TensorRT | nodes after default "
             "| planned MiB | TensorRT MiB | plan / TensorRT |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r.error:
            lines.append(f"| {r.model} | {r.error} | | | | | | | | |")
            continue
        fold = " folded" if r.folded[0] else ""
        lines.append(f"| {r.model} | {r.nodes[0]} | {mib(r.planned[0])} ({r.strategy[0]}{fold}) "
                     f"| {mib(r.lower_bound[0])} | {mib(r.tensorrt[0])} | {ratio(r.planned[0], r.tensorrt[0])} "
                     f"| {r.nodes[1]} "
                     f"| {mib(r.planned[1])} | {mib(r.tensorrt[1])} | {ratio(r.planned[1], r.tensorrt[1])} |")
    return lines + [""]


def tensorrt_activation(path: Path, dims: dict[str, int] | None = None) -> int | None:
    from optgraph.runtime import tensorrt

    if not tensorrt.available():
        return None
    return tensorrt.build(str(path), dims=dims, keep_log=False).activation_bytes


def time_planning(n: int, folder: Path) -> Timing:
    path = folder / f"synthetic-{n}.onnx"
    if not path.exists():
        zoo.export_synthetic(n, folder)
    model = ir.load(path)
    dims = {d: 1 for v in model.graph.inputs for d in (v.shape or ()) if isinstance(d, str)}
    t0 = time.perf_counter()
    infos = tensor_infos(model, dims)
    t1 = time.perf_counter()
    file_plan = plan_memory(model, infos, dims=dims)
    t2 = time.perf_counter()
    plan_memory(model, infos, order="memory", dims=dims)
    t3 = time.perf_counter()
    return Timing(len(model.graph), t1 - t0, t2 - t1, t3 - t2, file_plan.arena_size, file_plan.lower_bound)


def mib(x: int | None) -> str:
    return "n/a" if x is None else f"{x / MIB:.2f}"


def below(arena: int, reference: int) -> str:
    return f"{100 * (1 - arena / reference):.1f}%"


def report(rows: list[Row], timings: list[Timing], trt_flavor: str, versus: Sequence[Versus] = ()) -> str:
    best = lambda sizes: min(sizes.values())  # noqa: E731
    lines = [
        "# Activation memory: optgraph's arena plans",
        "",
        "Generated by `python benchmarks/memory.py` (see its docstring for what is measured). Batch 1, fp32;",
        "MiB = 2^20 bytes; arenas are 256-byte aligned. \"file LB\" is the file order's lower bound without",
        "aliasing (the largest sum of live activation bytes over the steps); \"plan\" is in-place, concat and",
        "split aliases + memory-aware order; its LB is that plan's own lower bound. Graph inputs, outputs and",
        "weights are not in the arena.",
        f"Machine: {platform.machine()}, Python {platform.python_version()}, onnx {onnx.__version__};"
        f" TensorRT: {trt_flavor}.",
        "What the figures mean, and why some targets are out of reach for these graphs:",
        "[docs/memory-planning.md](../memory-planning.md#what-the-benchmark-shows).",
        "",
    ]
    for pipeline in PIPELINES:
        lines += [f"## After `{pipeline}`", "",
                  "| model | nodes | file LB | greedy-size, no alias | greedy-breadth, no alias | plan LB "
                  "| plan greedy-size | plan greedy-breadth | best plan vs file LB | aliases in-place / concat / split "
                  "| order | executed vs onnxruntime | TensorRT-RTX activation |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---:|"]
        for r in (r for r in rows if r.pipeline == pipeline):
            lines.append(
                f"| {r.model} | {r.nodes} | {mib(r.file_lb)} | {mib(r.bare['greedy-size'])} "
                f"| {mib(r.bare['greedy-breadth'])} | {mib(r.plan_lb)} | {mib(r.planned['greedy-size'])} "
                f"| {mib(r.planned['greedy-breadth'])} | {below(best(r.planned), r.file_lb)} below "
                f"| {r.inplace} / {r.concat} / {r.split} | {r.order} | {r.executed} | {mib(r.tensorrt)} |")
        lines.append("")
    if versus:
        lines += versus_table(versus)
    lines += ["## Targets", "",
              "| model | pipeline | no aliasing: best arena over file LB (target <= 1.02) "
              "| plan: best arena below file LB (target >= 15%) |",
              "|---|---|---:|---:|"]
    for r in rows:
        lines.append(f"| {r.model} | {r.pipeline} | {best(r.bare) / r.file_lb:.3f} "
                     f"| {below(best(r.planned), r.file_lb)} |")
    lines += ["", "## Planning time", "",
              "Synthetic Inception-style chains from `benchmarks/models.py`; seconds on this machine. `sizes` is",
              "shape resolution, `file` a whole plan in file order (lifetimes, aliases, both strategies), `memory`",
              "the same with the memory-aware order tried as well.", "",
              "| nodes | sizes | file plan | memory plan | arena | lower bound |", "|---:|---:|---:|---:|---:|---:|"]
    for t in timings:
        lines.append(f"| {t.nodes} | {t.infos:.2f} | {t.file:.2f} | {t.memory:.2f} | {t.arena} | {t.lower_bound} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=zoo.DEFAULT_OUT, help="folder of exported models")
    parser.add_argument("--out", type=Path, default=DOC, help="the markdown report to write")
    parser.add_argument("--only", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--no-execute", action="store_true", help="skip running the plans in their arena")
    parser.add_argument("--no-tensorrt", action="store_true", help="skip the TensorRT-RTX builds")
    parser.add_argument("--sizes", nargs="*", type=int, default=list(zoo.SYNTHETIC_SIZES))
    parser.add_argument("--files", nargs="*", type=Path, default=[],
                        help="more models for the plan-beside-TensorRT table (e.g. timm, ultralytics exports)")
    parser.add_argument("--dim", action="append", default=[], metavar="NAME=SIZE",
                        help="size of a symbolic dim of the --files models (others are 1)")
    args = parser.parse_args(argv)
    args.models.mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
    trt_flavor = "not measured"
    for name in progress.track(args.only, "benchmark: models"):
        path = model_path(name, args.models)
        trt = None
        if not args.no_tensorrt:
            from optgraph.runtime import tensorrt

            trt = tensorrt_activation(path)
            trt_flavor = tensorrt.flavor() if tensorrt.available() else "not installed"
        for pipeline in PIPELINES:
            row = measure(name, path, pipeline, not args.no_execute)
            row.tensorrt = trt
            rows.append(row)
            print(f"{name:14} {pipeline:13} file LB {mib(row.file_lb):>7} MiB  plan "
                  f"{mib(min(row.planned.values())):>7} MiB ({below(min(row.planned.values()), row.file_lb)} below)"
                  f"  {row.executed}  TensorRT {mib(trt)} MiB", flush=True)
    versus = []
    with tempfile.TemporaryDirectory(prefix="optgraph-memory-") as tmp:
        for path in args.files:
            try:
                v = plan_and_build(path, Path(tmp), not args.no_tensorrt,
                                   {k: int(n) for k, _, n in (d.partition("=") for d in args.dim)})
            except ir.OptGraphError as e:
                v = Versus(path.stem, (0, 0), (0, 0), (0, 0), ("", ""), (False, False), (None, None), f"error: {e}")
            versus.append(v)
            print(f"{v.model:28} planned {mib(v.planned[0]):>7} MiB  TensorRT {mib(v.tensorrt[0]):>7} MiB  "
                  f"after default {mib(v.planned[1]):>7} / {mib(v.tensorrt[1]):>7} MiB {v.error}", flush=True)
    timings = []
    for n in args.sizes:
        t = time_planning(n, args.models)
        timings.append(t)
        print(f"synthetic {t.nodes:6d} nodes: sizes {t.infos:.2f}s, file plan {t.file:.2f}s, "
              f"memory plan {t.memory:.2f}s", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report(rows, timings, trt_flavor, versus))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
