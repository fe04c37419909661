"""Shape inference as an analysis the passes share: onnx's inference merged into what the IR knows.

``ctx.get(ShapeInference)`` runs ``onnx.shape_inference`` (strict off, data propagation on) over
the serialized model once and writes what it learns into ``Value.dtype``/``Value.shape``; the
result stays cached until a pass that changed the graph does not list ShapeInference in
``preserves``. The annotation lives in the IR, where every pass reads it; the cached ShapeInfo
only records that it is current. Dropping it from the cache cannot undo the annotation and need
not: merging only adds facts, so the next ask fills in what the rewrites since then made.

Merging never loses information: a known dimension (a number or a dim_param) is never replaced,
only unknown ones are filled in. Symbols onnx invents for dimensions it cannot name ("unk__3")
are not kept: they are only meaningful within one inference run, and a later run reuses the same
names for different dimensions, which would make unrelated values look equal in size. Graph
inputs and outputs are the model's interface and keep their declared types.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import onnx

from optgraph import ir
from optgraph.ir.core import Shape
from optgraph.ir.order import outer_inputs
from optgraph.ir.serde import function_proto, node_proto
from optgraph.passes.base import Analysis, Pass, PassContext, PassResult
from optgraph.passes.registry import register

PARTIAL_FRACTION = 4
"""Re-infer only the producers of the values missing a type when they are fewer than a quarter of
the nodes; otherwise infer the whole model."""

SMALL_CONSTANT = 1024
"""Initializers up to this many elements are sent to inference with their data (data propagation
reads shape tensors); larger ones only by type, so a model of any size infers without copying
its weights."""


@dataclass
class ShapeInfo:
    """The outcome of one inference run: how many values gained a dtype or dims, and why it
    failed if onnx could not infer at all (the passes then go on with what the IR knew)."""

    typed: int
    error: str = ""
    reported: bool = False


def shape_of(v: ir.Value, ctx: PassContext) -> Shape | None:
    """``v``'s shape, after running the shapes analysis if its dtype or a dim is not known yet
    (the analysis is cached, so asking again costs a lookup)."""
    if v.shape is None or None in v.shape or not v.dtype:
        ctx.get(ShapeInference)
    return v.shape


class ShapeInference(Analysis[ShapeInfo]):
    name = "shapes"

    def compute(self, model: ir.Model, ctx: PassContext) -> ShapeInfo:
        return infer_shapes(model)


def infer_shapes(model: ir.Model) -> ShapeInfo:
    """Run onnx's shape inference on ``model`` and merge the result into its values (in place).

    Skipped when every value already has a dtype and fully known dims: there is nothing to learn,
    and rewrites keep types known (``Graph.replace_value`` passes them on). When only a few values
    are missing something (new nodes a rewrite made), only their producers go to onnx.
    """
    values = _values(model)
    missing = [v for v in values.values() if not _complete(v)]
    if not missing:
        return ShapeInfo(0)
    try:
        proto = _partial_proto(model, missing) or _inference_proto(model)
        inferred = onnx.shape_inference.infer_shapes(proto, check_type=False, strict_mode=False, data_prop=True)
    except Exception as e:  # onnx refuses some models outright (e.g. past 2 GB); keep what we know
        return ShapeInfo(0, f"{type(e).__name__}: {' '.join(str(e).split())[:300]}")
    symbols = _symbols(model)
    parsed: dict[bytes, tuple[int, Shape | None] | None] = {}  # many values share one type
    typed = 0
    for vi in _value_infos(inferred.graph):
        v = values.get(vi.name)
        if v is None or _complete(v):
            continue
        key = vi.type.SerializeToString()
        if key not in parsed:
            parsed[key] = _parse(vi.type, symbols)
        if parsed[key] is not None and _merge(v, *parsed[key]):  # type: ignore[misc]
            typed += 1
    return ShapeInfo(typed)


def _complete(v: ir.Value) -> bool:
    return v.type_proto is not None or (bool(v.dtype) and v.shape is not None and None not in v.shape)


def _inference_proto(model: ir.Model) -> onnx.ModelProto:
    """The model as onnx's inference needs it: large initializers by type only."""
    def small(v: ir.Value) -> bool:
        return v.const is not None and v.const.size <= SMALL_CONSTANT and not v.const.is_external

    proto = ir.to_proto(model, initializers=small)  # weights are never copied
    declared = {vi.name for vi in proto.graph.input}
    for name, v in model.graph.initializers.items():
        if not small(v) and name not in declared:
            proto.graph.input.append(onnx.helper.make_tensor_value_info(name, v.dtype, v.shape))
    return proto


