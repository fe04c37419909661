"""fuse-horizontal: parallel layers reading the same input become one wider layer and a Split.

Branches qualify when they read the same input and differ only in their output channels:

- Conv with group 1 and identical strides, pads, dilations, auto_pad and kernel size (1x1
  convolutions first: the Inception/GoogLeNet case), constant weights, bias in all, none or some
  (missing biases become zeros);
- MatMul with constant 2-D weights of the same input size, each optionally followed by an Add of
  a constant 1-D bias (present in all branches): the Q/K/V projections of a transformer;
- Gemm with constant weights and identical alpha, beta and transA (transB may differ).

The wide layer's weights are the branches' weights concatenated along the output channels. When
every branch ends in the same activation (same op, attributes and bounds) the activation is
applied once to the wide output. The wide output is split back with a Split (attribute form
before opset 13, input form after); when the branch outputs already feed one Concat, in order,
contiguously, on the channel axis, the wide output feeds the Concat directly and no Split is
made. Branch order is node order, so the output is deterministic. ``min_branches`` sets how many
parallel branches are worth fusing (default 2). ``split=false`` fuses only branches that meet in a
Concat: TensorRT fuses same-input layers itself when it builds, and imports a Split (with a
dynamic batch) as a dozen shape layers, so for TensorRT only the Concat case is a gain.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from optgraph import ir
from optgraph.ir.opset import ACTIVATIONS, activation_key, is_onnx
from optgraph.passes.base import WEIGHTS_VISIBLE
from optgraph.passes.pattern import Env, Match, MatchResult, RewritePass, Rewriter, Rule, describe, single_consumer
from optgraph.passes.registry import register


def split(rw: Rewriter, value: ir.Value, sizes: Sequence[int], axis: int) -> tuple[ir.Value, ...]:
    """``value`` split into pieces of ``sizes`` along ``axis``, in the opset's form of Split."""
    if rw.opset < 13:
        outs = rw.op("Split", [value], {"axis": axis, "split": list(sizes)}, outputs=len(sizes))
    else:
        outs = rw.op("Split", [value, rw.const(np.array(sizes, dtype=np.int64), "split_sizes")], {"axis": axis},
                     outputs=len(sizes))
    assert isinstance(outs, tuple)
    return outs


