"""fuse-conv-act: mark Conv (+bias) followed by an activation as one fused unit; inline-fused undoes it.

The unit is a call of a model-local ONNX function in the ``optgraph`` domain whose body is the
original ops, e.g. ``optgraph.ConvRelu_1a2b3c4d(x, w, b)`` with body ``Conv -> Relu``. Why this
form: the model stays plain ONNX that every runtime understands. onnxruntime executes functions;
TensorRT's ONNX parser inlines them and builds the same engine; tools that schedule, count or
visualize layers see one node per fused unit. TensorRT's parser does not resolve omitted
attribute references inside functions, so each function body carries concrete attributes: there
is one function per distinct signature (activation and its attributes, Clip bounds, the Conv's
attributes, bias or not), named after the activation and a digest of that signature, so equal
units share a function and names are the same on every run. Clip bounds must be constants; they
become Constant nodes of the body. The model's IR version is raised to 8 if it is older, since
model-local functions need it.

``inline-fused`` replaces every call of an ``optgraph`` function by its body again and drops the
functions and the domain import once nothing uses them.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from optgraph import ir
from optgraph.ir.opset import ACTIVATIONS, attrs_key
from optgraph.passes.base import Pass, PassContext, PassResult, counter
from optgraph.passes.pattern import Match, RewritePass, Rewriter, Rule, Var, op
from optgraph.passes.registry import register

FUSED_DOMAIN = "optgraph"

_CONV = op.Conv(Var("x"), Var("w"), Var("b", optional=True), name="conv")


class ConvActivation(Rule):
    name = "conv-act"
    labels = ("conv", "act")
    pattern = op(ACTIVATIONS, _CONV, Var("min", const=True, optional=True), Var("max", const=True, optional=True),
                 name="act")

    def rewrite(self, m: Match, rw: Rewriter) -> ir.Value:
        return fused_call(m, rw, [m.node("act")])


class ConvSwish(Rule):
    """Conv followed by x * Sigmoid(x) (SiLU/Swish: EfficientNet, YOLO)."""

    name = "conv-swish"
    labels = ("conv", "act")
    benefit = 2
    pattern = op.Mul(_CONV, op.Sigmoid(_CONV, name="sigmoid"), name="act")

    def rewrite(self, m: Match, rw: Rewriter) -> ir.Value:
        return fused_call(m, rw, [m.node("sigmoid"), m.node("act")])


def fused_call(m: Match, rw: Rewriter, tail: list[ir.Node]) -> ir.Value:
    """A call of the function computing the matched conv followed by ``tail``, named as the conv."""
    conv = m.node("conv")
    inputs = [m.value("x"), m.value("w"), *([m.value("b")] if m.optional("b") is not None else [])]
    out = rw.op(fused_function(rw, conv, tail, len(inputs) == 3), inputs, domain=FUSED_DOMAIN)
    assert isinstance(out, ir.Value) and out.producer is not None
    out.producer.name = conv.name
    return out


def fused_function(rw: Rewriter, conv: ir.Node, tail: list[ir.Node], bias: bool) -> str:
    """The name of the function computing ``conv`` then the ``tail`` nodes, added to the model if new.

    The signature that names it records, for each tail node, its op, attributes, and where each
    input comes from: the conv, an earlier tail node, or a constant (by value).
    """
    model = rw.model
    source: dict[int, Any] = {id(conv.output): "conv", **{id(n.output): k for k, n in enumerate(tail)}}

    def origin(v: ir.Value | None) -> Any:
        if v is None or id(v) in source:
            return None if v is None else source[id(v)]
        a = ir.constant_array(v)
        assert a is not None  # the patterns only let constants in
        return (a.dtype.str, a.shape, a.tolist())

    wiring = [(n.op_type, attrs_key(n), tuple(origin(v) for v in n.inputs)) for n in tail]
    signature = repr((tuple(wiring), attrs_key(conv), bias, model.opset()))
    name = f"Conv{''.join(n.op_type for n in tail)}_{hashlib.sha1(signature.encode()).hexdigest()[:8]}"
    if (FUSED_DOMAIN, name, "") not in model.functions:
        rw.add_function(model, _function(model, name, conv, tail, bias))
    return name


def _copy_attrs(src: ir.Node, dst: ir.Node) -> None:
    for a in src.attrs.values():
        dst.set_attr(a.name, a.value, a.type)


def _function(model: ir.Model, name: str, conv: ir.Node, tail: list[ir.Node], bias: bool) -> ir.Function:
    body = ir.Graph(name)
    params = [ir.Value(body, body.fresh_name(n)) for n in ("X", "W", "B")[: 3 if bias else 2]]
    for v in params:
        body.add_input(v)
    conv_node = body.make_node("Conv", params, name="conv")
    _copy_attrs(conv, conv_node)
    inner: dict[int, ir.Value] = {id(conv.output): conv_node.output}
    for n in tail:
        ins: list[ir.Value | None] = []
        for v in n.inputs:
            if v is not None and id(v) not in inner:  # a constant operand (Clip's bounds)
                inner[id(v)] = body.make_node("Constant", [], {"value": np.array(ir.constant_array(v))},
                                              name="const").output
            ins.append(None if v is None else inner[id(v)])
        new = body.make_node(n.op_type, ins, name=n.op_type.lower())
        _copy_attrs(n, new)
        inner[id(n.output)] = new.output
    out = inner[id(tail[-1].output)]
    out.name = "Y"
    body.set_outputs([out])
    return ir.Function(FUSED_DOMAIN, name, body, opset_imports={"": model.opset()})


@register
class FuseConvAct(RewritePass):
    name = "fuse-conv-act"
    description = "Mark Conv(+bias)+activation as one fused unit (a model-local function in the optgraph domain)"
    rules = (ConvSwish(), ConvActivation())


@register
class InlineFused(Pass):
    name = "inline-fused"
    description = "Inline the optgraph-domain functions fuse-conv-act made back into plain ops"

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        stats = counter()
        root = ir.Rewriter(model.graph)
        for graph in list(model.all_graphs(functions=False)):
            for node in graph:
                fn = model.functions.get((node.domain, node.op_type, node.overload))
                if fn is not None and node.domain == FUSED_DOMAIN:
                    inline_call(root.on(graph), node, fn)
                    stats["calls_inlined"] += 1
        used = {(n.domain, n.op_type, n.overload) for g in model.all_graphs() for n in g}
        for key in [k for k in model.functions if k[0] == FUSED_DOMAIN and k not in used]:
            root.remove_function(model, key)
            stats["functions_removed"] += 1
        if not any(d == FUSED_DOMAIN for d, _, _ in [*used, *model.functions]):
            root.drop_opset(model, FUSED_DOMAIN)
        return PassResult(root.changed, stats)


def inline_call(rw: ir.Rewriter, call: ir.Node, fn: ir.Function) -> None:
    """Replace ``call`` by a copy of ``fn``'s body (attribute references resolved from the call)."""
    mapping: dict[int, ir.Value | None] = {id(fi): ci for fi, ci in zip(fn.graph.inputs, call.inputs)}
    for inner in fn.graph:
        new = rw.make_node(inner.op_type, [None if v is None else mapping.get(id(v)) for v in inner.inputs],
                           outputs=len(inner.outputs), domain=inner.domain,
                           name=f"{call.name}/{inner.name or inner.op_type}", before=call)
        for a in inner.attrs.values():
            source = call.attrs.get(a.ref) if a.ref else a
            if source is not None:
                rw.set_attr(new, a.name, source.value, source.type)
        for fo, no in zip(inner.outputs, new.outputs):
            mapping[id(fo)] = no
    for fo, co in zip(fn.graph.outputs, call.outputs):
        new_out = mapping[id(fo)]
        if co is not None and new_out is not None:
            rw.set_type(new_out, co.dtype, co.shape)
            rw.replace(co, new_out)
    rw.remove(call)
