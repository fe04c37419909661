"""fuse-horizontal: golden cases per layer kind, refusals, Split forms per opset, random graphs, broken variants."""

from __future__ import annotations

import onnx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from onnx import parser

from optgraph.passes.fuse import fuse_horizontal
from optgraph.passes.testing import assert_equivalent, check_pass, models
from optgraph.passes.testing.golden import assert_rewrites_to, rewrite_text
from optgraph.passes.testing.mutants import assert_idempotent, assert_mutant_caught

NEWEST = onnx.defs.onnx_opset_version()
ORT_NEWEST = 26


def header(opset: int = 17) -> str:
    return f'<ir_version: {8 if opset <= 18 else 10}, opset_import: ["" : {opset}]>'


THREE_1X1 = """
    g (float[1,2,4,4] x) => (float[1,1,4,4] y0, float[1,2,4,4] y1, float[1,1,4,4] y2)
      <float[1,2,1,1] w0 = {1.0, 2.0}, float[2,2,1,1] w1 = {3.0, 4.0, 5.0, 6.0}, float[1,2,1,1] w2 = {7.0, 8.0},
       float[1] b0 = {0.5}, float[1] b2 = {-0.5}> {
      y0 = Conv<kernel_shape=[1,1]>(x, w0, b0)
      y1 = Conv<kernel_shape=[1,1]>(x, w1)
      y2 = Conv<kernel_shape=[1,1]>(x, w2, b2)
    }"""
WIDE = "float[4,2,1,1] w = {1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0}, float[4] b = {0.5, 0.0, 0.0, -0.5}"


@pytest.mark.parametrize("opset", range(11, NEWEST + 1))
def test_parallel_1x1_convs_become_one_conv_and_a_split_of_the_opset_form(opset: int) -> None:
    split = ("Split<axis=1, split=[1, 2, 1]>(t)" if opset < 13 else "Split<axis=1>(t, sizes)")
    sizes = ", int64[3] sizes = {1, 2, 1}" if opset >= 13 else ""
    report = assert_rewrites_to("fuse-horizontal", header(opset) + THREE_1X1, header(opset) + f"""
        g (float[1,2,4,4] x) => (float[1,1,4,4] y0, float[1,2,4,4] y1, float[1,1,4,4] y2) <{WIDE}{sizes}> {{
          t = Conv<kernel_shape=[1,1]>(x, w, b)
          y0, y1, y2 = {split}
        }}""")
    assert report.totals() == {"horizontal-conv1x1": 1}
    if opset <= ORT_NEWEST:
        out, _ = rewrite_text("fuse-horizontal", header(opset) + THREE_1X1)
        onnx.checker.check_model(out, full_check=True)
        assert_equivalent(parser.parse_model(header(opset) + THREE_1X1), out)


def test_branches_meeting_in_a_concat_feed_it_directly_through_one_activation() -> None:
    text = header() + """
        g (float[1,2,4,4] x) => (float[1,5,4,4] y, float[1,1,4,4] other)
          <float[1,2,1,1] w0 = {1.0, 2.0}, float[2,2,1,1] w1 = {3.0, 4.0, 5.0, 6.0}> {
          c0 = Conv(x, w0)
          r0 = LeakyRelu<alpha=0.2>(c0)
          c1 = Conv(x, w1)
          r1 = LeakyRelu<alpha=0.2>(c1)
          other = Sigmoid(x)
          y = Concat<axis=1>(other, r0, r1, other)
        }"""
    assert_rewrites_to("fuse-horizontal", text, header() + """
        g (float[1,2,4,4] x) => (float[1,5,4,4] y, float[1,1,4,4] other)
          <float[3,2,1,1] w = {1.0, 2.0, 3.0, 4.0, 5.0, 6.0}> {
          t = Conv(x, w)
          r = LeakyRelu<alpha=0.2>(t)
          other = Sigmoid(x)
          y = Concat<axis=1>(other, r, other)
        }""")
    out, _ = rewrite_text("fuse-horizontal", text)
    assert_equivalent(parser.parse_model(text), out)


def test_split_false_fuses_only_branches_that_meet_in_a_concat() -> None:
    """The TensorRT setting of `default`: no Split is ever made."""
    same = header() + THREE_1X1
    report = assert_rewrites_to("fuse-horizontal{split=false}", same, same)
    assert report.totals() == {}
    into_concat = header() + """
        g (float[1,2,4,4] x) => (float[1,3,4,4] y) <float[1,2,1,1] w0 = {1.0, 2.0}, float[2,2,1,1] w1 = {3.0, 4.0, 5.0, 6.0}> {
          c0 = Conv(x, w0)
          c1 = Conv(x, w1)
          y = Concat<axis=1>(c0, c1)
        }"""
    out, report = rewrite_text("fuse-horizontal{split=false}", into_concat)
    assert report.totals() == {"horizontal-conv1x1": 1}
    assert [n.op_type for n in out.graph.node] == ["Conv", "Concat"]  # the Concat of one piece: eliminate-concat
    assert_equivalent(parser.parse_model(into_concat), out)


