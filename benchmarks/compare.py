"""Side by side: optgraph ``default`` and ``fuse,dce`` against onnxsim, onnxslim, onnxoptimizer and onnxruntime.

    python benchmarks/compare.py [--models NAME...] [--tools TOOL...] [--quick] [--timeout 600]

For every model (benchmarks/models.py exports them; missing ones are exported first) each tool
optimizes the file in its own process, under a timeout. Each result is then measured in another
fresh process: nodes, layers after TensorRT's ONNX parser (tensorrt-rtx, ahead of time, no GPU),
the engine TensorRT builds from it (engine layers after TensorRT's own fusions, standalone
generated kernels, activation memory: optgraph.runtime.engine, the same build for every tool and
the original), onnxruntime CPU latency with graph optimizations off and on (one thread, batch 1), and the
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


def _optgraph_pipeline(pipeline: str) -> Callable[[str, str], None]:
    def optimize(src: str, dst: str) -> None:
        from optgraph import ir
        from optgraph.passes import run_passes

        model = ir.load(src)
        run_passes(model, pipeline)
        ir.save(model, dst)

    return optimize


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
    "optgraph": ("optgraph `default`", _optgraph_pipeline("default")),
    "optgraph-fuse": ("optgraph `fuse,dce`", _optgraph_pipeline("fuse,dce")),
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


def _engine(path: str) -> dict[str, Any]:
    """The engine's figures: layers after TensorRT's fusions (stream sync records not counted),
    standalone generated kernels, activation memory in bytes (None each when the build fails)."""
    from optgraph.runtime import tensorrt

    b = tensorrt.build(path, keep_log=False)
    if not b.ok or b.report is None:
        return {"engine_layers": None, "engine_error": b.errors[0] if b.errors else "build failed"}
    rep = b.report
    return {"engine_layers": rep.num_layers, "engine_kernels": rep.standalone_kernels,
            "engine_activation_bytes": rep.activation_bytes, "engine_seconds": b.seconds}


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
        if r.ok:
            out.update(_engine(candidate))
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
        exporters = sorted({w.split(".")[1] for w in wanted if "." in w} or set(models.DEFAULT_EXPORTERS))
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
        log: Callable[[str], None], partial: Path | None = None) -> dict[str, dict[str, dict[str, Any]]]:
    """results[model][tool] = optimize seconds + measurements (or ``error``); written to ``partial``
    (JSON) after each model, so that a long run stopped early still leaves its results."""
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
            if partial is not None:
                partial.write_text(json.dumps(results, indent=1, sort_keys=True))
    return results


def _brief(r: dict[str, Any]) -> str:
    if "error" in r:
        return f"ERROR {r['error']}"
    keys = ("seconds", "nodes", "trt_layers", "engine_layers", "engine_kernels", "latency_off_ms", "latency_on_ms",
            "equivalent", "measure_error")
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


def _mb(v: int | None) -> str:
    return "" if v is None else f"{v / 1e6:.1f}"


def _engine_cells(r: dict[str, Any]) -> str:
    """'layers | kernels | MB' of the engine, or why there is none."""
    if "engine_layers" not in r:
        return "n/a | | " if "trt_layers" not in r or r["trt_layers"] is not None else "**rejected** | | "
    if r["engine_layers"] is None:
        return "**build failed** | | "
    return f"{r['engine_layers']} | {r['engine_kernels']} | {_mb(r.get('engine_activation_bytes'))}"


ENGINE_KEYS = ("engine_layers", "engine_kernels", "engine_activation_bytes")


def engine_triple(r: dict[str, Any]) -> tuple[int, int, int] | None:
    """(layers, standalone kernels, activation bytes) of a result whose engine was built."""
    if "error" in r or r.get("equivalent") is False or r.get("engine_layers") is None:
        return None
    return tuple(int(r.get(k) or 0) for k in ENGINE_KEYS)  # type: ignore[return-value]


def _same_engine(a: tuple[int, int, int], b: tuple[int, int, int]) -> bool:
    """Same layers and kernels, and activation memory equal to the 0.1 MB shown."""
    return a[:2] == b[:2] and round(a[2] / 1e5) == round(b[2] / 1e5)


def _triple_text(t: tuple[int, int, int] | None) -> str:
    return "–" if t is None else f"{t[0]} / {t[1]} / {t[2] / 1e6:.1f}"


def engine_table(results: dict[str, dict[str, dict[str, Any]]], tools: list[str]) -> list[str]:
    """Markdown: one row per model, one 'layers / kernels / MB' cell per tool, and a verdict."""
    built = {m: res for m, res in results.items() if any(engine_triple(r) for r in res.values())}
    if not built:
        return []
    cols = [ORIGINAL, *tools]
    lines = ["| model | " + " | ".join(cols) + " | pre-optimization changes the engine? |",
             "|---|" + "---:|" * len(cols) + "---|"]
    for label, res in built.items():
        triples = {t: engine_triple(res.get(t, {})) for t in cols}
        lines.append(f"| {label} | " + " | ".join(_triple_text(triples[t]) for t in cols) + f" | {_verdict(triples)} |")
    return lines


def _verdict(triples: dict[str, tuple[int, int, int] | None]) -> str:
    base = triples.get(ORIGINAL)
    others = {t: v for t, v in triples.items() if t != ORIGINAL and v is not None}
    if base is None or not others:
        return ""
    changed = {t: v for t, v in others.items() if not _same_engine(v, base)}
    if not changed:
        return "no: every tool's engine is the original's"
    parts = []
    for t, v in changed.items():
        diffs = [f"{name} {b:g}→{a:g}" for name, a, b, scale in
                 (("layers", v[0], base[0], 1), ("kernels", v[1], base[1], 1), ("MB", v[2], base[2], 1e6))
                 for a, b in [(round(a / scale, 1), round(b / scale, 1))] if a != b]
        if diffs:
            parts.append(f"{t}: {', '.join(diffs)}")
    return "yes: " + "; ".join(parts)


def _equiv_cell(r: dict[str, Any]) -> str:
    if "equivalent" not in r:
        return ""
    return f"yes ({r['max_rel_error']:.1e})" if r["equivalent"] else "**NO**"


def render(results: dict[str, dict[str, dict[str, Any]]], tools: list[str], timeout: float) -> str:
    lines = [
        "# optgraph `default` and `fuse,dce` side by side with onnxsim, onnxslim, onnxoptimizer and onnxruntime",
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
    table = engine_table(results, tools)
    if table:
        lines += ["## The engine TensorRT builds", "",
                  "Each cell: **engine layers / standalone kernels / activation MB** of the engine tensorrt-rtx builds",
                  "ahead of time from the tool's output (strongly typed, fp32, batch 1, DETAILED build log read by",
                  "`optgraph.runtime.engine`; layers are counted after TensorRT's own fusions, stream sync records",
                  "excluded; standalone kernels are the `kgen` layers: copies, reformats, unfused pointwise ops;",
                  "MB = 10^6 bytes of reported activation memory). The same build for the original and every tool;",
                  "– = no engine (the tool failed, its result is not equivalent, or TensorRT refused it).",
                  "", *table, "", *engine_statement(results, tools), ""]
    for label, res in results.items():
        lines += [f"## {label}", "",
                  "| tool | nodes | TRT layers | engine layers | kernels | act. MB | time (s) | ORT off (ms) | "
                  "ORT on (ms) | equivalent |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for tool in [ORIGINAL, *tools]:
            r = res.get(tool, {})
            if "error" in r:
                err = "**timeout**" if r["error"] == common.TIMEOUT else f"failed: {r['error']}"
                lines.append(f"| {tool} | {err} | | | | | | | | |")
                continue
            lines.append(f"| {tool} | {_cell(r, 'nodes')} | {_trt_cell(r)} | {_engine_cells(r)} | "
                         f"{_cell(r, 'seconds', '{:.2f}')} | "
                         f"{_cell(r, 'latency_off_ms', '{:.2f}')} | {_cell(r, 'latency_on_ms', '{:.2f}')} | "
                         f"{_equiv_cell(r)} |")
        notes = [f"- {tool}: {r['trt_error']}" for tool, r in res.items() if r.get("trt_error")]
        notes += [f"- {tool}: engine build failed: {r['engine_error']}" for tool, r in res.items()
                  if r.get("engine_error")]
        notes += [f"- {tool}: {r['oracle']}" for tool, r in res.items() if r.get("equivalent") is False]
        notes += [f"- {tool}: {r.get('measure_error') or r.get('run_error')}" for tool, r in res.items()
                  if r.get("measure_error") or r.get("run_error")]
        if notes:
            lines += ["", *sorted(set(notes), key=notes.index)]
        lines.append("")
    lines += ["## Where `default` is behind the original or the best peer", "", *shortfalls(results, tools), ""]
    lines += scale_summary(results, tools)
    return "\n".join(lines)


def _ok(r: dict[str, Any]) -> bool:
    return "error" not in r and r.get("equivalent", False) is True


def shortfalls(results: dict[str, dict[str, dict[str, Any]]], tools: list[str]) -> list[str]:
    """One line per model where optgraph has more nodes or TRT layers than an equivalent peer, or fails."""
    out = []
    peers = [t for t in tools if not t.startswith("optgraph")]
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
        out += _engine_shortfalls(label, res, peers)
    return out or ["Nowhere: on every model optgraph's nodes, TensorRT layers and engine (layers, kernels, "
                   "activation memory) are at most the original's and the best peer's."]


_ENGINE_WHAT = (("engine layers", 0, 1), ("standalone kernels", 1, 1), ("activation MB", 2, 1e6))


def _engine_shortfalls(label: str, res: dict[str, dict[str, Any]], peers: list[str]) -> list[str]:
    """Where `default`'s engine has more layers, kernels or activation memory than the original's or
    than the best equivalent peer's (each figure on its own)."""
    og = engine_triple(res.get("optgraph", {}))
    if og is None:
        return []
    out = []
    base = engine_triple(res.get(ORIGINAL, {}))
    good = {t: v for t in peers if (v := engine_triple(res.get(t, {}))) is not None}
    for what, i, scale in _ENGINE_WHAT:
        shown = (lambda t: t[i]) if scale == 1 else (lambda t: round(t[i] / scale, 1))  # noqa: E731
        if base is not None and shown(og) > shown(base):
            out.append(f"- {label}: {what} {shown(og)} vs the original's {shown(base)}")
        if good:
            best = min(good, key=lambda t: shown(good[t]))
            if shown(og) > shown(good[best]):
                out.append(f"- {label}: {what} {shown(og)} vs {shown(good[best])} ({best})")
    return out


