"""The equivalence oracle: it must accept equal models and catch every kind of difference."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from optgraph import ir
from optgraph.passes.testing.oracle import ReferenceRunError, assert_equivalent, compare, random_inputs


def _model(nodes, inputs, outputs, inits=(), opset=17):  # type: ignore[no-untyped-def]
    g = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def _add_const(value: np.ndarray, *, out_type=TensorProto.FLOAT, shape=("N", 3)):  # type: ignore[no-untyped-def]
    return _model(
        [helper.make_node("Add", ["x", "c"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info("y", out_type, list(shape))],
        [numpy_helper.from_array(value.astype(np.float32), "c")])


C = np.array([1.0, 2.0, 3.0], dtype=np.float32)


def test_equal_models_agree() -> None:
    m = _add_const(C)
    result = compare(m, _add_const(C))
    assert result and result.equivalent
    assert result.max_abs_error == 0.0
    assert "equivalent" in result.message


def test_ir_model_accepted_on_both_sides() -> None:
    m = _add_const(C)
    assert compare(ir.from_proto(_add_const(C)), ir.from_proto(m))


def test_changed_constant_is_caught() -> None:
    result = compare(_add_const(C), _add_const(C + np.array([0, 0, 1e-2], np.float32)))
    assert not result
    assert result.worst_output == "y"
    assert result.max_abs_error == pytest.approx(1e-2, rel=1e-3)
    assert "'y'" in result.message and "seed 0" in result.message
    with pytest.raises(AssertionError, match="output 'y'"):
        assert_equivalent(_add_const(C), _add_const(C + 1))


def test_output_dtype_mismatch_is_caught() -> None:
    ref = _model([helper.make_node("Identity", ["x"], ["y"])],
                 [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    cand = _model([helper.make_node("Cast", ["x"], ["y"], to=TensorProto.DOUBLE)],
                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                  [helper.make_tensor_value_info("y", TensorProto.DOUBLE, [2])])
    result = compare(ref, cand)
    assert not result and "dtype" in result.message


def test_output_shape_mismatch_is_caught() -> None:
    shape = [2, 3]
    ref = _model([helper.make_node("Identity", ["x"], ["y"])],
                 [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)])
    cand = _model([helper.make_node("Flatten", ["x"], ["y"], axis=0)],
                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    result = compare(ref, cand)
    assert not result and "shape" in result.message


def test_output_name_mismatch_is_caught() -> None:
    ref = _add_const(C)
    cand = _add_const(C)
    cand.graph.node[0].output[0] = "z"
    cand.graph.output[0].name = "z"
    result = compare(ref, cand)
    assert not result and "outputs" in result.message


def test_tolerance_boundary_scales_with_magnitude() -> None:
    """Just inside the bound passes, just outside fails; the bound grows with max |ref|."""
    def const_model(values: list[float]) -> onnx.ModelProto:
        return _model([helper.make_node("Constant", [], ["y"], value=numpy_helper.from_array(
            np.array(values, np.float64).astype(np.float32)))], [],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])

    # reference [1000, 0]: scale = 1000, so element 1 (ref 0) may be off by atol*1000 = 1e-2
    base = const_model([1000.0, 0.0])
    assert compare(base, const_model([1000.0, 0.0099]))
    assert not compare(base, const_model([1000.0, 0.0101]))
    # element 0 may be off by atol*1000 + rtol*1000 = 0.11
    assert compare(base, const_model([1000.1, 0.0]))
    assert not compare(base, const_model([1000.125, 0.0]))
    # a small output: scale is 1, so atol stays 1e-5 at a zero reference
    small = const_model([0.5, 0.0])
    assert compare(small, const_model([0.5, 9e-6]))
    assert not compare(small, const_model([0.5, 2e-5]))
    # explicit tolerances are honoured
    assert compare(small, const_model([0.5, 2e-5]), atol=1e-4)


def test_nan_positions_must_match() -> None:
    def const_model(values: list[float]) -> onnx.ModelProto:
        return _model([helper.make_node("Constant", [], ["y"], value=numpy_helper.from_array(
            np.array(values, np.float32)))], [], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])

    assert compare(const_model([np.nan, 1.0]), const_model([np.nan, 1.0]))
    assert compare(const_model([np.inf, 1.0]), const_model([np.inf, 1.0]))
    assert not compare(const_model([np.nan, 1.0]), const_model([0.0, 1.0]))
    assert not compare(const_model([1.0, 1.0]), const_model([np.nan, 1.0]))
    assert not compare(const_model([np.inf, 1.0]), const_model([-np.inf, 1.0]))


def test_int_inputs_and_exact_int_outputs() -> None:
    def gather(offset: int) -> onnx.ModelProto:
        return _model(
            [helper.make_node("Gather", ["data", "idx"], ["g"]),
             helper.make_node("Add", ["idx", "k"], ["y"])],
            [helper.make_tensor_value_info("data", TensorProto.FLOAT, [4, 3]),
             helper.make_tensor_value_info("idx", TensorProto.INT64, [5])],
            [helper.make_tensor_value_info("g", TensorProto.FLOAT, [5, 3]),
             helper.make_tensor_value_info("y", TensorProto.INT64, [5])],
            [numpy_helper.from_array(np.array(offset, np.int64), "k")])

    feeds = random_inputs(gather(0), seed=3)
    assert feeds["idx"].dtype == np.int64 and feeds["idx"].min() >= 0 and feeds["idx"].max() <= 3
    assert feeds["data"].dtype == np.float32
    assert compare(gather(0), gather(0))
    result = compare(gather(0), gather(1))
    assert not result and result.worst_output == "y" and "elements differ" in result.message


def test_bool_inputs() -> None:
    m = _model([helper.make_node("Not", ["b"], ["y"])],
               [helper.make_tensor_value_info("b", TensorProto.BOOL, [64])],
               [helper.make_tensor_value_info("y", TensorProto.BOOL, [64])])
    feeds = random_inputs(m, seed=0)
    assert feeds["b"].dtype == np.bool_ and 0 < feeds["b"].sum() < 64
    assert compare(m, m)


def test_scalar_bool_input() -> None:
    """Regression: a rank-0 bool input (an If condition) was fed as a numpy scalar, which ORT refuses."""
    m = _model([helper.make_node("Not", ["b"], ["y"])],
               [helper.make_tensor_value_info("b", TensorProto.BOOL, [])],
               [helper.make_tensor_value_info("y", TensorProto.BOOL, [])])
    assert isinstance(random_inputs(m, seed=0)["b"], np.ndarray)
    assert compare(m, m)


def test_dim_param_inputs() -> None:
    m = _add_const(C, shape=("N", 3))
    assert random_inputs(m, seed=0)["x"].shape == (2, 3)
    assert random_inputs(m, seed=0, dims={"N": 7})["x"].shape == (7, 3)
    assert compare(m, _add_const(C), dims={"N": 5})


def test_initializer_inputs_are_not_fed() -> None:
    m = _add_const(C)
    m.graph.input.append(helper.make_tensor_value_info("c", TensorProto.FLOAT, [3]))
    assert set(random_inputs(m, seed=0)) == {"x"}


def test_feeds_are_seeded() -> None:
    m = _add_const(C)
    a, b, c = (random_inputs(m, seed=s)["x"] for s in (1, 1, 2))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_difference_seen_only_on_a_later_seed_is_reported_with_that_seed() -> None:
    """Where(x > 2.5) rarely fires; the candidate differs only where it does."""
    def model(fill: float) -> onnx.ModelProto:
        return _model(
            [helper.make_node("Greater", ["x", "t"], ["m"]),
             helper.make_node("Where", ["m", "f", "x"], ["y"])],
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
            [numpy_helper.from_array(np.array(2.5, np.float32), "t"),
             numpy_helper.from_array(np.array(fill, np.float32), "f")])

    seeds = [s for s in range(50) if (random_inputs(model(0), seed=s)["x"] > 2.5).any()]
    first = seeds[0]
    assert first > 0
    assert compare(model(0), model(1), n_inputs=first)  # the difference is never exercised
    result = compare(model(0), model(1), n_inputs=first + 1)
    assert not result and result.seed == first and f"seed {first}" in result.message


def test_candidate_that_does_not_run_is_a_mismatch() -> None:
    ref = _add_const(C)
    bad = _add_const(C)
    bad.graph.node[0].op_type = "NoSuchOp"
    result = compare(ref, bad)
    assert not result and "does not load" in result.message


def test_reference_that_does_not_run_raises() -> None:
    bad = _add_const(C)
    bad.graph.node[0].op_type = "NoSuchOp"
    with pytest.raises(ReferenceRunError, match="reference"):
        compare(bad, _add_const(C))


def _embedding(rows: int, *, extra_table: int | None = None) -> onnx.ModelProto:
    """ids -> Cast -> Unsqueeze -> Gather(table[rows, 4]) and, optionally, a second smaller table."""
    nodes = [helper.make_node("Cast", ["ids"], ["ids64"], to=TensorProto.INT64),
             helper.make_node("Unsqueeze", ["ids64", "ax"], ["u"]),
             helper.make_node("Gather", ["table", "u"], ["y"])]
    inits = [numpy_helper.from_array(np.arange(rows * 4, dtype=np.float32).reshape(rows, 4), "table"),
             numpy_helper.from_array(np.array([0], np.int64), "ax")]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64, 4])]
    if extra_table is not None:
        nodes.append(helper.make_node("Gather", ["pos", "ids"], ["z"], axis=1))
        inits.append(numpy_helper.from_array(np.zeros((2, extra_table), np.float32), "pos"))
        outputs.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 64]))
    return _model(nodes, [helper.make_tensor_value_info("ids", TensorProto.INT32, [64])], outputs, inits)


def test_index_inputs_cover_the_table_they_index() -> None:
    """Random ids span the embedding table (not only 0..3), and stay inside a table smaller than 4
    rows, which 0..3 would overrun; an input indexing two tables takes the smaller bound."""
    ids = random_inputs(_embedding(1000), seed=0)["ids"]
    assert ids.dtype == np.int32 and ids.min() >= 0 and 100 < ids.max() < 1000
    small = _embedding(3)
    assert random_inputs(small, seed=0)["ids"].max() == 2
    assert compare(small, small)
    from optgraph.passes.testing.oracle import index_bounds

    assert index_bounds(_embedding(1000, extra_table=50)) == {"ids": 50}
