"""eliminate-concat: remove Concat nodes that do no work, or whose work is undone right after.

- A Concat of Concats on the same axis becomes one Concat (when the inner one has no other use).
- A Concat with a single input is that input.
- Adjacent constant inputs are merged into one constant (all-constant Concats become a constant).
- A Split (or Slices) right after a Concat, on the same axis, that takes exactly the concatenated
  pieces back out reads the pieces directly; the Concat goes away once nothing else reads it.

Axes are compared after normalization; a negative axis needs a known rank. Piece sizes come from
value shapes or constants: when one is unknown the Split/Slice is left alone. The strided form
(producers writing straight into slices of one buffer) is a memory-planning matter, not a graph
rewrite.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from optgraph import ir
from optgraph.ir import opset as ops
from optgraph.passes.pattern import Env, Match, MatchResult, RewritePass, Rewriter, Rule, Var, describe, op
from optgraph.passes.registry import register

_FOLD_BYTES = 1 << 16  # merge constants larger than this only when nothing else reads the pieces


def rank_of(node: ir.Node) -> int | None:
    """The rank of a node's (equal-rank) inputs, from any input whose rank is known."""
    for v in node.inputs:
        if v is not None and v.shape is not None:
            return len(v.shape)
        a = ir.constant_array(v)
        if a is not None:
            return a.ndim
    return None


def axis_of(node: ir.Node) -> int | None:
    """The node's ``axis`` attribute made non-negative; None when negative with unknown rank."""
    axis = int(node.attr("axis", 0))
    if axis >= 0:
        return axis
    rank = rank_of(node)
    return None if rank is None else axis + rank


def size_along(v: ir.Value | None, axis: int) -> int | None:
    """The extent of ``v`` along ``axis`` when known."""
    if v is None:
        return None
    shape = v.shape
    if shape is None:
        a = ir.constant_array(v)
        shape = None if a is None else a.shape
    if shape is None or axis >= len(shape) or not isinstance(shape[axis], int):
        return None
    return int(shape[axis])


class FlattenNested(Rule):
    """Concat(a, Concat(b, c), d) on one axis -> Concat(a, b, c, d)."""

    name = "flatten-concat"
    labels = ("flatten",)
    root_ops = ("Concat",)

    def match(self, node: ir.Node, env: Env) -> Match | MatchResult:
        axis = axis_of(node)
        inner = []
        for v in node.inputs:
            p = v.producer if v is not None else None
            if (p is not None and p.op_type == "Concat" and p.domain in ("", "ai.onnx") and p.graph is node.graph
                    and axis is not None and axis_of(p) == axis and p not in inner
                    and not v.is_graph_output and all(u is node for u, _ in v.uses)):  # type: ignore[union-attr]
                inner.append(p)
        if not inner:
            return MatchResult.fail(f"no input of {describe(node)} is a Concat on the same axis used only here")
        return Match(node, [*inner, node])

    def rewrite(self, m: Match, rw: Rewriter) -> ir.Value:
        inner = {id(n.output) for n in m.nodes[:-1]}
        inputs: list[ir.Value | None] = []
        for v in m.root.inputs:
            inputs.extend(v.producer.inputs if v is not None and id(v) in inner else [v])  # type: ignore[union-attr]
        return rw.like(m.root, inputs)


class SingleInput(Rule):
    name = "single-input-concat"
    labels = ("single",)
    pattern = op.Concat(Var("x"))

    def check(self, m: Match) -> MatchResult:
        x = m.value("x")
        if m.root.output.is_graph_output and (x.producer is None or x.is_graph_output):
            return MatchResult.fail("the output would only become an Identity of a graph input, constant or output")
        return MatchResult.OK

    def rewrite(self, m: Match, rw: Rewriter) -> ir.Value:
        return m.value("x")


class MergeConstants(Rule):
    """Adjacent constant inputs of a Concat become one constant."""

    name = "fold-constant-concat"
    labels = ("constants",)
    root_ops = ("Concat",)

    def match(self, node: ir.Node, env: Env) -> Match | MatchResult:
        axis = axis_of(node)
        consts = [ir.constant_array(v) for v in node.inputs]
        runs = [i for i in range(1, len(consts)) if consts[i] is not None and consts[i - 1] is not None]
        if axis is None or not runs:
            return MatchResult.fail(f"{describe(node)} has no two adjacent constant inputs (or its axis is unknown)")
        return Match(node, [node], extra={"axis": axis, "consts": consts})

    def check(self, m: Match) -> MatchResult:
        pieces = [(v, a) for v, a in zip(m.root.inputs, m.extra["consts"]) if a is not None]
        if sum(a.nbytes for _, a in pieces) > _FOLD_BYTES and any(len(v.uses) > 1 for v, _ in pieces):  # type: ignore[union-attr]
            return MatchResult.fail("merging would copy large constants that other nodes also read")
        return MatchResult.OK

    def rewrite(self, m: Match, rw: Rewriter) -> ir.Value:
        inputs: list[ir.Value | None] = []
        run: list[tuple[ir.Value | None, np.ndarray]] = []

        def flush() -> None:
            if len(run) > 1:
                inputs.append(rw.const(np.concatenate([a for _, a in run], axis=m.extra["axis"]), "concat"))
            else:
                inputs.extend(v for v, _ in run)
            run.clear()

        for v, a in zip(m.root.inputs, m.extra["consts"]):
            if a is not None:
                run.append((v, a))
            else:
                flush()
                inputs.append(v)
        flush()
        return rw.like(m.root, inputs)


