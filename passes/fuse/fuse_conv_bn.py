"""fuse-conv-bn: fold inference BatchNormalization, and per-channel Mul/Add, into the layer before.

BatchNormalization in inference form is a per-channel affine map ``y = s * x + t`` with
``s = scale / sqrt(var + epsilon)`` and ``t = bias - mean * s``; after a Conv, ConvTranspose,
Gemm or MatMul(+Add) it folds into that layer's weights and bias, and the BN node disappears. A
per-output-channel Mul or Add by a constant after a convolution folds the same way.

Folded tensors are computed in float64 and cast back to the weight's dtype (fp16 weights stay
fp16), and always become new initializers: a weight another node also reads is never edited.
Refused: training-mode BN (``training_mode=1`` or its statistics outputs present), parameters
that are not constants, a layer output that is a graph output or has other consumers, and
shapes that do not line up (BN's channel axis is 1; MatMul only folds when its output is 2-D).
"""

from __future__ import annotations

import numpy as np

from optgraph import ir
from optgraph.ir import opset
from optgraph.passes.base import WEIGHTS_VISIBLE
from optgraph.passes.pattern import Env, Match, MatchResult, RewritePass, Rewriter, Rule, Var, op
from optgraph.passes.registry import register

CONV_OPS = ("Conv", "ConvTranspose")


def _bn(producer: object) -> object:
    return op.BatchNormalization(producer, Var("scale", const=True), Var("bias", const=True),
                                 Var("mean", const=True), Var("var", const=True), name="bn",
                                 attrs={"training_mode": 0})