def engine_statement(results: dict[str, dict[str, dict[str, Any]]], tools: list[str]) -> list[str]:
    """Plain sentences: on which models pre-optimization changes the engine and on which it does not."""
    same, changed = [], []
    for label, res in results.items():
        base = engine_triple(res.get(ORIGINAL, {}))
        others = [v for t in tools if (v := engine_triple(res.get(t, {}))) is not None]
        if base is None or not others:
            continue
        (same if all(_same_engine(v, base) for v in others) else changed).append(label)
    out = []
    if same:
        out.append(f"- **The engine does not change** (every tool's engine has the original's layers, kernels and "
                   f"activation memory) on: {', '.join(same)}.")
    if changed:
        out.append(f"- **Pre-optimization changes the engine** on: {', '.join(changed)} (the last column says how).")
    return out


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
            r = results[m].get(tool)
            cells.append("not run" if r is None else f"{r['seconds']:.2f}" if "seconds" in r else
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
    parser.add_argument("--merge", type=Path, nargs="+", metavar="JSON",
                        help="run nothing: write the report from these compare.json files (a later file's "
                             "results win), e.g. the peers and optgraph run separately")
    parser.add_argument("--reuse", type=Path, metavar="JSON",
                        help="an earlier compare.json: its results fill in the tools and models not run now "
                             "(rerun optgraph after a change without waiting for the peers again)")
    args = parser.parse_args(argv)

    if args.merge:
        results: dict[str, dict[str, dict[str, Any]]] = {}
        for path in args.merge:
            for label, res in json.loads(path.read_text()).items():
                results.setdefault(label, {}).update(res)
        tools = [t for t in TOOLS if any(t in res for res in results.values())]
        write_report(results, tools, args.out, args.timeout)
        return 0
    selected = select_models(args.models, args.quick, args.model_dir)
    if not selected:
        print("no models to run", file=sys.stderr)
        return 2
    budget = QUICK_LATENCY_BUDGET_S if args.quick else LATENCY_BUDGET_S
    args.out.mkdir(parents=True, exist_ok=True)
    results = run(selected, args.tools, args.timeout, budget, lambda s: print(s, flush=True),
                  partial=args.out / "compare.partial.json")
    tools = args.tools
    if args.reuse:
        earlier = json.loads(args.reuse.read_text())
        for label, old in earlier.items():
            res = results.setdefault(label, {})
            for tool, r in old.items():
                res.setdefault(tool, r)
        tools = [t for t in TOOLS if any(t in res for res in results.values())]
    write_report(results, tools, args.out, args.timeout)
    (args.out / "compare.partial.json").unlink(missing_ok=True)
    return 0


def write_report(results: dict[str, dict[str, dict[str, Any]]], tools: list[str], out: Path, timeout: float) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.md").write_text(render(results, tools, timeout))
    (out / "compare.json").write_text(json.dumps(results, indent=1, sort_keys=True))
    plot(results, tools, out, timeout)
    print(f"wrote {out / 'compare.md'}")


if __name__ == "__main__":
    sys.exit(main())
