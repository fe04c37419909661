"""Precision beside the peers: INT8 Q/DQ and fp16 mixed precision on trained models, calibration
cost on ResNet-50, TensorRT-RTX's engine for every result.

    python benchmarks/precision.py [--out docs/benchmarks/precision.md] [--samples 100]
                                   [--peer-samples 10] [--quick] [--no-tensorrt]
                                   [--parts trained calibration]

Trained models (passes/precision/trained.py: a digits conv net with BN, residual Add and Concat,
a breast-cancer MLP), each made INT8 by optgraph (every calibration method), onnxruntime's
``quantize_static`` (QDQ, symmetric int8, per-channel weights, ``QuantizeBias=False``; MinMax,
Entropy, Percentile) and NVIDIA ModelOpt's ONNX PTQ (int8, max and entropy, float32 elsewhere),
and fp16 by optgraph, onnxconverter-common and ModelOpt AutoCast. Per result: held-out accuracy,
max logit error against fp32 on the held-out set, Q/DQ and Cast counts, onnxruntime CPU latency
against fp32 (one thread, the held-out set as one batch), and TensorRT-RTX's engine (layers,
standalone ``kgen`` kernels, share of Int8 and Half tensors). Calibration data: the training split.

Calibration cost: ResNet-50 (torchvision, random weights, batch made dynamic), 224x224 random
samples; each tool in a fresh process (peak RSS is the process's): optgraph (optgraph quantize's
path: default pipeline, the tensors quantize-int8 reads, one collection, all five methods),
onnxruntime quantize_static (MinMax, Entropy) and ModelOpt (max). Seconds are scaled to 100
samples; the load average is reported beside them because the machine may be shared.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).parent))
import common  # noqa: E402
import models  # noqa: E402

RESNET50 = models.DEFAULT_OUT / "tv_resnet50.legacy.onnx"  # torchvision ResNet-50, exported when missing
PACKAGES = ("onnx", "onnxruntime", "tensorrt-rtx", "nvidia-modelopt", "onnxconverter-common", "numpy")


# --- tools: each returns the converted model ----------------------------------------------------
def optgraph_int8(model: onnx.ModelProto, x: np.ndarray, name: str, method: str) -> onnx.ModelProto:
    from optgraph import ir
    from optgraph.passes import PassContext, PassManager, parse_pipeline
    from optgraph.passes.precision import calibration, quantize

    m = ir.from_proto(model)
    PassManager(parse_pipeline("default")).run(m)
    stats = calibration.collect(ir.to_proto(m), lambda: calibration._batches({name: x}, 64),
                                names=quantize.calibrated_tensors(m))
    ctx = PassContext()
    ctx.ranges = calibration.ranges(stats, method)
    PassManager(parse_pipeline("quantize-int8"), ctx=ctx).run(m)
    return ir.to_proto(m)


def optgraph_fp16(model: onnx.ModelProto, x: np.ndarray, name: str, method: str) -> onnx.ModelProto:
    from optgraph import ir
    from optgraph.passes import run_passes

    m = ir.from_proto(model)
    run_passes(m, "default,fp16")
    return ir.to_proto(m)


class _Reader:
    def __init__(self, name: str, x: np.ndarray, batch: int) -> None:
        self.feeds = [{name: x[i:i + batch]} for i in range(0, len(x), batch)]
        self.at = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        self.at += 1
        return self.feeds[self.at - 1] if self.at <= len(self.feeds) else None

    def rewind(self) -> None:  # onnxruntime's histogram calibrators read the data twice
        self.at = 0


def ort_int8(model: onnx.ModelProto, x: np.ndarray, name: str, method: str) -> onnx.ModelProto:
    """onnxruntime's histogram calibrators stack the batches' outputs (ValueError on a shorter last
    batch), so the calibration set is one batch."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    with tempfile.TemporaryDirectory() as d:
        src, dst = os.path.join(d, "in.onnx"), os.path.join(d, "out.onnx")
        onnx.save(model, src)
        quantize_static(src, dst, _Reader(name, x, len(x)), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        calibrate_method=getattr(CalibrationMethod, method),
                        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False})
        return onnx.load(dst)


