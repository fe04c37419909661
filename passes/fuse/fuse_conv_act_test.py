"""fuse-conv-act and inline-fused: golden cases, refusals, opsets, runtimes, random graphs, broken variants."""

from __future__ import annotations

import onnx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from onnx import parser

from optgraph import ir
from optgraph.passes.fuse import fuse_conv_act
from optgraph.passes.testing import MOTIFS, assert_equivalent, check_pass, models
from optgraph.passes.testing.golden import assert_rewrites_to, assert_same_structure, rewrite_text
from optgraph.passes.testing.mutants import assert_mutant_caught
from optgraph.passes.testing.strategies import DrawFn, GraphBuilder, conv

NEWEST = onnx.defs.onnx_opset_version()
ORT_NEWEST = 26
HEADER = '<ir_version: 8, opset_import: ["" : 17]>'
FUSED_HEADER = '<ir_version: 8, opset_import: ["" : 17, "optgraph" : 1]>'
WEIGHTS = "float[2,2,1,1] w = {1.0, 2.0, 3.0, 4.0}, float[2] b = {1.0, -1.0}"


def test_golden_one_function_per_signature() -> None:
    report = assert_rewrites_to("fuse-conv-act", HEADER + f"""
        g (float[1,2,4,4] x) => (float[1,2,4,4] y, float[1,2,4,4] z, float[1,2,4,4] u) <{WEIGHTS}> {{
          c1 = Conv(x, w, b)
          y = Relu(c1)
          c2 = Conv(x, w)
          z = LeakyRelu<alpha=0.2>(c2)
          c3 = Conv(y, w, b)
          u = Relu(c3)
        }}""", FUSED_HEADER + f"""
        g (float[1,2,4,4] x) => (float[1,2,4,4] y, float[1,2,4,4] z, float[1,2,4,4] u) <{WEIGHTS}> {{
          y = optgraph.ConvRelu_7ea5a5dd(x, w, b)
          z = optgraph.ConvLeakyRelu_ce33da86(x, w)
          u = optgraph.ConvRelu_7ea5a5dd(y, w, b)
        }}
        <domain: "optgraph", opset_import: ["" : 17]>
        ConvRelu_7ea5a5dd (X, W, B) => (Y) {{ c = Conv(X, W, B)  Y = Relu(c) }}
        <domain: "optgraph", opset_import: ["" : 17]>
        ConvLeakyRelu_ce33da86 (X, W) => (Y) {{ c = Conv(X, W)  Y = LeakyRelu<alpha=0.2>(c) }}""")
    assert report.totals() == {"conv-act": 3}


def test_swish_in_either_operand_order() -> None:
    text = HEADER + f"""
        g (float[1,2,4,4] x) => (float[1,2,4,4] y, float[1,2,4,4] z) <{WEIGHTS}> {{
          c1 = Conv(x, w, b)
          s1 = Sigmoid(c1)
          y = Mul(c1, s1)
          c2 = Conv(y, w, b)
          s2 = Sigmoid(c2)
          z = Mul(s2, c2)
        }}"""
    out, report = rewrite_text("fuse-conv-act", text)
    assert report.totals() == {"conv-swish": 2}
    assert len(out.functions) == 2  # one per operand order: the bodies are the original ops
    assert all([n.op_type for n in fn.node] == ["Conv", "Sigmoid", "Mul"] for fn in out.functions)
    assert [n.domain for n in out.graph.node] == ["optgraph"] * 2
    assert_equivalent(parser.parse_model(text), out)
    used_twice = text.replace("float[1,2,4,4] z)", "float[1,2,4,4] z, float[1,2,4,4] s2)")
    _, report = rewrite_text("fuse-conv-act", used_twice)
    assert report.totals() == {"conv-swish": 1}  # s2 is a graph output: the second unit stays


def test_clip_bounds_become_constants_of_the_body() -> None:
    text = '<ir_version: 7, opset_import: ["" : 13]>' + f"""
        g (float[1,2,4,4] x, float lo2) => (float[1,2,4,4] y, float[1,2,4,4] z)
          <{WEIGHTS}, float lo = {{0.0}}, float hi = {{6.0}}> {{
          c1 = Conv<pads=[0,0,0,0]>(x, w, b)
          y = Clip(c1, lo, hi)
          c2 = Conv(x, w, b)
          z = Clip(c2, lo2, hi)
        }}"""
    out, report = rewrite_text("fuse-conv-act", text)
    assert report.totals() == {"conv-act": 1}  # z's lower bound is not a constant
    assert out.ir_version == 8  # model-local functions need IR version 8
    (fn,) = out.functions
    assert [n.op_type for n in fn.node] == ["Conv", "Constant", "Constant", "Clip"]
    assert [a.name for a in fn.node[0].attribute] == ["pads"]
    assert_equivalent(parser.parse_model(text), out)


@pytest.mark.parametrize("case", ["output", "two_users"])
def test_conv_output_used_elsewhere_is_refused(case: str) -> None:
    outputs = "float[1,2,4,4] y, float[1,2,4,4] c" if case == "output" else "float[1,2,4,4] y, float[1,2,4,4] s"
    text = HEADER + f"""
        g (float[1,2,4,4] x) => ({outputs}) <{WEIGHTS}> {{
          c = Conv(x, w, b)
          y = Relu(c)
          {"" if case == "output" else "s = Sigmoid(c)"}
        }}"""
    assert_rewrites_to("fuse-conv-act", text, text)


