"""fp16/bf16: golden islands and casts, equivalence within float16 tolerance, invariants on random graphs."""

from __future__ import annotations

import copy
from collections import Counter

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from onnx import TensorProto, helper, parser

from optgraph import ir
from optgraph.passes import PassContext, PassManager, get, run_passes
from optgraph.passes.testing.golden import assert_rewrites_to, rewrite_text
from optgraph.passes.testing.strategies import models
from optgraph.passes.testing.oracle import compare, make_session, random_inputs

# Float16 keeps 11 significant bits (unit roundoff 2**-11 ~ 4.9e-4). A graph of up to ~25 ops
# rounds every activation and weight once, so outputs may drift by some tens of roundoffs,
# relative to the output's magnitude: 1e-2 of the largest output element, and 1e-2 relative.
FP16_RTOL, FP16_ATOL = 1e-2, 1e-2

# The peer bug: an fp32 island (Exp, Log) with fan-out. onnxconverter-common 1.16 and onnxruntime's
# float16 tool send Exp's output through float16 and back, and the output overflows to inf.
ISLAND = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[4] x) => (float[4] y) { r = Relu(x)  e = Exp(r)  a = Log(e)  b = Log(e)  y = Add(a, b) }
"""


def _ops(proto: onnx.ModelProto) -> Counter[str]:
    return Counter(n.op_type for n in proto.graph.node)


def _assert_cast_invariants(proto: onnx.ModelProto, original: onnx.ModelProto | None = None) -> None:
    """One Cast per (tensor, target type); a Cast the pass added never reads a Cast."""
    producers = {o: n for n in proto.graph.node for o in n.output}
    existing = {n.name for n in original.graph.node} if original is not None else set()
    seen: set[tuple[str, int]] = set()
    for n in proto.graph.node:
        if n.op_type != "Cast" or n.name in existing:
            continue
        to = next(a.i for a in n.attribute if a.name == "to")
        key = (n.input[0], to)
        assert key not in seen, f"tensor '{n.input[0]}' is cast to {to} twice"
        seen.add(key)
        src = producers.get(n.input[0])
        assert src is None or src.op_type != "Cast", f"Cast '{n.name}' reads Cast '{src.name}'"


def test_island_with_fan_out_is_cast_once():
    assert_rewrites_to("fp16{block=Log}", ISLAND, """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[4] x) => (float[4] y) {
            x16 = Cast<to=10>(x)  r = Relu(x16)  r32 = Cast<to=1>(r)  e = Exp(r32)  a = Log(e)  b = Log(e)
            a16 = Cast<to=10>(a)  b16 = Cast<to=10>(b)  y16 = Add(a16, b16)  y = Cast<to=1>(y16)
        }
    """)


def test_island_output_is_finite_and_close():
    base = parser.parse_model(ISLAND)
    out, _ = rewrite_text("fp16{block=Log}", ISLAND)
    feeds = {"x": np.array([1.0, 5.0, 20.0, 80.0], np.float32)}  # exp(80) overflows float16
    ref = make_session(base).run(None, feeds)[0]
    got = make_session(out).run(None, feeds)[0]
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, ref, rtol=FP16_RTOL)


def test_default_keeps_exp_in_fp32_and_reads_its_output_once():
    out, _ = rewrite_text("fp16", ISLAND)
    casts = [n for n in out.graph.node if n.op_type == "Cast"]
    exp = next(n for n in out.graph.node if n.op_type == "Exp")
    readers_of_exp = [n for n in out.graph.node if exp.output[0] in n.input]
    assert [n.op_type for n in readers_of_exp] == ["Cast"]  # both Logs share one Cast
    assert len(casts) == 4  # x in, Exp in, Exp out, y out
    _assert_cast_invariants(out)


def test_shared_initializer_converted_once_and_original_kept_for_fp32_readers():
    out, _ = rewrite_text("fp16", """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2] x) => (float[2] y, float[2] z) <float[2] w = {0.5, 2.0}> {
            a = Mul(x, w)  b = Add(a, w)  y = Relu(b)  z = Pow(x, w)
        }
    """)
    inits = {t.name: t for t in out.graph.initializer}
    assert sorted(t.data_type for t in inits.values()) == [TensorProto.FLOAT, TensorProto.FLOAT16]
    w16 = next(t.name for t in inits.values() if t.data_type == TensorProto.FLOAT16)
    nodes = {n.op_type: n for n in out.graph.node}
    assert nodes["Mul"].input[1] == nodes["Add"].input[1] == w16  # one converted copy, shared
    assert nodes["Pow"].input == ["x", "w"]  # Pow stays float32 and reads the original
    assert _ops(out)["Cast"] == 2  # x into Mul, y out of Relu
    np.testing.assert_array_equal(onnx.numpy_helper.to_array(inits[w16]), np.array([0.5, 2.0], np.float16))


def test_weight_that_overflows_fp16_keeps_its_node_in_fp32():
    out, report = rewrite_text("fp16", """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2] x) => (float[2] y) <float[2] w = {1e6, 1.0}> { a = Relu(x)  b = Mul(a, w)  y = Abs(b) }
    """)
    mul = next(n for n in out.graph.node if n.op_type == "Mul")
    assert "w" in mul.input  # the float32 weight, not a clamped copy
    assert not [t for t in out.graph.initializer if t.data_type == TensorProto.FLOAT16]


def test_existing_cast_to_float_is_retargeted():
    assert_rewrites_to("fp16", """
        <ir_version: 8, opset_import: ["" : 17]>
        g (int64[2] i) => (float[2] y) { f = Cast<to=1>(i)  y = Relu(f) }
    """, """
        <ir_version: 8, opset_import: ["" : 17]>
        g (int64[2] i) => (float[2] y) { f16 = Cast<to=10>(i)  y16 = Relu(f16)  y = Cast<to=1>(y16) }
    """)


def test_cast_from_float_reads_the_fp16_tensor_directly():
    out, _ = rewrite_text("fp16", """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2] x) => (int64[2] y) { a = Relu(x)  y = Cast<to=7>(a) }
    """)
    assert [n.op_type for n in out.graph.node] == ["Cast", "Relu", "Cast"]
    _assert_cast_invariants(out)


def test_resize_scales_and_shape_paths_stay_fp32():
    out, _ = rewrite_text("fp16", """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1,1,2,2] x, float[4] s) => (float[1,1,4,4] y) {
            t = Mul(s, s)  r = Resize<mode="nearest">(x, , t)  y = Relu(r)
        }
    """)
    nodes = {n.op_type: n for n in out.graph.node}
    assert nodes["Mul"].input == ["s", "s"]  # feeds only Resize's float32 scales: not converted
    assert nodes["Resize"].input[2] == nodes["Mul"].output[0]


def test_subgraph_reads_captured_values_in_fp32():
    body_then = helper.make_graph([helper.make_node("Neg", ["r"], ["t"])], "then", [],
                                  [helper.make_tensor_value_info("t", TensorProto.FLOAT, [2])])
    body_else = helper.make_graph([helper.make_node("Abs", ["r"], ["u"])], "else", [],
                                  [helper.make_tensor_value_info("u", TensorProto.FLOAT, [2])])
    g = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"]),
         helper.make_node("If", ["c"], ["y"], then_branch=body_then, else_branch=body_else)],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2]),
              helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    proto = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    model = ir.from_proto(copy.deepcopy(proto))
    run_passes(model, "fp16", verify_each=True)
    out = ir.to_proto(model)
    assert [n.op_type for n in out.graph.node] == ["Cast", "Relu", "Cast", "If"]
    for c in (True, False):
        feeds = {"x": np.array([-1.5, 2.25], np.float32), "c": np.array(c)}
        np.testing.assert_array_equal(make_session(out).run(None, feeds)[0], make_session(proto).run(None, feeds)[0])


def test_fused_units_convert_with_their_function():
    from optgraph.passes.testing.networks import inception_like

    proto = inception_like(batch=1)
    model = ir.from_proto(copy.deepcopy(proto))
    run_passes(model, "default,fp16", verify_each=True)
    out = ir.to_proto(model)
    calls = [n for n in out.graph.node if n.domain == "optgraph"]
    assert calls, "default made no fused units"
    types = {vi.name: vi.type.tensor_type.elem_type for vi in out.graph.value_info}
    assert all(types.get(n.output[0]) == TensorProto.FLOAT16 for n in calls)
    assert compare(proto, out, rtol=FP16_RTOL, atol=FP16_ATOL, n_inputs=2)


def test_calibration_ranges_keep_large_activations_in_fp32():
    text = """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2] x) => (float[2] y) { a = Relu(x)  b = Neg(a)  y = Abs(b) }
    """
    model = ir.from_proto(parser.parse_model(text))
    ctx = PassContext()
    ctx.ranges.update({"x": 10.0, "a": 10.0, "b": 4000.0, "y": 4000.0})
    PassManager([get("fp16")()], verify_each=True, ctx=ctx).run(model)
    ops = {n.op_type: n for n in ir.to_proto(model).graph.node}
    assert ops["Neg"].input[0] != "a" and ops["Abs"].input == ["b"]  # Neg and Abs stay float32


def test_range_sensitive_ops_convert_when_calibration_says_they_are_in_range():
    model = ir.from_proto(parser.parse_model(ISLAND))
    ctx = PassContext()
    ctx.ranges.update({"x": 3.0, "r": 3.0, "e": 21.0, "a": 3.0, "b": 3.0, "y": 6.0})
    PassManager([get("fp16")()], verify_each=True, ctx=ctx).run(model)
    assert _ops(ir.to_proto(model))["Cast"] == 2  # only the graph input and output


def test_keep_io_false_converts_inputs_and_outputs():
    out, _ = rewrite_text("fp16{keep_io=false}", """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2] x) => (float[2] y) { a = Relu(x)  y = Abs(a) }
    """)
    assert out.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    assert out.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    assert not [n for n in out.graph.node if n.op_type == "Cast"]


def test_block_nodes_by_name():
    out, _ = rewrite_text("fp16{block_nodes=^keep}", """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2] x) => (float[2] y) { [keep_me] a = Relu(x)  [other] y = Abs(a) }
    """)
    relu = next(n for n in out.graph.node if n.op_type == "Relu")
    assert relu.input == ["x"]


def test_bf16_on_a_conv_model():
    from optgraph.passes.testing.networks import inception_like

    proto = inception_like(batch=1)
    model = ir.from_proto(copy.deepcopy(proto))
    run_passes(model, "bf16", verify_each=True)
    out = ir.to_proto(model)
    assert any(t.data_type == TensorProto.BFLOAT16 for t in out.graph.initializer)
    _assert_cast_invariants(out)
    onnx.checker.check_model(out, full_check=True)


def test_deterministic():
    from optgraph.passes.testing.networks import inception_like

    def once() -> bytes:
        model = ir.from_proto(inception_like(batch=1))
        run_passes(model, "default,fp16")
        return ir.to_proto(model).SerializeToString()

    assert once() == once()


@settings(deadline=None)
@given(models())
def test_random_graphs_stay_within_fp16_tolerance(proto):
    model = ir.from_proto(copy.deepcopy(proto))
    run_passes(model, "fp16", verify_each=True)
    out = ir.to_proto(model)
    _assert_cast_invariants(out, proto)
    assert [o.type for o in out.graph.output] == [o.type for o in proto.graph.output]
    feeds = random_inputs(proto, seed=0)
    ref = make_session(proto).run(None, feeds)
    if not all(np.isfinite(np.asarray(r, np.float64)).all() and np.abs(r).max(initial=0) < 1e4 for r in ref):
        return  # fp32 activations beyond float16's comfortable range: the data-driven mode's job
    result = compare(proto, out, n_inputs=1, rtol=FP16_RTOL, atol=FP16_ATOL)
    assert result, result.message


@pytest.mark.parametrize("spec", ["fp16", "bf16"])
def test_registered_and_documented(spec):
    assert get(spec).description


def test_float_to_float_cast_of_an_input_shares_the_inputs_cast():
    # found by the thorough property run: the retargeted Cast made a second Cast of the input
    out, _ = rewrite_text("fp16", """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2] x) => (float[2] y, float[2] z) { y = Relu(x)  c = Cast<to=1>(x)  z = Abs(c) }
    """)
    _assert_cast_invariants(out)
    assert _ops(out)["Cast"] == 3  # x in, y out, z out


@pytest.mark.parametrize("fixture", ["digits_cnn", "tabular_mlp"])
def test_trained_model_keeps_held_out_accuracy(fixture):
    from optgraph.passes.precision import trained

    t = getattr(trained, fixture)()
    model = ir.from_proto(copy.deepcopy(t.model))
    run_passes(model, "fp16")
    out = ir.to_proto(model)
    assert _ops(out)["Cast"] >= 2
    ref = make_session(t.model).run(None, {t.input_name: t.x_test})[0]
    half = make_session(out).run(None, {t.input_name: t.x_test})[0]
    assert np.isfinite(half).all()
    err = float(np.abs(half - ref).max() / max(np.abs(ref).max(), 1e-12))
    print(f"{fixture}: fp32 {t.accuracy(ref):.2f}%, fp16 {t.accuracy(half):.2f}%, max logit error {err:.2e} of max |logit|")
    assert abs(t.accuracy(half) - t.accuracy(ref)) <= 0.1
    assert err < FP16_RTOL


@pytest.mark.tensorrt
def test_tensorrt_builds_the_fp16_result_in_half():
    from optgraph.passes.precision import trained
    from optgraph.runtime import tensorrt

    if not tensorrt.available():
        pytest.skip("TensorRT is not installed")
    model = ir.from_proto(copy.deepcopy(trained.digits_cnn().model))
    run_passes(model, "default,fp16")
    result = tensorrt.build(ir.to_proto(model).SerializeToString())
    assert result.ok, result.errors
    tensors = result.report.precision()["tensors"]
    print(f"digits_cnn fp16 engine: {result.report.num_layers} layers, tensors {tensors}")
    assert tensors.get("Half", 0) > tensors.get("Float", 0), tensors


def test_function_with_float_constants_runs_through_a_low_precision_copy():
    # fuse-conv-act's Conv+Clip unit carries the Clip bounds as float Constants in its body (ReLU6
    # of MobileNet): the call goes through one fp16 copy of the function, the original stays.
    rng = np.random.default_rng(0)
    w, w2 = (rng.normal(0, 1, (4, c, 3, 3)).astype(np.float32) for c in (3, 4))
    text = """
    <ir_version: 8, opset_import: ["" : 17, "optgraph" : 1]>
    g (float[1, 3, 8, 8] x) => (float[1, 4, 4, 4] y) {
        a = optgraph.ConvClip(x, w)
        b = Relu(a)
        y = optgraph.ConvClip(b, w2)
    }
    <domain: "optgraph", opset_import: ["" : 17]>
    ConvClip (X, W) => (Y) {
        c = Conv(X, W)
        lo = Constant <value = float {0.0}> ()
        hi = Constant <value_float = 6.0> ()
        Y = Clip(c, lo, hi)
    }
    """
    proto = parser.parse_model(text)
    proto.graph.initializer.extend([onnx.numpy_helper.from_array(w, "w"), onnx.numpy_helper.from_array(w2, "w2")])
    model = ir.from_proto(copy.deepcopy(proto))
    run_passes(model, "fp16", verify_each=True)
    out = ir.to_proto(model)
    onnx.checker.check_model(out)
    calls = [n for n in out.graph.node if n.domain == "optgraph"]
    assert [n.op_type for n in calls] == ["ConvClip_fp16", "ConvClip_fp16"]
    assert sorted(f.name for f in out.functions) == ["ConvClip", "ConvClip_fp16"]
    low = next(f for f in out.functions if f.name == "ConvClip_fp16")
    consts = [n for n in low.node if n.op_type == "Constant"]
    assert all(a.name == "value" and a.t.data_type == TensorProto.FLOAT16 for n in consts for a in n.attribute)
    assert _ops(out)["Cast"] == 2  # the input and the output: the whole chain runs in fp16
    assert compare(proto, out, rtol=FP16_RTOL, atol=FP16_ATOL, n_inputs=2)
