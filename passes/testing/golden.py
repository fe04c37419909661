"""Golden structural tests: run a pipeline on a model written in ONNX text syntax and compare the
result with an expected model, also in text.

Comparison is by structure, not by spelling: intermediate values and initializers are renamed in
order of appearance, so an expected graph need not guess the fresh names a pass generated. Graph
input and output names are compared as written (they are pinned). Constants are compared by
value (printed to 6 significant digits), and so are Constant nodes' tensors.

    assert_rewrites_to("remove-dead", '''
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2] x) => (float[2] y) { a = Relu(x)  dead = Sigmoid(a)  y = Abs(a) }
    ''', '''
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2] x) => (float[2] y) { a = Relu(x)  y = Abs(a) }
    ''')
"""

from __future__ import annotations

import difflib

import numpy as np
import onnx
from onnx import numpy_helper, parser

from optgraph import ir
from optgraph.passes.manager import Report, run_passes


def rewrite_text(spec: str, text: str) -> tuple[onnx.ModelProto, Report]:
    """Parse ``text``, run ``spec`` with the verifier on, return the result and the report."""
    model = ir.from_proto(parser.parse_model(text))
    report = run_passes(model, spec, verify_each=True)
    return ir.to_proto(model), report


def assert_rewrites_to(spec: str, before: str, after: str) -> Report:
    """Assert that ``spec`` turns the model ``before`` into one structurally equal to ``after``."""
    actual, report = rewrite_text(spec, before)
    assert_same_structure(actual, parser.parse_model(after))
    return report


def assert_same_structure(actual: onnx.ModelProto, expected: onnx.ModelProto) -> None:
    a, e = canonical_text(actual), canonical_text(expected)
    if a != e:
        diff = "\n".join(difflib.unified_diff(e.splitlines(), a.splitlines(), "expected", "actual", lineterm=""))
        raise AssertionError(f"graphs differ:\n{diff}")


def canonical_text(model: onnx.ModelProto) -> str:
    """A name-independent rendering of the main graph (and the model's functions, by name)."""
    lines = _graph_lines(model.graph)
    for fn in sorted(model.functions, key=lambda f: (f.domain, f.name)):
        lines.append(f"function {fn.domain}.{fn.name}({', '.join(fn.input)}) -> ({', '.join(fn.output)})")
        lines.extend("  " + line for line in _node_lines(fn.node, {n: n for n in [*fn.input, *fn.output]}))
    return "\n".join(lines)


def _graph_lines(g: onnx.GraphProto) -> list[str]:
    names: dict[str, str] = {v.name: v.name for v in [*g.input, *g.output]}
    inits = {t.name: t for t in g.initializer}
    lines = [f"inputs: {', '.join(_vi(v) for v in g.input)}", f"outputs: {', '.join(_vi(v) for v in g.output)}"]
    body = _node_lines(g.node, names, inits)
    used = [n for n in names if n in inits and names[n] != n]
    for n in sorted(used, key=lambda k: names[k]):
        lines.append(f"{names[n]} = {_tensor(inits[n])}")
    return lines + body


def _node_lines(nodes: object, names: dict[str, str], inits: dict[str, onnx.TensorProto] | None = None) -> list[str]:
    inits = inits or {}
    counter = {"t": 0, "c": 0}

    def name_of(n: str, kind: str) -> str:
        if not n:
            return ""
        if n not in names:
            names[n] = f"{kind}{counter[kind]}"
            counter[kind] += 1
        return names[n]

    lines = []
    for node in nodes:  # type: ignore[attr-defined]
        ins = [name_of(i, "c" if i in inits else "t") for i in node.input]
        outs = [name_of(o, "t") for o in node.output]
        attrs = ", ".join(f"{a.name}={_attr(a)}" for a in sorted(node.attribute, key=lambda a: a.name))
        op = f"{node.domain}.{node.op_type}" if node.domain else node.op_type
        lines.append(f"{', '.join(outs)} = {op}<{attrs}>({', '.join(ins)})")
    return lines


def _vi(v: onnx.ValueInfoProto) -> str:
    t = v.type.tensor_type
    dims = ",".join(d.dim_param or str(d.dim_value) for d in t.shape.dim) if t.HasField("shape") else "?"
    return f"{v.name}:{onnx.TensorProto.DataType.Name(t.elem_type)}[{dims}]"


def _tensor(t: onnx.TensorProto) -> str:
    arr = numpy_helper.to_array(t)
    flat = np.array2string(arr.ravel(), precision=6, separator=",", threshold=64) if arr.size else "[]"
    return f"{onnx.TensorProto.DataType.Name(t.data_type)}{list(arr.shape)} {flat}"


def _attr(a: onnx.AttributeProto) -> str:
    if a.type == onnx.AttributeProto.TENSOR:
        return _tensor(a.t)
    if a.type == onnx.AttributeProto.GRAPH:
        return "{" + "; ".join(_graph_lines(a.g)) + "}"
    value = onnx.helper.get_attribute_value(a)
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list) and value and isinstance(value[0], float):
        return "[" + ",".join(f"{x:.6g}" for x in value) + "]"
    return repr(value)