def test_3x3_convs_with_equal_attributes_fuse_and_activations_that_differ_stay_apart() -> None:
    w = ", ".join(["1.0"] * 18)
    text = header() + f"""
        g (float[1,2,5,5] x) => (float[1,1,3,3] a, float[1,1,3,3] b)
          <float[1,2,3,3] w0 = {{{w}}}, float[1,2,3,3] w1 = {{{w}}}> {{
          c0 = Conv<strides=[2,2], pads=[1,1,1,1]>(x, w0)
          a = LeakyRelu<alpha=0.1>(c0)
          c1 = Conv<strides=[2,2], pads=[1,1,1,1], dilations=[1,1]>(x, w1)
          b = LeakyRelu<alpha=0.3>(c1)
        }}"""
    assert_rewrites_to("fuse-horizontal", text, header() + f"""
        g (float[1,2,5,5] x) => (float[1,1,3,3] a, float[1,1,3,3] b) <float[2,2,3,3] w = {{{w}, {w}}},
                                                                     int64[2] sizes = {{1, 1}}> {{
          t = Conv<strides=[2,2], pads=[1,1,1,1]>(x, w)
          c0, c1 = Split<axis=1>(t, sizes)
          a = LeakyRelu<alpha=0.1>(c0)
          b = LeakyRelu<alpha=0.3>(c1)
        }}""")
    out, _ = rewrite_text("fuse-horizontal", text)
    assert_equivalent(parser.parse_model(text), out)


def test_qkv_matmuls_with_bias_and_gemms_with_mixed_layouts() -> None:
    text = header(13) + """
        g (float[2,3,4] x, float[3,4] a) => (float[2,3,2] q, float[2,3,1] k, float[2,3,2] v, float[3,2] g1, float[3,1] g2)
          <float[4,2] wq = {1,2,3,4,5,6,7,8}, float[4,1] wk = {1,1,1,1}, float[4,2] wv = {0,1,0,1,0,1,0,1},
           float[2] bq = {1,2}, float[1] bk = {3}, float[2] bv = {4,5},
           float[2,4] w1 = {1,2,3,4,5,6,7,8}, float[4,1] w2 = {1,1,1,1}, float[1,2] c1 = {1, 2}> {
          mq = MatMul(x, wq)
          q = Add(mq, bq)
          mk = MatMul(x, wk)
          k = Add(bk, mk)
          mv = MatMul(x, wv)
          v = Add(mv, bv)
          g1 = Gemm<transB=1>(a, w1, c1)
          g2 = Gemm(a, w2)
        }"""
    report = assert_rewrites_to("fuse-horizontal", text, header(13) + """
        g (float[2,3,4] x, float[3,4] a) => (float[2,3,2] q, float[2,3,1] k, float[2,3,2] v, float[3,2] g1, float[3,1] g2)
          <float[4,5] w = {1,2,1,0,1, 3,4,1,0,1, 5,6,1,0,1, 7,8,1,0,1}, float[5] b = {1,2,3,4,5}, int64[3] s = {2,1,2},
           float[4,3] wg = {1,5,1, 2,6,1, 3,7,1, 4,8,1}, float[3] cg = {1,2,0}, int64[2] sg = {2,1}> {
          t = MatMul(x, w)
          tb = Add(t, b)
          q, k, v = Split<axis=-1>(tb, s)
          tg = Gemm<transB=0>(a, wg, cg)
          g1, g2 = Split<axis=1>(tg, sg)
        }""")
    assert report.totals() == {"horizontal-gemm": 1, "horizontal-matmul": 1}
    out, _ = rewrite_text("fuse-horizontal", text)
    assert_equivalent(parser.parse_model(text), out)


