"""Side by side: optgraph ``default`` against onnxsim, onnxslim, onnxoptimizer and onnxruntime's offline optimizer.

    python benchmarks/compare.py [--models NAME...] [--tools TOOL...] [--quick] [--timeout 600]

For every model (benchmarks/models.py exports them; missing ones are exported first) each tool
optimizes the file in its own process, under a timeout. Each result is then measured in another
fresh process: nodes, layers after TensorRT's ONNX parser (tensorrt-rtx, ahead of time, no GPU),
onnxruntime CPU latency with graph optimizations off and on (one thread, batch 1), and the
oracle's verdict against the original (optgraph.passes.testing.oracle: 3 seeded inputs, fp32 rtol 1e-4,
atol 1e-5 scaled to the output's magnitude). The synthetic series (1.6k, 16k, 64k nodes) shows
how each tool's time grows. Writes compare.md, compare.json, compare.png and scale.png into
``--out`` (docs/benchmarks).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import common
import models

from optgraph.ir import progress

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "docs" / "benchmarks"
PACKAGES = ["onnx", "onnxruntime", "onnxsim", "onnxslim", "onnxoptimizer", "tensorrt_rtx", "torch", "transformers"]
QUICK_MODELS = ["synthetic-1600", "googlenet"]
LATENCY_BUDGET_S = 2.0  # per result and mode: runs stop after this long (at least 3 runs)
QUICK_LATENCY_BUDGET_S = 0.2
TARGET_64K_S, TARGET_GROWTH = 6.0, 4.5  # issue 4's targets for the synthetic series


# --------------------------------------------------------------------------------------------
# the tools: each reads ``src`` and writes ``dst``; the child process times the call


def _optgraph(src: str, dst: str) -> None:
    from optgraph import ir
    from optgraph.passes import run_passes

    model = ir.load(src)
    run_passes(model, "default")
    ir.save(model, dst)


def _onnxsim(src: str, dst: str) -> None:
    import onnx
    import onnxsim

    model, ok = onnxsim.simplify(onnx.load(src))
    if not ok:
        raise RuntimeError("onnxsim's own check failed")
    onnx.save(model, dst)


def _onnxslim(src: str, dst: str) -> None:
    import onnxslim

    onnxslim.slim(src, dst)


def _onnxoptimizer(src: str, dst: str) -> None:
    import onnx
    import onnxoptimizer

    onnx.save(onnxoptimizer.optimize(onnx.load(src)), dst)  # its default fuse-and-eliminate passes


def _ort_basic(src: str, dst: str) -> None:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.optimized_model_filepath = dst
    opts.log_severity_level = 3
    ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])


TOOLS: dict[str, tuple[str, Callable[[str, str], None]]] = {
    "optgraph": ("optgraph `default`", _optgraph),
    "onnxsim": ("onnxsim.simplify", _onnxsim),
    "onnxslim": ("onnxslim.slim", _onnxslim),
    "onnxoptimizer": ("onnxoptimizer.optimize (default passes)", _onnxoptimizer),
    "ort-basic": ("onnxruntime ORT_ENABLE_BASIC, optimized_model_filepath", _ort_basic),
}
ORIGINAL = "original"


def child_optimize(tool: str, src: str, dst: str) -> None:
    fn = TOOLS[tool][1]
    t0 = time.perf_counter()
    fn(src, dst)
    common.emit({"seconds": time.perf_counter() - t0, "rss_mb": common.peak_rss_mb()})


# --------------------------------------------------------------------------------------------
# measuring one result


def _batch_one_dims(proto: Any) -> dict[str, int]:
    """Symbolic input dims are fed as 1 (batch 1, as exported)."""
    return {d.dim_param: 1 for vi in proto.graph.input for d in vi.type.tensor_type.shape.dim if d.dim_param}


def _latency_ms(path: str, feeds: dict[str, Any], optimize: bool, budget: float) -> float:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                     else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    sess.run(None, feeds)  # warm-up
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < 3 or (time.perf_counter() - start < budget and len(times) < 50):
        t0 = time.perf_counter()
        sess.run(None, feeds)
        times.append((time.perf_counter() - t0) * 1e3)
    return min(times)  # the machine is shared: the fastest run is the least disturbed one


def child_measure(original: str, candidate: str, budget: str) -> None:
    import onnx

    from optgraph.passes.testing import oracle
    from optgraph.runtime import tensorrt

    proto = onnx.load(candidate)
    out: dict[str, Any] = {"nodes": common.count_nodes(proto)}
    if tensorrt.available():
        r = tensorrt.parse(candidate)
        out["trt_layers"] = r.num_layers if r.ok else None
        out["trt_error"] = r.errors[0] if r.errors else ""
    dims = _batch_one_dims(proto)
    feeds = oracle.random_inputs(proto, seed=0, dims=dims)
    for key, opt in (("latency_off_ms", False), ("latency_on_ms", True)):
        try:
            out[key] = _latency_ms(candidate, feeds, opt, float(budget))
        except Exception as e:  # noqa: BLE001  (a result onnxruntime cannot run is a finding)
            out[key] = None
            out.setdefault("run_error", f"{type(e).__name__}: {' '.join(str(e).split())[:200]}")
    if original != candidate:
        c = oracle.compare(onnx.load(original), proto, dims=dims)
        out.update(equivalent=c.equivalent, max_rel_error=c.max_rel_error, max_abs_error=c.max_abs_error,
                   oracle=c.message)
    common.emit(out)


# --------------------------------------------------------------------------------------------
# the run


def select_models(names: list[str] | None, quick: bool, model_dir: Path) -> list[tuple[str, Path]]:
    """(label, path) of the models to run; ``resnet50`` means both exporters, ``resnet50.legacy`` one,
    a name ending in .onnx is a file to run as it is."""
    wanted = names or (QUICK_MODELS if quick else models.all_names())
    files = [(Path(w).stem, Path(w)) for w in wanted if w.endswith(".onnx")]
    wanted = [w for w in wanted if not w.endswith(".onnx")]
    if not wanted:
        return files
    manifest = {(e.name, e.exporter): e for e in models.read_manifest(model_dir)} \
        if (model_dir / "manifest.json").exists() else {}
    missing = [w.split(".")[0] for w in wanted
               if not any(k[0] == w.split(".")[0] for k in manifest)]
    if missing:
        exporters = sorted({w.split(".")[1] for w in wanted if "." in w} or set(models.EXPORTERS))
        models.build(sorted(set(missing)), exporters, model_dir)
        manifest = {(e.name, e.exporter): e for e in models.read_manifest(model_dir)}
    out = []
    for w in wanted:
        base, _, exporter = w.partition(".")
        for (name, exp), e in manifest.items():
            if name == base and (not exporter or exp == exporter):
                if e.error:
                    print(f"skipping {name}.{exp}: its export failed ({e.error})", flush=True)
                else:
                    out.append((name if exp == "synthetic" else f"{name}.{exp}", Path(e.path)))
    return [*files, *out]


def run(selected: list[tuple[str, Path]], tools: list[str], timeout: float, latency_budget: float,
        log: Callable[[str], None]) -> dict[str, dict[str, dict[str, Any]]]:
    """results[model][tool] = optimize seconds + measurements (or ``error``)."""
    results: dict[str, dict[str, dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, path in progress.track(selected, "benchmark: models"):
            res: dict[str, dict[str, Any]] = {}
            measure = ["measure", str(path)]
            res[ORIGINAL] = common.run_child(__file__, [*measure, str(path), str(latency_budget)], timeout)
            log(f"{label:26} {ORIGINAL:13} {_brief(res[ORIGINAL])}")
            for tool in tools:
                dst = Path(tmp) / f"{label}.{tool}.onnx"
                r = common.run_child(__file__, ["optimize", tool, str(path), str(dst)], timeout)
                if "error" not in r:
                    m = common.run_child(__file__, [*measure, str(dst), str(latency_budget)], timeout)
                    r.update({f"measure_{k}" if k == "error" else k: v for k, v in m.items()})
                res[tool] = r
                log(f"{label:26} {tool:13} {_brief(r)}")
                dst.unlink(missing_ok=True)
                for extra in Path(tmp).glob(f"{label}.{tool}*"):  # external data some tools write
                    extra.unlink()
            results[label] = res
    return results


def _brief(r: dict[str, Any]) -> str:
    if "error" in r:
        return f"ERROR {r['error']}"
    keys = ("seconds", "nodes", "trt_layers", "latency_off_ms", "latency_on_ms", "equivalent", "measure_error")
    return " ".join(f"{k}={_fmt(r[k])}" for k in keys if k in r)


def _fmt(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


# --------------------------------------------------------------------------------------------
# report


def _cell(r: dict[str, Any], key: str, fmt: str = "{}") -> str:
    v = r.get(key)
    return "" if v is None else fmt.format(v)


def _trt_cell(r: dict[str, Any]) -> str:
    if "trt_layers" not in r:
        return "n/a"
    return str(r["trt_layers"]) if r["trt_layers"] is not None else "**rejected**"


def _equiv_cell(r: dict[str, Any]) -> str:
    if "equivalent" not in r:
        return ""
    return f"yes ({r['max_rel_error']:.1e})" if r["equivalent"] else "**NO**"


def render(results: dict[str, dict[str, dict[str, Any]]], tools: list[str], timeout: float) -> str:
    lines = [
        "# optgraph `default` side by side with onnxsim, onnxslim, onnxoptimizer and onnxruntime",
        "",
        "Generated by `python benchmarks/compare.py` (models from `python benchmarks/models.py`: random",
        "weights, batch 1, fp32; `.legacy` = `torch.onnx.export(dynamo=False)`, opset 17; `.dynamo` =",
        "`dynamo=True`, opset 18).",
        "",
        common.machine_header(PACKAGES).rstrip(),
        "",
        "Columns: **nodes** after the tool (a call of a model-local function counts as the nodes of its",
        "body: wrapping nodes into functions hides no work); **TRT layers**: layers of the network TensorRT's ONNX parser",
        "builds (tensorrt-rtx; **rejected** = the parser refuses the model); **time**: the tool's wall time",
        "including its load and save, in a fresh process, capped at "
        f"{timeout:.0f} s (**timeout**); **ORT off/on**: onnxruntime CPU latency (1 thread, best of up to 50 runs) of the",
        "result with graph optimizations disabled / ORT_ENABLE_ALL; **equivalent**: the oracle's verdict",
        "against the original on 3 seeded random inputs (fp32 rtol 1e-4, atol 1e-5 scaled to the output's",
        "magnitude) and, in brackets, the largest |a-b|/|a| over nonzero reference elements, which can be",
        "large on elements near zero even when the outputs agree.",
        "",
    ]
    if any(not m.startswith("synthetic-") for m in results):
        lines += ["![nodes and TensorRT layers](compare.png)", ""]
    for label, res in results.items():
        lines += [f"## {label}", "", "| tool | nodes | TRT layers | time (s) | ORT off (ms) | ORT on (ms) | equivalent |",
                  "|---|---:|---:|---:|---:|---:|---|"]
        for tool in [ORIGINAL, *tools]:
            r = res.get(tool, {})
            if "error" in r:
                err = "**timeout**" if r["error"] == common.TIMEOUT else f"failed: {r['error']}"
                lines.append(f"| {tool} | {err} | | | | | |")
                continue
            lines.append(f"| {tool} | {_cell(r, 'nodes')} | {_trt_cell(r)} | {_cell(r, 'seconds', '{:.2f}')} | "
                         f"{_cell(r, 'latency_off_ms', '{:.2f}')} | {_cell(r, 'latency_on_ms', '{:.2f}')} | "
                         f"{_equiv_cell(r)} |")
        notes = [f"- {tool}: {r['trt_error']}" for tool, r in res.items() if r.get("trt_error")]
        notes += [f"- {tool}: {r['oracle']}" for tool, r in res.items() if r.get("equivalent") is False]
        notes += [f"- {tool}: {r.get('measure_error') or r.get('run_error')}" for tool, r in res.items()
                  if r.get("measure_error") or r.get("run_error")]
        if notes:
            lines += ["", *sorted(set(notes), key=notes.index)]
        lines.append("")
    lines += ["## Where `default` is behind the best peer", "", *shortfalls(results, tools), ""]
    lines += scale_summary(results, tools)
    return "\n".join(lines)


def _ok(r: dict[str, Any]) -> bool:
    return "error" not in r and r.get("equivalent", False) is True


def shortfalls(results: dict[str, dict[str, dict[str, Any]]], tools: list[str]) -> list[str]:
    """One line per model where optgraph has more nodes or TRT layers than an equivalent peer, or fails."""
    out = []
    peers = [t for t in tools if t != "optgraph"]
    if "optgraph" not in tools or not peers:
        return ["(optgraph and at least one peer must run to compare)"]
    for label, res in results.items():
        og = res.get("optgraph", {})
        if not _ok(og):
            out.append(f"- {label}: optgraph {og.get('error') or og.get('oracle') or 'did not produce a result'}")
            continue
        good = {t: res[t] for t in peers if t in res and _ok(res[t])}
        for key, what in (("nodes", "nodes"), ("trt_layers", "TensorRT layers")):
            vals = {t: r[key] for t, r in good.items() if r.get(key) is not None}
            if not vals:
                continue
            best = min(vals, key=vals.__getitem__)
            if og.get(key) is None and key == "trt_layers":
                out.append(f"- {label}: TensorRT rejects optgraph's result; {best} parses ({vals[best]} layers)")
            elif og.get(key) is not None and og[key] > vals[best]:
                out.append(f"- {label}: {what} {og[key]} vs {vals[best]} ({best})")
    return out or ["Nowhere: on every model optgraph's nodes and TensorRT layers are at most the best peer's."]


def plot(results: dict[str, dict[str, dict[str, Any]]], tools: list[str], out: Path, timeout: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    real = [m for m in results if not m.startswith("synthetic-")]
    if real:
        # Absolute counts on a log axis: the original is a bar of its own, and a model the
        # original of which TensorRT rejects still gets its bars.
        bars = [ORIGINAL, *tools]
        fig, axes = plt.subplots(2, 1, figsize=(max(8, 0.9 * len(real) + 3), 8), sharex=True)
        width = 0.8 / len(bars)
        for ax, key, title in ((axes[0], "nodes", "ONNX nodes after each tool"),
                               (axes[1], "trt_layers", "TensorRT layers after each tool (x: TensorRT rejects)")):
            for i, tool in enumerate(bars):
                xs, ys, rejected = [], [], []
                for j, m in enumerate(real):
                    r = results[m].get(tool, {})
                    if "error" in r or key not in r:
                        continue
                    (rejected if r[key] is None else xs).append(j + i * width)
                    if r[key] is not None:
                        ys.append(r[key])
                bar = ax.bar(xs, ys, width, label=tool, color="0.6" if tool == ORIGINAL else None)
                if rejected:
                    ax.plot(rejected, [0.03] * len(rejected), "x", color=bar.patches[0].get_facecolor()
                            if bar.patches else "red", ms=9, mew=2, transform=ax.get_xaxis_transform())
            ax.set_yscale("log")
            ax.set_title(title)
            ax.grid(True, axis="y", which="both", alpha=0.3)
        axes[1].set_xticks([j + 0.4 - width / 2 for j in range(len(real))], real, rotation=35, ha="right")
        axes[0].legend(ncol=len(bars), fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "compare.png", dpi=110)
        plt.close(fig)
    synth = sorted((m for m in results if m.startswith("synthetic-")), key=lambda m: int(m.split("-")[1]))
    if synth:
        fig, ax = plt.subplots(figsize=(7, 5))
        sizes = [results[m][ORIGINAL].get("nodes") or int(m.split("-")[1]) for m in synth]
        for i, tool in enumerate(tools):
            pts = [(n, results[m].get(tool, {})) for n, m in zip(sizes, synth)]
            done = [(n, r["seconds"]) for n, r in pts if "seconds" in r]
            capped = [n * (1 + 0.06 * i) for n, r in pts if r.get("error") == common.TIMEOUT]  # spread overlaps
            line, = ax.plot(*zip(*done), "o-", label=tool) if done else ax.plot([], [], "o-", label=tool)
            if capped:
                ax.plot(capped, [timeout] * len(capped), "x", color=line.get_color(), ms=10, mew=2)
        ax.axhline(timeout, color="gray", lw=0.8, ls="--")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(sizes, [f"{n / 1000:.3g}k" for n in sizes])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("nodes")
        ax.set_ylabel("optimize time incl. load+save (s)")
        ax.set_title(f"Time growth on the synthetic series (x: timeout at {timeout:.0f} s)")
        ax.legend()
        ax.grid(True, which="both", alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / "scale.png", dpi=110)
        plt.close(fig)


def scale_summary(results: dict[str, dict[str, dict[str, Any]]], tools: list[str]) -> list[str]:
    """Markdown lines: time per tool and size, and the 64k/16k growth ratio."""
    synth = sorted((m for m in results if m.startswith("synthetic-")), key=lambda m: int(m.split("-")[1]))
    if not synth:
        return []
    lines = ["## Scale series: optimize time (s)", "", "| tool | " + " | ".join(synth) + " | growth 64k/16k |",
             "|---|" + "---:|" * (len(synth) + 1)]
    for tool in tools:
        cells = []
        for m in synth:
            r = results[m].get(tool, {})
            cells.append(f"{r['seconds']:.2f}" if "seconds" in r else
                         ("timeout" if r.get("error") == common.TIMEOUT else "failed"))
        big, mid = (results.get(m, {}).get(tool, {}) for m in ("synthetic-64000", "synthetic-16000"))
        growth = f"{big['seconds'] / mid['seconds']:.1f}" if "seconds" in big and "seconds" in mid else ""
        lines.append(f"| {tool} | " + " | ".join(cells) + f" | {growth} |")
    lines += ["", "![time growth](scale.png)", ""]
    big, mid = (results.get(m, {}).get("optgraph", {}) for m in ("synthetic-64000", "synthetic-16000"))
    if "seconds" in big and "seconds" in mid:
        t, g = big["seconds"], big["seconds"] / mid["seconds"]
        met = "meets" if t < TARGET_64K_S and g < TARGET_GROWTH else "misses"
        lines += [f"Target for optgraph (load + `default` + save): 64k nodes under {TARGET_64K_S:g} s and "
                  f"time(64k)/time(16k) under {TARGET_GROWTH:g}. Measured {t:.1f} s and {g:.1f}: {met} it.", ""]
    return lines


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        if argv[1] == "optimize":
            child_optimize(*argv[2:5])
        else:
            child_measure(*argv[2:5])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", metavar="NAME",
                        help="model names (resnet50, resnet50.legacy, synthetic-1600, ...); default: all")
    parser.add_argument("--tools", nargs="+", choices=list(TOOLS), default=list(TOOLS))
    parser.add_argument("--quick", action="store_true", help=f"small models only ({', '.join(QUICK_MODELS)})")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per tool per model")
    parser.add_argument("--model-dir", type=Path, default=models.DEFAULT_OUT)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where compare.md and the plots go")
    parser.add_argument("--reuse", type=Path, metavar="JSON",
                        help="an earlier compare.json: its results fill in the tools not run now "
                             "(rerun optgraph after a change without waiting for the peers again)")
    args = parser.parse_args(argv)

    selected = select_models(args.models, args.quick, args.model_dir)
    if not selected:
        print("no models to run", file=sys.stderr)
        return 2
    budget = QUICK_LATENCY_BUDGET_S if args.quick else LATENCY_BUDGET_S
    results = run(selected, args.tools, args.timeout, budget, lambda s: print(s, flush=True))
    tools = args.tools
    if args.reuse:
        earlier = json.loads(args.reuse.read_text())
        for label, res in results.items():
            for tool, r in earlier.get(label, {}).items():
                res.setdefault(tool, r)
        tools = [t for t in TOOLS if any(t in res for res in results.values())]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "compare.md").write_text(render(results, tools, args.timeout))
    (args.out / "compare.json").write_text(json.dumps(results, indent=1, sort_keys=True))
    plot(results, tools, args.out, args.timeout)
    print(f"wrote {args.out / 'compare.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