def _partial_proto(model: ir.Model, missing: list[ir.Value]) -> onnx.ModelProto | None:
    """A model of just the main-graph nodes producing ``missing`` values, with what they read
    declared by type (small constants with their data), plus the integer shape computations
    feeding them so data propagation still sees shape values. None when a full run is better:
    many values missing, or some inside subgraphs."""
    graph = model.graph
    if len(missing) * PARTIAL_FRACTION > len(graph) or any(v.graph is not graph or v.producer is None
                                                          for v in missing):
        return None
    chosen: dict[int, ir.Node] = {}
    stack = [v.producer for v in missing]
    while stack:
        node = stack.pop()
        if node is None or id(node) in chosen:
            continue
        chosen[id(node)] = node
        for w in node.inputs:  # shape tensors (int64) and constants: their producers come too
            if w is not None and w.producer is not None and w.producer.graph is graph and \
                    (w.dtype in (0, onnx.TensorProto.INT64) or w.producer.op_type == "Constant"):
                stack.append(w.producer)
    nodes = [n for n in graph if id(n) in chosen]
    produced = {v.name for n in nodes for v in n.outputs if v is not None}
    gp = onnx.GraphProto(name=graph.name, node=[node_proto(n) for n in nodes])
    declared: set[str] = set()
    for n in nodes:
        for w in [*n.inputs, *outer_inputs(n)]:
            if w is None or w.name in produced or w.name in declared:
                continue
            declared.add(w.name)
            if w.const is not None and not w.is_graph_input and w.const.size <= SMALL_CONSTANT \
                    and not w.const.is_external:
                gp.initializer.append(w.const.to_proto(w.name))
            elif w.type_proto is not None:
                gp.input.add(name=w.name).type.CopyFrom(w.type_proto)
            else:
                gp.input.append(onnx.helper.make_tensor_value_info(w.name, w.dtype, w.shape))
    gp.output.extend(onnx.ValueInfoProto(name=v.name) for v in missing)
    proto = onnx.ModelProto(ir_version=model.ir_version, graph=gp)
    for domain, version in model.opset_imports.items():
        proto.opset_import.add(domain=domain, version=version)
    proto.functions.extend(function_proto(f) for f in model.functions.values())
    return proto


def _values(model: ir.Model) -> dict[str, ir.Value]:
    """Values inference may fill in, by name: node outputs of the main graph and its subgraphs
    (not the main graph's outputs), and subgraph inputs."""
    values: dict[str, ir.Value] = {}
    for g in model.all_graphs(functions=False):
        pinned = g is model.graph
        if not pinned:
            values.update((v.name, v) for v in g.inputs)
        for node in g:
            for v in node.outputs:
                if v is not None and not (pinned and v.is_graph_output):
                    values[v.name] = v
    return values


def _symbols(model: ir.Model) -> set[str]:
    """Every dim_param the IR holds: the only symbols an inferred shape may keep."""
    symbols: set[str] = set()
    for g in model.all_graphs(functions=False):
        for v in [*g.inputs, *g.outputs, *(o for n in g for o in n.outputs if o is not None)]:
            if v.shape is not None:
                symbols.update(d for d in v.shape if isinstance(d, str))
    return symbols


def _value_infos(gp: onnx.GraphProto) -> Iterator[onnx.ValueInfoProto]:
    """Every typed value onnx reports, subgraphs included."""
    yield from gp.value_info
    yield from gp.output
    for node in gp.node:
        for a in node.attribute:
            subs = [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)
            for sub in subs:
                yield from sub.input
                yield from _value_infos(sub)


def _parse(tp: onnx.TypeProto, symbols: set[str]) -> tuple[int, Shape | None] | None:
    """(dtype, shape) of a tensor type; dims named by symbols the model does not hold become None."""
    if not tp.HasField("tensor_type"):
        return None
    tt = tp.tensor_type
    if not tt.HasField("shape"):
        return tt.elem_type, None
    return tt.elem_type, tuple((d.dim_value if d.dim_value >= 0 else None) if d.HasField("dim_value") else
                               (d.dim_param if d.HasField("dim_param") and d.dim_param in symbols else None)
                               for d in tt.shape.dim)  # onnx writes -1 for sizes it finds invalid


def _merge(v: ir.Value, dtype: int, shape: Shape | None) -> bool:
    """Fill in what ``v`` does not know; True when something was learned."""
    learned = False
    if not v.dtype and dtype:
        v.dtype = dtype
        learned = True
    old = v.shape
    if shape is not None:
        if old is None:
            v.shape = shape
            learned = True
        elif len(old) == len(shape):
            merged = tuple(o if o is not None else n for o, n in zip(old, shape))
            if merged != old:
                v.shape = merged
                learned = True
    return learned


@register
class InferShapes(Pass):
    name = "infer-shapes"
    description = "Annotate values with dtypes and shapes from onnx's shape inference (keeps dim_params)"
    kind = "annotation"
    preserves = frozenset({ShapeInference})

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        info = ctx.get(ShapeInference)
        stats = {}
        if not info.reported:
            info.reported = True
            stats = {"values_typed": info.typed} if info.typed else {}
        # An annotation changes the model but no result, so it never keeps a fixed point going.
        return PassResult(bool(stats), stats)