REFUSED = {
    "different_kernels": """
        g (float[1,2,4,4] x) => (float[1,1,4,4] a, float[1,1,2,2] b) <float[1,2,1,1] w0 = {1.0, 2.0}, float[1,2,3,3] w1 = {1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1}> {
          a = Conv(x, w0)
          b = Conv(x, w1)
        }""",
    "different_strides": """
        g (float[1,2,4,4] x) => (float[1,1,4,4] a, float[1,1,2,2] b) <float[1,2,1,1] w0 = {1.0, 2.0}> {
          a = Conv(x, w0)
          b = Conv<strides=[2,2]>(x, w0)
        }""",
    "grouped": """
        g (float[1,2,4,4] x) => (float[1,2,4,4] a, float[1,2,4,4] b) <float[2,1,1,1] w0 = {1.0, 2.0}> {
          a = Conv<group=2>(x, w0)
          b = Conv<group=2>(x, w0)
        }""",
    "weights_not_constant": """
        g (float[1,2,4,4] x, float[1,2,1,1] w1) => (float[1,1,4,4] a, float[1,1,4,4] b) <float[1,2,1,1] w0 = {1.0, 2.0}> {
          a = Conv(x, w0)
          b = Conv(x, w1)
        }""",
    "different_inputs": """
        g (float[1,2,4,4] x, float[1,2,4,4] z) => (float[1,1,4,4] a, float[1,1,4,4] b) <float[1,2,1,1] w0 = {1.0, 2.0}> {
          a = Conv(x, w0)
          b = Conv(z, w0)
        }""",
    "gemm_alpha_differs": """
        g (float[3,4] x) => (float[3,1] a, float[3,1] b) <float[4,1] w0 = {1,2,3,4}> {
          a = Gemm(x, w0)
          b = Gemm<alpha=2.0>(x, w0)
        }""",
    "matmul_bias_not_per_column": """
        g (float[3,4] x) => (float[3,2] a, float[3,2] b) <float[4,2] w0 = {1,2,3,4,5,6,7,8}, float[3,2] full = {1,2,3,4,5,6}> {
          m0 = MatMul(x, w0)
          a = Add(m0, full)
          m1 = MatMul(x, w0)
          b = Add(m1, full)
        }""",
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_refusals(case: str) -> None:
    text = header() + REFUSED[case]
    if case == "matmul_bias_not_per_column":  # the MatMuls still fuse; the full-shape Adds stay behind
        out, report = rewrite_text("fuse-horizontal", text)
        assert [n.op_type for n in out.graph.node] == ["MatMul", "Split", "Add", "Add"]
        assert_equivalent(parser.parse_model(text), out)
        return
    assert assert_rewrites_to("fuse-horizontal", text, text).totals() == {}


def test_min_branches() -> None:
    text = header() + THREE_1X1
    assert assert_rewrites_to("fuse-horizontal{min_branches=4}", text, text).totals() == {}
    _, report = rewrite_text("fuse-horizontal{min_branches=3}", text)
    assert report.totals() == {"horizontal-conv1x1": 1}
    with pytest.raises(Exception, match="at least 2"):
        rewrite_text("fuse-horizontal{min_branches=1}", text)


def test_branch_order_is_node_order_whatever_the_use_order() -> None:
    text = header() + THREE_1X1
    model = parser.parse_model(text)
    model.graph.node.insert(0, model.graph.node.pop(2))  # y2's conv first in the file
    out, _ = rewrite_text("fuse-horizontal", onnx.printer.to_text(model))
    (split,) = [n for n in out.graph.node if n.op_type == "Split"]
    assert list(split.output) == ["y2", "y0", "y1"]


def test_a_value_read_by_many_layers_is_grouped_once(monkeypatch: pytest.MonkeyPatch) -> None:
    n = 300  # 300 convs on one input, all different (pads), so no group ever fuses
    convs = " ".join(f"y{i} = Conv<pads=[{i},{i},{i},{i}]>(x, w)" for i in range(n))
    outs = ", ".join(f"float[1,1,{4 + 2 * i},{4 + 2 * i}] y{i}" for i in range(n))
    text = header() + f"g (float[1,2,4,4] x) => ({outs}) <float[1,2,1,1] w = {{1.0, 2.0}}> {{ {convs} }}"
    calls = 0
    real_key = fuse_horizontal.HorizontalConv.key

    def counting(self, node):  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        return real_key(self, node)
    monkeypatch.setattr(fuse_horizontal.HorizontalConv, "key", counting)
    _, report = rewrite_text("fuse-horizontal", text)
    assert report.totals() == {}
    assert calls <= 8 * n  # a few per conv; rescanning the siblings per conv would be n * n


# ------------------------------------------------------------------------------------------------
# random graphs

STRATEGY = st.one_of(
    models(motifs=["parallel_convs", "parallel_matmuls", "shared_weights", "graph_output_inside", "conv_act"],
           ops=["conv", "matmul", "gemm", "activation", "concat"], opsets=range(11, ORT_NEWEST + 1), max_nodes=20),
    models(motifs=["parallel_matmuls"], ops=["gemm", "activation"], inputs=["features"],  # Gemm needs 2-D
           opsets=range(11, ORT_NEWEST + 1), max_nodes=12))


@given(STRATEGY)
def test_random_graphs_stay_equivalent_and_nothing_fusable_is_left(model: onnx.ModelProto) -> None:
    assert_idempotent("fuse-horizontal", model)


@pytest.mark.parametrize("broken", ["split_outputs_swapped", "matmul_biases_dropped"])
def test_broken_variants_are_caught(broken: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if broken == "split_outputs_swapped":
        real_split = fuse_horizontal.split
        monkeypatch.setattr(fuse_horizontal, "split", lambda rw, v, sizes, axis: real_split(rw, v, sizes, axis)[::-1])
        strategy = models(motifs=["parallel_convs"], ops=[], opsets=[11, 17])
    else:
        real_build = fuse_horizontal.HorizontalMatMul.build
        monkeypatch.setattr(fuse_horizontal.HorizontalMatMul, "build",
                            lambda self, rw, branches, tails: real_build(self, rw, branches, []))
        strategy = models(motifs=["parallel_matmuls"], ops=[], opsets=[17])

    assert_mutant_caught("fuse-horizontal", strategy)
