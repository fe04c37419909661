"""The ``optgraph`` command line.

Exit codes: 0 success, 1 the equivalence check found a mismatch, 2 bad usage or bad input,
3 an internal error (a bug: rerun with --debug and report the traceback). Errors are one line on
stderr; the input file is never written; an output file appears complete or not at all.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
import warnings
from collections.abc import Sequence
from typing import Any, NoReturn

from optgraph import ir
from optgraph.ir import progress

EXIT_OK, EXIT_MISMATCH, EXIT_BAD_INPUT, EXIT_INTERNAL = 0, 1, 2, 3


class UsageError(ir.OptGraphError):
    """Bad command-line usage (exit 2)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, not argparse's usage dump
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("optgraph")
    except PackageNotFoundError:
        return "unknown"


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a count of at least 1, got '{text}'")
    return n


def _dims(items: Sequence[str]) -> dict[str, int]:
    dims = {}
    for item in items:
        name, sep, val = item.partition("=")
        if not sep or not name or not val.isdigit():
            raise UsageError(f"--dim expects NAME=SIZE, got '{item}'")
        dims[name] = int(val)
    return dims


def _load(path: str) -> ir.Model:
    if not os.path.exists(path):
        raise UsageError(f"'{path}' does not exist")
    return ir.load(path)


def _check_output_path(inp: str, out: str) -> None:
    if os.path.exists(out) and os.path.samefile(inp, out):
        raise UsageError("the output path is the input file; optgraph never overwrites its input")
    folder = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(folder):
        raise UsageError(f"the output folder '{folder}' does not exist")


# ------------------------------------------------------------------------------------------------
# commands


def cmd_run(args: argparse.Namespace) -> int:
    from optgraph.passes import PassManager, parse_pipeline
    from optgraph.passes.base import PassContext
    from optgraph.runtime import static, summary

    start = time.perf_counter()

    if args.passes is not None and not args.passes.strip():
        raise UsageError("--passes is empty: name passes or groups, or 'none' for a round trip")
    steps = parse_pipeline("default" if args.passes is None else args.passes)
    to_stdout = args.output == "-"
    if not to_stdout:
        _check_output_path(args.model, args.output)
    if to_stdout and args.external_data == "always":
        raise UsageError("-o - writes the model to stdout, which cannot hold external data")
    model = _load(args.model)
    before = summary.counts(model)
    size_before = summary.disk_size(args.model, any(v.const.is_external for v in model.graph.initializers.values()
                                                    if v.const is not None))
    dims, shapes = _dims(args.dim), dict(static.parse_shape(s) for s in args.shape)
    if shapes or args.static:
        dims = static.make_static(model, shapes, dims, require_static=args.static)
    after_each = _first_mismatch_guard(args.model, args, dims, shapes) if args.check_each else None
    ctx = PassContext(dims=dims)
    manager = PassManager(steps, verify_each=args.verify_each, after_each=after_each, ctx=ctx)
    try:
        with progress.status("running passes"):
            report = manager.run(model)
    except Exception as e:
        if args.reproducer and manager.failed is not None:
            from optgraph.runtime import reproducer

            reproducer.save(args.reproducer, args.model, args.passes or "default", manager.failed, e)
            print(f"optgraph: reproducer saved in {args.reproducer}", file=sys.stderr)
        raise
    if shapes or args.static:
        static.fix_outputs(model)
    check = None
    if args.check:
        from optgraph.passes.testing.oracle import compare

        reference = _reference(args.model)
        check = compare(reference, ir.to_proto(model), n_inputs=args.inputs or 3, seed=args.seed, dims=dims,
                        shapes=shapes, rtol=args.rtol, atol=args.atol, feeds=_data(args, reference, shapes))
        if not check.equivalent:
            print(f"optgraph: mismatch: {check.message}; output not written", file=sys.stderr)
            return EXIT_MISMATCH
    external = {"auto": None, "always": True, "never": False}[args.external_data]
    if to_stdout:
        size_after = _save_to_stdout(model)
    else:
        ir.save(model, args.output, external_data=external)
        size_after = summary.disk_size(args.output, os.path.exists(args.output + ".data"))
    data = report.to_dict()
    data.update(input=args.model, output=args.output, pipeline=args.passes or "default",
                before=before.to_dict(), after=summary.counts(model).to_dict(), size_before=size_before,
                size_after=size_after, wall_seconds=time.perf_counter() - start)
    if check is not None:
        data["check"] = {"equivalent": True, "message": check.message}
    if args.report == "-":
        json.dump(data, sys.stdout, indent=2, default=str)
        print()
    else:
        if args.report:
            _write_json(args.report, data)
        if not args.quiet:
            summary.format_report(data, sys.stderr if to_stdout else sys.stdout)
    return EXIT_OK


