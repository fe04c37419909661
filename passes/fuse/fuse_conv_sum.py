"""fuse-conv-sum: parallel convs on one input whose outputs are added become one conv (RepVGG's
re-parameterisation, done on the exported graph).

- ``Add(Conv_KxK(x), Conv_kxk(x))`` with ``k <= K``, both odd, the same group, strides and
  dilations, and the small kernel centred in the big one's window (its pads are the big one's
  minus ``(K - k) / 2`` times the dilation on every side): one KxK conv whose weights are the big
  weights plus the small ones zero-padded to KxK, bias the sum of the biases.
- ``Add(Conv(x), x)`` or ``Add(Conv(x), BatchNormalization(x))`` (the identity branch) with stride
  1, as many output as input channels and a centred window (output shape = input shape): the
  identity's per-channel scale goes on the centre tap of each channel's own input, its shift into
  the bias.

RepVGG exports as three branches per block (3x3 conv+BN, 1x1 conv+BN, identity BN) that TensorRT
runs as two or three kernels: timm RepVGG-A0 goes from 47-50 engine layers to one conv per block.
Results differ only by the order of the additions (fp32 rounding). Refused: a conv output read
twice or a graph output, non-constant weights or BN parameters, BN in training form, ``auto_pad``,
shapes that are not known to line up.
"""

from __future__ import annotations

import numpy as np

from optgraph import ir
from optgraph.ir.opset import is_onnx
from optgraph.passes.base import WEIGHTS_VISIBLE
from optgraph.passes.fuse.fuse_conv_bn import affine
from optgraph.passes.pattern import Env, Match, MatchResult, RewritePass, Rewriter, Rule, single_consumer
from optgraph.passes.registry import register


def _conv(v: ir.Value | None) -> tuple[ir.Node, np.ndarray, np.ndarray] | None:
    """(conv, weight, bias) when ``v`` is a Conv's output read once, with constant weight and bias."""
    if v is None or v.producer is None or single_consumer(v) is None:
        return None
    conv = v.producer
    if not is_onnx(conv, "Conv") or len(conv.inputs) < 2 or conv.attr("auto_pad", "NOTSET") != "NOTSET":
        return None
    w = ir.constant_array(conv.inputs[1])
    has_b = len(conv.inputs) > 2 and conv.inputs[2] is not None
    b = ir.constant_array(conv.inputs[2]) if has_b else None
    if w is None or w.ndim < 3 or (has_b and b is None) or any(k % 2 == 0 for k in w.shape[2:]):
        return None
    if conv.attr("kernel_shape") not in (None, list(w.shape[2:])):
        return None
    return conv, w, np.zeros(w.shape[0], w.dtype) if b is None else b


def _geometry(conv: ir.Node, w: np.ndarray) -> tuple[list[int], list[int], list[int]]:
    n = w.ndim - 2
    return (list(conv.attr("strides", [1] * n)), list(conv.attr("dilations", [1] * n)),
            list(conv.attr("pads", [0] * 2 * n)))


def _identity(v: ir.Value, x: ir.Value) -> tuple[np.ndarray, np.ndarray, ir.Node | None] | None:
    """(scale, shift, BN node) when ``v`` is ``x`` itself or an inference BN of ``x`` read once."""
    if v is x:
        return np.ones(1), np.zeros(1), None
    bn = v.producer
    if bn is None or not is_onnx(bn, "BatchNormalization") or bn.inputs[0] is not x or single_consumer(v) is None:
        return None
    if bn.attr("training_mode", 0) or any(o is not None for o in bn.outputs[1:]):
        return None
    params = [ir.constant_array(p) for p in bn.inputs[1:5]]
    if any(p is None or p.ndim != 1 for p in params):
        return None
    return (*affine(bn, *params), bn)  # type: ignore[arg-type]


class _SumRule(Rule):
    """A rule rooted at a two-input ONNX Add; ``match_sum`` looks at its operands."""

    @property
    def root_ops(self) -> tuple[str, ...]:
        return ("Add",)

    def match(self, node: ir.Node, env: Env) -> Match | MatchResult:
        if not is_onnx(node) or len(node.inputs) != 2:
            return MatchResult.fail("not a two-input ONNX Add")
        return self.match_sum(node)

    def match_sum(self, node: ir.Node) -> Match | MatchResult:
        raise NotImplementedError