def affine(bn: ir.Node, scale: np.ndarray, bias: np.ndarray, mean: np.ndarray,
           var: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """An inference BN's per-channel (scale, shift) in float64, from its parameter arrays."""
    scale, bias, mean, var = (p.astype(np.float64) for p in (scale, bias, mean, var))
    s = scale / np.sqrt(var + float(bn.attr("epsilon", 1e-5)))
    return s, bias - mean * s


def bn_affine(m: Match) -> tuple[np.ndarray, np.ndarray]:
    """The matched BN node's per-channel (scale, shift) in float64."""
    return affine(m.node("bn"), *(m.array(k) for k in ("scale", "bias", "mean", "var")))


def check_bn(m: Match, channels: int | None) -> MatchResult:
    bn = m.node("bn")
    if any(v is not None for v in bn.outputs[1:]):
        return MatchResult.fail(f"BatchNormalization '{bn.name}' has training outputs")
    if channels is None:
        return MatchResult.fail("the layer's output channel count is unknown")
    for key in ("scale", "bias", "mean", "var"):
        shape = m.array(key).shape
        if shape != (channels,):
            return MatchResult.fail(f"BN {key} has shape {shape}, the layer {channels} channels")
    return MatchResult.OK


def out_channels(conv: ir.Node, w: np.ndarray) -> int:
    """Output channels of a Conv (weights Cout x Cin/g x k...) or ConvTranspose (Cin x Cout/g x k...)."""
    return int(w.shape[1] * conv.attr("group", 1)) if conv.op_type == "ConvTranspose" else int(w.shape[0])


def scale_conv_weight(conv: ir.Node, w: np.ndarray, s: np.ndarray) -> np.ndarray:
    """``w`` with output channel ``c`` multiplied by ``s[c]``, in float64."""
    w64 = w.astype(np.float64)
    ones = (1,) * (w.ndim - 2)
    if conv.op_type == "Conv":
        return w64 * s.reshape(-1, 1, *ones)
    g = int(conv.attr("group", 1))  # ConvTranspose: group blocks of Cin/g rows, Cout/g columns each
    blocks = w64.reshape(g, w.shape[0] // g, *w.shape[1:])
    return (blocks * s.reshape(g, 1, -1, *ones)).reshape(w.shape)


def refit_conv(m: Match, rw: Rewriter, s: np.ndarray, t: np.ndarray) -> ir.Value:
    """The conv of ``m`` with outputs mapped to ``s * y + t`` per channel, on new tensors."""
    conv, w, b = m.node("conv"), m.array("w"), m.array_or_none("b")
    b64 = np.zeros(len(s)) if b is None else b.astype(np.float64)
    w_new = rw.const(scale_conv_weight(conv, w, s).astype(w.dtype), m.value("w").name)
    b_name = m.value("b").name if b is not None else conv.name + "_bias"
    b_new = rw.const((b64 * s + t).astype(w.dtype), b_name)
    return rw.like(conv, [m.value("x"), w_new, b_new])


def _conv(name: str = "conv") -> object:
    return op(CONV_OPS, Var("x"), Var("w", const=True), Var("b", const=True, optional=True), name=name)


_POOL_REACH = 3  # elementwise ops (activation, residual Add) between a BN and the pooling it feeds
_POINTWISE = opset.ELEMENTWISE | frozenset(opset.ACTIVATIONS)


def _spatial_mean(node: ir.Node, rank: int, version: int) -> bool:
    """A ReduceMean over every spatial axis of a rank-``rank`` tensor: timm's squeeze-excitation,
    ``x.mean((2, 3))``."""
    if not opset.is_onnx(node, "ReduceMean") or rank < 3:
        return False
    axes = opset.axes(node, version, rank=rank)
    return axes is not None and sorted(axes) == list(range(2, rank))


def feeds_global_pool(v: ir.Value, rank: int, version: int, depth: int = _POOL_REACH) -> bool:
    """Whether ``v`` (of rank ``rank``, in a model of opset ``version``) reaches a global average
    pooling or a spatial mean through at most ``depth`` elementwise ops, or a spatial mean through
    one Concat (GhostNet: the two halves of a ghost module meet in a Concat that timm's SE squeeze
    reads; TensorRT computes the BN, the activation, the concat and the mean in one kernel: 140 ->
    127 engine layers but 28 -> 31 standalone kernels when that BN is folded)."""
    for node in v.consumers:
        if opset.is_onnx(node, "GlobalAveragePool") or _spatial_mean(node, rank, version):
            return True
        if not depth or not opset.is_onnx(node) or not node.outputs:
            continue
        if node.op_type in _POINTWISE and feeds_global_pool(node.outputs[0], rank, version, depth - 1):
            return True
        if node.op_type == "Concat" and any(_spatial_mean(user, rank, version) for user in node.outputs[0].consumers):
            return True
    return False


class BnIntoConv(Rule):
    """Conv -> BN folds, except before a global average pooling (an SE block's squeeze, a
    classifier head): there TensorRT fuses the BN, the activation, a residual Add and the pooling
    into one kernel, while a folded BN leaves the pointwise ops in the conv and costs a transposition
    and a pooling kernel of their own (one engine layer more per pooling: ResNet-50 57 -> 58,
    MobileNetV3-Large 82 -> 87; docs/passes/fuse-conv-bn.md)."""

    name = "bn-into-conv"
    labels = ("bn", "conv")
    benefit = 2
    pattern = _bn(_conv())

    def match(self, node: ir.Node, env: Env) -> Match | MatchResult:
        m = super().match(node, env)
        if isinstance(m, Match):
            m.extra["opset"] = env.model.opset()  # where a ReduceMean's axes are: attribute or input
        return m

    def check(self, m: Match) -> MatchResult:
        w = m.array("w")
        if w.ndim < 3:
            return MatchResult.fail("weight rank < 3")
        if feeds_global_pool(m.node("bn").outputs[0], w.ndim, m.extra["opset"]):
            return MatchResult.fail("the BN feeds a global average pooling (TensorRT fuses BN and pooling)")
        return check_bn(m, out_channels(m.node("conv"), w))

    def rewrite(self, m: Match, rw: Rewriter) -> ir.Value:
        return refit_conv(m, rw, *bn_affine(m))


class BnIntoGemm(Rule):
    name = "bn-into-gemm"
    labels = ("bn", "gemm")
    pattern = _bn(op.Gemm(Var("a"), Var("w", const=True), Var("c", const=True, optional=True), name="gemm"))

    def check(self, m: Match) -> MatchResult:
        w, c = m.array("w"), m.array_or_none("c")
        if w.ndim != 2 or (c is not None and c.ndim > 2):
            return MatchResult.fail("Gemm operands are not 2-D")
        return check_bn(m, w.shape[0] if m.node("gemm").attr("transB", 0) else w.shape[1])

    def rewrite(self, m: Match, rw: Rewriter) -> ir.Value:
        s, t = bn_affine(m)
        gemm, w, c = m.node("gemm"), m.array("w"), m.array_or_none("c")
        trans_b = bool(gemm.attr("transB", 0))
        w_new = w.astype(np.float64) * (s[:, None] if trans_b else s[None, :])
        beta_c = 0.0 if c is None else float(gemm.attr("beta", 1.0)) * c.astype(np.float64)
        c_new = beta_c * s + t  # Gemm's beta*C goes through the BN too
        return rw.like(gemm, [m.value("a"), rw.const(w_new.astype(w.dtype), m.value("w").name),
                              rw.const(np.asarray(c_new, dtype=w.dtype), gemm.name + "_bias")], {"beta": 1.0})


def _rank2(v: ir.Value) -> bool:
    return v.shape is not None and len(v.shape) == 2


class BnIntoMatMul(Rule):
    """MatMul(x, W) [+ bias] -> BN, when x is known to be 2-D (BN's channel axis is then W's columns)."""

    name = "bn-into-matmul"
    labels = ("bn", "matmul")
    pattern = _bn(op.Add(op.MatMul(Var("x", where=_rank2), Var("w", const=True), name="mm"),
                         Var("b", const=True), name="add"))

    def check(self, m: Match) -> MatchResult:
        w, b = m.array("w"), m.array_or_none("b")
        if w.ndim != 2 or (b is not None and b.ndim > 2):
            return MatchResult.fail("MatMul weight or bias is not at most 2-D")
        return check_bn(m, w.shape[1])

    def rewrite(self, m: Match, rw: Rewriter) -> ir.Value:
        s, t = bn_affine(m)
        w, b = m.array("w"), m.array_or_none("b")
        b64 = 0.0 if b is None else b.astype(np.float64)
        w_new = rw.const((w.astype(np.float64) * s).astype(w.dtype), m.value("w").name)
        mm = rw.like(m.node("mm"), [m.value("x"), w_new])
        return rw.op("Add", [mm, rw.const(np.asarray(b64 * s + t, dtype=w.dtype), "bias")])


class BnIntoMatMulNoBias(BnIntoMatMul):
    name = "bn-into-matmul-nobias"
    pattern = _bn(op.MatMul(Var("x", where=_rank2), Var("w", const=True), name="mm"))


def channel_vector(c: np.ndarray, rank: int, channels: int) -> np.ndarray | None:
    """``c`` as a length-``channels`` vector when it broadcasts per output channel (axis 1) of a
    rank-``rank`` tensor without changing its shape; None otherwise ([N,C,1,1] with N > 1 is not)."""
    if c.ndim > rank:
        return None
    full = (1,) * (rank - c.ndim) + c.shape
    if any(d != 1 for i, d in enumerate(full) if i != 1) or full[1] not in (1, channels):
        return None
    return np.broadcast_to(c.reshape(-1).astype(np.float64), (channels,))


class _ChannelAffineIntoConv(Rule):
    labels = ("channel-affine", "conv")

    def check(self, m: Match) -> MatchResult:
        w, c = m.array("w"), m.array("c")
        if w.ndim < 3:
            return MatchResult.fail("weight rank < 3")
        if c.dtype != w.dtype:
            return MatchResult.fail(f"constant dtype {c.dtype} differs from the weight's {w.dtype}")
        if channel_vector(c, w.ndim, out_channels(m.node("conv"), w)) is None:
            return MatchResult.fail(f"constant of shape {c.shape} is not per output channel")
        return MatchResult.OK

    def vector(self, m: Match) -> np.ndarray:
        w = m.array("w")
        v = channel_vector(m.array("c"), w.ndim, out_channels(m.node("conv"), w))
        assert v is not None  # check() made sure
        return v


class MulIntoConv(_ChannelAffineIntoConv):
    name = "mul-into-conv"
    pattern = op.Mul(_conv(), Var("c", const=True))

    def rewrite(self, m: Match, rw: Rewriter) -> ir.Value:
        v = self.vector(m)
        return refit_conv(m, rw, v, np.zeros_like(v))


class AddIntoConv(_ChannelAffineIntoConv):
    name = "add-into-conv"
    pattern = op.Add(_conv(), Var("c", const=True))

    def rewrite(self, m: Match, rw: Rewriter) -> ir.Value:
        v = self.vector(m)
        return refit_conv(m, rw, np.ones_like(v), v)


@register
class FuseConvBn(RewritePass):
    name = "fuse-conv-bn"
    description = "Fold inference BatchNormalization and per-channel Mul/Add into Conv, ConvTranspose, Gemm, MatMul"
    requires = WEIGHTS_VISIBLE
    rules = (BnIntoConv(), BnIntoGemm(), BnIntoMatMul(), BnIntoMatMulNoBias(), MulIntoConv(), AddIntoConv())
