"""Mixed precision: float32 compute converted to float16 (``fp16``) or bfloat16 (``bf16``), with
float32 kept where reduced precision is unsafe or pointless.

TensorRT 11 builds strongly typed networks: the precision of every layer is the precision its
tensors have in the ONNX graph. This pass writes it there:

- a node runs in low precision when its schema accepts the low type for its float tensors and it
  is not kept in float32 (the block lists below, the user's lists, calibration ranges past the
  margin, float32 weights that would overflow float16);
- every tensor that crosses a precision boundary is cast exactly once, whatever its fan-out; a
  Cast never reads a Cast (existing Casts are retargeted); a float32 weight read in low precision
  is converted once into a new initializer (the original stays for its float32 readers);
- graph inputs and outputs keep float32 by default (``keep_io``).

Nodes with subgraphs (If/Loop/Scan) and their bodies stay float32; values they capture from the
main graph are read in float32. A call of a model-local function runs in low precision when its
body is made only of type-generic ONNX ops (optgraph's fused Conv+activation units are); a body
whose float Constants (a Clip's bounds) fit the target type is called through a low-precision copy
of the function (``<name>_fp16``), made once, with those Constants converted.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass

import ml_dtypes
import numpy as np
import onnx
from onnx import numpy_helper

from optgraph import ir
from optgraph.ir.serde import function_proto
from optgraph.passes.base import Pass, PassContext, PassResult, counter
from optgraph.passes.registry import register
from optgraph.passes.shapes import ShapeInference

FLOAT = onnx.TensorProto.FLOAT

# Always float32: index, box and sequence computations, random ops, and ops whose results are
# indices or shapes rather than activations.
ALWAYS_FP32 = frozenset({
    "Range", "TopK", "NonMaxSuppression", "RoiAlign", "CumSum", "Einsum", "RandomNormal",
    "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial", "Bernoulli",
})
# Float32 unless calibration ranges show every float input and output within the margin: they
# overflow (Exp, Pow, sums over many elements) or lose the accuracy their callers rely on
# (normalizations, softmax over large logits).
RANGE_SENSITIVE = frozenset({
    "Exp", "Pow", "Softmax", "LogSoftmax", "LayerNormalization", "ReduceSum", "ReduceSumSquare",
    "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceProd",
})
# Consumers whose float operands are shape or index computations: a node feeding only these
# (or fixed-float32 inputs such as Resize's scales) stays float32 too.
_INDEX_CONSUMERS = frozenset({"Range", "TopK", "NonMaxSuppression", "RoiAlign"})
# Ops inside a function body that make its types concrete: such a function is not converted.
_TYPED_BODY_OPS = frozenset({"Constant", "ConstantOfShape", "Cast", "CastLike", "EyeLike"}) | ALWAYS_FP32

_TARGETS = {
    onnx.TensorProto.FLOAT16: ("tensor(float16)", np.dtype(np.float16), float(np.finfo(np.float16).max)),
    onnx.TensorProto.BFLOAT16: ("tensor(bfloat16)", np.dtype(ml_dtypes.bfloat16), float(ml_dtypes.finfo(ml_dtypes.bfloat16).max)),
}


@functools.cache
def _schema_slots(domain: str, op_type: str, opset: int, target: int) -> tuple[tuple[str, ...], frozenset[str]] | None:
    """The type strings of the op's formal inputs then outputs (a trailing "*" marks the last input
    or output variadic), and the type variables that admit both float32 and the target type."""
    try:
        schema = onnx.defs.get_schema(op_type, opset, domain)
    except onnx.defs.SchemaError:
        return None
    variadic = onnx.defs.OpSchema.FormalParameterOption.Variadic
    low = _TARGETS[target][0]
    ok = frozenset(c.type_param_str for c in schema.type_constraints
                   if low in c.allowed_type_strs and "tensor(float)" in c.allowed_type_strs)
    def types(params: list) -> str:  # type: ignore[type-arg]
        return ",".join(p.type_str for p in params) + ("*" if params and params[-1].option == variadic else "")
    return (types(schema.inputs), types(schema.outputs)), ok


def _convertible(types: str, ok: frozenset[str], count: int) -> frozenset[int]:
    """Which of ``count`` actual inputs (or outputs) have a formal type variable in ``ok``."""
    variadic = types.endswith("*")
    formal = types.rstrip("*").split(",") if types.rstrip("*") else []
    slots = set()
    for i in range(count):
        t = formal[i] if i < len(formal) else (formal[-1] if variadic and formal else None)
        if t in ok:
            slots.add(i)
    return frozenset(slots)


@dataclass(frozen=True)
class _Plan:
    """The input and output positions of a low-precision node whose tensors change type."""

    inputs: frozenset[int]
    outputs: frozenset[int]


class _MixedPrecision(Pass):
    target: int

    @dataclass
    class Options:
        keep_io: bool = True  # graph inputs and outputs keep float32
        block: tuple[str, ...] = ()  # more op types kept in float32
        allow: tuple[str, ...] = ()  # op types taken off the default float32 lists
        block_nodes: str = ""  # a regex: nodes whose name matches (re.search) stay float32
        margin: float = 512.0  # calibration: a node whose tensors reach |x| > margin stays float32

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        ctx.get(ShapeInference)  # dtypes of every tensor
        plans = self._plans(model, ctx)
        stats = counter()
        rw = ir.Rewriter(model.graph)
        if plans:
            _Converter(rw, self.target, self.options.keep_io, stats).convert(plans)
            for node in plans:
                fn = model.functions.get((node.domain, node.op_type, node.overload))
                if fn is not None and _float_constants(fn.graph):
                    rw.set_op_type(node, _low_function(rw, model, fn, self.target).name)
                    stats["function_calls_retyped"] += 1
        stats["nodes_low_precision"] = len(plans)
        return PassResult(rw.changed, stats)

    # --- which nodes run in low precision ---------------------------------------------------
    def _plans(self, model: ir.Model, ctx: PassContext) -> dict[ir.Node, _Plan]:
        opt = self.options
        blocked = (ALWAYS_FP32 | set(opt.block)) - set(opt.allow)
        sensitive = RANGE_SENSITIVE - set(opt.allow)
        name_re = re.compile(opt.block_nodes) if opt.block_nodes else None
        ranges: Mapping[str, float] = ctx.ranges
        opset = model.opset()
        limit = _TARGETS[self.target][2]
        plans: dict[ir.Node, _Plan] = {}
        for node in model.graph:
            if node.op_type in blocked or (name_re is not None and name_re.search(node.name)):
                continue
            plan = self._plan(node, model, opset)
            if plan is None:
                continue
            floats = [v for v in (*node.inputs, *node.outputs) if v is not None and v.dtype == FLOAT]
            if node.op_type in sensitive and not all(v.name in ranges for v in floats):
                continue
            if any(ranges.get(v.name, 0.0) > opt.margin for v in floats):
                continue
            if any(_overflows(node.inputs[i], limit) for i in plan.inputs):
                continue
            plans[node] = plan
        # A node whose every low output only feeds shape/index computations stays float32.
        for node in reversed(list(model.graph)):
            plan = plans.get(node)
            if plan is None:
                continue
            outs = [node.outputs[i] for i in plan.outputs]
            uses = [u for v in outs for u in v.uses]
            if uses and not any(v.is_graph_output for v in outs) and all(
                    (user not in plans and user.op_type in _INDEX_CONSUMERS)
                    or (user in plans and i not in plans[user].inputs) for user, i in uses):
                del plans[node]
        return plans

    def _plan(self, node: ir.Node, model: ir.Model, opset: int) -> _Plan | None:
        """The positions that change type if ``node`` runs in low precision; None when it cannot."""
        if node.op_type in ("Cast", "Constant") and node.domain in ("", "ai.onnx") or node.subgraphs():
            return None
        fn = model.functions.get((node.domain, node.op_type, node.overload))
        if fn is not None:
            if not _body_convertible(fn.graph, opset, self.target):
                return None
            ins = frozenset(i for i, v in enumerate(node.inputs) if v is not None and v.dtype == FLOAT)
            outs = frozenset(i for i, v in enumerate(node.outputs) if v is not None and v.dtype == FLOAT)
        else:
            if node.domain not in ("", "ai.onnx"):
                return None
            slots = _schema_slots(node.domain, node.op_type, opset, self.target)
            if slots is None:
                return None
            (in_types, out_types), ok = slots
            ins = frozenset(i for i in _convertible(in_types, ok, len(node.inputs))
                            if node.inputs[i] is not None and node.inputs[i].dtype == FLOAT)
            outs = frozenset(i for i in _convertible(out_types, ok, len(node.outputs))
                             if node.outputs[i] is not None and node.outputs[i].dtype == FLOAT)
        if not ins and not outs:
            return None
        return _Plan(ins, outs)


def _float_constants(graph: ir.Graph) -> list[ir.Node]:
    """The body's Constant nodes that make float32 tensors."""
    return [n for n in graph if n.op_type == "Constant" and n.domain in ("", "ai.onnx")
            and n.outputs[0] is not None and (n.attr("value_float") is not None or n.attr("value_floats") is not None
                                              or (n.attr("value") is not None and n.attr("value").dtype == FLOAT))]