class _Horizontal(Rule):
    """Shared matching: group the compatible siblings of a node, extend, split or feed a Concat."""

    op_type: str

    def __init__(self, min_branches: int = 2, split: bool = True) -> None:
        if min_branches < 2:
            raise ValueError(f"min_branches must be at least 2, not {min_branches}")
        self.min_branches = min_branches
        self.split = split

    @property
    def root_ops(self) -> tuple[str, ...]:
        return (self.op_type,)

    def key(self, node: ir.Node) -> tuple[Any, ...] | None:
        """What must be equal for two branches to fuse; None when the node cannot be fused."""
        raise NotImplementedError

    def width(self, node: ir.Node) -> int:
        """The branch's number of output channels."""
        raise NotImplementedError

    def bias_tail(self, node: ir.Node) -> ir.Node | None:
        """A node that belongs to the branch after the layer itself (MatMul's bias Add)."""
        return None

    def concat_axis_ok(self, node: ir.Node, axis: int) -> bool:
        """Whether a Concat on ``axis`` joins branch outputs along their channels."""
        raise NotImplementedError

    def build(self, rw: Rewriter, branches: list[ir.Node], tails: list[ir.Node]) -> ir.Value:
        """The wide layer (and its bias tail) computing all branches at once."""
        raise NotImplementedError

    axis: int  # the channel axis the Split uses

    def siblings(self, x: ir.Value) -> tuple[dict[tuple[Any, ...], list[ir.Node]], dict[ir.Node, tuple[Any, ...]]]:
        """The fusable readers of ``x`` (as their first input) grouped by key, and each one's key."""
        groups: dict[tuple[Any, ...], list[ir.Node]] = {}
        keys: dict[ir.Node, tuple[Any, ...]] = {}
        for c in x.consumers:
            if c.op_type == self.op_type and is_onnx(c) and c.inputs[0] is x \
                    and x not in c.inputs[1:] and (key := self.key(c)) is not None:
                groups.setdefault(key, []).append(c)
                keys[c] = key
        return groups, keys

    def match(self, node: ir.Node, env: Env) -> Match | MatchResult:
        x = node.inputs[0]
        if x is not None and x.num_uses < self.min_branches:  # most layers: no siblings to look at
            return MatchResult.fail(f"'{x.name}' has {x.num_uses} reader(s), {self.min_branches} branches needed")
        # Readers are grouped (and their keys computed) once per input, so a value read by many
        # layers is not rescanned per reader. Rewrites only remove members (filtered here) and
        # add wide layers whose group they emptied, so the grouping stays right for the rest of
        # the run (a wide layer, absent from it, is not fused again in the same run).
        groups, keys = env.once(self.siblings, x) if x is not None else ({}, {})
        key = keys.get(node)
        if x is None or key is None:
            return MatchResult.fail(f"{describe(node)} has no constant weights of a form this rule fuses")
        group = groups.get(key, [])
        branches = sorted((b for b in group if b.graph is node.graph), key=env.position)
        if len(branches) < self.min_branches:
            return MatchResult.fail(f"{len(branches)} compatible branch(es) read '{x.name}', "
                                    f"{self.min_branches} needed")
        tails = [self.bias_tail(b) for b in branches]
        if any(t is None for t in tails):
            tails = []
        ends = [t for t in tails if t is not None] or branches
        acts = [single_consumer(e.output) for e in ends]
        act_keys = {activation_key(a) if a is not None and a.op_type in ACTIVATIONS and a.inputs[0] is e.output
                    else None for a, e in zip(acts, ends)}
        if None in act_keys or len(act_keys) != 1:
            acts = []
        ends = [a for a in acts if a is not None] or ends
        nodes = [*branches, *[t for t in tails if t is not None], *[a for a in acts if a is not None]]
        concat = self.direct_concat(ends, branches[0])
        if concat is None and not self.split:
            return MatchResult.fail(f"the branches reading '{x.name}' do not meet in one Concat (split=false)")
        return Match(node, nodes + ([concat] if concat else []), outputs=[concat.output] if concat else
                     [e.output for e in ends], anchor=branches[0],
                     extra={"branches": branches, "tails": tails, "acts": acts, "concat": concat, "ends": ends})

    def direct_concat(self, ends: list[ir.Node], branch: ir.Node) -> ir.Node | None:
        """The Concat all branch outputs feed, in order and contiguously, on the channel axis."""
        users = [single_consumer(e.output) for e in ends]
        concat = users[0]
        if concat is None or concat.op_type != "Concat" or not is_onnx(concat) \
                or any(u is not concat for u in users):
            return None
        start = concat.inputs.index(ends[0].output)
        run = concat.inputs[start:start + len(ends)]
        if list(run) != [e.output for e in ends] or not self.concat_axis_ok(branch, concat.attr("axis", 0)):
            return None
        return concat

    def rewrite(self, m: Match, rw: Rewriter) -> ir.Value | Sequence[ir.Value]:
        branches, acts = m.extra["branches"], m.extra["acts"]
        wide = self.build(rw, branches, m.extra["tails"])
        if acts:  # bounds become initializers: a Constant node may come after the new nodes' place
            bounds = [None if a is None else rw.const(a, "bound")
                      for a in (ir.constant_array(v) for v in acts[0].inputs[1:])]
            wide = rw.like(acts[0], [wide, *bounds])
        concat = m.extra["concat"]
        if concat is not None:
            start = concat.inputs.index(m.extra["ends"][0].output)
            inputs = [*concat.inputs[:start], wide, *concat.inputs[start + len(branches):]]
            return rw.like(concat, inputs, before=concat)
        return split(rw, wide, [self.width(b) for b in branches], self.axis)


def _weight(node: ir.Node, index: int = 1) -> np.ndarray | None:
    return ir.constant_array(node.inputs[index]) if len(node.inputs) > index else None


def _const(node: ir.Node, index: int = 1) -> np.ndarray:
    """A constant input that ``key`` already checked is there."""
    a = _weight(node, index)
    assert a is not None
    return a


def _conv_attrs(node: ir.Node, rank: int) -> tuple[Any, ...]:
    """The Conv attributes, defaults filled in, so equal meanings compare equal."""
    n = rank - 2
    return (tuple(node.attr("strides", [1] * n)), tuple(node.attr("pads", [0] * 2 * n)),
            tuple(node.attr("dilations", [1] * n)), node.attr("auto_pad", "NOTSET"))


class HorizontalConv(_Horizontal):
    name = "horizontal-conv"
    labels = ("conv",)
    benefit = 2
    op_type = "Conv"
    axis = 1

    def key(self, node: ir.Node) -> tuple[Any, ...] | None:
        w = _weight(node)
        if w is None or w.ndim < 3 or node.attr("group", 1) != 1 or len(node.inputs) > 3:
            return None
        if len(node.inputs) == 3 and node.inputs[2] is not None and _weight(node, 2) is None:
            return None
        if node.attr("kernel_shape") not in (None, list(w.shape[2:])):
            return None
        return (w.shape[1:], w.dtype.str, _conv_attrs(node, w.ndim))

    def width(self, node: ir.Node) -> int:
        return int(_const(node).shape[0])

    def concat_axis_ok(self, node: ir.Node, axis: int) -> bool:
        return axis in (1, 1 - _const(node).ndim)

    def build(self, rw: Rewriter, branches: list[ir.Node], tails: list[ir.Node]) -> ir.Value:
        weights = [_const(b) for b in branches]
        w = np.concatenate(weights, axis=0)
        inputs = [branches[0].inputs[0], rw.const(w, "wide_weight")]
        biases = [_weight(b, 2) for b in branches]
        if any(b is not None for b in biases):
            inputs.append(rw.const(np.concatenate([np.zeros(len(wt), w.dtype) if b is None else b
                                                   for b, wt in zip(biases, weights)]), "wide_bias"))
        return rw.like(branches[0], inputs)