class ConvPlusConv(_SumRule):
    name = "conv-plus-conv"
    labels = ("conv",)
    benefit = 2

    def match_sum(self, node: ir.Node) -> Match | MatchResult:
        a, b = _conv(node.inputs[0]), _conv(node.inputs[1])
        if a is None or b is None or a[0] is b[0] or a[0].inputs[0] is not b[0].inputs[0]:
            return MatchResult.fail("the Add's operands are not two convs of one input, each read once")
        big, small = (a, b) if a[1].shape[2:] >= b[1].shape[2:] else (b, a)
        (cb, wb, _), (cs, ws, _) = big, small
        (sb, db, pb), (ss, ds, ps) = _geometry(cb, wb), _geometry(cs, ws)
        if wb.shape[:2] != ws.shape[:2] or wb.dtype != ws.dtype or cb.attr("group", 1) != cs.attr("group", 1) \
                or sb != ss or db != ds:
            return MatchResult.fail("the convs differ in channels, group, strides or dilations")
        n = wb.ndim - 2
        if any(wb.shape[2 + i] < ws.shape[2 + i] for i in range(n)):
            return MatchResult.fail("neither kernel contains the other")
        off = [(wb.shape[2 + i] - ws.shape[2 + i]) // 2 * db[i] for i in range(n)]
        if any(pb[i] != ps[i] + off[i] or pb[n + i] != ps[n + i] + off[i] for i in range(n)):
            return MatchResult.fail("the small kernel is not centred in the big one's window")
        return Match(node, [cb, cs, node], extra={"big": big, "small": small})

    def rewrite(self, m: Match, rw: Rewriter) -> ir.Value:
        (cb, wb, bb), (_, ws, bs) = m.extra["big"], m.extra["small"]
        w = wb.astype(np.float64)
        lo = [(wb.shape[2 + i] - ws.shape[2 + i]) // 2 for i in range(wb.ndim - 2)]
        w[(slice(None), slice(None), *[slice(o, o + k) for o, k in zip(lo, ws.shape[2:])])] += ws
        bias = bb.astype(np.float64) + bs
        return rw.like(cb, [cb.inputs[0], rw.const(w.astype(wb.dtype), "sum_weight"),
                            rw.const(bias.astype(wb.dtype), "sum_bias")])


class ConvPlusIdentity(_SumRule):
    name = "conv-plus-identity"
    labels = ("conv", "identity")
    benefit = 1

    def match_sum(self, node: ir.Node) -> Match | MatchResult:
        for k in (0, 1):
            c = _conv(node.inputs[k])
            other = node.inputs[1 - k]
            if c is None or other is None:
                continue
            conv, w, _ = c
            x = conv.inputs[0]
            ident = _identity(other, x) if x is not None else None
            if ident is None:
                continue
            strides, dil, pads = _geometry(conv, w)
            n = w.ndim - 2
            centred = all(pads[i] == pads[n + i] == dil[i] * (w.shape[2 + i] - 1) // 2 for i in range(n))
            group = int(conv.attr("group", 1))
            cin = w.shape[1] * group
            if any(s != 1 for s in strides) or not centred or w.shape[0] != cin:
                return MatchResult.fail("the conv does not keep its input's shape (stride 1, centred, Cout = Cin)")
            if ident[2] is None and (x is None or x.shape is None or len(x.shape) != w.ndim):
                return MatchResult.fail("the identity's rank is unknown")
            if len(ident[0]) not in (1, cin):
                return MatchResult.fail("the BN does not have one parameter per channel")
            nodes = [conv, *([ident[2]] if ident[2] is not None else []), node]
            return Match(node, nodes, extra={"conv": c, "ident": ident})
        return MatchResult.fail("no operand is a conv whose own input (or a BN of it) is the other operand")

    def rewrite(self, m: Match, rw: Rewriter) -> ir.Value:
        (conv, w, b), (s, t, _) = m.extra["conv"], m.extra["ident"]
        cout, cpg = w.shape[0], w.shape[1]
        w64 = w.astype(np.float64)
        centre = tuple(k // 2 for k in w.shape[2:])
        channels = np.arange(cout)
        w64[(channels, channels % cpg, *centre)] += np.broadcast_to(s, (cout,))
        bias = b.astype(np.float64) + np.broadcast_to(t, (cout,))
        return rw.like(conv, [conv.inputs[0], rw.const(w64.astype(w.dtype), "sum_weight"),
                              rw.const(bias.astype(w.dtype), "sum_bias")])


@register
class FuseConvSum(RewritePass):
    name = "fuse-conv-sum"
    description = "Fold parallel convs (and an identity or BN branch) added together into one conv (RepVGG)"
    requires = WEIGHTS_VISIBLE
    rules = (ConvPlusConv(), ConvPlusIdentity())
