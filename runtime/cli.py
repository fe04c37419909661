"""The ``optgraph`` command line.

Exit codes: 0 success, 1 the equivalence check found a mismatch, 2 bad usage or bad input,
3 an internal error (a bug: rerun with --debug and report the traceback). Errors are one line on
stderr; the input file is never written; an output file appears complete or not at all.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections.abc import Sequence
from typing import Any, NoReturn

from optgraph import ir

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

    if args.passes is not None and not args.passes.strip():
        raise UsageError("--passes is empty: name passes or groups, or 'none' for a round trip")
    steps = parse_pipeline("default" if args.passes is None else args.passes)
    to_stdout = args.output == "-"
    if not to_stdout:
        _check_output_path(args.model, args.output)
    if to_stdout and args.external_data == "always":
        raise UsageError("-o - writes the model to stdout, which cannot hold external data")
    model = _load(args.model)
    after_each = _first_mismatch_guard(args.model, args) if args.check_each else None
    ctx = PassContext(dims=_dims(args.dim))
    report = PassManager(steps, verify_each=args.verify_each, after_each=after_each, ctx=ctx).run(model)
    check = None
    if args.check:
        from optgraph.passes.testing.oracle import compare

        check = compare(_reference(args.model), ir.to_proto(model), n_inputs=args.inputs, seed=args.seed,
                        dims=ctx.dims, rtol=args.rtol, atol=args.atol)
        if not check.equivalent:
            print(f"optgraph: mismatch: {check.message}; output not written", file=sys.stderr)
            return EXIT_MISMATCH
    external = {"auto": None, "always": True, "never": False}[args.external_data]
    if to_stdout:
        _save_to_stdout(model)
    else:
        ir.save(model, args.output, external_data=external)
    data = report.to_dict()
    data.update(input=args.model, output=args.output, pipeline=args.passes or "default")
    if check is not None:
        data["check"] = {"equivalent": True, "message": check.message}
    if args.report == "-":
        json.dump(data, sys.stdout, indent=2, default=str)
        print()
    else:
        if args.report:
            _write_json(args.report, data)
        if not args.quiet:
            print(format_report(data), file=sys.stderr if to_stdout else sys.stdout)
    return EXIT_OK


def _save_to_stdout(model: ir.Model) -> None:
    """The ONNX bytes on stdout (``-o -``), for pipes; the report then goes to stderr."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="optgraph-") as tmp:
        path = os.path.join(tmp, "model.onnx")
        ir.save(model, path, external_data=False)
        with open(path, "rb") as f:
            sys.stdout.buffer.write(f.read())
        sys.stdout.buffer.flush()


def _reference(path: str) -> Any:
    """A model file as one ModelProto with its external data embedded, for the oracle.

    It goes through ir.load first so external data is checked for safety like everywhere else;
    ir.to_proto embeds external tensors.
    """
    return ir.to_proto(_load(path))


def _first_mismatch_guard(path: str, args: argparse.Namespace) -> Any:
    """An after-each-pass hook that stops at the first pass whose output differs (bisecting)."""
    from optgraph.passes.testing.oracle import compare

    reference = _reference(path)

    def check(model: ir.Model, record: Any) -> None:
        if not record.changed:
            return
        result = compare(reference, ir.to_proto(model), n_inputs=args.inputs, seed=args.seed, dims=_dims(args.dim))
        if not result.equivalent:
            raise _Mismatch(f"pass '{record.name}' changed the results: {result.message}")

    return check


class _Mismatch(Exception):
    pass


def _write_json(path: str, data: dict[str, Any]) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, default=str)
        f.write("\n")
    os.replace(tmp, path)