def modelopt_int8(model: onnx.ModelProto, x: np.ndarray, name: str, method: str) -> onnx.ModelProto:
    from modelopt.onnx.quantization import quantize

    with tempfile.TemporaryDirectory() as d:
        src, dst = os.path.join(d, "in.onnx"), os.path.join(d, "out.onnx")
        onnx.save(model, src)
        quantize(src, quantize_mode="int8", calibration_data={name: x}, calibration_method=method,
                 calibration_eps=["cpu"], high_precision_dtype="fp32", output_path=dst, log_level="ERROR")
        return onnx.load(dst)


def occ_fp16(model: onnx.ModelProto, x: np.ndarray, name: str, method: str) -> onnx.ModelProto:
    from onnxconverter_common import float16

    return float16.convert_float_to_float16(model, keep_io_types=True)


def autocast_fp16(model: onnx.ModelProto, x: np.ndarray, name: str, method: str) -> onnx.ModelProto:
    from modelopt.onnx.autocast import convert_to_mixed_precision

    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "in.onnx")
        onnx.save(model, src)
        return convert_to_mixed_precision(src, low_precision_type="fp16", keep_io_types=True)


TOOLS: list[tuple[str, str, Callable[..., onnx.ModelProto], str]] = [
    # (label, precision, tool, method)
    *[(f"optgraph {m}", "int8", optgraph_int8, m) for m in ("minmax", "percentile", "entropy", "mse", "auto")],
    *[(f"onnxruntime {m}", "int8", ort_int8, m) for m in ("MinMax", "Entropy", "Percentile")],
    *[(f"modelopt {m}", "int8", modelopt_int8, m) for m in ("max", "entropy")],
    ("optgraph", "fp16", optgraph_fp16, ""),
    ("onnxconverter-common", "fp16", occ_fp16, ""),
    ("modelopt autocast", "fp16", autocast_fp16, ""),
]


# --- measurements ---------------------------------------------------------------------------------
def _session(model: onnx.ModelProto) -> Any:
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _latency_ms(session: Any, feed: dict[str, np.ndarray], runs: int) -> float:
    session.run(None, feed)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - t)
    return 1000 * common.median(times)


def engine(model: onnx.ModelProto) -> dict[str, Any]:
    from optgraph.runtime import tensorrt

    r = tensorrt.build(model.SerializeToString())
    if not r.ok or r.report is None:
        return {"error": (r.errors or ["failed"])[0][:120]}
    tensors = r.report.precision()["tensors"]
    total = max(1, sum(tensors.values()))
    return {"layers": r.report.num_layers, "kgen": r.report.standalone_kernels,
            "int8": 100.0 * tensors.get("Int8", 0) / total, "half": 100.0 * tensors.get("Half", 0) / total}


def trained_rows(quick: bool, with_trt: bool, runs: int) -> dict[str, list[dict[str, Any]]]:
    """Tool by tool, every fixture: ModelOpt patches onnxruntime's quantization module when it runs,
    so the onnxruntime rows (earlier in TOOLS) must all come before any ModelOpt row."""
    from optgraph.passes.precision import trained

    fixtures = [trained.tabular_mlp()] if quick else [trained.digits_cnn(), trained.tabular_mlp()]
    names = ["tabular_mlp"] if quick else ["digits_cnn", "tabular_mlp"]
    out: dict[str, list[dict[str, Any]]] = {}
    refs = {}
    for name, t in zip(names, fixtures):
        feed = {t.input_name: t.x_test}
        ref_session = _session(t.model)
        ref = ref_session.run(None, feed)[0]
        refs[name] = (ref, _latency_ms(ref_session, feed, runs))
        out[name] = [{"tool": "fp32 (original)", "precision": "fp32", "accuracy": t.accuracy(ref), "error": 0.0,
                      "qdq": 0, "casts": _count(t.model, "Cast"), "latency": 1.0, "seconds": 0.0,
                      **(engine(t.model) if with_trt else {})}]
    for label, precision, tool, method in TOOLS:
        if quick and not label.startswith(("optgraph", "onnxruntime MinMax")):
            continue
        for name, t in zip(names, fixtures):
            ref, base_ms = refs[name]
            feed = {t.input_name: t.x_test}
            row: dict[str, Any] = {"tool": label, "precision": precision}
            try:
                start = time.perf_counter()
                result = tool(t.model, t.x_train, t.input_name, method)
                row["seconds"] = time.perf_counter() - start
                session = _session(result)
                got = session.run(None, feed)[0].astype(np.float64)
                row.update(accuracy=t.accuracy(got), error=float(np.abs(got - ref).max()),
                           finite=bool(np.isfinite(got).all()),
                           qdq=_count(result, "QuantizeLinear") + _count(result, "DequantizeLinear"),
                           casts=_count(result, "Cast"), latency=_latency_ms(session, feed, runs) / base_ms)
                if with_trt:
                    row.update(engine(result))
            except Exception as e:  # a peer that fails is a result, not a crash of the benchmark
                row["failure"] = f"{type(e).__name__}: {str(e).splitlines()[0][:150] if str(e) else ''}"
            out[name].append(row)
            print(f"{name} {label}: {row}", file=sys.stderr)
    return out


