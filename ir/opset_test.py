"""Opset-aware accessors: the same parameter read from an attribute or an input, by opset."""

from __future__ import annotations

import pytest
from onnx import parser

from optgraph import ir
from optgraph.ir import opset as ops


def nodes(opset: int, body: str, inputs: str = "float[2, 1, 3] x") -> tuple[ir.Model, list[ir.Node]]:
    model = ir.from_proto(parser.parse_model(f"""<ir_version: 8, opset_import: ["" : {opset}]>
        g ({inputs}) => (float[2, 1, 3] x_out) {{ {body}  x_out = Identity(x) }}"""))
    return model, list(model.graph)[:-1]


@pytest.mark.parametrize(("opset", "body"), [
    (11, "y = Squeeze <axes = [-2]> (x)"),
    (13, "a = Constant <value = int64[1] {-2}> ()  y = Squeeze(x, a)"),
])
def test_squeeze_axes_from_attribute_or_input(opset: int, body: str) -> None:
    _, ns = nodes(opset, body)
    assert ops.axes(ns[-1], opset, rank=3) == (1,)
    assert ops.ints(ns[-1], opset, "axes") == [-2]


def test_squeeze_without_axes_needs_the_shape() -> None:
    _, (n,) = nodes(13, "y = Squeeze(x)")
    assert ops.operand(n, 13, "axes") is ops.ABSENT
    assert ops.axes(n, 13, shape=(2, 1, 3)) == (1,)
    assert ops.axes(n, 13, shape=(2, "N", 3)) is None  # N may or may not be 1


def test_unsqueeze_axes_refer_to_the_output_rank() -> None:
    _, (n,) = nodes(11, "y = Unsqueeze <axes = [-1, 0]> (x)")
    assert ops.axes(n, 11, rank=3) == (4, 0)


@pytest.mark.parametrize(("op", "opset_as_input"), [("ReduceSum", 13), ("ReduceMean", 18), ("ReduceMax", 18)])
def test_reduce_axes_moved_at_their_own_opset(op: str, opset_as_input: int) -> None:
    _, (n,) = nodes(opset_as_input - 1, f"y = {op} <axes = [0, -1]> (x)")
    assert ops.axes(n, opset_as_input - 1, rank=3) == (0, 2)
    _, ns = nodes(opset_as_input, f"a = Constant <value = int64[2] {{0, -1}}> ()  y = {op}(x, a)")
    assert ops.axes(ns[-1], opset_as_input, rank=3) == (0, 2)
    # the attribute is not what this opset reads
    _, (n,) = nodes(opset_as_input, f"y = {op} <keepdims = 1> (x)")
    assert ops.axes(n, opset_as_input, rank=3) == (0, 1, 2)


def test_reduce_defaults_and_noop_with_empty_axes() -> None:
    _, (n,) = nodes(18, "y = ReduceMean <noop_with_empty_axes = 1> (x)")
    assert ops.axes(n, 18, rank=3) == ()
    _, (n,) = nodes(18, "y = ReduceMean(x)")
    assert ops.axes(n, 18) is None  # all axes, but the rank is not given


def test_non_constant_operand_is_none_not_absent() -> None:
    _, (n,) = nodes(13, "y = Squeeze(x, a)", inputs="float[2, 1, 3] x, int64[1] a")
    assert ops.operand(n, 13, "axes") is None
    assert ops.axes(n, 13, rank=3) is None


def test_out_of_range_axes_are_refused() -> None:
    _, (n,) = nodes(11, "y = Squeeze <axes = [3]> (x)")
    assert ops.axes(n, 11, rank=3) is None


