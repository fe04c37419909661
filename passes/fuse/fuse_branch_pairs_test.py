"""fuse-branch-pairs: the GoogLeNet pair golden, refusals, overhead limit, random graphs, broken variants."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from onnx import parser

from optgraph.passes.fuse import fuse_branch_pairs
from optgraph.passes.testing import MOTIFS, assert_equivalent, check_pass, models
from optgraph.passes.testing.golden import assert_rewrites_to, rewrite_text
from optgraph.passes.testing.strategies import DrawFn, GraphBuilder, activation, conv

ORT_NEWEST = 26


def header(opset: int = 17) -> str:
    return f'<ir_version: 8, opset_import: ["" : {opset}]>'


# Two inception-style branches on x (1x1 reduce -> ReLU -> 3x3 -> ReLU), side by side in a Concat
# between a 1x1 branch and a pooling branch. Their second convs (1->2 and 1->1 channels) cost 2 + 1
# multiply-adds per position apart and 2 * 3 fused: 100% more, so the goldens allow it.
PAIR = """
    g (float[1,2,5,5] x) => (float[1,6,5,5] y)
      <float[1,2,1,1] wa = {1.0, 2.0}, float[1] ba = {0.5}, float[1,2,1,1] wb = {3.0, 4.0},
       float[2,1,3,3] va = {1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 9.0, 8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0},
       float[1,1,3,3] vb = {1.0, 0.0, -1.0, 2.0, 0.0, -2.0, 1.0, 0.0, -1.0}, float[1] cb = {0.25},
       float[2,2,1,1] w1 = {1.0, -1.0, 0.5, 0.5}> {
      p = MaxPool<kernel_shape=[3,3], pads=[1,1,1,1]>(x)
      one = Conv(x, w1)
      a1 = Conv(x, wa, ba)
      ar = Relu(a1)
      a2 = Conv<pads=[1,1,1,1]>(ar, va)
      a = Relu(a2)
      b1 = Conv(x, wb)
      br = Relu(b1)
      b2 = Conv<pads=[1,1,1,1]>(br, vb, cb)
      b = Relu(b2)
      q = ReduceMax<axes=[1], keepdims=1>(p)
      y = Concat<axis=1>(one, a, b, q)
    }"""


ALLOW = "fuse-branch-pairs{max_overhead=1}"


def test_googlenet_pair_becomes_a_wide_conv_and_a_block_diagonal_conv() -> None:
    report = assert_rewrites_to(ALLOW, header() + PAIR, header() + """
        g (float[1,2,5,5] x) => (float[1,6,5,5] y)
          <float[2,2,1,1] w = {1.0, 2.0, 3.0, 4.0}, float[2] b = {0.5, 0.0},
           float[3,2,3,3] v = {1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
                               9.0, 8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
                               0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, -1.0, 2.0, 0.0, -2.0, 1.0, 0.0, -1.0},
           float[3] c = {0.0, 0.0, 0.25}, float[2,2,1,1] w1 = {1.0, -1.0, 0.5, 0.5}> {
          p = MaxPool<kernel_shape=[3,3], pads=[1,1,1,1]>(x)
          one = Conv(x, w1)
          q = ReduceMax<axes=[1], keepdims=1>(p)
          t = Conv(x, w, b)
          r = Relu(t)
          s = Conv<pads=[1,1,1,1]>(r, v, c)
          ab = Relu(s)
          y = Concat<axis=1>(one, ab, q)
        }""")
    assert report.totals() == {"branch-pair": 1}
    out, _ = rewrite_text(ALLOW, header() + PAIR)
    onnx.checker.check_model(out, full_check=True)
    assert_equivalent(parser.parse_model(header() + PAIR), out)


REFUSED = {
    "second_convs_differ": PAIR.replace("Conv<pads=[1,1,1,1]>(br, vb, cb)", "Conv<pads=[2,2,2,2], dilations=[2,2]>(br, vb, cb)"),
    "activations_differ": PAIR.replace("b = Relu(b2)", "b = Sigmoid(b2)"),
    "intermediate_read_twice": PAIR.replace("q = ReduceMax<axes=[1], keepdims=1>(p)",
                                            "q = ReduceMax<axes=[1], keepdims=1>(br)"),
    "not_adjacent_in_the_concat": PAIR.replace("Concat<axis=1>(one, a, b, q)", "Concat<axis=1>(a, one, b, q)"),
    "other_inputs": PAIR.replace("b1 = Conv(x, wb)", "b1 = Conv(p, wb)"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_refusals(case: str) -> None:
    text = header() + REFUSED[case]
    report = assert_rewrites_to(ALLOW, text, text)
    assert report.totals() == {}


def test_max_overhead_limits_the_zero_blocks() -> None:
    text = header() + PAIR
    _, report = rewrite_text("fuse-branch-pairs{max_overhead=0.99}", text)
    assert report.totals() == {}
    _, report = rewrite_text("fuse-branch-pairs{max_overhead=1.0}", text)
    assert report.totals() == {"branch-pair": 1}


# ------------------------------------------------------------------------------------------------
# random graphs


def branch_pair(draw: DrawFn, b: GraphBuilder, v: str) -> str:
    """Two conv -> act -> conv -> act branches on ``v`` (same kernels and activation, maybe not),
    concatenated on the channels, perhaps between other inputs."""
    b.require(b.rank(v) == 4)
    k1, k2 = draw(st.sampled_from((1, 3))), draw(st.sampled_from((1, 3)))
    acts = draw(st.booleans())
    outs = []
    for _ in range(2):
        y = conv(draw, b, v, kernel=k1, stride=1, pads=[k1 // 2] * 4, dilation=1, group=1)
        y = activation(draw, b, y) if acts else y
        y = conv(draw, b, y, kernel=k2, stride=1, pads=[k2 // 2] * 4, dilation=1, group=1)
        outs.append(activation(draw, b, y) if acts else y)
    pieces = [*outs, v] if draw(st.booleans()) else [v, *outs]
    return b.op("Concat", pieces, axis=1)


STRATEGY = models(motifs={"branch_pair": branch_pair, "parallel_convs": MOTIFS["parallel_convs"],
                          "conv_act": MOTIFS["conv_act"]},
                  ops=["conv", "activation", "concat"], opsets=range(11, ORT_NEWEST + 1), max_nodes=24)


@given(STRATEGY)
def test_random_graphs_stay_equivalent_and_nothing_fusable_is_left(model: onnx.ModelProto) -> None:
    out, _ = check_pass("fuse-branch-pairs{max_overhead=10}", model)
    _, report = check_pass("fuse-branch-pairs{max_overhead=10}", out)
    assert report.totals() == {}, report.totals()


NO_SHRINK = settings(max_examples=60, phases=[Phase.generate], database=None, derandomize=True,
                     suppress_health_check=list(HealthCheck))


def test_broken_variant_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Biases dropped from the fused convs must be caught by the random-graph check."""
    monkeypatch.setattr(fuse_branch_pairs, "_bias", lambda s: np.zeros(s.w.shape[0], s.w.dtype))

    @NO_SHRINK
    @given(models(motifs={"branch_pair": branch_pair}, ops=[], opsets=[17]))
    def prop(model: onnx.ModelProto) -> None:
        check_pass("fuse-branch-pairs{max_overhead=10}", model)

    with pytest.raises(AssertionError, match="differs|fails"):
        prop()
