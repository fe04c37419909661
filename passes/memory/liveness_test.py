"""Tensor sizes and lifetimes: what is an activation, when it lives, what it weighs."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from onnx import TensorProto, helper

from optgraph import ir
from optgraph.passes.base import PassContext
from optgraph.passes.memory.liveness import (FileOrderLiveness, UnknownSizeError, live_profile, liveness,
                                             plannable_infos, tensor_infos)
from optgraph.passes.testing.strategies import GraphBuilder

FLOAT_BYTES = 4


def chain(value_info: bool = True) -> ir.Model:
    """x -> Relu a -> Sigmoid s -> Add(a, s) y (graph output)."""
    b = GraphBuilder(17, value_info=value_info)
    x = b.input((1, 4, 8, 8), name="x")
    a = b.op("Relu", [x], name="a")
    s = b.op("Sigmoid", [a], name="s")
    b.mark_output(b.op("Add", [a, s], name="y"))
    return ir.from_proto(b.build())


def values(model: ir.Model) -> dict[str, ir.Value]:
    return {v.name: v for n in model.graph for v in n.outputs if v is not None}


def test_lifetimes_run_from_the_producer_to_the_last_reader():
    model = chain()
    live = liveness(model, list(model.graph), tensor_infos(model))
    v = values(model)
    size = 4 * 8 * 8 * FLOAT_BYTES
    assert [(t.value.name, t.start, t.end, t.nbytes) for t in live.tensors.values()] == [
        ("a", 0, 2, size), ("s", 1, 2, size)]
    assert v["y"] not in live.tensors  # a graph output lives in the caller's buffer
    assert (live.input_bytes, live.output_bytes) == (size, size)
    assert list(live.live_bytes()) == [size, 2 * size, 2 * size]
    assert live.lower_bound == 2 * size


def test_constants_are_weights_not_activations():
    b = GraphBuilder(17)
    x = b.input((1, 4), name="x")
    c = b.const(np.ones((1, 4), np.float32), "constant")
    i = b.const(np.ones((1, 4), np.float32), "identity")
    b.mark_output(b.op("Add", [b.op("Mul", [x, c], name="m"), i], name="y"))
    model = ir.from_proto(b.build())
    live = liveness(model, list(model.graph), tensor_infos(model))
    assert [t.value.name for t in live.tensors.values()] == ["m"]
    assert live.constant_bytes == 3 * 4 * FLOAT_BYTES  # the Constant, the Identity and its initializer


def test_missing_shapes_come_from_shape_inference():
    model = chain(value_info=False)
    assert values(model)["a"].shape is None
    infos = tensor_infos(model)
    assert infos[values(model)["s"]].shape == (1, 4, 8, 8)


def test_symbolic_dims_take_the_user_size_and_name_it_when_missing():
    b = GraphBuilder(17)
    x = b.input(("N", 2, 3), name="x")
    rows = b.op("Gather", [b.op("Shape", [x]), b.const(np.array([0], np.int64))], axis=0)
    target = b.op("Concat", [rows, b.const(np.array([-1], np.int64))], axis=0)
    b.mark_output(b.op("Relu", [b.op("Reshape", [x, target], name="flat", shape=("N", 6))]))
    model = ir.from_proto(b.build())
    with pytest.raises(UnknownSizeError,
                       match=r"cannot size tensor 'x' \(graph input, shape \[N, 2, 3\]\): give --dim N=SIZE"):
        tensor_infos(model)
    infos = tensor_infos(model, {"N": 4})
    assert infos[values(model)["flat"]].shape == (4, 6)
    assert infos[values(model)["flat"]].nbytes == 4 * 6 * FLOAT_BYTES


def test_shapes_that_depend_on_user_dims_are_inferred_with_the_dims_filled_in():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Mul", ["s", "two"], ["s2"]),
             helper.make_node("ConstantOfShape", ["s2"], ["z"],
                              value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0])),
             helper.make_node("Relu", ["z"], ["y"])]
    graph = helper.make_graph(nodes, "g", [x], [y], [onnx.numpy_helper.from_array(np.array([1, 2], np.int64), "two")])
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8))
    infos = tensor_infos(model, {"N": 3})
    assert infos[values(model)["z"]].shape == (3, 12)


def sliced_by_a_shape_computation() -> ir.Model:
    """y = Relu(x[:, :N/2]) for x of shape [N, 8]: the Slice's end comes from Shape, Gather, Div,
    Unsqueeze, which onnx's inference does not follow even with N known."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", None])
    inits = [onnx.numpy_helper.from_array(np.array(a, np.int64), n)
             for n, a in [("one", 1), ("two", 2), ("zero", [0]), ("axis", [1])]]
    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Gather", ["s", "one"], ["n"], axis=0),
             helper.make_node("Div", ["n", "two"], ["h"]), helper.make_node("Unsqueeze", ["h", "zero"], ["u"]),
             helper.make_node("Slice", ["x", "zero", "u", "axis"], ["sl"]), helper.make_node("Relu", ["sl"], ["y"])]
    graph = helper.make_graph(nodes, "g", [x], [y], inits)
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8))