def _constant_value(node: ir.Node) -> np.ndarray:
    for name in ("value_float", "value_floats"):
        if node.attr(name) is not None:
            return np.asarray(node.attr(name), np.float32)
    return np.asarray(node.attr("value").numpy())


def _body_convertible(graph: ir.Graph, opset: int, target: int) -> bool:
    """A function body whose ops are all type-generic: it computes in whatever type it is given.
    Float Constants are allowed when their values fit the target type (the call then goes through
    a copy of the function with them converted)."""
    floats = set(_float_constants(graph))
    limit = _TARGETS[target][2]
    for node in graph.all_nodes():
        if node in floats:
            value = _constant_value(node)
            if value.size and not np.nanmax(np.abs(value)) <= limit:
                return False
            continue
        if node.domain not in ("", "ai.onnx") or node.op_type in _TYPED_BODY_OPS or node.subgraphs():
            return False
        slots = _schema_slots(node.domain, node.op_type, opset, target)
        if slots is None or "tensor(float)" in ",".join(slots[0]):
            return False
    return True


def _low_function(rw: ir.Rewriter, model: ir.Model, fn: ir.Function, target: int) -> ir.Function:
    """``fn`` with its float Constants in ``target``: added to the model once, under a new name."""
    suffix = {onnx.TensorProto.FLOAT16: "fp16", onnx.TensorProto.BFLOAT16: "bf16"}[target]
    key = (fn.domain, f"{fn.name}_{suffix}", fn.overload)
    if key in model.functions:
        return model.functions[key]
    fp = function_proto(fn)
    fp.name = key[1]
    del fp.value_info[:]  # float32 types of the original body
    low = _TARGETS[target][1]
    for node in fp.node:
        if node.op_type != "Constant" or node.domain not in ("", "ai.onnx"):
            continue
        for i, a in enumerate(node.attribute):
            if a.name in ("value_float", "value_floats") or (a.name == "value" and a.t.data_type == FLOAT):
                array = (numpy_helper.to_array(a.t) if a.name == "value"
                         else np.asarray(a.f if a.name == "value_float" else list(a.floats), np.float32))
                node.attribute[i].CopyFrom(onnx.helper.make_attribute("value", numpy_helper.from_array(
                    array.astype(low), a.t.name if a.name == "value" else "")))
    shell = onnx.helper.make_model(onnx.helper.make_graph([], "shell", [], []), functions=[fp],
                                   opset_imports=[onnx.helper.make_opsetid(d, v) for d, v in model.opset_imports.items()])
    new = ir.from_proto(shell).functions[key]
    rw.add_function(model, new)
    return new