def _save_to_stdout(model: ir.Model) -> int:
    """The ONNX bytes on stdout (``-o -``), for pipes; the report then goes to stderr."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="optgraph-") as tmp:
        path = os.path.join(tmp, "model.onnx")
        ir.save(model, path, external_data=False)
        with open(path, "rb") as f:
            data = f.read()
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return len(data)


def _reference(path: str) -> Any:
    """A model file as one ModelProto with its external data embedded, for the oracle.

    It goes through ir.load first so external data is checked for safety like everywhere else;
    ir.to_proto embeds external tensors.
    """
    return ir.to_proto(_load(path))


def _first_mismatch_guard(path: str, args: argparse.Namespace, dims: dict[str, int],
                          shapes: dict[str, tuple[int, ...]]) -> Any:
    """An after-each-pass hook that stops at the first pass whose output differs (bisecting)."""
    from optgraph.passes.testing.oracle import compare

    reference = _reference(path)
    feeds = _data(args, reference, shapes)
    checked = []  # the reference's determinism is checked on the first comparison only

    def check(model: ir.Model, record: Any) -> None:
        if not record.changed:
            return
        result = compare(reference, ir.to_proto(model), n_inputs=args.inputs or 3, seed=args.seed,
                         dims=dims, shapes=shapes, rtol=args.rtol, atol=args.atol, feeds=feeds,
                         check_reference=not checked)
        checked.append(True)
        if not result.equivalent:
            raise _Mismatch(f"pass '{record.name}' changed the results: {result.message}")

    return check


def _data(args: argparse.Namespace, reference: Any, shapes: dict[str, tuple[int, ...]] | None = None
          ) -> list[dict[str, Any]] | None:
    """The batches of ``--data`` (calibration's formats) for the oracle, at most ``--inputs`` of
    them when given; None for random inputs. A .npz is cut along its first axis into batches of
    the model's static batch size (as ``--shape`` fixes it; 16 when the batch is symbolic)."""
    if not args.data:
        return None
    from itertools import islice

    from optgraph.passes.precision import calibration

    inits = {t.name for t in reference.graph.initializer}
    inputs = [vi for vi in reference.graph.input if vi.name not in inits]
    first = [d.dim_value for d in inputs[0].type.tensor_type.shape.dim] if inputs else []
    if inputs and shapes and inputs[0].name in shapes:
        first = list(shapes[inputs[0].name])
    batch = first[0] if first and first[0] > 0 else 16
    feeds = list(islice(calibration.source(args.data, [vi.name for vi in inputs], batch=batch)(), args.inputs))
    if not feeds:
        raise UsageError(f"--data {args.data} holds no samples")
    return feeds


class _Mismatch(Exception):
    pass


def _write_json(path: str, data: dict[str, Any]) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, default=str)
        f.write("\n")
    os.replace(tmp, path)


def cmd_list(args: argparse.Namespace) -> int:
    from optgraph import passes

    print("passes:")
    for name, cls in passes.passes().items():
        print(f"  {name:24} {cls.kind:9} {cls.description}")
    print("groups:")
    for name, group in passes.groups().items():
        loop = " (fixed point)" if group.fixed_point else ""
        print(f"  {name:24} {group.description}{loop}: {', '.join(group.members) or '(empty)'}")
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    from optgraph.passes.testing.oracle import compare

    reference = _reference(args.original)
    result = compare(reference, _reference(args.rewritten), n_inputs=args.inputs or 3, seed=args.seed,
                     dims=_dims(args.dim), rtol=args.rtol, atol=args.atol, feeds=_data(args, reference))
    if result.equivalent:
        print(f"equivalent: {result.message}")
        return EXIT_OK
    print(f"mismatch: {result.message}")
    return EXIT_MISMATCH


