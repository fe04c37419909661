"""The IR round-trips ONNX's own node test cases losslessly and they still compute the same.

Every case of ``onnx.backend.test.case.node`` (about 1,900 one-op models, with inputs and
expected outputs) is decorated with the details a real model carries and the IR must keep (node
names, doc strings, metadata, value_info, dim_params), loaded into the IR, written back with
``to_proto`` and ``save``, and compared field by field with the input. Where onnxruntime runs
the original and agrees with the case's expected outputs, the round-tripped file must agree too.

CI runs every 10th case (test_round_trip_sample); the full sweep is marked slow:
``pytest -m slow tests/test_conformance.py``.
"""

from __future__ import annotations

import difflib
import functools
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from google.protobuf.message import Message

from optgraph import ir

ort = pytest.importorskip("onnxruntime")

SAMPLE_EVERY = 10


@functools.cache
def _node_cases() -> dict[str, Any]:
    """All node test cases by name (generating them runs every exporter once: seconds)."""
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporters overflow casts on purpose
        return {case.name: case for case in collect_testcases(None)}


def _sample() -> list[str]:
    return sorted(_node_cases())[::SAMPLE_EVERY]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "case_name" in metafunc.fixturenames:
        names = _sample() if metafunc.function.__name__ == "test_round_trip_sample" else sorted(_node_cases())
        metafunc.parametrize("case_name", names, ids=names)


@pytest.fixture(scope="session")
def node_cases() -> dict[str, Any]:
    return _node_cases()


def _graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    yield graph
    for node in graph.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(a.g)
            for sub in a.graphs:
                yield from _graphs(sub)


def _decorated(model: onnx.ModelProto) -> onnx.ModelProto:
    """The case's model with names, doc strings, metadata, value_info and dim_params everywhere.

    dim_params go on outputs and value_info only: onnxruntime checks inputs against their
    declared shapes and some kernels (Resize) refuse symbolic input dims.
    """
    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.doc_string = "conformance model"
    m.metadata_props.add(key="source", value="onnx node tests")
    try:
        m = onnx.shape_inference.infer_shapes(m)
    except Exception:  # noqa: BLE001 - shapes are a decoration; the case still round-trips without them
        pass
    for vi in [*m.graph.output, *m.graph.value_info]:
        dims = vi.type.tensor_type.shape.dim if vi.type.HasField("tensor_type") else []
        if dims and dims[0].HasField("dim_value"):
            dims[0].dim_param = f"{vi.name}_d0"
    for gi, g in enumerate(_graphs(m.graph)):
        # infer_shapes repeats subgraph outputs in value_info; the IR keeps one entry per value
        pinned = {vi.name for vi in [*g.input, *g.output]}
        kept = [vi for vi in g.value_info if vi.name not in pinned]
        del g.value_info[:]
        g.value_info.extend(kept)
        g.doc_string = f"graph {gi}"
        for k, node in enumerate(g.node):
            node.name = node.name or f"g{gi}_node{k}"
            node.doc_string = f"doc of {node.name}"
            node.metadata_props.add(key="origin", value=node.name)
        for vi in [*g.input, *g.value_info, *g.output]:
            vi.doc_string = f"doc of {vi.name}"
            vi.metadata_props.add(key="value", value=vi.name)
    return m


def _canonical(message: Message) -> Message:
    """``message`` with fields explicitly set to their default cleared (in place).

    ONNX's protos are proto2, so ``domain: ""`` set and unset differ in comparison but mean the
    same; re-encoded nodes do not write empty fields.
    """
    for field, value in message.ListFields():
        if field.type == field.TYPE_MESSAGE:
            for sub in value if field.is_repeated else [value]:
                _canonical(sub)
        elif not field.is_repeated and value == field.default_value:
            message.ClearField(field.name)
    return message


def assert_same_proto(expected: onnx.ModelProto, actual: onnx.ModelProto) -> None:
    a, b = onnx.ModelProto(), onnx.ModelProto()
    a.CopyFrom(expected)
    b.CopyFrom(actual)
    if _canonical(a) != _canonical(b):
        diff = difflib.unified_diff(str(a).splitlines(), str(b).splitlines(), "input", "round trip", lineterm="")
        pytest.fail("the round trip changed the model:\n" + "\n".join(list(diff)[:80]))


def _feed(x: Any) -> Any:
    if isinstance(x, onnx.TensorProto):
        return onnx.numpy_helper.to_array(x)
    if isinstance(x, np.generic):
        return np.asarray(x)
    return x


def _run(model: bytes | str, proto: onnx.ModelProto, inputs: list[Any]) -> list[Any]:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # test the model, not ORT
    opts.log_severity_level = 4
    session = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    initializers = {t.name for t in proto.graph.initializer}
    names = [vi.name for vi in proto.graph.input if vi.name not in initializers]
    return session.run(None, {n: _feed(x) for n, x in zip(names, inputs)})


