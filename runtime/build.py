"""``optgraph build``: optimize, parse with TensorRT's ONNX parser, build a strongly typed engine,
write it, and report what TensorRT made of the model (runtime/engine.py).

``optgraph build A.onnx --compare B.onnx`` builds both and shows the engines side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

import onnx

from optgraph import ir
from optgraph.ir import progress
from optgraph.runtime.static import parse_shape

EXIT_OK, EXIT_MISMATCH, EXIT_BAD_INPUT = 0, 1, 2


class BuildError(ir.OptGraphError):
    """The parser or the builder refused the model (exit 2)."""


def profiles(mins: Sequence[str], opts: Sequence[str], maxs: Sequence[str]) -> list[dict[str, Any]]:
    """Optimization profiles from repeated --min/--opt/--max: the k-th flag for an input belongs to
    profile k; --opt defaults to --max when omitted."""
    per: dict[str, dict[str, list[tuple[int, ...]]]] = {}
    for flag, items in (("min", mins), ("opt", opts), ("max", maxs)):
        for item in items:
            name, shape = parse_shape(item, f"--{flag}")
            per.setdefault(name, {"min": [], "opt": [], "max": []})[flag].append(shape)
    out: list[dict[str, Any]] = []
    for name, given in per.items():
        if len(given["min"]) != len(given["max"]) or (given["opt"] and len(given["opt"]) != len(given["max"])):
            raise BuildError(f"input '{name}' needs as many --min as --max (and --opt, when given)")
        for k, (lo, hi) in enumerate(zip(given["min"], given["max"])):
            opt = given["opt"][k] if given["opt"] else hi
            if not (len(lo) == len(opt) == len(hi)) or not all(a <= b <= c for a, b, c in zip(lo, opt, hi)):
                raise BuildError(f"input '{name}' profile {k + 1}: need min <= opt <= max of one rank")
            while len(out) <= k:
                out.append({})
            out[k][name] = (lo, opt, hi)
    return out


def _prepare(path: str, passes: str | None, folder: str, dims: dict[str, int]) -> tuple[str, onnx.ModelProto]:
    """The model file TensorRT parses (after the pipeline, when one is given) and its graph."""
    from optgraph.passes import PassManager, parse_pipeline
    from optgraph.passes.base import PassContext

    if not os.path.exists(path):
        raise BuildError(f"'{path}' does not exist")
    model = ir.load(path)
    if passes not in (None, "none"):
        with progress.status(f"optimizing {os.path.basename(path)}"):
            PassManager(parse_pipeline(passes), ctx=PassContext(dims=dims)).run(model)
    out = os.path.join(folder, os.path.basename(path))
    ir.save(model, out)
    return out, ir.to_proto(model)


def build_one(path: str, args: argparse.Namespace, folder: str, *, passes: str | None, keep_engine: bool) -> Any:
    """Build ``path``'s engine; the BuildResult with its report accounted against the model."""
    from optgraph.runtime import engine, tensorrt
    from optgraph.runtime.cli import _dims

    dims = _dims(args.dim)
    source, proto = _prepare(path, passes, folder, dims)
    shapes = dict(parse_shape(s, "--shapes") for s in args.shapes)
    try:
        with progress.status(f"building {os.path.basename(path)} with {tensorrt.flavor()}"):
            result = tensorrt.build(source, shapes=shapes, dims=dims, profiles=profiles(args.min, args.opt, args.max),
                                    optimization_level=args.opt_level, timing_cache=args.timing_cache,
                                    aux_streams=args.aux_streams,
                                    workspace_bytes=None if args.workspace is None else args.workspace << 20,
                                    strict_shapes=True, keep_log=False, keep_engine=keep_engine)
    except tensorrt.ShapeError as e:
        raise BuildError(str(e)) from None
    for w in result.warnings:
        print(f"optgraph: warning: {w}", file=sys.stderr)
    if not result.ok:
        raise BuildError("\n".join(f"optgraph: error: {e}" for e in result.errors).removeprefix("optgraph: error: "))
    report = result.report
    report.accounting = engine.account(report, proto)
    report.flags = engine.flags(report, proto)
    return result


