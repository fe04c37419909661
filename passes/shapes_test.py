"""Shape inference analysis: merging rules (dim_params kept, invented symbols dropped, interface
pinned), caching and invalidation through PassContext, and failure tolerance."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import parser

from optgraph import ir
from optgraph.passes import PassContext, PassManager, PassResult, shapes
from optgraph.passes.base import Pass
from optgraph.passes.shapes import ShapeInference

HEADER = '<ir_version: 8, opset_import: ["" : 17]>'


def load(text: str) -> ir.Model:
    return ir.from_proto(parser.parse_model(HEADER + text))


def values(model: ir.Model) -> dict[str, ir.Value]:
    return {v.name: v for n in model.graph for v in n.outputs if v is not None}


def infer(model: ir.Model) -> shapes.ShapeInfo:
    ctx = PassContext()
    ctx.bind(model)
    return ctx.get(ShapeInference)


def test_infers_dtypes_and_shapes_keeping_dim_params() -> None:
    model = load("""g (float[N, 3] x) => (float[N, 6] y) {
        a = Relu(x)
        s = Shape(x)
        b = Concat <axis = 1> (a, a)
        y = Identity(b)
    }""")
    info = infer(model)
    v = values(model)
    assert (v["a"].dtype, v["a"].shape) == (onnx.TensorProto.FLOAT, ("N", 3))
    assert (v["s"].dtype, v["s"].shape) == (onnx.TensorProto.INT64, (2,))
    assert v["b"].shape == ("N", 6)
    assert info.typed == 3 and not info.error


def test_invented_symbols_are_not_kept() -> None:
    """onnx names unknown dims unk__0, unk__1... afresh in every run: they must not survive."""
    model = load("""g (float[N] x) => (float[M] y) { u = Unique(x)  y = Identity(u) }""")
    infer(model)
    assert values(model)["u"].shape == (None,)


def test_negative_sizes_from_onnx_are_unknown() -> None:
    """onnx reports -1 for a pool window larger than its input (stride 1): not a size."""
    model = load("""g (float[1, 1, 7, 7] x) => (float[1, 1, 1, 1] y) {
        p = MaxPool <kernel_shape = [9, 9], ceil_mode = 1> (x)
        y = Identity(p)
    }""")
    infer(model)
    assert values(model)["p"].shape == (1, 1, None, None)


def test_known_dims_are_never_overwritten() -> None:
    model = load("""g (float[2, 3] x) => (float[2, 3] y) { a = Relu(x)  y = Identity(a) }""")
    a = values(model)["a"]
    a.shape = ("B", None)  # what an exporter declared: B stays B, the unknown dim is learned
    infer(model)
    assert a.shape == ("B", 3)


def test_graph_inputs_and_outputs_keep_their_declared_types() -> None:
    model = load("""g (float[N, 3] x) => (float y) { y = Relu(x) }""")
    infer(model)
    assert model.graph.outputs[0].shape == ()  # declared (wrongly) as a scalar: left as declared
    assert model.graph.inputs[0].shape == ("N", 3)


def test_large_initializers_are_sent_by_type_only() -> None:
    model = load("""g (float[1, 2000] x) => (float[1, 2000] y) { a = Add(x, x)  y = Identity(a) }""")
    big = model.graph.add_initializer(np.ones((1, 2000), np.float32), "w_big")
    next(iter(model.graph)).set_input(1, big)
    proto = shapes._inference_proto(model)
    assert not proto.graph.initializer and "w_big" in {i.name for i in proto.graph.input}
    assert model.graph.initializers["w_big"] is big  # the model itself is untouched
    infer(model)
    assert values(model)["a"].shape == (1, 2000)


def test_cached_until_a_pass_changes_the_graph(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = onnx.shape_inference.infer_shapes

    def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(onnx.shape_inference, "infer_shapes", counting)

    class Touch(Pass):
        name = "touch-test"
        description = "adds a value with no type, and does not preserve shapes"

        def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
            g = model.graph
            if len(g) < 3:
                g.make_node("Neg", [g.inputs[0]])
                return PassResult(True)
            return PassResult(False)

    model = load("""g (float[2] x) => (float[2] y) { a = Relu(x)  y = Identity(a) }""")
    ctx = PassContext()
    steps = [shapes.InferShapes(), shapes.InferShapes(), Touch(), shapes.InferShapes()]
    PassManager(steps, ctx=ctx).run(model)  # type: ignore[arg-type]
    assert len(calls) == 2  # once, cached, then again after Touch changed the graph
    neg = list(model.graph)[-1].output
    assert neg.shape == (2,)
    PassManager([shapes.InferShapes()], ctx=ctx).run(model)
    assert len(calls) == 2  # a new run: but every value is already typed, nothing to learn


def test_failure_is_reported_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise ValueError("Message onnx.ModelProto exceeds maximum protobuf size of 2GB")

    monkeypatch.setattr(onnx.shape_inference, "infer_shapes", broken)
    model = load("""g (float[2] x) => (float[2] y) { a = Relu(x)  y = Identity(a) }""")
    info = infer(model)
    assert info.typed == 0 and "2GB" in info.error
    assert values(model)["a"].shape is None


def test_broken_merge_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """A merge that lets inferred dims replace known ones loses the dim_param: the tests see it."""
    def overwriting(v: ir.Value, dtype: int, shape: ir.core.Shape | None) -> bool:
        v.dtype, v.shape = dtype or v.dtype, shape if shape is not None else v.shape
        return True

    monkeypatch.setattr(shapes, "_merge", overwriting)
    with pytest.raises(AssertionError):
        test_known_dims_are_never_overwritten()


def test_few_missing_types_are_inferred_from_their_producers_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """After a rewrite only the new values lack types: onnx sees just their producers (and the
    shape computations feeding them, so data propagation still gives the Reshape's dims)."""
    body = "  ".join(f"r{i} = Relu(r{i - 1})" for i in range(1, 12))
    model = load(f"""g (float[N, 3, 4] x) => (float[N, 12] y) {{
        r0 = Relu(x)
        {body}
        s = Shape(r11)
        i = Constant <value = int64[1] {{0}}> ()
        b = Gather <axis = 0> (s, i)
        m = Constant <value = int64[1] {{12}}> ()
        t = Concat <axis = 0> (b, m)
        z = Reshape(r11, t)
        y = Identity(z)
    }}""")
    infer(model)
    g = model.graph
    reshape = next(n for n in g if n.op_type == "Reshape")
    new = g.make_node("Neg", [reshape.output], before=next(n for n in g if n.op_type == "Identity")).output
    reshape.output.shape = None  # as if a rewrite had made it anew

    def no_full_run(m: ir.Model) -> onnx.ModelProto:
        raise AssertionError("the whole model was sent to inference")

    monkeypatch.setattr(shapes, "_inference_proto", no_full_run)
    info = infer(model)
    assert not info.error, info.error
    assert new.shape == ("N", 12) and reshape.output.shape == ("N", 12)