def cmd_info(args: argparse.Namespace) -> int:
    from optgraph.passes.manager import op_histogram

    model = _load(args.model)
    g = model.graph

    def describe(v: ir.Value) -> dict[str, Any]:
        import onnx

        dtype = onnx.TensorProto.DataType.Name(v.dtype) if v.dtype else "?"
        shape = "?" if v.shape is None else [d if d is not None else "?" for d in v.shape]
        return {"name": v.name, "dtype": dtype, "shape": shape}

    tensors = list(g.initializers.values())
    info = {
        "ir_version": model.ir_version,
        "opsets": model.opset_imports,
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "inputs": [describe(v) for v in g.inputs if v.const is None],
        "outputs": [describe(v) for v in g.outputs],
        "nodes": len(g),
        "nodes_total": sum(len(x) for x in model.all_graphs()),
        "initializers": len(tensors),
        "initializer_bytes": sum(v.const.nbytes for v in tensors if v.const is not None),
        "functions": [f"{f.domain}:{f.name}" for f in model.functions.values()],
        "ops": op_histogram(model),
        "metadata": model.metadata_props,
    }
    if args.json:
        print(json.dumps(info, indent=2))
        return EXIT_OK
    print(f"ir_version {info['ir_version']}, opsets {info['opsets']}, producer '{info['producer']}'")
    for kind in ("inputs", "outputs"):
        print(f"{kind}:")
        for d in info[kind]:
            print(f"  {d['name']}: {d['dtype']} {d['shape']}")
    print(f"nodes: {info['nodes']} (with subgraphs and functions: {info['nodes_total']}); "
          f"initializers: {info['initializers']} ({info['initializer_bytes']} bytes)")
    if info["functions"]:
        print("functions: " + ", ".join(info["functions"]))
    print("ops:")
    for op, n in sorted(info["ops"].items(), key=lambda kv: (-kv[1], kv[0])):
        print(f"  {op:28} {n}")
    return EXIT_OK


def cmd_plan(args: argparse.Namespace) -> int:
    from optgraph.passes import PassManager, parse_pipeline
    from optgraph.passes.base import PassContext
    from optgraph.passes.memory import PlanOptions, check_plan, format_plan, plan_memory, plot_plan
    from optgraph.passes.memory.liveness import plannable_infos

    steps = parse_pipeline(args.passes)
    for out in filter(None, (args.json, args.plot)):
        _check_output_path(args.model, out)
    model = _load(args.model)
    ctx = PassContext(dims=_dims(args.dim))
    with progress.status("running passes") as update:
        PassManager(steps, ctx=ctx).run(model)  # the model as it would be saved, planned in memory
        update("planning memory")
        nodes = len(model.graph)
        infos = plannable_infos(model, ctx)
        if len(model.graph) != nodes:
            print(f"optgraph: note: sizes depend on shape computations; planned with them folded "
                  f"({nodes} -> {len(model.graph)} nodes)", file=sys.stderr)
        options = PlanOptions(**{f.name: getattr(args, f.name) for f in dataclasses.fields(PlanOptions)})
        plan = plan_memory(model, infos, options, dims=ctx.dims)
    print(format_plan(plan))
    if args.json:
        _write_json(args.json, plan.to_json())
    if args.plot:
        plot_plan(plan, args.plot)
    if args.check:
        from optgraph.runtime.executor import check_by_execution

        problems = check_plan(model, plan)
        result = None if problems else check_by_execution(model, plan, n_inputs=args.inputs or 3, seed=args.seed)
        if result is None or not result:
            print(f"mismatch: {problems[0] if problems else result.message}")  # type: ignore[union-attr]
            return EXIT_MISMATCH
        print(f"checked: {result.message}")
    return EXIT_OK


# ------------------------------------------------------------------------------------------------
# parser and entry point


