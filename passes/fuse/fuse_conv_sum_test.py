"""fuse-conv-sum: RepVGG goldens (3x3 + 1x1, identity BN, plain identity, depthwise), refusals,
random RepVGG blocks, a broken variant."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from onnx import parser

from optgraph.passes.fuse import fuse_conv_sum
from optgraph.passes.testing import MOTIFS, assert_equivalent, check_pass, models
from optgraph.passes.testing.golden import assert_rewrites_to, rewrite_text
from optgraph.passes.testing.strategies import DrawFn, GraphBuilder, batchnorm, conv

ORT_NEWEST = 26


def header(opset: int = 17) -> str:
    return f'<ir_version: 8, opset_import: ["" : {opset}]>'


# One channel: a 3x3 conv, a 1x1 conv and an identity BN (s = 2, t = -1.5) summed, as RepVGG.
BLOCK = """
    g (float[1,1,4,4] x) => (float[1,1,4,4] y)
      <float[1,1,3,3] k = {1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0}, float[1] kb = {0.5},
       float[1,1,1,1] p = {10.0}, float[1] pb = {0.25},
       float[1] s = {4.0}, float[1] bb = {0.5}, float[1] mu = {1.0}, float[1] var = {3.0}> {
      a = Conv<pads=[1,1,1,1]>(x, k, kb)
      b = Conv(x, p, pb)
      i = BatchNormalization<epsilon=1.0>(x, s, bb, mu, var)
      ab = Add(a, b)
      z = Add(ab, i)
      y = Relu(z)
    }"""


def test_repvgg_block_becomes_one_conv() -> None:
    report = assert_rewrites_to("fuse-conv-sum", header() + BLOCK, header() + """
        g (float[1,1,4,4] x) => (float[1,1,4,4] y)
          <float[1,1,3,3] w = {1.0, 2.0, 3.0, 4.0, 17.0, 6.0, 7.0, 8.0, 9.0}, float[1] c = {-0.75}> {
          z = Conv<pads=[1,1,1,1]>(x, w, c)
          y = Relu(z)
        }""")
    assert report.totals() == {"conv-plus-conv": 1, "conv-plus-identity": 1}
    out, _ = rewrite_text("fuse-conv-sum", header() + BLOCK)
    assert_equivalent(parser.parse_model(header() + BLOCK), out)


def test_plain_identity_on_a_depthwise_conv() -> None:
    assert_rewrites_to("fuse-conv-sum", header() + """
        g (float[1,2,3,3] x) => (float[1,2,3,3] y) <float[2,1,1,1] w = {2.0, 3.0}> {
          a = Conv<group=2>(x, w)
          y = Add(x, a)
        }""", header() + """
        g (float[1,2,3,3] x) => (float[1,2,3,3] y) <float[2,1,1,1] w2 = {3.0, 4.0}, float[2] b = {0.0, 0.0}> {
          y = Conv<group=2>(x, w2, b)
        }""")


REFUSED = {
    "identity_window_not_centred": """
        g (float[1,1,4,4] x) => (float[1,1,4,4] y) <float[1,1,3,3] k = {1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0}> {
          a = Conv<pads=[0,0,2,2]>(x, k)
          y = Add(a, x)
        }""",
    "small_kernel_not_centred": """
        g (float[1,1,4,4] x) => (float[1,1,4,4] y) <float[1,1,3,3] k = {1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0},
                                                   float[1,1,1,1] p = {10.0}> {
          a = Conv<pads=[2,2,0,0]>(x, k)
          b = Conv(x, p)
          y = Add(a, b)
        }""",
    "conv_output_read_twice": """
        g (float[1,1,4,4] x) => (float[1,1,4,4] y, float[1,1,4,4] a) <float[1,1,1,1] w = {2.0}> {
          a = Conv(x, w)
          y = Add(a, x)
        }""",
    "convs_of_different_inputs": """
        g (float[1,1,4,4] x, float[1,1,4,4] u) => (float[1,1,4,4] y) <float[1,1,1,1] w = {2.0}, float[1,1,1,1] v = {3.0}> {
          a = Conv(x, w)
          b = Conv(u, v)
          y = Add(a, b)
        }""",
    "channels_change": """
        g (float[1,1,4,4] x) => (float[1,2,4,4] y) <float[2,1,1,1] w = {2.0, 3.0}> {
          a = Conv(x, w)
          y = Add(a, x)
        }""",
}
@pytest.mark.parametrize("case", sorted(REFUSED))
def test_refusals(case: str) -> None:
    text = header() + REFUSED[case]
    report = assert_rewrites_to("fuse-conv-sum", text, text)
    assert report.totals() == {}


# ------------------------------------------------------------------------------------------------
# random graphs


def repvgg_block(draw: DrawFn, b: GraphBuilder, v: str) -> str:
    """KxK conv (+BN) + kxk conv (+BN) [+ identity or BN of the input], as RepVGG's training form."""
    b.require(b.rank(v) == 4)
    c = int(b.shape(v)[1])
    group = draw(st.sampled_from([1] + ([c] if c > 1 else [])))
    k = draw(st.sampled_from((3, 5)))
    d = draw(st.sampled_from((1, 2)))
    branches = []
    for kernel in (k, draw(st.sampled_from((1, 3)))):
        y = conv(draw, b, v, kernel=kernel, stride=1, pads=[d * (kernel // 2)] * 4, dilation=d, group=group,
                 out_channels=c)
        branches.append(batchnorm(draw, b, y) if draw(st.booleans()) else y)
    out = b.op("Add", branches)
    kind = draw(st.sampled_from(("none", "x", "bn")))
    if kind != "none":
        ident = v if kind == "x" else batchnorm(draw, b, v)
        out = b.op("Add", [out, ident] if draw(st.booleans()) else [ident, out])
    return out


STRATEGY = models(motifs={"repvgg_block": repvgg_block, "residual": MOTIFS["residual"], "conv_act": MOTIFS["conv_act"]},
                  ops=["conv", "activation", "binary"], opsets=range(11, ORT_NEWEST + 1), max_nodes=24)


@given(STRATEGY)
def test_random_graphs_stay_equivalent(model: onnx.ModelProto) -> None:
    out, _ = check_pass("fuse-conv-sum", model)
    _, report = check_pass("fuse-conv-sum", out)
    assert report.totals() == {}, report.totals()


NO_SHRINK = settings(max_examples=60, phases=[Phase.generate], database=None, derandomize=True,
                     suppress_health_check=list(HealthCheck))


def test_broken_variant_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """An identity scale put on the wrong input channel must be caught by the random-graph check."""
    real = fuse_conv_sum._identity

    def doubled(v, x):  # type: ignore[no-untyped-def]
        r = real(v, x)
        return None if r is None else (r[0] * 2, *r[1:])
    monkeypatch.setattr(fuse_conv_sum, "_identity", doubled)

    @NO_SHRINK
    @given(models(motifs={"repvgg_block": repvgg_block}, ops=[], opsets=[17]))
    def prop(model: onnx.ModelProto) -> None:
        check_pass("fuse-conv-sum", model)

    with pytest.raises(AssertionError, match="differs|fails"):
        prop()
