import copy

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import assume, given, settings
from onnx import TensorProto, helper, numpy_helper

from optgraph import ir
from optgraph.passes import builtin  # noqa: F401
from optgraph.passes.base import PassContext
from optgraph.passes.manager import PassManager, parse_pipeline
from optgraph.passes.precision import calibration, quantize, trained
from optgraph.passes.testing.oracle import make_session, random_inputs
from optgraph.passes.testing.strategies import models


def _quantize(proto: onnx.ModelProto, ranges: dict[str, float]) -> onnx.ModelProto:
    m = ir.from_proto(proto)
    ctx = PassContext()
    ctx.ranges = ranges
    PassManager(parse_pipeline("quantize-int8"), ctx=ctx).run(m)
    return ir.to_proto(m)


def _one(op: str, w: np.ndarray, x_shape: list[int], **attrs: object) -> onnx.ModelProto:
    g = helper.make_graph([helper.make_node(op, ["x", "w"], ["y"], name="n", **attrs)], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(w.astype(np.float32), "w")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 10
    return m


@pytest.mark.parametrize(("op", "shape", "attrs", "axis", "channels"), [
    ("Conv", (6, 2, 3, 3), {}, 0, 6),
    ("ConvTranspose", (4, 3, 3, 3), {"group": 2}, 1, 3),
    ("Gemm", (5, 4), {"transB": 1}, 0, 5),
    ("Gemm", (4, 5), {}, 1, 5),
    ("MatMul", (4, 5), {}, 1, 5),
])
def test_weights_are_quantized_per_output_channel(op: str, shape: tuple[int, ...], attrs: dict, axis: int,
                                                  channels: int) -> None:
    rng = np.random.default_rng(0)
    w = rng.normal(0, 1, shape) * rng.uniform(0.1, 10, shape[axis]).reshape([-1 if i == axis else 1 for i in range(len(shape))])
    x_shape = [2, 4] if op in ("Gemm", "MatMul") else [1, shape[0] if op == "ConvTranspose" else 2, 5, 5]
    model = _one(op, w, x_shape, **attrs)
    out = _quantize(model, {"x": 3.0})
    dqs = [n for n in out.graph.node if n.op_type == "DequantizeLinear" and n.output[0] != "x_dequantize"]
    weight_dq = [n for n in dqs if any(i.endswith("_int8") for i in n.input)]
    assert len(weight_dq) == 1
    assert helper.get_attribute_value(weight_dq[0].attribute[0]) == axis
    inits = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
    assert inits[weight_dq[0].input[1]].shape == (channels,)
    assert inits[weight_dq[0].input[0]].dtype == np.int8
    x = rng.uniform(-3, 3, x_shape).astype(np.float32)
    ref = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    got = ort.InferenceSession(out.SerializeToString()).run(None, {"x": x})[0]
    assert np.abs(got - ref).max() <= 0.05 * np.abs(ref).max()  # int8 error, far below a wrong axis's


def test_refuses_without_calibration() -> None:
    with pytest.raises(quantize.QuantizeError, match="calibration"):
        _quantize(_one("MatMul", np.ones((4, 5)), [2, 4]), {})


@pytest.mark.parametrize("make", [trained.digits_cnn, trained.tabular_mlp])
def test_int8_keeps_held_out_accuracy(make) -> None:  # type: ignore[no-untyped-def]
    t = make()
    m = ir.from_proto(t.model)
    PassManager(parse_pipeline("default")).run(m)
    opt = ir.to_proto(m)
    stats = calibration.collect(opt, lambda: calibration._batches({t.input_name: t.x_train}, 64))
    out = _quantize(opt, calibration.ranges(stats, "mse"))
    ops = [n.op_type for n in out.graph.node]
    assert ops.count("QuantizeLinear") >= 2
    ref = ort.InferenceSession(t.model.SerializeToString()).run(None, {t.input_name: t.x_test})[0]
    got = ort.InferenceSession(out.SerializeToString()).run(None, {t.input_name: t.x_test})[0]
    assert np.isfinite(got).all()
    print(f"{t.model.graph.name}: max logit error {np.abs(got - ref).max():.4f}")
    assert t.accuracy(got) >= t.accuracy(ref) - 0.5


@settings(deadline=None, max_examples=25)
@given(models())
def test_random_graphs_quantize_validly(proto: onnx.ModelProto) -> None:
    assume(next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 13)
    feeds = random_inputs(proto, seed=0)
    stats = calibration.collect(proto, lambda: iter([feeds]))
    out = _quantize(copy.deepcopy(proto), calibration.ranges(stats, "minmax"))
    onnx.checker.check_model(out)
    inits = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
    producer = {o: n for n in out.graph.node for o in n.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in out.graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    for n in out.graph.node:
        if n.op_type == "QuantizeLinear":  # every Q is read only by its DQ, zero point int8 0
            assert all(r.op_type == "DequantizeLinear" for r in readers.get(n.output[0], []))
            assert inits[n.input[2]].dtype == np.int8 and not inits[n.input[2]].any()
        if n.op_type == "DequantizeLinear" and n.input[0] in inits:  # weights: int8, zero points 0
            assert inits[n.input[0]].dtype == np.int8 and not inits[n.input[2]].any()
        if n.op_type in quantize.COMPUTE and n.input[1] in producer:
            if producer[n.input[1]].op_type == "DequantizeLinear" and producer[n.input[1]].input[0] in inits:
                assert producer[n.input[0]].op_type == "DequantizeLinear"  # weight quantized => input too
            if len(n.input) > 2 and n.input[2]:
                assert n.input[2] not in producer or producer[n.input[2]].op_type != "DequantizeLinear"  # float bias
    ref = make_session(proto).run(None, feeds)
    got = make_session(out).run(None, feeds)
    for r, g in zip(ref, got):
        assert r.shape == g.shape and r.dtype == g.dtype
        assert np.isfinite(g[np.isfinite(r)]).all()


def test_a_shared_weight_is_quantized_once() -> None:
    w = numpy_helper.from_array(np.random.default_rng(0).normal(0, 1, (3, 3, 1, 1)).astype(np.float32), "w")
    g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["a"], name="c1"),
                           helper.make_node("Conv", ["a", "w"], ["y"], name="c2")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 4])], [w])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    out = _quantize(model, {"x": 1.0, "a": 5.0})
    ops = [n.op_type for n in out.graph.node]
    assert ops.count("DequantizeLinear") == 3 and ops.count("QuantizeLinear") == 2  # x, a; one weight DQ
    assert sorted(t.name for t in out.graph.initializer if t.name.endswith("_int8")) == ["w_int8"]