def test_split_sizes_in_every_form() -> None:
    _, (n,) = nodes(11, "a, b = Split <axis = 2, split = [1, 2]> (x)")
    assert ops.split_sizes(n, 11) == [1, 2]
    _, ns = nodes(13, "s = Constant <value = int64[2] {2, 1}> ()  a, b = Split <axis = 2> (x, s)")
    assert ops.split_sizes(ns[-1], 13) == [2, 1]
    _, (n,) = nodes(13, "a, b, c = Split <axis = 2> (x)")
    assert ops.split_sizes(n, 13, dim=3) == [1, 1, 1]
    assert ops.split_sizes(n, 13, dim=4) is None  # an even split that does not divide is invalid
    assert ops.split_sizes(n, 13, dim="N") is None
    _, (n,) = nodes(18, "a, b = Split <axis = 2, num_outputs = 2> (x)")
    assert ops.split_sizes(n, 18, dim=3) == [2, 1]  # opset 18: the last piece is the smaller one


def test_clip_bounds_from_attributes_inputs_or_open() -> None:
    _, (n,) = nodes(6, "y = Clip <min = -1.0, max = 2.0> (x)")
    assert ops.clip_bounds(n, 6) == (-1.0, 2.0)
    _, ns = nodes(13, "lo = Constant <value = float {0.0}> ()  y = Clip(x, lo, )")
    assert ops.clip_bounds(ns[-1], 13) == (0.0, None)
    _, (n,) = nodes(13, "y = Clip(x, lo)", inputs="float[2, 1, 3] x, float lo")
    assert ops.clip_bounds(n, 13) is None


def test_pads_and_slice_parameters() -> None:
    _, (n,) = nodes(10, "y = Pad <pads = [0, 1, 0, 0, 1, 0]> (x)")
    assert ops.pads(n, 10) == [0, 1, 0, 0, 1, 0]
    _, ns = nodes(13, "p = Constant <value = int64[6] {0, 0, 0, 0, 0, 0}> ()  y = Pad(x, p)")
    assert ops.pads(ns[-1], 13) == [0] * 6
    _, (n,) = nodes(9, "y = Slice <starts = [0], ends = [1], axes = [2]> (x)")
    assert ops.slice_params(n, 9) == ([0], [1], [2], None)
    _, ns = nodes(13, "s = Constant <value = int64[1] {0}> ()  e = Constant <value = int64[1] {1}> ()  "
                      "y = Slice(x, s, e)")
    assert ops.slice_params(ns[-1], 13) == ([0], [1], None, None)


def test_graphs_with_opset_uses_each_functions_own_imports() -> None:
    model = ir.from_proto(parser.parse_model("""<ir_version: 8, opset_import: ["" : 17, "local" : 1]>
        g (float[2] x) => (float[2] y) { y = local.f(x) }
        <domain: "local", opset_import: ["" : 13]> f (a) => (b) { b = Relu(a) }"""))
    versions = {g.name: v for g, v in ops.graphs_with_opset(model)}
    assert versions == {"g": 17, "f": 13}
    assert ops.operand(list(model.graph)[0], 17, "missing") is ops.ABSENT


def test_trait_table_matches_the_named_sets() -> None:
    assert set(ops.ACTIVATIONS) == ops.ops_with(ops.Trait.ACTIVATION)
    assert ops.ELEMENTWISE <= ops.IN_PLACE  # a layout-transparent op is also safe in place
    assert {"Add", "Mul", "BitwiseXor"} <= ops.COMMUTATIVE and "Sub" not in ops.COMMUTATIVE
    assert "Cast" in ops.IN_PLACE and "Cast" not in ops.ELEMENTWISE


def test_is_onnx_and_itemsize() -> None:
    model = ir.from_proto(parser.parse_model("""<ir_version: 8, opset_import: ["" : 17, "com.example" : 1]>
        g (float[2] x) => (float[2] y, float[2] z) { y = Relu(x)  z = com.example.Relu(x) }"""))
    relu, custom = model.graph
    assert ops.is_onnx(relu) and ops.is_onnx(relu, "Relu", "Clip") and not ops.is_onnx(relu, "Clip")
    assert not ops.is_onnx(custom)
    assert ir.itemsize(10) == 2 and ir.itemsize(8) is None and ir.itemsize(0) is None  # float16, string
