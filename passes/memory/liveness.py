"""Tensor sizes and lifetimes over a schedule: what the memory planner packs into one arena.

A *schedule* is a topological order of the main graph's nodes; step ``i`` runs ``schedule[i]``.
An *activation* is a tensor a node of the main graph writes that is neither a graph output nor a
constant (a Constant node, or an Identity of an initializer): those share the arena. Graph
inputs, graph outputs, initializers and constants live in buffers of their own (the caller's, or
the weights), so they are counted separately. A node with subgraphs (If, Loop, Scan)
is one step: the outer tensors its bodies read are used at that step, and the bodies' own
tensors are the node's private workspace.

An activation is live from the step that writes it to the last step that reads it, both
included: a node's inputs and outputs exist at the same time while it runs. The *lower bound*
is the largest sum of live bytes over the steps; no placement of these tensors can do better.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from optgraph import ir
from optgraph.passes.base import Analysis, PassContext
from optgraph.passes.shapes import ShapeInference


class UnknownSizeError(ir.OptGraphError):
    """A tensor the planner must place has no concrete size."""


@dataclass(frozen=True)
class TensorInfo:
    """A tensor's element type and concrete shape (symbolic dims already replaced)."""

    dtype: int
    shape: tuple[int, ...]
    nbytes: int


def _concrete(shape: ir.core.Shape | None, dims: Mapping[str, int]) -> tuple[int, ...] | None:
    if shape is None:
        return None
    out = []
    for d in shape:
        d = dims.get(d) if isinstance(d, str) else d
        if d is None:
            return None
        out.append(d)
    return tuple(out)


def inferred_types(model: ir.Model, dims: Mapping[str, int]) -> dict[str, tuple[int, ir.core.Shape | None]]:
    """Element type and shape of every tensor onnx's shape inference can work out once the
    user's sizes are written into the graph inputs.

    The shared ShapeInference analysis keeps dims symbolic; with the sizes filled in, shapes that
    depend on them (a reshape to ``batch * 64``) come out concrete instead of unknown.
    """
    proto = ir.to_proto(model)
    graph = proto.graph
    del graph.value_info[:]  # stale or symbolic types would pin inference to what it already says
    for vi in graph.input:
        for d in vi.type.tensor_type.shape.dim:
            if d.HasField("dim_param") and d.dim_param in dims:
                d.dim_value = dims[d.dim_param]
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=False, data_prop=True).graph
    except Exception:  # inference is a best effort: what it cannot type stays unknown
        return {}
    out: dict[str, tuple[int, ir.core.Shape | None]] = {}
    for vi in [*inferred.value_info, *inferred.output]:
        tt = vi.type.tensor_type
        if not vi.type.HasField("tensor_type"):
            continue
        shape = None
        if tt.HasField("shape"):
            shape = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim)
        out[vi.name] = (tt.elem_type, shape)
    return out


def tensor_infos(model: ir.Model, dims: Mapping[str, int] | None = None, *,
                 folded: bool = False) -> dict[ir.Value, TensorInfo]:
    """Concrete type and size of the main graph's inputs, initializers and node outputs.

    Shapes come from the model; shape inference fills in what is missing. A tensor whose size
    is still unknown raises UnknownSizeError naming it (and the symbolic dims to give, if any;
    ``folded``: the shape computations were folded already, so the error does not suggest it).
    """
    dims = dict(dims or {})
    graph = model.graph
    values = [v for v in graph.inputs if v.const is None] + list(graph.initializers.values())
    values += [v for node in graph for v in node.outputs if v is not None]
    infos: dict[ir.Value, TensorInfo] = {}
    missing: list[ir.Value] = []
    for v in values:
        info = _info(v.dtype, v.shape, dims)
        if info is None:
            missing.append(v)
        else:
            infos[v] = info
    if missing:
        types = inferred_types(model, dims)
        for v in missing:
            dtype, shape = types.get(v.name, (0, None))
            info = _info(v.dtype or dtype, shape if _concrete(v.shape, dims) is None else v.shape, dims)
            if info is None:
                settable = {d for u in graph.inputs for d in (u.shape or ()) if isinstance(d, str)}
                raise UnknownSizeError(_unknown_size_message(v, dtype, shape, dims, settable, folded))
            infos[v] = info
    return infos