def format_report(data: dict[str, Any]) -> str:
    """A short human summary of a pipeline report."""
    lines = [f"{data['input']} -> {data['output']}  (passes: {data['pipeline']})",
             f"nodes: {data['nodes_before']} -> {data['nodes_after']}   time: {data['seconds']:.3f} s"]
    for rec in data["passes"]:
        if rec["changed"] or rec["stats"]:
            where = f" [{rec['group']} #{rec['iteration']}]" if rec["group"] else ""
            if rec.get("required_by"):
                where += f" (required by {rec['required_by']})"
            stats = ", ".join(f"{k}={v}" for k, v in rec["stats"].items())
            lines.append(f"  {rec['name']}{where}: {rec['nodes_before']} -> {rec['nodes_after']} nodes"
                         f" in {rec['seconds'] * 1000:.1f} ms  {stats}")
    for group, ok in data["converged"].items():
        if not ok:
            lines.append(f"  warning: '{group}' did not converge in {data['iterations'][group]} iterations")
    if "check" in data:
        lines.append(f"  check: equivalent on onnxruntime ({data['check']['message']})")
    changed = {op: (data["ops_before"].get(op, 0), data["ops_after"].get(op, 0))
               for op in sorted({*data["ops_before"], *data["ops_after"]})}
    diffs = [f"{op} {a}->{b}" for op, (a, b) in changed.items() if a != b]
    if diffs:
        lines.append("  ops: " + ", ".join(diffs))
    return "\n".join(lines)


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

    result = compare(_reference(args.original), _reference(args.rewritten), n_inputs=args.inputs, seed=args.seed, dims=_dims(args.dim),
                     rtol=args.rtol, atol=args.atol)
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
    from optgraph.passes.liveness import TensorInfos
    from optgraph.passes.memory_plan import check_plan, format_plan, plan_memory, plot_plan

    steps = parse_pipeline(args.passes)
    for out in filter(None, (args.json, args.plot)):
        _check_output_path(args.model, out)
    model = _load(args.model)
    ctx = PassContext(dims=_dims(args.dim))
    PassManager(steps, ctx=ctx).run(model)  # the model as it would be saved, planned in memory
    plan = plan_memory(model, ctx.get(TensorInfos), strategy=args.strategy, order=args.order, alignment=args.alignment,
                       inplace=not args.no_inplace, concat=not args.no_concat, split=not args.no_split, dims=ctx.dims)
    print(format_plan(plan))
    if args.json:
        _write_json(args.json, plan.to_json())
    if args.plot:
        plot_plan(plan, args.plot)
    if args.check:
        from optgraph.runtime.executor import check_by_execution

        problems = check_plan(model, plan)
        result = None if problems else check_by_execution(model, plan, n_inputs=args.inputs, seed=args.seed)
        if result is None or not result:
            print(f"mismatch: {problems[0] if problems else result.message}")  # type: ignore[union-attr]
            return EXIT_MISMATCH
        print(f"checked: {result.message}")
    return EXIT_OK


# ------------------------------------------------------------------------------------------------
# parser and entry point


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="optgraph", description="Graph optimization passes for ONNX models.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.add_argument("--version", action="version", version=f"optgraph {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def oracle_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--inputs", type=_positive, default=3, help="random input sets for the oracle (default 3)")
        p.add_argument("--seed", type=int, default=0, help="seed of the first input set")
        p.add_argument("--dim", action="append", default=[], metavar="NAME=SIZE",
                       help="size of a symbolic dimension (repeatable)")

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
    plan.add_argument("--strategy", choices=["greedy-size", "greedy-breadth"], default="greedy-breadth")
    plan.add_argument("--order", choices=["file", "memory"], default="file",
                      help="memory: a schedule with a lower peak when there is one")
    plan.add_argument("--alignment", type=int, default=256, help="byte alignment of each buffer (default 256)")
    plan.add_argument("--no-inplace", action="store_true", help="no in-place aliases")
    plan.add_argument("--no-concat", action="store_true", help="no concat aliases")
    plan.add_argument("--no-split", action="store_true", help="no split aliases")
    plan.add_argument("--passes", default="none", help="run this pipeline first (e.g. fuse); default: none")
    plan.add_argument("--check", action="store_true",
                      help="run the model in the planned arena, compare with onnxruntime; exit 1 on mismatch")
    oracle_options(plan)
    plan.set_defaults(func=cmd_plan)

    from optgraph.runtime import build, quantize

    build.add_command(sub)
    quantize.add_command(sub)
    return parser


def _one_line_warnings(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                       file: Any = None, line: str | None = None) -> None:
    print(f"optgraph: warning: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv  # accepted anywhere on the line, not only before the command
    argv = [a for a in argv if a != "--debug"]
    if not debug:
        warnings.showwarning = _one_line_warnings
    try:
        args = build_parser().parse_args(argv)
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