def _overflows(value: ir.Value | None, limit: float) -> bool:
    """A float32 constant with values the target type cannot hold (kept in float32, never clamped)."""
    array = ir.constant_array(value)
    return array is not None and array.size > 0 and bool(np.nanmax(np.abs(array)) > limit)


class _Converter:
    """Rewires one graph for a set of low-precision nodes, with one Cast per boundary tensor."""

    def __init__(self, rw: ir.Rewriter, target: int, keep_io: bool, stats: dict[str, int]) -> None:
        self.rw, self.graph, self.target, self.keep_io, self.stats = rw, rw.graph, target, keep_io, stats
        self.np_dtype = _TARGETS[target][1]
        self.suffix = {onnx.TensorProto.FLOAT16: "fp16", onnx.TensorProto.BFLOAT16: "bf16"}[target]
        self.low: set[ir.Value] = set()  # values now in the target type
        self.cache: dict[tuple[ir.Value, int], ir.Value] = {}  # (value, type) -> its version in that type
        self.bypassed: list[ir.Value] = []  # values some readers no longer read (may have died)

    def convert(self, plans: Mapping[ir.Node, _Plan]) -> None:
        graph = self.graph
        if not self.keep_io:
            for v in graph.inputs:
                if v.dtype == FLOAT and v.const is None:
                    self.rw.set_type(v, self.target)
                    self.low.add(v)
        order = list(graph)
        for k, node in enumerate(order):
            plan = plans.get(node)
            if plan is not None:
                self.stats["nodes_converted"] += 1
            for i, v in enumerate(node.inputs):
                if v is None or (node.op_type == "Cast" and node.domain in ("", "ai.onnx")):
                    continue  # a Cast reads any type: it is the boundary itself
                if plan is not None and i in plan.inputs:
                    if v.dtype == FLOAT:
                        self._read(node, i, self.target)
                elif v in self.low:
                    self._read(node, i, FLOAT)
            for sub in node.subgraphs():  # captured main-graph values are read in float32
                for inner in sub.all_nodes():
                    for i, v in enumerate(inner.inputs):
                        if v is not None and v in self.low:
                            self.rw.set_input(inner, i, self._get(v, FLOAT, node))
            if plan is not None:
                after = order[k + 1] if k + 1 < len(order) else None
                for i in sorted(plan.outputs):
                    self._lower_output(node.outputs[i], after)
        self._drop_dead()

    def _read(self, node: ir.Node, i: int, dtype: int) -> None:
        value = node.inputs[i]
        assert value is not None
        new = self._get(value, dtype, node)
        if new is not value:
            self.rw.set_input(node, i, new)
            self.bypassed.append(value)

    def _lower_output(self, value: ir.Value, after: ir.Node | None) -> None:
        """Make ``value`` a low-precision tensor; a graph output keeps its name and float32 type
        through one Cast, which every float32 reader shares."""
        if value.is_graph_output and self.keep_io:
            cast = self.rw.make_node("Cast", [value], {"to": FLOAT}, name=f"{value.name}_to_fp32", before=after)
            self.rw.set_type(cast.output, FLOAT, value.shape)
            self.rw.replace(value, cast.output)
            self.rw.set_input(cast, 0, value)
            self.cache[(cast.output, self.target)] = value
            self.stats["casts_inserted"] += 1
        self.rw.set_type(value, self.target)
        self.low.add(value)

    def _get(self, value: ir.Value, dtype: int, before: ir.Node) -> ir.Value:
        """``value`` in ``dtype``: a converted constant, the source of a Cast, or one new Cast."""
        key = (value, dtype)
        if key in self.cache:
            return self.cache[key]
        array = ir.constant_array(value) if dtype == self.target else None
        if array is not None:
            new = self.rw.add_initializer(array.astype(self.np_dtype), f"{value.name}_{self.suffix}")
            self.stats["initializers_converted"] += 1
        else:
            producer = value.producer
            if producer is not None and producer.op_type == "Cast" and producer.domain in ("", "ai.onnx"):
                source = producer.inputs[0]  # retarget the existing Cast rather than cast twice
                assert source is not None
                new = source if source.dtype == dtype else self._get(source, dtype, before)
            elif value.dtype == dtype:
                new = value
            else:
                suffix = self.suffix if dtype == self.target else "fp32"
                cast = self.rw.make_node("Cast", [value], {"to": dtype}, name=f"{value.name}_to_{suffix}",
                                         before=before)
                new = cast.output
                self.rw.set_type(new, dtype, value.shape)
                self.stats["casts_inserted"] += 1
        self.cache[key] = new
        return new

    def _drop_dead(self) -> None:
        """Remove the Casts, Constants and initializers that every reader now bypasses."""
        for value in self.bypassed:
            if value.is_used or value.is_graph_output or value.is_graph_input:
                continue
            if value.const is not None:
                if value.name in self.graph.initializers:
                    self.rw.remove_initializer(value)
                continue
            node = value.producer
            if (node is not None and node.graph is self.graph and node.op_type in ("Cast", "Constant", "Identity")
                    and not any(o is not None and o.is_used for o in node.outputs)):
                self.rw.remove(node)
                self.stats["casts_retargeted" if node.op_type == "Cast" else "constants_converted"] += 1
                if node.inputs and node.inputs[0] is not None:
                    self.bypassed.append(node.inputs[0])


@register
class Float16(_MixedPrecision):
    name = "fp16"
    description = "Mixed precision: float32 compute in float16, float32 kept where float16 is unsafe (one Cast per boundary)"
    target = onnx.TensorProto.FLOAT16


@register
class BFloat16(_MixedPrecision):
    name = "bf16"
    description = "Mixed precision: float32 compute in bfloat16, float32 kept where bfloat16 is unsafe (one Cast per boundary)"
    target = onnx.TensorProto.BFLOAT16