def test_sizes_behind_a_shape_computation_are_found_by_folding_it_at_the_user_dims():
    model = sliced_by_a_shape_computation()
    with pytest.raises(UnknownSizeError, match=r"cannot size tensor 'sl'.*--passes fold-constants"):
        tensor_infos(model, {"N": 6})
    ctx = PassContext(dims={"N": 6})
    ctx.bind(model)
    infos = plannable_infos(model, ctx)
    assert infos[values(model)["sl"]].shape == (6, 4)
    assert [n.op_type for n in model.graph] == ["Slice", "Relu"]  # the shape computation folded away
    assert model.graph.inputs[0].shape == (6, 8)


def test_planning_sizes_leave_a_model_that_infers_alone_untouched():
    model = chain()
    ctx = PassContext()
    ctx.bind(model)
    plannable_infos(model, ctx)
    assert [n.op_type for n in model.graph] == ["Relu", "Sigmoid", "Add"]


def test_an_unknown_rank_is_an_error_naming_the_tensor():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    graph = helper.make_graph([helper.make_node("Custom", ["x"], ["c"], domain="vendor"),
                               helper.make_node("Relu", ["c"], ["y"])], "g", [x],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                                  helper.make_opsetid("vendor", 1)], ir_version=8))
    with pytest.raises(UnknownSizeError, match=r"tensor 'c' \(output of Custom node ''.*rank is unknown"):
        tensor_infos(model)


def test_a_subgraph_read_keeps_the_outer_tensor_live_until_its_node():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    cond = helper.make_tensor_value_info("cond", TensorProto.BOOL, [])
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, [2, 3])

    def branch(op: str) -> onnx.GraphProto:
        return helper.make_graph([helper.make_node(op, ["a"], ["r"])], op, [],
                                 [helper.make_tensor_value_info("r", TensorProto.FLOAT, [2, 3])])

    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Sigmoid", ["x"], ["b"]),
             helper.make_node("If", ["cond"], ["i"], then_branch=branch("Neg"), else_branch=branch("Abs")),
             helper.make_node("Add", ["i", "b"], ["out"])]
    model = ir.from_proto(helper.make_model(helper.make_graph(nodes, "g", [x, cond], [out]),
                                            opset_imports=[helper.make_opsetid("", 17)], ir_version=8))
    live = liveness(model, list(model.graph), tensor_infos(model))
    spans = {t.value.name: (t.start, t.end) for t in live.tensors.values()}
    assert spans == {"a": (0, 2), "b": (1, 3), "i": (2, 3)}


def test_a_schedule_must_be_topological_and_complete():
    model = chain()
    nodes = list(model.graph)
    infos = tensor_infos(model)
    with pytest.raises(ValueError, match="before its producer"):
        liveness(model, [nodes[1], nodes[0], nodes[2]], infos)
    with pytest.raises(ValueError, match="each node"):
        liveness(model, nodes[:2], infos)


def test_the_file_order_analysis_is_cached_in_the_pass_context():
    model = chain()
    ctx = PassContext()
    ctx.bind(model)
    first = ctx.get(FileOrderLiveness)
    assert ctx.get(FileOrderLiveness) is first
    assert first.lower_bound == 2 * 4 * 8 * 8 * FLOAT_BYTES


@given(st.integers(1, 12).flatmap(lambda n: st.tuples(st.just(n), st.lists(
    st.tuples(st.integers(0, 100), st.integers(0, n - 1), st.integers(0, n - 1)), max_size=20))))
def test_live_profile_sums_the_spans_live_at_each_step(case):
    n, raw = case
    spans = [(size, min(a, b), max(a, b)) for size, a, b in raw]
    expected = [sum(size for size, start, end in spans if start <= s <= end) for s in range(n)]
    assert list(live_profile(n, spans)) == expected


def test_a_size_that_depends_on_data_is_an_error_that_does_not_ask_for_dims():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    s = helper.make_tensor_value_info("s", TensorProto.INT64, [2])
    graph = helper.make_graph([helper.make_node("Reshape", ["x", "s"], ["r"]), helper.make_node("Relu", ["r"], ["y"])],
                              "g", [x, s], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8))
    with pytest.raises(UnknownSizeError, match="tensor 'r' .*depends on values shape inference cannot follow") as e:
        tensor_infos(model)
    assert "--dim" not in str(e.value).split("(folding")[0]