def cmd_build(args: argparse.Namespace) -> int:
    from optgraph.ir.serde import write_atomic
    from optgraph.runtime import engine

    if args.compare is None and not args.output and not args.report:
        raise BuildError("build needs -o ENGINE, --report FILE or --compare B.onnx")
    if args.output:
        folder = os.path.dirname(os.path.abspath(args.output))
        if not os.path.isdir(folder):
            raise BuildError(f"the output folder '{folder}' does not exist")
    with tempfile.TemporaryDirectory(prefix="optgraph-build-") as tmp:
        if args.compare is not None:
            passes = args.passes or "none"  # the two models as given, unless a pipeline is asked for
            os.mkdir(os.path.join(tmp, "a"))
            os.mkdir(os.path.join(tmp, "b"))
            a = build_one(args.model, args, os.path.join(tmp, "a"), passes=passes, keep_engine=False).report
            b = build_one(args.compare, args, os.path.join(tmp, "b"), passes=passes, keep_engine=False).report
            diff = engine.compare(a, b)
            if args.report:
                write_atomic(args.report, (json.dumps(diff, indent=2) + "\n").encode())
            if not args.quiet:
                print(format_comparison(args.model, args.compare, diff))
            return EXIT_OK
        result = build_one(args.model, args, tmp, passes=args.passes or "default", keep_engine=bool(args.output))
    report = result.report
    status = EXIT_OK
    if args.check and report.accounting is not None and report.accounting.unaccounted:
        un = report.accounting.unaccounted
        print(f"optgraph: mismatch: {len(un)} ONNX nodes map to no engine layer (e.g. '{un[0]}'); "
              "engine not written", file=sys.stderr)
        return EXIT_MISMATCH
    if args.output:
        write_atomic(args.output, result.engine)
    if args.report:
        data = {"input": args.model, "engine": args.output, "pipeline": args.passes or "default",
                "aux_streams": args.aux_streams, **report.to_json()}
        write_atomic(args.report, (json.dumps(data, indent=2) + "\n").encode())
    if not args.quiet:
        size = f"{result.engine_bytes / 2**20:.1f} MiB"
        print(f"{args.model} -> {args.output or '(engine not kept)'} ({size}, "
              f"built in {result.seconds:.1f} s, {report.flavor})")
        print(report.summary())
    return status


def format_comparison(a_path: str, b_path: str, diff: dict[str, Any]) -> str:
    a_name, b_name = os.path.basename(a_path), os.path.basename(b_path)
    if a_name == b_name:
        a_name, b_name = a_path, b_path
    rows = [("layers", "layers"), ("standalone kernels", "standalone_kernels"), ("reformats", "reformats"),
            ("activation MiB", "activation_bytes"), ("weights MiB", "weights_bytes")]
    def cell(v: Any, key: str) -> str:
        if v is None:
            return "?"
        return f"{v / 2**20:.2f}" if key.endswith("_bytes") else str(v)
    width = max(len(a_name), len(b_name), 10)
    lines = [f"{'':20} {a_name:>{width}} {b_name:>{width}}"]
    for label, key in rows:
        lines.append(f"{label:20} {cell(diff['a'][key], key):>{width}} {cell(diff['b'][key], key):>{width}}")
    prec = lambda p: ", ".join(f"{k} {v}" for k, v in p.items()) or "-"  # noqa: E731
    lines.append(f"{'precision':20} {prec(diff['a']['precision']):>{width}} {prec(diff['b']['precision']):>{width}}")
    for key, label in (("fused_differently", "fused differently"), ("only_in_a", f"only in {a_name}"),
                       ("only_in_b", f"only in {b_name}")):
        names = diff[key]
        if names:
            more = f" (+{len(names) - 8} more)" if len(names) > 8 else ""
            lines.append(f"{label}: {', '.join(names[:8])}{more}")
    return "\n".join(lines)


def add_command(sub: Any) -> None:
    p = sub.add_parser("build", help="build a TensorRT engine (strongly typed) and report its layers")
    p.add_argument("model", help="the ONNX model")
    p.add_argument("-o", "--output", help="where to write the serialized engine")
    p.add_argument("--passes", help="pipeline to run first (default: default; 'none' for none)")
    p.add_argument("--shapes", action="append", default=[], metavar="NAME:DIMS",
                   help="static shape of an input, e.g. image:1x3x224x224 (repeatable)")
    for flag in ("min", "opt", "max"):
        p.add_argument(f"--{flag}", action="append", default=[], metavar="NAME:DIMS",
                       help=f"{flag} shape of a dynamic input; repeat for more profiles")
    p.add_argument("--dim", action="append", default=[], metavar="NAME=SIZE", help="size of a symbolic dimension")
    p.add_argument("--timing-cache", metavar="FILE", help="load (if present) and save TensorRT's timing cache")
    p.add_argument("--opt-level", type=int, choices=range(0, 6), metavar="0-5", help="builder optimization level")
    p.add_argument("--aux-streams", type=int, choices=range(0, 64), metavar="N",
                   help="most auxiliary streams for parallel branches (default: TensorRT's choice); 0 runs one "
                        "stream, the least activation memory")
    p.add_argument("--workspace", type=int, metavar="MiB", help="workspace memory pool limit")
    p.add_argument("--report", metavar="FILE", help="write the engine report as JSON")
    p.add_argument("--compare", metavar="B.onnx", help="build this model too and compare the two engines")
    p.add_argument("--check", action="store_true",
                   help="exit 1 (no engine written) unless every ONNX node maps to an engine layer or is folded")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    p.set_defaults(func=cmd_build)