def _info(dtype: int, shape: ir.core.Shape | None, dims: Mapping[str, int]) -> TensorInfo | None:
    concrete = _concrete(shape, dims)
    size = ir.itemsize(dtype) if dtype else None
    if concrete is None or size is None:
        return None
    return TensorInfo(dtype, concrete, math.prod(concrete) * size)


def _unknown_size_message(v: ir.Value, dtype: int, shape: ir.core.Shape | None, dims: Mapping[str, int],
                          settable: set[str], folded: bool = False) -> str:
    """Why ``v`` has no size; ``settable`` are the graph inputs' symbolic dims (the ones --dim can set)."""
    dtype = v.dtype or dtype
    shape = v.shape if v.shape is not None else shape
    where = f"output of {v.producer.op_type} node '{v.producer.name}'" if v.producer else "graph input"
    missing = sorted({d for d in shape or () if isinstance(d, str) and d not in dims})
    if shape is None:
        why = "its rank is unknown, even after shape inference"
    elif missing and set(missing) <= settable:
        why = "give " + ", ".join(f"--dim {n}=SIZE" for n in missing)
    elif missing or any(d is None for d in shape):
        why = ("a dimension depends on values shape inference cannot follow, even with the input sizes known "
               + ("and the shape computations folded" if folded else
                  "(folding constants first, --passes fold-constants, often makes it static)"))
    elif not dtype:
        why = "its element type is unknown"
    else:
        why = f"element type {onnx.TensorProto.DataType.Name(dtype)} has no fixed size"
    dims_text = "?" if shape is None else "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"
    return f"cannot size tensor '{v.name}' ({where}, shape {dims_text}): {why}"


@dataclass(frozen=True)
class Lifetime:
    """One activation: its size in bytes and the steps it is live, ``start``..``end`` inclusive."""

    value: ir.Value
    nbytes: int
    start: int
    end: int


@dataclass
class Liveness:
    """Activation lifetimes over ``schedule``, plus the bytes kept outside the arena."""

    schedule: list[ir.Node]
    tensors: dict[ir.Value, Lifetime]  # in order of production
    input_bytes: int
    output_bytes: int
    constant_bytes: int  # initializers and constant node outputs

    def live_bytes(self) -> np.ndarray:
        """Bytes of activations live at each step."""
        return live_profile(len(self.schedule), [(t.nbytes, t.start, t.end) for t in self.tensors.values()])

    @property
    def lower_bound(self) -> int:
        profile = self.live_bytes()
        return int(profile.max()) if len(profile) else 0


def live_profile(n_steps: int, spans: Sequence[tuple[int, int, int]]) -> np.ndarray:
    """Sum of ``nbytes`` over the ``(nbytes, start, end)`` spans live at each step."""
    delta = np.zeros(n_steps + 1, dtype=np.int64)
    if spans:
        arr = np.asarray(spans, dtype=np.int64)
        np.add.at(delta, arr[:, 1], arr[:, 0])
        np.add.at(delta, arr[:, 2] + 1, -arr[:, 0])
    return np.cumsum(delta[:-1])


def top_level(node: ir.Node, graph: ir.Graph) -> ir.Node:
    """The node of ``graph`` that holds ``node`` (itself, or the If/Loop whose body it is in)."""
    while node.graph is not graph:
        holder = node.graph.parent if node.graph is not None else None
        if holder is None:
            raise ValueError(f"{node!r} is not inside graph '{graph.name}'")
        node = holder
    return node


