"""fuse-pad-conv: a zero Pad in front of a Conv becomes the Conv's own padding.

Exporters spell the "same" padding of strided convolutions (TensorFlow style, EfficientNet) as an
explicit Pad. A constant-mode Pad of value 0 that pads only the spatial axes, by non-negative
amounts, and feeds only a Conv with explicit padding (auto_pad NOTSET or VALID) computes exactly that Conv
with the pads added together. Everything else is left alone: edge and reflect modes, a non-zero
value, negative pads (crops), padding of the batch or channel axes, a Pad with an ``axes`` input,
and Pads in front of pools (a zero would win a max where a pool's own padding never does).
"""

from __future__ import annotations

from optgraph import ir
from optgraph.passes.base import WEIGHTS_VISIBLE
from optgraph.passes.pattern import Match, MatchResult, RewritePass, Rewriter, Rule, Var, op
from optgraph.passes.registry import register


def pad_params(pad: ir.Node) -> tuple[list[int] | None, bool]:
    """A Pad's pads and whether it pads with zeros, in either form (attributes before opset 11,
    inputs since); pads are None when they are not constant."""
    if "pads" in pad.attrs or "paddings" in pad.attrs:
        return list(pad.attr("pads", pad.attr("paddings"))), float(pad.attr("value", 0.0)) == 0.0
    pads = ir.constant_array(pad.inputs[1]) if len(pad.inputs) > 1 else None
    if len(pad.inputs) < 3 or pad.inputs[2] is None:
        zero = True
    else:
        value = ir.constant_array(pad.inputs[2])
        zero = value is not None and value.size == 1 and not value.any()
    return (None if pads is None else [int(p) for p in pads]), zero


class PadIntoConv(Rule):
    name = "pad-into-conv"
    labels = ("pad", "conv")
    pattern = op.Conv(op.Pad(Var("x"), Var("pads", optional=True), Var("value", optional=True),
                             Var("axes", optional=True), name="pad"),
                      Var("w"), Var("b", optional=True), name="conv")

    def check(self, m: Match) -> MatchResult:
        pad, conv = m.node("pad"), m.node("conv")
        pads, zero = pad_params(pad)
        if pad.attr("mode", "constant") != "constant" or not zero:
            return MatchResult.fail("the Pad is not a constant pad with value 0")
        if len(pad.inputs) > 3 and pad.inputs[3] is not None:
            return MatchResult.fail("the Pad has an axes input")
        if conv.attr("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
            return MatchResult.fail("the Conv uses SAME auto_pad")
        if pads is None:
            return MatchResult.fail("the Pad's pads are not constant")
        rank = len(pads) // 2
        if rank < 3 or any(p < 0 for p in pads) or pads[0] or pads[1] or pads[rank] or pads[rank + 1]:
            return MatchResult.fail(f"pads {pads} touch the batch or channel axis or crop")
        return MatchResult.OK

    def rewrite(self, m: Match, rw: Rewriter) -> ir.Value:
        pad, conv = m.node("pad"), m.node("conv")
        pads, _ = pad_params(pad)
        assert pads is not None
        rank = len(pads) // 2
        spatial = rank - 2
        own = list(conv.attr("pads", [0] * (2 * spatial)))  # auto_pad VALID: no padding of its own
        merged = [own[i] + pads[2 + i] for i in range(spatial)] + \
                 [own[spatial + i] + pads[rank + 2 + i] for i in range(spatial)]
        return rw.like(conv, [m.value("x"), *conv.inputs[1:]], {"pads": merged, "auto_pad": "NOTSET"})


@register
class FusePadConv(RewritePass):
    name = "fuse-pad-conv"
    description = "Fold a zero Pad in front of a Conv into the Conv's padding"
    requires = WEIGHTS_VISIBLE
    rules = (PadIntoConv(),)