@pytest.mark.parametrize("opset", range(11, NEWEST + 1))
def test_every_opset_checks_runs_and_inlines_back(opset: int) -> None:
    text = f'<ir_version: {8 if opset <= 18 else 10}, opset_import: ["" : {opset}]>' + f"""
        g (float[1,2,4,4] x) => (float[1,2,3,3] y) <{WEIGHTS}> {{
          c = Conv(x, w, b)
          r = HardSigmoid<alpha=0.3>(c)
          c2 = Conv<pads=[1,1,1,1], strides=[2,2], kernel_shape=[1,1]>(r, w, b)
          y = Sigmoid(c2)
        }}"""
    fused, report = rewrite_text("fuse-conv-act", text)
    assert report.totals() == {"conv-act": 2} and len(fused.functions) == 2
    assert all(n.domain == "optgraph" for n in fused.graph.node)
    assert {f.opset_import[0].version for f in fused.functions} == {opset}
    onnx.checker.check_model(fused, full_check=True)
    model = ir.from_proto(fused)
    from optgraph.passes import run_passes
    assert run_passes(model, "inline-fused", verify_each=True).totals() == {"calls_inlined": 2, "functions_removed": 2}
    inlined = ir.to_proto(model)
    assert [o.domain for o in inlined.opset_import] == [""] and not inlined.functions
    assert_same_structure(inlined, parser.parse_model(text))
    if opset <= ORT_NEWEST:
        assert_equivalent(parser.parse_model(text), fused)


def test_output_is_deterministic() -> None:
    text = HEADER + f"""
        g (float[1,2,4,4] x) => (float[1,2,4,4] y) <{WEIGHTS}> {{
          c = Conv(x, w, b)
          r = Relu(c)
          c2 = Conv(r, w)
          y = Elu<alpha=0.5>(c2)
        }}"""
    first, second = (rewrite_text("fuse-conv-act", text)[0].SerializeToString() for _ in range(2))
    assert first == second


@pytest.mark.tensorrt
def test_tensorrt_parses_and_builds_the_fused_model(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from optgraph.runtime import tensorrt

    if not tensorrt.available():
        pytest.skip("neither tensorrt nor tensorrt_rtx is installed")
    text = HEADER + f"""
        g (float[1,2,8,8] x) => (float[1,2,8,8] y) <{WEIGHTS}, float lo = {{0.0}}, float hi = {{6.0}}> {{
          c = Conv<pads=[0,0,0,0], strides=[1,1]>(x, w, b)
          r = Clip(c, lo, hi)
          c2 = Conv(r, w)
          l = LeakyRelu<alpha=0.1>(c2)
          c3 = Conv(l, w, b)
          s = Sigmoid(c3)
          y = Mul(c3, s)
        }}"""
    fused, report = rewrite_text("fuse-conv-act", text)
    assert report.totals() == {"conv-act": 2, "conv-swish": 1}
    path = tmp_path / "fused.onnx"
    onnx.save(fused, path)
    parsed = tensorrt.parse(str(path))
    assert parsed.ok, parsed.errors
    assert parsed.num_layers >= 7  # the parser inlined the functions into plain layers
    assert tensorrt.build(str(path)).ok


# ------------------------------------------------------------------------------------------------
# random graphs

def conv_swish(draw: DrawFn, b: GraphBuilder, v: str) -> str:
    y = conv(draw, b, v)
    s = b.op("Sigmoid", [y])
    return b.op("Mul", [y, s] if draw(st.booleans()) else [s, y])


STRATEGY = models(motifs={**{k: MOTIFS[k] for k in ("conv_act", "conv_bn_act", "graph_output_inside",
                                                     "parallel_convs", "shared_weights")}, "conv_swish": conv_swish},
                  ops=["conv", "activation", "binary"], opsets=range(11, ORT_NEWEST + 1), max_nodes=20)


@given(STRATEGY)
def test_random_graphs_stay_equivalent_fused_and_inlined(model: onnx.ModelProto) -> None:
    fused, _ = check_pass("fuse-conv-act", model)
    inlined, _ = check_pass("inline-fused", fused)
    assert not inlined.functions
    assert_equivalent(model, inlined)


@pytest.mark.parametrize("broken", ["activation_attributes_dropped", "signature_ignores_attributes"])
def test_broken_variants_are_caught(broken: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if broken == "activation_attributes_dropped":
        real = fuse_conv_act.fused_function

        def wrong(rw, conv, tail, bias):  # type: ignore[no-untyped-def]
            name = real(rw, conv, tail, bias)
            *_, body_act = rw.model.functions[("optgraph", name, "")].graph
            for key in list(body_act.attrs):
                body_act.del_attr(key)
            return name
        monkeypatch.setattr(fuse_conv_act, "fused_function", wrong)
    else:
        monkeypatch.setattr(fuse_conv_act, "attrs_key", lambda node: ())

    assert_mutant_caught("fuse-conv-act", models(motifs=["conv_act"], ops=[], opsets=[13, 17], min_nodes=6))