def _count(model: onnx.ModelProto, op: str) -> int:
    return sum(1 for n in model.graph.node if n.op_type == op)


# --- calibration cost (children) --------------------------------------------------------------
def _resnet50_dynamic(path: str) -> None:
    if not RESNET50.exists():
        models.build(["tv_resnet50"], ["legacy"], models.DEFAULT_OUT)
    m = onnx.load(str(RESNET50))
    for v in (m.graph.input[0], m.graph.output[0]):
        v.type.tensor_type.shape.dim[0].dim_param = "N"
    del m.graph.value_info[:]
    onnx.save(m, path)


def _samples(n: int, batch: int) -> Any:
    for i in range(0, n, batch):
        yield np.random.default_rng(i).normal(0, 1, (min(batch, n - i), 3, 224, 224)).astype(np.float32)


def child(tool: str, path: str, n: int) -> dict[str, Any]:
    start, load = time.perf_counter(), os.getloadavg()[0]
    model = onnx.load(path)
    name = model.graph.input[0].name
    if tool == "optgraph":
        from optgraph import ir
        from optgraph.passes import PassManager, parse_pipeline
        from optgraph.passes.precision import calibration, quantize
        m = ir.from_proto(model)
        PassManager(parse_pipeline("default")).run(m)
        opt = ir.to_proto(m)
        del model
        stats = calibration.collect(opt, lambda: ({name: x} for x in _samples(n, 10)),
                                    names=quantize.calibrated_tensors(m))
        for method in calibration.METHODS:
            calibration.ranges(stats, method)
    elif tool.startswith("onnxruntime"):
        from onnxruntime.quantization import CalibrationMethod, create_calibrator
        del model
        with tempfile.TemporaryDirectory() as d:
            calib = create_calibrator(path, calibrate_method=getattr(CalibrationMethod, tool.split()[1]),
                                      augmented_model_path=os.path.join(d, "aug.onnx"),
                                      extra_options={"symmetric": True})
            calib.collect_data(_Reader(name, np.concatenate(list(_samples(n, 10))), 10))
            calib.compute_data()
    elif tool == "modelopt":
        from modelopt.onnx.quantization import quantize
        del model
        with tempfile.TemporaryDirectory() as d:
            quantize(path, quantize_mode="int8", calibration_data={name: np.concatenate(list(_samples(n, 10)))},
                     calibration_method="max", calibration_eps=["cpu"], high_precision_dtype="fp32",
                     output_path=os.path.join(d, "out.onnx"), log_level="ERROR")
    seconds = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"tool": tool, "samples": n, "seconds": seconds, "per_100": 100 * seconds / n,
            "cpu_per_100": 100 * (usage.ru_utime + usage.ru_stime) / n,
            "peak_rss_mb": common.peak_rss_mb(), "load": load, "load_after": os.getloadavg()[0]}


def calibration_rows(samples: int, peer_samples: int, timeout: float) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "resnet50.onnx")
        _resnet50_dynamic(path)
        jobs = [("optgraph", samples), ("onnxruntime MinMax", peer_samples), ("onnxruntime Entropy", peer_samples),
                ("modelopt", peer_samples)]
        for tool, n in jobs:
            r = common.run_child(__file__, [tool, path, str(n)], timeout)
            r.setdefault("tool", tool)
            r.setdefault("samples", n)
            rows.append(r)
            print(f"calibration {tool}: {r}", file=sys.stderr)
    return rows


# --- report -------------------------------------------------------------------------------------
def _cell(v: Any, fmt: str = "{:.2f}") -> str:
    return "-" if v is None else fmt.format(v)


