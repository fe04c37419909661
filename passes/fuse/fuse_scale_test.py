"""fuse-input-scale: golden cases per layer, refusals, shared weights, random graphs on the oracle."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import given
from onnx import numpy_helper, parser

from optgraph import ir
from optgraph.passes import run_passes
from optgraph.passes.testing import assert_equivalent, check_pass, models
from optgraph.passes.testing.golden import assert_rewrites_to, rewrite_text

ORT_NEWEST = 26
W = "float[2, 2, 1, 1] w = {1.0, 2.0, 3.0, 4.0}, float[2] b = {0.5, -0.5}"


def test_half_folds_into_the_next_1x1_conv() -> None:
    report = assert_rewrites_to("fuse-input-scale", f"""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1, 2, 3, 3] x) => (float[1, 2, 3, 3] y) <{W}, float h = {{0.5}}> {{
          t = Mul(x, h)
          y = Conv(t, w, b)
        }}""", """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1, 2, 3, 3] x) => (float[1, 2, 3, 3] y) <float[2, 2, 1, 1] w = {0.5, 1.0, 1.5, 2.0},
                                                          float[2] b = {0.5, -0.5}> {
          y = Conv(x, w, b)
        }""")
    assert report.totals() == {"scale-into-conv": 1}


def test_scalar_folds_into_matmul_weight_and_gemm_alpha() -> None:
    assert_rewrites_to("fuse-input-scale", """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1, 4, 2] x) => (float[1, 4, 2] y) <float[2, 2] w = {1.0, 2.0, 3.0, 4.0}, float[1] h = {0.5}> {
          t = Mul(h, x)
          y = MatMul(t, w)
        }""", """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1, 4, 2] x) => (float[1, 4, 2] y) <float[2, 2] w = {0.5, 1.0, 1.5, 2.0}> { y = MatMul(x, w) }
        """)
    assert_rewrites_to("fuse-input-scale", """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[3, 2] x, float[2, 2] w) => (float[3, 2] y) <float h = {0.5}> {
          t = Mul(x, h)
          y = Gemm<alpha = 3.0, transB = 1>(t, w)
        }""", """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[3, 2] x, float[2, 2] w) => (float[3, 2] y) { y = Gemm<alpha = 1.5, transB = 1>(x, w) }
        """)


def test_shared_weight_is_cloned_and_the_other_conv_keeps_it() -> None:
    before = f"""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1, 2, 3, 3] x) => (float[1, 2, 3, 3] y) <{W}, float h = {{0.5}}> {{
          t = Mul(x, h)
          a = Conv(t, w, b)
          c = Conv(x, w, b)
          y = Add(a, c)
        }}"""
    after, report = rewrite_text("fuse-input-scale", before)
    assert report.totals() == {"scale-into-conv": 1}
    inits = {i.name: numpy_helper.to_array(i) for i in after.graph.initializer}
    convs = [n for n in after.graph.node if n.op_type == "Conv"]
    assert np.array_equal(inits[convs[1].input[1]], [[[[1.0]], [[2.0]]], [[[3.0]], [[4.0]]]])
    assert convs[0].input[1] != "w" and np.allclose(inits[convs[0].input[1]], 0.5 * inits["w"])
    assert_equivalent(parser.parse_model(before), after)


GELU = "e = Div(x, r)  f = {}(e)  g1 = Add(f, one)  p = Mul(x, g1)  t = Mul(p, h)  y = Conv(t, w, b)"
REFUSALS = {  # (extra graph inputs, initializers, body)
    "erf GELU's 0.5": ("", "float h = {0.5}, float r = {1.4142135}, float one = {1.0}", GELU.format("Erf")),
    "tanh GELU's 0.5": ("", "float h = {0.5}, float r = {1.4142135}, float one = {1.0}", GELU.format("Tanh")),
    "per-channel constant": ("", "float[1, 2, 1, 1] h = {0.5, 2.0}", "t = Mul(x, h)  y = Conv(t, w, b)"),
    "Mul read elsewhere": ("", "float h = {0.5}", "t = Mul(x, h)  a = Conv(t, w, b)  y = Add(a, t)"),
    "scale not constant": (", float h", "", "t = Mul(x, h)  y = Conv(t, w, b)"),
    "non-finite scale": ("", "float h = {inf}", "t = Mul(x, h)  y = Conv(t, w, b)"),
    "weight not constant": (", float[2, 2, 1, 1] v", "float h = {0.5}", "t = Mul(x, h)  y = Conv(t, v, b)"),
    "scale on the weight operand": (", float[1, 2, 3, 3] z", "float h = {0.5}",
                                    "t = Mul(z, h)  a = Conv(x, w, b)  y = MatMul(a, t)"),
}


@pytest.mark.parametrize("case", REFUSALS, ids=list(REFUSALS))
def test_refusals(case: str) -> None:
    inputs, init, body = REFUSALS[case]
    text = f"""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1, 2, 3, 3] x{inputs}) => (float[1, 2, 3, 3] y) <{W}{", " if init else ""}{init}> {{ {body} }}"""
    _, report = rewrite_text("fuse-input-scale", text)
    assert report.totals() == {}


def test_scalar_with_more_axes_than_the_input_is_refused() -> None:
    text = """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[4, 2] x) => (float[1, 4, 2] y) <float[2, 2] w = {1.0, 2.0, 3.0, 4.0}, float[1, 1, 1] h = {0.5}> {
          t = Mul(x, h)
          y = MatMul(t, w)
        }"""
    _, report = rewrite_text("fuse-input-scale", text)
    assert report.totals() == {}


@given(models(motifs=["scaled_layer", "shared_weights", "graph_output_inside"],
              ops=["conv", "activation", "matmul", "gemm", "binary"], opsets=range(11, ORT_NEWEST + 1),
              max_nodes=16))
def test_random_graphs_stay_equivalent_and_no_foldable_scale_is_left(model: onnx.ModelProto) -> None:
    out, _ = check_pass("fuse-input-scale", model)
    report = run_passes(ir.from_proto(out), "fuse-input-scale")
    assert not report.passes[-1].stats, f"left foldable: {report.passes[-1].stats}"