class HorizontalConv1x1(HorizontalConv):
    name = "horizontal-conv1x1"
    labels = ("conv", "conv1x1")
    benefit = 3

    def key(self, node: ir.Node) -> tuple[Any, ...] | None:
        key = super().key(node)
        return key if key is not None and all(d == 1 for d in key[0][1:]) else None


class HorizontalMatMul(_Horizontal):
    name = "horizontal-matmul"
    labels = ("matmul",)
    op_type = "MatMul"
    axis = -1

    def key(self, node: ir.Node) -> tuple[Any, ...] | None:
        w = _weight(node)
        return None if w is None or w.ndim != 2 else (w.shape[0], w.dtype.str)

    def width(self, node: ir.Node) -> int:
        return int(_const(node).shape[1])

    def bias_tail(self, node: ir.Node) -> ir.Node | None:
        add = single_consumer(node.output)
        if add is None or add.op_type != "Add" or not is_onnx(add):
            return None
        other = add.inputs[1] if add.inputs[0] is node.output else add.inputs[0]
        b = ir.constant_array(other)
        return add if b is not None and b.shape == (self.width(node),) and other is not node.output else None

    def concat_axis_ok(self, node: ir.Node, axis: int) -> bool:
        return axis == -1

    def build(self, rw: Rewriter, branches: list[ir.Node], tails: list[ir.Node]) -> ir.Value:
        w = np.concatenate([_const(b) for b in branches], axis=1)
        wide = rw.like(branches[0], [branches[0].inputs[0], rw.const(w, "wide_weight")])
        if tails:
            b = np.concatenate([_const(t, 1 if t.inputs[0] is br.output else 0) for t, br in zip(tails, branches)])
            wide = rw.like(tails[0], [wide, rw.const(b, "wide_bias")])
        return wide


class HorizontalGemm(_Horizontal):
    name = "horizontal-gemm"
    labels = ("gemm",)
    op_type = "Gemm"
    axis = 1

    def key(self, node: ir.Node) -> tuple[Any, ...] | None:
        w = _weight(node)
        if w is None or w.ndim != 2:
            return None
        if len(node.inputs) > 2 and node.inputs[2] is not None and self.bias(node) is None:
            return None
        k = w.shape[1] if node.attr("transB", 0) else w.shape[0]
        return (k, w.dtype.str, float(node.attr("alpha", 1.0)), float(node.attr("beta", 1.0)), node.attr("transA", 0))

    def weight_kn(self, node: ir.Node) -> np.ndarray:
        w = _const(node)
        return w.T if node.attr("transB", 0) else w

    def width(self, node: ir.Node) -> int:
        return int(self.weight_kn(node).shape[1])

    def bias(self, node: ir.Node) -> np.ndarray | None:
        """C as a vector over the outputs (broadcast over rows only), or None."""
        c = _weight(node, 2)
        n = self.width(node)
        if c is None or c.ndim > 2 or (c.ndim == 2 and c.shape[0] != 1) or c.size not in (1, n):
            return None
        return np.broadcast_to(c.reshape(-1), (n,))

    def concat_axis_ok(self, node: ir.Node, axis: int) -> bool:
        return axis in (1, -1)

    def build(self, rw: Rewriter, branches: list[ir.Node], tails: list[ir.Node]) -> ir.Value:
        w = np.concatenate([self.weight_kn(b) for b in branches], axis=1)
        inputs = [branches[0].inputs[0], rw.const(w, "wide_weight")]
        if any(len(b.inputs) > 2 and b.inputs[2] is not None for b in branches):
            c = [self.bias(b) if len(b.inputs) > 2 and b.inputs[2] is not None else None for b in branches]
            inputs.append(rw.const(np.concatenate([np.zeros(self.width(b), w.dtype) if v is None else v
                                                   for v, b in zip(c, branches)]).astype(w.dtype), "wide_bias"))
        return rw.like(branches[0], inputs, {"transB": 0})


@register
class FuseHorizontal(RewritePass):
    name = "fuse-horizontal"
    description = "Fuse parallel Conv/MatMul/Gemm branches on one input into one wider layer plus Split"
    requires = WEIGHTS_VISIBLE

    @dataclass
    class Options(RewritePass.Options):
        min_branches: int = 2
        split: bool = True  # false: fuse only branches whose outputs meet, in order, in one Concat

    def make_rules(self) -> Sequence[Rule]:
        n, split = self.options.min_branches, self.options.split
        return (HorizontalConv1x1(n, split), HorizontalConv(n, split), HorizontalMatMul(n, split),
                HorizontalGemm(n, split))