def markdown(trained: dict[str, list[dict[str, Any]]], calib: list[dict[str, Any]]) -> str:
    lines = ["# Precision beside the peers", "", common.machine_header(PACKAGES).rstrip(), "",
             "Generated by `python benchmarks/precision.py`. Trained models: held-out top-1 accuracy, max",
             "logit error against fp32 on the held-out set, Q/DQ and Cast nodes, onnxruntime CPU latency",
             "(1 thread) relative to fp32, TensorRT-RTX engine layers (standalone `kgen` kernels) and the",
             "share of the engine's tensors in Int8 / Half.", ""]
    for name, rows in trained.items():
        lines += [f"## {name}", "",
                  "| tool | precision | accuracy % | max logit error | Q/DQ | Cast | latency vs fp32 | engine layers (kgen) | Int8 % | Half % |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            if "failure" in r:
                lines.append(f"| {r['tool']} | {r['precision']} | failed: {r['failure']} |  |  |  |  |  |  |  |")
                continue
            eng = (f"{r['layers']} ({r['kgen']})" if "layers" in r else r.get("error_engine", "-"))
            lines.append(f"| {r['tool']} | {r['precision']} | {r['accuracy']:.2f} | {r['error']:.3g} | {r['qdq']} | "
                         f"{r['casts']} | {r['latency']:.2f}x | {eng} | {_cell(r.get('int8'), '{:.0f}')} | "
                         f"{_cell(r.get('half'), '{:.0f}')} |")
        lines.append("")
    lines += ["How the peers ran: onnxruntime quantize_static with QDQ, per_channel, symmetric int8 and",
              "QuantizeBias=False, the training split as one batch (its histogram calibrators stack batches",
              "and fail on a shorter last one); ModelOpt 0.47 ONNX PTQ with calibration_eps=['cpu'] and",
              "high_precision_dtype='fp32' (installed without its [onnx] extra, whose onnxruntime-gpu and",
              "onnx 1.21 pins would replace this environment's packages); onnxconverter-common and AutoCast",
              "with keep_io_types. Latency ratios are medians of --runs runs on a shared machine: read them",
              "as rough.", ""]
    if calib:
        lines += ["## Calibration cost: ResNet-50 (random weights), 224x224 random samples", "",
                  "Wall seconds depend on the machine's load (shown); CPU seconds (all threads of the",
                  "process, from model load to the last range) do much less. Peers ran fewer samples:",
                  "their figures per 100 are scaled.", "",
                  "| tool | samples | seconds | seconds per 100 samples | CPU seconds per 100 samples | peak RSS MB | load average (1 min) before -> after |",
                  "|---|---|---|---|---|---|---|"]
        for r in calib:
            if "error" in r:
                lines.append(f"| {r['tool']} | {r['samples']} | failed: {r['error']} |  |  |  |  |")
                continue
            lines.append(f"| {r['tool']} | {r['samples']} | {r['seconds']:.1f} | {r['per_100']:.1f} | "
                         f"{_cell(r.get('cpu_per_100'), '{:.1f}')} | {r['peak_rss_mb']:.0f} | "
                         f"{r['load']:.1f} -> {r['load_after']:.1f} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        common.emit(child(argv[1], argv[2], int(argv[3])))
        return 0
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="docs/benchmarks/precision.md")
    p.add_argument("--samples", type=int, default=100, help="ResNet-50 samples calibrated by optgraph")
    p.add_argument("--peer-samples", type=int, default=10, help="ResNet-50 samples calibrated by each peer")
    p.add_argument("--runs", type=int, default=20, help="latency runs per model")
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument("--quick", action="store_true", help="the MLP only, optgraph and onnxruntime MinMax, no ResNet-50")
    p.add_argument("--no-tensorrt", action="store_true")
    p.add_argument("--parts", nargs="+", choices=("trained", "calibration"), default=["trained", "calibration"],
                   help="what to measure; the other part is read back from the JSON beside --out")
    args = p.parse_args(argv)
    saved = Path(args.out).with_suffix(".json")
    data = json.loads(saved.read_text()) if saved.exists() else {"trained": {}, "calibration": []}
    if "trained" in args.parts:
        data["trained"] = trained_rows(args.quick, not args.no_tensorrt, args.runs)
    if "calibration" in args.parts and not args.quick and RESNET50.exists():
        data["calibration"] = calibration_rows(args.samples, args.peer_samples, args.timeout)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps(data, indent=1) + "\n")
    Path(args.out).write_text(markdown(data["trained"], data["calibration"]))
    print(f"wrote {args.out} and {saved}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