def _pieces(concat: ir.Node, axis: int) -> list[tuple[int, int]] | None:
    """Each Concat input's [start, end) along ``axis``; None when a size is unknown."""
    out, offset = [], 0
    for v in concat.inputs:
        size = size_along(v, axis)
        if size is None:
            return None
        out.append((offset, offset + size))
        offset += size
    return out


class CancelSplit(Rule):
    """Split(Concat(a, b, c)) into the same pieces -> a, b, c."""

    name = "concat-split"
    labels = ("split",)
    root_ops = ("Split",)

    def match(self, node: ir.Node, env: Env) -> Match | MatchResult:
        data = node.inputs[0]
        concat = data.producer if data is not None else None
        if concat is None or concat.op_type != "Concat" or concat.graph is not node.graph:
            return MatchResult.fail(f"{describe(node)} does not read a Concat")
        axis, split_axis = axis_of(concat), axis_of(node)
        if axis is None or axis != split_axis:
            return MatchResult.fail(f"{describe(concat)} and {describe(node)} differ in axis (or it is unknown)")
        pieces = _pieces(concat, axis)
        total = pieces[-1][1] if pieces else None
        sizes = ops.split_sizes(node, env.model.opset(), total)
        if pieces is None or sizes is None or [e - s for s, e in pieces] != sizes:
            return MatchResult.fail(f"{describe(node)} does not take the pieces of {describe(concat)} back out")
        return Match(node, [node], outputs=[v for v in node.outputs if v is not None], kept=[concat])

    def rewrite(self, m: Match, rw: Rewriter) -> Sequence[ir.Value]:
        pieces = m.kept[0].inputs
        return [pieces[k] for k, v in enumerate(m.root.outputs) if v is not None]  # type: ignore[misc]


class CancelSlice(Rule):
    """Slice(Concat(a, b, c)) taking exactly one piece -> that piece."""

    name = "concat-slice"
    labels = ("slice",)
    root_ops = ("Slice",)

    def match(self, node: ir.Node, env: Env) -> Match | MatchResult:
        data = node.inputs[0]
        concat = data.producer if data is not None else None
        if concat is None or concat.op_type != "Concat" or concat.graph is not node.graph:
            return MatchResult.fail(f"{describe(node)} does not read a Concat")
        axis = axis_of(concat)
        params = ops.slice_params(node, env.model.opset())
        pieces = _pieces(concat, axis) if axis is not None else None
        if params is None or pieces is None:
            return MatchResult.fail(f"{describe(node)}'s parameters or {describe(concat)}'s piece sizes are unknown")
        starts, ends, axes, steps = params
        rank = rank_of(concat)
        axes = axes if axes is not None else list(range(len(starts)))
        axes = [a + rank if a < 0 and rank is not None else a for a in axes]
        if len(axes) != 1 or axes[0] != axis or (steps is not None and steps != [1]):
            return MatchResult.fail(f"{describe(node)} is not a unit-step slice along the concat axis")
        total = pieces[-1][1]
        start, end = (min(max(v + total if v < 0 else v, 0), total) for v in (starts[0], ends[0]))
        for k, piece in enumerate(pieces):
            if piece == (start, end):
                return Match(node, [node], kept=[concat], extra={"piece": concat.inputs[k]})
        return MatchResult.fail(f"{describe(node)} takes [{start}, {end}), not one piece of {describe(concat)}")

    def rewrite(self, m: Match, rw: Rewriter) -> ir.Value:
        return m.extra["piece"]  # type: ignore[no-any-return]


@register
class EliminateConcat(RewritePass):
    name = "eliminate-concat"
    description = "Flatten nested Concats, drop single-input ones, fold constant ones, cancel Concat+Split/Slice"
    rules = (FlattenNested(), SingleInput(), MergeConstants(), CancelSplit(), CancelSlice())