def is_activation(v: ir.Value) -> bool:
    """Whether ``v`` belongs in the arena: written by a node, not a graph output, not a constant."""
    return v.producer is not None and not v.is_graph_output and ir.constant_tensor(v) is None


def liveness(model: ir.Model, schedule: Sequence[ir.Node], infos: Mapping[ir.Value, TensorInfo]) -> Liveness:
    """Lifetimes of the main graph's activations when its nodes run in ``schedule`` order."""
    graph = model.graph
    step = {id(n): i for i, n in enumerate(schedule)}
    if len(step) != len(graph) or any(n.graph is not graph for n in schedule):
        raise ValueError("the schedule must list each node of the main graph once")
    tensors: dict[ir.Value, Lifetime] = {}
    output_bytes = constant_bytes = 0
    for i, node in enumerate(schedule):
        for v in node.outputs:
            if v is None:
                continue
            if v.is_graph_output:
                output_bytes += infos[v].nbytes
                continue
            if not is_activation(v):
                constant_bytes += infos[v].nbytes
                continue
            end = i
            for user, _ in v.uses:
                s = step[id(user if user.graph is graph else top_level(user, graph))]
                if s < i:
                    raise ValueError(f"the schedule runs a reader of '{v.name}' before its producer")
                end = max(end, s)
            tensors[v] = Lifetime(v, infos[v].nbytes, i, end)
    return Liveness(
        list(schedule), tensors,
        input_bytes=sum(infos[v].nbytes for v in graph.inputs if v.const is None),
        output_bytes=output_bytes,
        constant_bytes=constant_bytes + sum(v.const.nbytes for v in graph.initializers.values() if v.const is not None),
    )


class TensorInfos(Analysis[dict[ir.Value, TensorInfo]]):
    """Concrete types and sizes of the main graph's tensors, with the context's ``dims``."""

    name = "tensor-infos"
    requires = frozenset({ShapeInference})  # the shared types first; tensor_infos infers again only with dims filled in

    def compute(self, model: ir.Model, ctx: PassContext) -> dict[ir.Value, TensorInfo]:
        return tensor_infos(model, ctx.dims)


def plannable_infos(model: ir.Model, ctx: PassContext) -> dict[ir.Value, TensorInfo]:
    """The sizes the planner needs, running what sizing takes when shape inference alone cannot:
    the context's dims are written into the graph and the shape computations folded (a fixed
    point of fold-constants and remove-dead), as TensorRT does at build time. Then the model
    planned is that graph, at those sizes (YOLO's Slice bounds, DeiT's class-token Expand and a
    dynamic BERT's mask reshapes only become static this way).
    """
    try:
        return ctx.get(TensorInfos)
    except UnknownSizeError:
        pass
    from optgraph.passes.manager import FixedPoint, PassManager, parse_pipeline

    bind_dims(model, ctx.dims)
    PassManager([FixedPoint("size", parse_pipeline("fold-constants,remove-dead"), 8)], ctx=ctx).run(model)
    ctx.get(ShapeInference)
    return tensor_infos(model, ctx.dims, folded=True)


def bind_dims(model: ir.Model, dims: Mapping[str, int]) -> None:
    """Replace the named symbolic dims by their sizes in every main-graph value (interface included)."""
    graph = model.graph
    for v in [*graph.inputs, *graph.outputs, *(o for n in graph for o in n.outputs if o is not None)]:
        if v.shape is not None and any(isinstance(d, str) and d in dims for d in v.shape):
            v.shape = tuple(dims[d] if isinstance(d, str) and d in dims else d for d in v.shape)


class FileOrderLiveness(Analysis[Liveness]):
    """Activation lifetimes when the nodes run in the order the model lists them."""

    name = "liveness"
    requires = frozenset({TensorInfos})

    def compute(self, model: ir.Model, ctx: PassContext) -> Liveness:
        return liveness(model, list(model.graph), ctx.get(TensorInfos))