def assert_outputs_close(expected: Any, actual: Any, rtol: float, atol: float) -> None:
    """The case's own comparison: tensors within rtol/atol, sequences element-wise, strings exactly."""
    if isinstance(expected, (list, tuple)):
        assert isinstance(actual, (list, tuple)) and len(actual) == len(expected), \
            f"expected {len(expected)} values, got {actual!r}"
        for e, a in zip(expected, actual):
            assert_outputs_close(e, a, rtol, atol)
        return
    if expected is None:
        assert actual is None
        return
    expected, actual = _feed(np.asarray(expected)), np.asarray(actual)
    assert actual.shape == expected.shape, f"shape {actual.shape} != expected {expected.shape}"
    if expected.dtype == object:
        np.testing.assert_array_equal(actual, expected)
        return
    assert actual.dtype == expected.dtype, f"dtype {actual.dtype} != expected {expected.dtype}"
    if expected.dtype.kind not in "biufc":  # bfloat16, float8, ...: compare as float32
        expected, actual = expected.astype(np.float32), actual.astype(np.float32)
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)


def _reencoded(model: ir.Model) -> ir.Model:
    """Every node edited as a pass would: attributes decoded and encoded again from their values."""
    for graph in model.all_graphs():
        for node in graph:
            for a in list(node.attrs.values()):
                if not a.ref and a.type not in (ir.AT.GRAPH, ir.AT.GRAPHS):
                    node.set_attr(a.name, a.value, a.type)
            node.name = node.name
    return model


def test_round_trip_sample(case_name: str, node_cases: dict[str, Any], tmp_path: Path) -> None:
    check_round_trip(node_cases[case_name], tmp_path)


@pytest.mark.slow
def test_round_trip_all(case_name: str, node_cases: dict[str, Any], tmp_path: Path) -> None:
    check_round_trip(node_cases[case_name], tmp_path)


def check_round_trip(case: Any, tmp_path: Path) -> None:
    original = _decorated(case.model)
    data = original.SerializeToString()

    model = ir.from_bytes(data)
    ir.verify(model)
    assert_same_proto(original, ir.to_proto(model))
    path = tmp_path / "model.onnx"
    ir.save(model, path)
    assert_same_proto(original, onnx.load(path))
    again = tmp_path / "again.onnx"
    ir.save(ir.load(path), again)
    assert again.read_bytes() == path.read_bytes(), "load -> save is not a fixed point"
    assert_same_proto(original, ir.to_proto(_reencoded(ir.from_bytes(data))))

    (inputs, expected), = case.data_sets
    try:
        reference = _run(data, original, inputs)
    except Exception as e:  # noqa: BLE001 - whatever onnxruntime cannot do is not ours to test
        pytest.skip(f"onnxruntime cannot run the original: {str(e).splitlines()[0][:200]}")
    try:
        assert_outputs_close(expected, reference, case.rtol, case.atol)
    except AssertionError:
        pytest.skip("onnxruntime's outputs for the original differ from the case's expected outputs")
    assert_outputs_close(expected, _run(str(path), original, inputs), case.rtol, case.atol)


def test_sample_covers_control_flow_and_sequences() -> None:
    """The CI sample must exercise subgraphs and non-tensor values, not only elementwise ops."""
    sample = _sample()
    models = [_node_cases()[n].model for n in sample]
    assert any(node.op_type in ("If", "Loop", "Scan") for m in models for node in m.graph.node)
    assert any(vi.type.HasField("sequence_type") for m in models for vi in m.graph.output)
    assert len(sample) >= 150


def test_proto_comparison_catches_a_lost_field() -> None:
    """assert_same_proto is the whole lossless check: it must notice a dropped doc string."""
    original = _decorated(_node_cases()["test_abs"].model)
    damaged = onnx.ModelProto()
    damaged.CopyFrom(original)
    damaged.graph.node[0].doc_string = ""
    with pytest.raises(pytest.fail.Exception, match="doc of"):
        assert_same_proto(original, damaged)
    damaged.CopyFrom(original)
    damaged.graph.output[0].type.tensor_type.shape.dim[0].dim_value = 3
    with pytest.raises(pytest.fail.Exception, match="dim_param"):
        assert_same_proto(original, damaged)


def test_output_comparison_catches_a_wrong_result() -> None:
    expected = [np.array([1.0, 2.0], np.float32), [np.array([1], np.int64)]]
    assert_outputs_close(expected, [expected[0].copy(), [np.array([1], np.int64)]], 1e-3, 1e-7)
    with pytest.raises(AssertionError):
        assert_outputs_close(expected, [expected[0] * 1.01, [np.array([1], np.int64)]], 1e-3, 1e-7)
    with pytest.raises(AssertionError):
        assert_outputs_close(expected, [expected[0], [np.array([2], np.int64)]], 1e-3, 1e-7)
    with pytest.raises(AssertionError):
        assert_outputs_close(expected, [expected[0].astype(np.float64), [np.array([1], np.int64)]], 1e-3, 1e-7)


def test_a_broken_attribute_encoder_is_caught(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The sweep must notice an encoder that changes a value: here every float attribute by 1%."""
    from optgraph.ir import serde

    encode = serde._encode_attr

    def skewed(a: ir.Attr, p: onnx.AttributeProto) -> None:
        encode(a, p)
        if p.type == onnx.AttributeProto.FLOAT:
            p.f *= 1.01

    monkeypatch.setattr(serde, "_encode_attr", skewed)
    with pytest.raises(pytest.fail.Exception, match="alpha"):
        check_round_trip(_node_cases()["test_leakyrelu"], tmp_path)
