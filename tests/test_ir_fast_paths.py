"""The IR's shortcuts for large models give the same answers as the general code they bypass."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from optgraph import ir

from ir_samples import BRANCHES, load_text

PLAIN = [np.float32, np.float64, np.float16, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16,
         np.uint32, np.uint64, np.bool_, np.complex64, np.complex128]


@pytest.mark.parametrize("dtype", PLAIN, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", [(), (0,), (3,), (2, 3, 1)])
def test_raw_data_is_read_as_onnx_reads_it(dtype: type, shape: tuple[int, ...]) -> None:
    a = (np.arange(int(np.prod(shape))) % 3 - 1).astype(dtype).reshape(shape)
    proto = numpy_helper.from_array(a, "t")
    got = ir.Tensor(proto).numpy()
    want = numpy_helper.to_array(proto)
    assert got.dtype == want.dtype and got.shape == want.shape and np.array_equal(got, want)
    assert not got.flags.writeable


@pytest.mark.parametrize("proto", [
    onnx.helper.make_tensor("typed", onnx.TensorProto.FLOAT, [2], [1.5, -2.0]),  # float_data, no raw_data
    onnx.helper.make_tensor("bf16", onnx.TensorProto.BFLOAT16, [2], [1.5, -2.0]),
    onnx.helper.make_tensor("i4", onnx.TensorProto.INT4, [3], [1, -2, 3]),  # packed: two per byte
    onnx.helper.make_tensor("s", onnx.TensorProto.STRING, [2], [b"a", b"bc"]),
])
def test_other_encodings_take_the_general_path(proto: onnx.TensorProto) -> None:
    got = ir.Tensor(proto).numpy()
    want = numpy_helper.to_array(proto)
    assert got.dtype == want.dtype and np.array_equal(got, want) and not got.flags.writeable


def test_tobytes_is_the_data_for_loaded_and_new_tensors() -> None:
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert ir.Tensor(numpy_helper.from_array(a)).tobytes() == a.tobytes()
    assert ir.Tensor(array=a).tobytes() == a.tobytes()
    typed = onnx.helper.make_tensor("typed", onnx.TensorProto.FLOAT, [2], [1.5, -2.0])
    assert ir.Tensor(typed).tobytes() == np.array([1.5, -2.0], np.float32).tobytes()


def test_subgraphs_follow_attribute_edits() -> None:
    model = load_text(BRANCHES)
    node = next(n for n in model.graph if n.op_type == "If")
    then_g, else_g = node.attr("then_branch"), node.attr("else_branch")
    assert node.subgraphs() == [then_g, else_g]
    plain = next(n for n in model.graph if n.op_type == "Neg")
    assert plain.subgraphs() == []
    node.set_attr("then_branch", 1)  # a graph attribute replaced by a plain one
    assert node.subgraphs() == [else_g]
    node.del_attr("else_branch")
    assert node.subgraphs() == []
    node.set_attr("else_branch", else_g)
    assert node.subgraphs() == [else_g] and else_g.parent is node
    plain.set_attr("g", [ir.Graph("a"), ir.Graph("b")])
    assert [g.name for g in plain.subgraphs()] == ["a", "b"]


def test_copy_attrs_copies_every_attribute_and_refuses_subgraphs() -> None:
    model = load_text(BRANCHES)
    graph = model.graph
    x = graph.inputs[1]
    conv = graph.make_node("LeakyRelu", [x], {"alpha": 0.5})
    conv.set_attr("note", "kept")
    copy = graph.make_node("LeakyRelu", [x])
    copy.copy_attrs(conv)
    assert {k: a.value for k, a in copy.attrs.items()} == {"alpha": 0.5, "note": "kept"}
    copy.set_attr("alpha", 0.25)  # replacing an attribute of the copy leaves the original alone
    assert conv.attr("alpha") == 0.5
    with pytest.raises(ValueError, match="subgraphs"):
        copy.copy_attrs(next(n for n in graph if n.op_type == "If"))


@pytest.mark.parametrize("dtype", PLAIN, ids=lambda d: np.dtype(d).name)
def test_new_tensors_encode_as_from_array_does(dtype: type) -> None:
    a = (np.arange(6) % 3).astype(dtype).reshape(2, 3)
    for name in ("", "w"):
        assert ir.Tensor(array=a).to_proto(name).SerializeToString() == \
            numpy_helper.from_array(a, name).SerializeToString()


def test_value_types_round_trip_through_the_shared_caches() -> None:
    model = load_text(BRANCHES)
    x = model.graph.inputs[1]
    assert x.shape == ("N", 2)  # decoded from the file
    y = model.graph.make_node("Neg", [x]).output
    y.dtype, y.shape = onnx.TensorProto.FLOAT, (np.int64(3), "M", None)  # a numpy int as a dim
    z = model.graph.make_node("Neg", [y]).output
    z.dtype, z.shape = onnx.TensorProto.FLOAT, (3, "M", None)
    back = ir.from_bytes(ir.to_proto(model).SerializeToString())
    got = {v.name: v.shape for n in back.graph for v in n.outputs if v is not None}
    assert got[y.name] == got[z.name] == (3, "M", None)


def test_use_counts_and_subgraph_holders() -> None:
    model = load_text(BRANCHES)
    graph = model.graph
    a = next(n for n in graph if n.op_type == "Neg").output
    assert a.num_uses == len(a.uses) == 2  # read by a node of each If branch
    graph.make_node("Add", [a, a])
    assert a.num_uses == len(a.uses) == 4
    assert [n.op_type for n in graph.nodes_with_subgraphs()] == ["If"]