def _option_arguments(p: argparse.ArgumentParser, options: type) -> None:
    """Arguments generated from an options dataclass: ``--name VALUE`` (choices and help from the
    field's metadata), ``--no-name`` for a flag that is on by default."""
    for f in dataclasses.fields(options):
        flag, help_ = f.name.replace("_", "-"), f.metadata.get("help")
        if isinstance(f.default, bool):
            p.add_argument(f"--no-{flag}" if f.default else f"--{flag}", dest=f.name, default=f.default,
                           action="store_false" if f.default else "store_true",
                           help=f"no {help_}" if f.default and help_ else help_)
        else:
            p.add_argument(f"--{flag}", type=type(f.default), default=f.default, choices=f.metadata.get("choices"),
                           help=help_)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="optgraph", description="Graph optimization passes for ONNX models.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.add_argument("--version", action="version", version=f"optgraph {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def oracle_options(p: argparse.ArgumentParser, data: bool = True) -> None:
        p.add_argument("--inputs", type=_positive, help="random input sets for the oracle (default 3); "
                       "with --data, the most batches of it to use (default all)")
        p.add_argument("--seed", type=int, default=0, help="seed of the first input set")
        p.add_argument("--dim", action="append", default=[], metavar="NAME=SIZE",
                       help="size of a symbolic dimension (repeatable)")
        if data:
            p.add_argument("--data", metavar="DATA", help="compare on real inputs instead of random ones: "
                           ".npz (arrays by input name, samples on the first axis), a folder of .npy/.npz "
                           "or images, or module:function (as quantize --calib)")

    def tolerances(p: argparse.ArgumentParser) -> None:
        p.add_argument("--rtol", type=float, default=1e-4, help="relative tolerance (default 1e-4)")
        p.add_argument("--atol", type=float, default=1e-5,
                       help="absolute tolerance, scaled by the output's largest magnitude (default 1e-5)")

    run = sub.add_parser("run", help="optimize a model")
    run.add_argument("model", help="the ONNX model to optimize (never modified)")
    run.add_argument("-o", "--output", required=True, help="where to write the result ('-' = stdout)")
    run.add_argument("--passes", help="comma list of passes/groups ('none' = round trip); default: default")
    run.add_argument("--report", help="write the JSON report to this file ('-' = stdout)")
    run.add_argument("--verify-each", action="store_true", help="run the IR verifier after each pass")
    run.add_argument("--check", action="store_true",
                     help="compare the result with the input on onnxruntime; exit 1 on mismatch")
    run.add_argument("--check-each", action="store_true",
                     help="run the comparison after every pass and name the first pass that changed results")
    run.add_argument("--external-data", choices=["auto", "always", "never"], default="auto",
                     help="write tensors to OUTPUT.data (auto: when the input had external data or is > 2 GB)")
    run.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    run.add_argument("--shape", action="append", default=[], metavar="NAME:DIMS",
                     help="fix an input's size, e.g. input:1x3x224x224 (repeatable); what becomes constant "
                          "is folded by the pipeline")
    run.add_argument("--static", action="store_true",
                     help="write the sizes of --dim and --shape into the model; every input must end up static")
    run.add_argument("--reproducer", metavar="DIR",
                     help="when a pass fails, save the input model and the pipeline to DIR to rerun it")
    oracle_options(run)
    tolerances(run)
    run.set_defaults(func=cmd_run)

    lst = sub.add_parser("list", help="list passes and groups")
    lst.set_defaults(func=cmd_list)

    ver = sub.add_parser("verify", help="check two models compute the same outputs (onnxruntime)")
    ver.add_argument("original", help="the reference model")
    ver.add_argument("rewritten", help="the model to check against it")
    tolerances(ver)
    oracle_options(ver)
    ver.set_defaults(func=cmd_verify)

    info = sub.add_parser("info", help="print opsets, inputs/outputs and an op histogram")
    info.add_argument("model", help="the ONNX model")
    info.add_argument("--json", action="store_true")
    info.set_defaults(func=cmd_info)

    plan = sub.add_parser("plan", help="plan activation memory: arena offsets, aliases, lower bounds")
    plan.add_argument("model", help="the ONNX model")
    plan.add_argument("--json", metavar="OUT", help="write the plan as JSON (schema: docs/memory-planning.md)")
    plan.add_argument("--plot", metavar="OUT.png", help="draw the memory timeline (matplotlib)")
    from optgraph.passes.memory.options import PlanOptions

    _option_arguments(plan, PlanOptions)
    plan.add_argument("--passes", default="none", help="run this pipeline first (e.g. fuse); default: none")
    plan.add_argument("--check", action="store_true",
                      help="run the model in the planned arena, compare with onnxruntime; exit 1 on mismatch")
    oracle_options(plan, data=False)
    plan.set_defaults(func=cmd_plan)

    from optgraph.runtime import build, quantize, tune

    build.add_command(sub)
    quantize.add_command(sub)
    tune.add_command(sub)
    return parser


def _one_line_warnings(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                       file: Any = None, line: str | None = None) -> None:
    print(f"optgraph: warning: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv == ["--version"]:  # answered before the parser imports the commands (and onnx)
        print(f"optgraph {_version()}")
        return EXIT_OK
    debug = "--debug" in argv  # accepted anywhere on the line, not only before the command
    argv = [a for a in argv if a != "--debug"]
    if not debug:
        warnings.showwarning = _one_line_warnings
    try:
        args = build_parser().parse_args(argv)
        progress.set_quiet(getattr(args, "quiet", False))
        return int(args.func(args))
    except _Mismatch as e:
        print(f"optgraph: mismatch: {e}; output not written", file=sys.stderr)
        return EXIT_MISMATCH
    except ir.OptGraphError as e:
        if debug:
            raise
        print(f"optgraph: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except BrokenPipeError:  # the reader went away (optgraph list | head -1): stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    except KeyboardInterrupt:
        print("optgraph: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug: one line unless --debug
        if debug:
            raise
        print(f"optgraph: internal error: {type(e).__name__}: {e} (rerun with --debug for the traceback)",
              file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
