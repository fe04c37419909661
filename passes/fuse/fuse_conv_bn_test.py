"""fuse-conv-bn: golden cases per layer kind, refusals, opset coverage, random graphs, broken variants."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from onnx import helper, parser

from optgraph import ir
from optgraph.passes import run_passes
from optgraph.passes.fuse import fuse_conv_bn
from optgraph.passes.testing import MOTIFS, assert_equivalent, check_pass, models
from optgraph.passes.testing.golden import assert_rewrites_to, rewrite_text
from optgraph.passes.testing.mutants import assert_idempotent, assert_mutant_caught
from optgraph.passes.testing.strategies import (DrawFn, GraphBuilder, activation, axis_attr_or_input, batchnorm, conv,
                                                 gemm, matmul, param)

NEWEST = onnx.defs.onnx_opset_version()
ORT_NEWEST = 26  # the newest opset onnxruntime 1.31 runs


def header(opset: int = 17) -> str:
    return f'<ir_version: 8, opset_import: ["" : {opset}]>'


# BN with scale [4, 9], bias [0.5, 0], mean [1, 0], var [3, 8], epsilon 1: s = [2, 3], t = [-1.5, 0].
BN_PARAMS = "float[2] s = {4.0, 9.0}, float[2] bb = {0.5, 0.0}, float[2] mu = {1.0, 0.0}, float[2] var = {3.0, 8.0}"
BN = "BatchNormalization<epsilon=1.0>"


@pytest.mark.parametrize("opset", range(11, NEWEST + 1))
def test_conv_bn_folds_at_every_opset(opset: int) -> None:
    report = assert_rewrites_to("fuse-conv-bn", header(opset) + f"""
        g (float[1,2,4,4] x) => (float[1,2,4,4] y)
          <float[2,2,1,1] w = {{1.0, 2.0, 3.0, 4.0}}, float[2] b = {{1.0, -1.0}}, {BN_PARAMS}> {{
          c = Conv<kernel_shape=[1,1]>(x, w, b)
          y = {BN}(c, s, bb, mu, var)
        }}""", header(opset) + """
        g (float[1,2,4,4] x) => (float[1,2,4,4] y)
          <float[2,2,1,1] w2 = {2.0, 4.0, 9.0, 12.0}, float[2] b2 = {0.5, -3.0}> {
          y = Conv<kernel_shape=[1,1]>(x, w2, b2)
        }""")
    assert report.totals() == {"bn-into-conv": 1}


def test_conv_without_bias_gets_one_and_params_through_identity_and_constant() -> None:
    assert_rewrites_to("fuse-conv-bn", header() + """
        g (float[1,2,4,4] x) => (float[1,2,4,4] y) <float[2,2,1,1] w = {1.0, 2.0, 3.0, 4.0}, float[2] s = {4.0, 9.0},
                                                 float[2] var = {3.0, 8.0}> {
          bb = Constant<value_floats = [0.5, 0.0]>()
          mu = Constant<value = float[2] {1.0, 0.0}>()
          si = Identity(s)
          c = Conv(x, w)
          y = BatchNormalization<epsilon=1.0>(c, si, bb, mu, var)
        }""", header() + """
        g (float[1,2,4,4] x) => (float[1,2,4,4] y) <float[2,2,1,1] w2 = {2.0, 4.0, 9.0, 12.0}, float[2] b2 = {-1.5, 0.0}> {
          y = Conv(x, w2, b2)
        }""")


def test_grouped_conv_transpose_scales_its_cout_columns() -> None:
    # ConvTranspose weights are Cin x Cout/group: rows 0-1 feed output channel 0, rows 2-3 channel 1.
    assert_rewrites_to("fuse-conv-bn", header() + f"""
        g (float[1,4,3,3] x) => (float[1,2,3,3] y) <float[4,1,1,1] w = {{1.0, 1.0, 1.0, 1.0}}, {BN_PARAMS}> {{
          c = ConvTranspose<group=2>(x, w)
          y = {BN}(c, s, bb, mu, var)
        }}""", header() + """
        g (float[1,4,3,3] x) => (float[1,2,3,3] y) <float[4,1,1,1] w2 = {2.0, 2.0, 3.0, 3.0}, float[2] b2 = {-1.5, 0.0}> {
          y = ConvTranspose<group=2>(x, w2, b2)
        }""")


def test_depthwise_conv() -> None:
    assert_rewrites_to("fuse-conv-bn", header() + f"""
        g (float[1,2,4,4] x) => (float[1,2,4,4] y) <float[2,1,1,1] w = {{1.0, 2.0}}, {BN_PARAMS}> {{
          c = Conv<group=2>(x, w)
          y = {BN}(c, s, bb, mu, var)
        }}""", header() + """
        g (float[1,2,4,4] x) => (float[1,2,4,4] y) <float[2,1,1,1] w2 = {2.0, 6.0}, float[2] b2 = {-1.5, 0.0}> {
          y = Conv<group=2>(x, w2, b2)
        }""")


def test_gemm_bn_folds_beta_c_too() -> None:
    # c' = beta * c * s + t = 2 * [1, -1] * [2, 3] + [-1.5, 0]
    assert_rewrites_to("fuse-conv-bn", header() + f"""
        g (float[3,2] a) => (float[3,2] y) <float[2,2] w = {{1.0, 2.0, 3.0, 4.0}}, float[2] c = {{1.0, -1.0}}, {BN_PARAMS}> {{
          g1 = Gemm<transB=1, beta=2.0>(a, w, c)
          y = {BN}(g1, s, bb, mu, var)
        }}""", header() + """
        g (float[3,2] a) => (float[3,2] y) <float[2,2] w2 = {2.0, 4.0, 9.0, 12.0}, float[2] c2 = {2.5, -6.0}> {
          y = Gemm<transB=1, beta=1.0>(a, w2, c2)
        }""")


def test_matmul_add_bn_needs_a_2d_input() -> None:
    before = header() + f"""
        g (float[3,2] x, float[2,3,2] x3) => (float[3,2] y, float[2,3,2] y3)
          <float[2,2] w = {{1.0, 2.0, 3.0, 4.0}}, float[2] b = {{1.0, -1.0}}, {BN_PARAMS}> {{
          m = MatMul(x, w)
          a = Add(b, m)
          y = {BN}(a, s, bb, mu, var)
          m3 = MatMul(x3, w)
          a3 = Add(m3, b)
          y3 = {BN}(a3, s, bb, mu, var)
        }}"""
    assert_rewrites_to("fuse-conv-bn", before, header() + f"""
        g (float[3,2] x, float[2,3,2] x3) => (float[3,2] y, float[2,3,2] y3)
          <float[2,2] w2 = {{2.0, 6.0, 6.0, 12.0}}, float[2] b2 = {{0.5, -3.0}},
           float[2,2] w = {{1.0, 2.0, 3.0, 4.0}}, float[2] b = {{1.0, -1.0}}, {BN_PARAMS}> {{
          m = MatMul(x, w2)
          y = Add(m, b2)
          m3 = MatMul(x3, w)
          a3 = Add(m3, b)
          y3 = {BN}(a3, s, bb, mu, var)
        }}""")


def test_per_channel_mul_and_add_fold_but_not_batch_shaped_constants() -> None:
    assert_rewrites_to("fuse-conv-bn", header() + """
        g (float[2,2,4,4] x) => (float[2,2,4,4] y, float[2,2,4,4] z)
          <float[2,2,1,1] w = {1.0, 2.0, 3.0, 4.0}, float[2,1,1] k = {2.0, 3.0}, float[1,2,1,1] a = {1.0, 2.0},
           float[2,2,1,1] nc = {1.0, 2.0, 3.0, 4.0}> {
          c = Conv(x, w)
          m = Mul(k, c)
          y = Add(m, a)
          c2 = Conv(x, w)
          z = Add(c2, nc)
        }""", header() + """
        g (float[2,2,4,4] x) => (float[2,2,4,4] y, float[2,2,4,4] z)
          <float[2,2,1,1] w3 = {2.0, 4.0, 9.0, 12.0}, float[2] b3 = {1.0, 2.0},
           float[2,2,1,1] w = {1.0, 2.0, 3.0, 4.0}, float[2,2,1,1] nc = {1.0, 2.0, 3.0, 4.0}> {
          y = Conv(x, w3, b3)
          c2 = Conv(x, w)
          z = Add(c2, nc)
        }""")


REFUSED = {
    "training_mode": f"""
        g (float[1,2,4,4] x) => (float[1,2,4,4] y) <float[2,2,1,1] w = {{1.0, 2.0, 3.0, 4.0}}, {BN_PARAMS}> {{
          c = Conv(x, w)
          y = BatchNormalization<training_mode=1>(c, s, bb, mu, var)
        }}""",
    "conv_output_is_graph_output": f"""
        g (float[1,2,4,4] x) => (float[1,2,4,4] y, float[1,2,4,4] c) <float[2,2,1,1] w = {{1.0, 2.0, 3.0, 4.0}}, {BN_PARAMS}> {{
          c = Conv(x, w)
          y = {BN}(c, s, bb, mu, var)
        }}""",
    "conv_output_has_another_consumer": f"""
        g (float[1,2,4,4] x) => (float[1,2,4,4] y, float[1,2,4,4] r) <float[2,2,1,1] w = {{1.0, 2.0, 3.0, 4.0}}, {BN_PARAMS}> {{
          c = Conv(x, w)
          y = {BN}(c, s, bb, mu, var)
          r = Relu(c)
        }}""",
    "params_are_graph_inputs": """
        g (float[1,2,4,4] x, float[2] s) => (float[1,2,4,4] y)
          <float[2,2,1,1] w = {1.0, 2.0, 3.0, 4.0}, float[2] bb = {0.5, 0.0}, float[2] mu = {1.0, 0.0}, float[2] var = {3.0, 8.0}> {
          c = Conv(x, w)
          y = BatchNormalization(c, s, bb, mu, var)
        }""",
    "weights_not_constant": f"""
        g (float[1,2,4,4] x, float[2,2,1,1] w) => (float[1,2,4,4] y) <{BN_PARAMS}> {{
          c = Conv(x, w)
          y = {BN}(c, s, bb, mu, var)
        }}""",
    "channel_count_mismatch": """
        g (float[1,2,4,4] x) => (float[1,2,4,4] y)
          <float[2,2,1,1] w = {1.0, 2.0, 3.0, 4.0}, float[1] s = {1.0}, float[1] bb = {0.0}, float[1] mu = {0.0}, float[1] var = {1.0}> {
          c = Conv(x, w)
          y = BatchNormalization(c, s, bb, mu, var)
        }""",
    # Before a global average pooling TensorRT fuses BN, activation, residual Add and pooling into one
    # kernel; a folded BN costs a transposition and a pooling kernel (docs/passes/fuse-conv-bn.md).
    "feeds_squeeze_excite_pooling": f"""
        g (float[1,2,4,4] x) => (float[1,2,4,4] y) <float[2,2,1,1] w = {{1.0, 2.0, 3.0, 4.0}}, {BN_PARAMS}> {{
          c = Conv(x, w)
          n = {BN}(c, s, bb, mu, var)
          r = HardSwish(n)
          p = GlobalAveragePool(r)
          g = Sigmoid(p)
          y = Mul(r, g)
        }}""",
    # GhostNet: the two halves of a ghost module meet in a Concat that timm's SE squeeze reads.
    "feeds_spatial_mean_through_concat": f"""
        g (float[1,2,4,4] x) => (float[1,4,4,4] y) <float[2,2,1,1] w = {{1.0, 2.0, 3.0, 4.0}}, {BN_PARAMS}> {{
          c = Conv(x, w)
          n = {BN}(c, s, bb, mu, var)
          r = Relu(n)
          k = Concat<axis=1>(x, r)
          p = ReduceMean<axes=[2,3], keepdims=1>(k)
          g = Sigmoid(p)
          y = Mul(k, g)
        }}""",
    "feeds_head_pooling_through_residual_add": f"""
        g (float[1,2,4,4] x) => (float[1,2,1,1] y) <float[2,2,1,1] w = {{1.0, 2.0, 3.0, 4.0}}, {BN_PARAMS}> {{
          c = Conv(x, w)
          n = {BN}(c, s, bb, mu, var)
          a = Add(n, x)
          r = Relu(a)
          y = GlobalAveragePool(r)
        }}""",
}


def test_bn_before_a_pooling_that_is_not_global_still_folds() -> None:
    report = assert_rewrites_to("fuse-conv-bn", header() + f"""
        g (float[1,2,4,4] x) => (float[1,2,1,1] y) <float[2,2,1,1] w = {{1.0, 2.0, 3.0, 4.0}}, {BN_PARAMS}> {{
          c = Conv(x, w)
          n = {BN}(c, s, bb, mu, var)
          r = Relu(n)
          m = MaxPool<kernel_shape=[2,2], strides=[2,2]>(r)
          y = GlobalAveragePool(m)
        }}""", header() + """
        g (float[1,2,4,4] x) => (float[1,2,1,1] y) <float[2,2,1,1] w2 = {2.0, 4.0, 9.0, 12.0}, float[2] b2 = {-1.5, 0.0}> {
          c = Conv(x, w2, b2)
          r = Relu(c)
          m = MaxPool<kernel_shape=[2,2], strides=[2,2]>(r)
          y = GlobalAveragePool(m)
        }""")
    assert report.totals() == {"bn-into-conv": 1}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_refusals(case: str) -> None:
    text = header(15) + REFUSED[case]
    report = assert_rewrites_to("fuse-conv-bn", text, text)
    assert report.totals() == {}


def test_training_form_before_opset_14_is_left_alone() -> None:
    text = header(12) + f"""
        g (float[1,2,4,4] x) => (float[1,2,4,4] y, float[2] m1, float[2] v1)
          <float[2,2,1,1] w = {{1.0, 2.0, 3.0, 4.0}}, {BN_PARAMS}> {{
          c = Conv(x, w)
          y, m1, v1 = BatchNormalization(c, s, bb, mu, var)
        }}"""
    assert_rewrites_to("fuse-conv-bn", text, text)


def test_shared_weight_is_cloned_never_edited() -> None:
    text = header() + f"""
        g (float[1,2,4,4] x) => (float[1,2,4,4] y, float[1,2,4,4] z) <float[2,2,1,1] w = {{1.0, 2.0, 3.0, 4.0}}, {BN_PARAMS}> {{
          c = Conv(x, w)
          y = {BN}(c, s, bb, mu, var)
          z = Conv(x, w)
        }}"""
    out, report = rewrite_text("fuse-conv-bn", text)
    assert report.totals() == {"bn-into-conv": 1}
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in out.graph.initializer}
    np.testing.assert_array_equal(inits["w"], [[[[1.0]], [[2.0]]], [[[3.0]], [[4.0]]]])
    assert [n.input[1] for n in out.graph.node] != ["w", "w"] and out.graph.node[1].input[1] == "w"
    assert_equivalent(parser.parse_model(text), out)


def test_fp16_weights_are_folded_in_float64_and_stay_fp16() -> None:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((3, 2, 3, 3)).astype(np.float16)
    scale, bias, mean = (rng.standard_normal(3).astype(np.float16) for _ in range(3))
    var = rng.uniform(0.5, 2, 3).astype(np.float16)
    init = [onnx.numpy_helper.from_array(a, n) for a, n in zip((w, scale, bias, mean, var), "wsbmv")]
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["y"], epsilon=1e-3)], "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT16, [1, 2, 5, 5])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT16, [1, 3, 5, 5])], init)
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8))
    assert run_passes(model, "fuse-conv-bn").totals() == {"bn-into-conv": 1}
    (node,) = model.graph
    w2, b2 = (ir.constant_array(v) for v in node.inputs[1:])
    assert w2.dtype == np.float16 and b2.dtype == np.float16
    s = scale.astype(np.float64) / np.sqrt(var.astype(np.float64) + 1e-3)
    np.testing.assert_array_equal(w2, (w.astype(np.float64) * s[:, None, None, None]).astype(np.float16))
    np.testing.assert_array_equal(b2, (bias - mean.astype(np.float64) * s).astype(np.float16))


# ------------------------------------------------------------------------------------------------
# random graphs


def conv_transpose_bn(draw: DrawFn, b: GraphBuilder, v: str) -> str:
    """Grouped ConvTranspose -> BN (the strategies' ConvTranspose has no groups)."""
    b.require(b.rank(v) == 4 and isinstance(b.shape(v)[1], int))
    c = int(b.shape(v)[1])
    g = draw(st.sampled_from([x for x in (1, 2, 3) if c % x == 0]))
    cout_g = draw(st.integers(1, 3))
    inputs = [v, param(draw, b, b.weight([c, cout_g, 2, 2], fan_in=c * 4))]
    if draw(st.booleans()):
        inputs.append(param(draw, b, b.weight([g * cout_g])))
    y = b.op("ConvTranspose", inputs, group=g, kernel_shape=[2, 2], strides=[draw(st.sampled_from((1, 2)))] * 2)
    return batchnorm(draw, b, y)


def gemm_bn(draw: DrawFn, b: GraphBuilder, v: str) -> str:
    return batchnorm(draw, b, gemm(draw, b, v))


def matmul_add_bn(draw: DrawFn, b: GraphBuilder, v: str) -> str:
    y = matmul(draw, b, v)
    if draw(st.booleans()):
        n = int(b.shape(y)[-1])
        y = b.op("Add", [y, param(draw, b, b.weight([n]))])
    return batchnorm(draw, b, y)


def conv_channel_affine(draw: DrawFn, b: GraphBuilder, v: str) -> str:
    """Conv followed by Mul/Add with a constant that is per channel, scalar, or not per channel."""
    y = conv(draw, b, v)
    n, c, h, w = b.shape(y)
    shape = draw(st.sampled_from([(c, 1, 1), (1, c, 1, 1), (), (1,), (w,), (c, h, w)]
                                 + ([(n, c, 1, 1)] if isinstance(n, int) else [])))
    k = param(draw, b, b.rng.uniform(0.5, 1.5, shape).astype(np.float32))
    kind = draw(st.sampled_from(("Mul", "Add")))
    return b.op(kind, [y, k] if draw(st.booleans()) else [k, y])


def squeeze_excite(draw: DrawFn, b: GraphBuilder, v: str) -> str:
    """An SE block (MobileNetV3, EfficientNet): y = conv-bn-act(v); y * gate(GlobalAveragePool(y)),
    the gate a 1x1 conv, activation, 1x1 conv, sigmoid or hard-sigmoid: its BN stays unfolded.
    Or timm's form: the squeeze a ReduceMean over H and W, and ``y`` maybe a ghost module, two
    conv-bn-act halves in a Concat (GhostNet)."""
    y = MOTIFS["conv_bn_act"](draw, b, v)
    b.require(b.rank(y) == 4 and isinstance(b.shape(y)[1], int))
    timm = draw(st.booleans())
    if timm and draw(st.booleans()):
        y = b.op("Concat", [y, MOTIFS["conv_bn_act"](draw, b, y)], axis=1)
        b.require(isinstance(b.shape(y)[1], int))
    c = int(b.shape(y)[1])
    s = (axis_attr_or_input(draw, b, "ReduceMean", y, [2, 3], 18, keepdims=1) if timm
         else b.op("GlobalAveragePool", [y]))
    one = {"kernel": 1, "stride": 1, "pads": [0] * 4, "dilation": 1, "group": 1}
    s = activation(draw, b, conv(draw, b, s, out_channels=max(1, c // 2), **one))
    gate = b.op(draw(st.sampled_from(("Sigmoid", "HardSigmoid"))), [conv(draw, b, s, out_channels=c, **one)])
    return b.op("Mul", [y, gate] if draw(st.booleans()) else [gate, y])


EXTRA = {"squeeze_excite": squeeze_excite, "conv_transpose_bn": conv_transpose_bn, "gemm_bn": gemm_bn, "matmul_add_bn": matmul_add_bn,
         "conv_channel_affine": conv_channel_affine}
STRATEGY = models(motifs={**{k: MOTIFS[k] for k in ("conv_bn_act", "constant_params", "shared_weights",
                                                       "graph_output_inside", "residual")}, **EXTRA},
                  ops=["conv", "batchnorm", "activation", "binary", "gemm", "matmul", "concat"],
                  opsets=range(11, ORT_NEWEST + 1), max_nodes=20)


@given(STRATEGY)
def test_random_graphs_stay_equivalent_and_nothing_foldable_is_left(model: onnx.ModelProto) -> None:
    assert_idempotent("fuse-conv-bn", model)  # a second run finds nothing left to fold


@pytest.mark.parametrize("broken", ["shift_forgets_mean", "convtranspose_scaled_as_conv"])
def test_broken_variants_are_caught(broken: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if broken == "shift_forgets_mean":
        real = fuse_conv_bn.bn_affine

        def wrong(m):  # type: ignore[no-untyped-def]
            s, _ = real(m)
            return s, m.array("bias").astype(np.float64)
        monkeypatch.setattr(fuse_conv_bn, "bn_affine", wrong)
        strategy = models(motifs=["conv_bn_act"], ops=[], opsets=[13, 17])
    else:
        monkeypatch.setattr(fuse_conv_bn, "out_channels", lambda conv, w: int(w.shape[0]))
        monkeypatch.setattr(fuse_conv_bn, "scale_conv_weight",
                            lambda conv, w, s: w.astype(np.float64) * s.reshape(-1, *(1,) * (w.ndim - 1)))
        strategy = models(motifs={"conv_transpose_bn": conv_transpose_bn}, ops=[], opsets=[17])

    assert_mutant_caught("fuse-conv-bn", strategy)


def test_a_spatial_mean_with_axes_as_input_keeps_the_bn() -> None:
    """From opset 18 ReduceMean takes its axes as an input: read as a constant array."""
    text = header(18) + f"""
        g (float[1,2,4,4] x) => (float[1,2,1,1] y) <float[2,2,1,1] w = {{1.0, 2.0, 3.0, 4.0}}, {BN_PARAMS},
                                                    int64[2] ax = {{2, 3}}> {{
          c = Conv(x, w)
          n = {BN}(c, s, bb, mu, var)
          r = Relu(n)
          y = ReduceMean<keepdims=1>(r, ax)
        }}"""
    assert assert_rewrites_to("fuse-conv-bn", text, text).totals() == {}
