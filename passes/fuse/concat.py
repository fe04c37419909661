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


def _absorbed(v: ir.Value | None, parent: ir.Node, axis: int) -> ir.Node | None:
    """The Concat producing ``v`` when ``parent`` (a Concat on ``axis``) can take its inputs over."""
    if v is None or v.is_graph_output or any(u is not parent for u, _ in v.uses):
        return None
    p = v.producer
    if p is None or p.op_type != "Concat" or not ops.is_onnx(p) or p.graph is not parent.graph:
        return None
    return p if axis_of(p) == axis else None


class FlattenNested(Rule):
    """Concat(a, Concat(b, Concat(c, d)), e) on one axis -> Concat(a, b, c, d, e).

    A whole tree of nested Concats is flattened by one rewrite at its outermost Concat (an inner
    Concat whose only reader will absorb it waits), so deep nests cost linear time.
    """

    name = "flatten-concat"
    labels = ("flatten",)
    root_ops = ("Concat",)

    def match(self, node: ir.Node, env: Env) -> Match | MatchResult:
        axis = axis_of(node)
        if axis is None:
            return MatchResult.fail(f"the axis of {describe(node)} is unknown")
        users = node.output.consumers
        if len(users) == 1 and users[0].op_type == "Concat":
            outer_axis = axis_of(users[0])
            if outer_axis is not None and _absorbed(node.output, users[0], outer_axis) is node:
                return MatchResult.fail(f"{describe(node)} will be flattened into {describe(users[0])}")
        inner: dict[int, ir.Node] = {}  # parents before children
        stack = [node]
        while stack:
            parent = stack.pop()
            for v in parent.inputs:
                p = _absorbed(v, parent, axis)
                if p is not None and id(p) not in inner:
                    inner[id(p)] = p
                    stack.append(p)
        if not inner:
            return MatchResult.fail(f"no input of {describe(node)} is a Concat on the same axis used only here")
        return Match(node, [*reversed(inner.values()), node], extra={"inner": {id(n.output) for n in inner.values()}})

    def rewrite(self, m: Match, rw: Rewriter) -> ir.Value:
        inner = m.extra["inner"]
        flat: list[ir.Value | None] = []
        stack: list[ir.Value | None] = list(reversed(m.root.inputs))
        while stack:
            v = stack.pop()
            if v is not None and v.producer is not None and id(v) in inner:
                stack.extend(reversed(v.producer.inputs))
            else:
                flat.append(v)
        return rw.like(m.root, flat)


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
        pieces = [(v, a) for v, a in zip(m.root.inputs, m.extra["consts"]) if v is not None and a is not None]
        if sum(a.nbytes for _, a in pieces) > _FOLD_BYTES and any(v.num_uses > 1 for v, _ in pieces):
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


def concat_pieces(concat: ir.Node) -> tuple[int, dict[tuple[int, int], int]] | None:
    """The Concat's axis and each input's [start, end) along it (mapped to the input's index);
    None when the axis or a size is unknown. Matchers read it through ``env.once``: a Concat with
    many Slice readers is measured once."""
    axis = axis_of(concat)
    if axis is None:
        return None
    pieces, offset = {}, 0
    for k, v in enumerate(concat.inputs):
        size = size_along(v, axis)
        if size is None:
            return None
        pieces.setdefault((offset, offset + size), k)
        offset += size
    return axis, pieces


def concat_read_by(node: ir.Node) -> ir.Node | None:
    """The Concat (of this graph) producing ``node``'s first input, if that is what produces it."""
    data = node.inputs[0]
    concat = data.producer if data is not None else None
    if concat is None or concat.op_type != "Concat" or not ops.is_onnx(concat) \
            or concat.graph is not node.graph:
        return None
    return concat


class CancelSplit(Rule):
    """Split(Concat(a, b, c)) into the same pieces -> a, b, c."""

    name = "concat-split"
    labels = ("split",)
    root_ops = ("Split",)

    def match(self, node: ir.Node, env: Env) -> Match | MatchResult:
        concat = concat_read_by(node)
        if concat is None:
            return MatchResult.fail(f"{describe(node)} does not read a Concat")
        found = env.once(concat_pieces, concat)
        if found is None or found[0] != axis_of(node):
            return MatchResult.fail(f"{describe(concat)} and {describe(node)} differ in axis (or a size is unknown)")
        pieces = list(found[1])
        sizes = ops.split_sizes(node, env.model.opset(), pieces[-1][1] if pieces else None)
        if len(pieces) != len(concat.inputs) or sizes != [e - s for s, e in pieces]:
            return MatchResult.fail(f"{describe(node)} does not take the pieces of {describe(concat)} back out")
        return Match(node, [node], outputs=[v for v in node.outputs if v is not None], kept=[concat])

    def rewrite(self, m: Match, rw: Rewriter) -> Sequence[ir.Value]:
        return [piece for piece, out in zip(m.kept[0].inputs, m.root.outputs) if piece is not None and out is not None]


class CancelSlice(Rule):
    """Slice(Concat(a, b, c)) taking exactly one piece -> that piece."""

    name = "concat-slice"
    labels = ("slice",)
    root_ops = ("Slice",)

    def match(self, node: ir.Node, env: Env) -> Match | MatchResult:
        concat = concat_read_by(node)
        if concat is None:
            return MatchResult.fail(f"{describe(node)} does not read a Concat")
        found = env.once(concat_pieces, concat)
        params = ops.slice_params(node, env.model.opset())
        if params is None or found is None:
            return MatchResult.fail(f"{describe(node)}'s parameters or {describe(concat)}'s piece sizes are unknown")
        axis, pieces = found
        starts, ends, axes, steps = params
        rank = rank_of(concat)
        axes = axes if axes is not None else list(range(len(starts)))
        axes = [a + rank if a < 0 and rank is not None else a for a in axes]
        if len(axes) != 1 or axes[0] != axis or (steps is not None and steps != [1]):
            return MatchResult.fail(f"{describe(node)} is not a unit-step slice along the concat axis")
        total = max((e for _, e in pieces), default=0)
        start, end = (min(max(v + total if v < 0 else v, 0), total) for v in (starts[0], ends[0]))
        if (start, end) in pieces:
            return Match(node, [node], kept=[concat], extra={"piece": concat.inputs[pieces[(start, end)]]})
        return MatchResult.fail(f"{describe(node)} takes [{start}, {end}), not one piece of {describe(concat)}")

    def rewrite(self, m: Match, rw: Rewriter) -> ir.Value:
        piece: ir.Value = m.extra["piece"]
        return piece


@register
class EliminateConcat(RewritePass):
    name = "eliminate-concat"
    description = "Flatten nested Concats, drop single-input ones, fold constant ones, cancel Concat+Split/Slice"
    rules = (FlattenNested(), SingleInput(), MergeConstants(), CancelSplit(), CancelSlice())
