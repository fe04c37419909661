"""fuse-branch-pairs: two parallel conv -> act -> conv -> act branches that meet side by side in a
Concat become one such branch: a wide first conv and a block-diagonal second conv.

The GoogLeNet inception block has two such branches (1x1 reduce -> 3x3, twice) on one input,
written next to each other into the block's Concat. Fused, the first convs become one wider conv
(weights concatenated along the output channels), the second convs one conv whose weights are
block-diagonal: each output channel reads only its own branch's channels, the other blocks are
zeros, so every output element is the same sum of the same products plus exact zeros. The
branch pair's output is then one contiguous slice of the Concat, which TensorRT writes in place.

Why not `fuse-horizontal` with a Split: TensorRT materialises every Split piece as a copy kernel
(GoogLeNet: 28 of them). This form needs no Split: measured on tensorrt-rtx 1.7, GoogLeNet's
engine goes from 73 layers / 2 standalone kernels / 35.4 MB activation memory to 55 / 2 / 20.1.
The price is the zero blocks: the second conv does ``(cin_a + cin_b) * (cout_a + cout_b)`` per
output position instead of ``cin_a * cout_a + cin_b * cout_b``; ``max_overhead`` (default 0.7)
refuses pairs whose fused second conv would do more than that fraction of extra multiply-adds
(GoogLeNet's pairs: 38-67%; the whole network 1.50 -> 1.85 GMAC).

Required of both branches: the same input; group-1 Convs with constant weights (bias optional);
first convs with equal kernel and attributes, second convs likewise; the same activation (op,
attributes, bounds) after each first conv and after each second conv, or none; every
intermediate value read once and not a graph output; the two outputs adjacent, in order, in one
Concat on the channel axis.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from optgraph import ir
from optgraph.ir.opset import ACTIVATIONS, activation_key, is_onnx
from optgraph.passes.base import WEIGHTS_VISIBLE
from optgraph.passes.pattern import Env, Match, MatchResult, RewritePass, Rewriter, Rule, single_consumer
from optgraph.passes.registry import register


@dataclass(frozen=True)
class _Stage:
    conv: ir.Node
    act: ir.Node | None
    w: np.ndarray
    b: np.ndarray | None

    @property
    def output(self) -> ir.Value:
        return (self.act or self.conv).output


def _conv_key(conv: ir.Node, w: np.ndarray) -> tuple[Any, ...]:
    n = w.ndim - 2
    return (w.shape[2:], w.dtype.str, tuple(conv.attr("strides", [1] * n)), tuple(conv.attr("pads", [0] * 2 * n)),
            tuple(conv.attr("dilations", [1] * n)), conv.attr("auto_pad", "NOTSET"))


def _stage(v: ir.Value | None) -> _Stage | None:
    """The conv (and activation) producing ``v``, when it is a group-1 Conv with constant weights."""
    if v is None or v.producer is None:
        return None
    act, conv = None, v.producer
    if is_onnx(conv) and conv.op_type in ACTIVATIONS and conv.inputs[0] is not None:
        act, conv = conv, conv.inputs[0].producer
        if conv is None or single_consumer(act.inputs[0]) is not act:
            return None
    if not is_onnx(conv, "Conv") or conv.attr("group", 1) != 1 or len(conv.inputs) < 2:
        return None
    w = ir.constant_array(conv.inputs[1])
    b = ir.constant_array(conv.inputs[2]) if len(conv.inputs) > 2 and conv.inputs[2] is not None else None
    if w is None or w.ndim < 3 or (len(conv.inputs) > 2 and conv.inputs[2] is not None and b is None):
        return None
    if conv.attr("kernel_shape") not in (None, list(w.shape[2:])):
        return None
    return _Stage(conv, act, w, b)


def _branch(v: ir.Value) -> tuple[_Stage, _Stage] | None:
    """(first, second) stage of a conv -> act -> conv -> act branch ending in ``v``."""
    second = _stage(v)
    if second is None or (first := _stage(second.conv.inputs[0])) is None:
        return None
    return (first, second) if single_consumer(first.output) is second.conv else None


def _same_act(a: ir.Node | None, b: ir.Node | None) -> bool:
    if a is None or b is None:
        return a is b
    key = activation_key(a)
    return key is not None and key == activation_key(b)


def _bias(s: _Stage) -> np.ndarray:
    return np.zeros(s.w.shape[0], s.w.dtype) if s.b is None else s.b


class BranchPair(Rule):
    name = "branch-pair"
    labels = ("conv",)
    benefit = 2

    def __init__(self, max_overhead: float = 0.7) -> None:
        if max_overhead < 0:
            raise ValueError(f"max_overhead must be at least 0, not {max_overhead}")
        self.max_overhead = max_overhead

    @property
    def root_ops(self) -> tuple[str, ...]:
        return ("Concat",)

    def match(self, node: ir.Node, env: Env) -> Match | MatchResult:
        if not is_onnx(node):
            return MatchResult.fail("not an ONNX Concat")
        reason = "no two adjacent Concat inputs are conv -> act -> conv -> act branches of one input"
        for k in range(len(node.inputs) - 1):
            a_out, b_out = node.inputs[k], node.inputs[k + 1]
            if a_out is None or b_out is None or a_out is b_out:
                continue
            if single_consumer(a_out) is not node or single_consumer(b_out) is not node:
                continue
            a, b = _branch(a_out), _branch(b_out)
            if a is None or b is None or a[0].conv.inputs[0] is not b[0].conv.inputs[0]:
                continue
            if node.attr("axis", 0) not in (1, 1 - a[1].w.ndim):
                return MatchResult.fail("the Concat does not join channels")
            if any(_conv_key(x.conv, x.w) != _conv_key(y.conv, y.w) or not _same_act(x.act, y.act)
                   for x, y in zip(a, b)):
                reason = "the branches' convs or activations differ"
                continue
            (_, sa), (_, sb) = a, b
            separate = sa.w.shape[0] * sa.w.shape[1] + sb.w.shape[0] * sb.w.shape[1]
            fused = (sa.w.shape[0] + sb.w.shape[0]) * (sa.w.shape[1] + sb.w.shape[1])
            if fused > (1 + self.max_overhead) * separate:
                reason = f"the block-diagonal conv would do {fused / separate - 1:.0%} more work " \
                         f"(max_overhead={self.max_overhead:g})"
                continue
            nodes = [n for s in (*a, *b) for n in (s.conv, s.act) if n is not None]
            return Match(node, [*nodes, node], extra={"a": a, "b": b, "k": k})
        return MatchResult.fail(reason)

    def rewrite(self, m: Match, rw: Rewriter) -> ir.Value:
        (fa, sa), (fb, sb), k = m.extra["a"], m.extra["b"], m.extra["k"]
        w1 = np.concatenate([fa.w, fb.w])
        x = rw.like(fa.conv, [fa.conv.inputs[0], rw.const(w1, "pair_weight"),
                              rw.const(np.concatenate([_bias(fa), _bias(fb)]), "pair_bias")])
        if fa.act is not None:
            x = rw.like(fa.act, [x, *[None if v is None else rw.const(ir.constant_array(v), "bound")
                                      for v in fa.act.inputs[1:]]])
        (oa, ia), (ob, ib) = sa.w.shape[:2], sb.w.shape[:2]
        w2 = np.zeros((oa + ob, ia + ib, *sa.w.shape[2:]), sa.w.dtype)
        w2[:oa, :ia], w2[oa:, ia:] = sa.w, sb.w
        y = rw.like(sa.conv, [x, rw.const(w2, "block_diagonal_weight"),
                              rw.const(np.concatenate([_bias(sa), _bias(sb)]), "pair_bias")])
        if sa.act is not None:
            y = rw.like(sa.act, [y, *[None if v is None else rw.const(ir.constant_array(v), "bound")
                                      for v in sa.act.inputs[1:]]])
        concat = m.root
        return rw.like(concat, [*concat.inputs[:k], y, *concat.inputs[k + 2:]], before=concat)


@register
class FuseBranchPairs(RewritePass):
    name = "fuse-branch-pairs"
    description = "Fuse two parallel conv-act-conv-act branches meeting in a Concat (wide conv + block-diagonal conv)"
    requires = WEIGHTS_VISIBLE

    @dataclass
    class Options(RewritePass.Options):
        max_overhead: float = 0.7  # extra multiply-adds of the block-diagonal conv, as a fraction

    def make_rules(self) -> Sequence[Rule]:
        return (BranchPair(self.options.max_overhead),)
