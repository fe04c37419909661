"""The plan-honoring executor: right plans run like onnxruntime, wrong plans are caught."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from optgraph import ir
from optgraph.passes import run_passes
from optgraph.passes.memory.liveness import tensor_infos
from optgraph.passes.memory import MemoryPlan, check_plan, plan_memory
from optgraph.passes.memory.plan_test import edited
from optgraph.passes.testing.strategies import GraphBuilder
from optgraph.runtime.executor import ArenaExecutor, ExecutionError, check_by_execution
from optgraph.passes.testing.oracle import random_inputs


def build(b: GraphBuilder) -> ir.Model:
    return ir.from_proto(b.build())


def plan(model: ir.Model, **options: object) -> MemoryPlan:
    return plan_memory(model, tensor_infos(model), **options)  # type: ignore[arg-type]


def dense_block(layers: int = 3) -> ir.Model:
    """Conv features concatenated DenseNet style (each concat a prefix of the next), then a head."""
    b = GraphBuilder(17, seed=1)
    x = b.input((1, 3, 6, 6), name="x")
    feats = [b.op("Relu", [x], name="f0")]
    cat = feats[0]
    for k in range(1, layers + 1):
        c = int(b.shape(cat)[1])
        act = b.op("Relu", [b.op("BatchNormalization", [cat, *(b.const(a) for a in _bn(c))], name=f"bn{k}")])
        feats.append(b.op("Conv", [act, b.const(b.weight([2, c, 3, 3]))], name=f"f{k}", pads=[1, 1, 1, 1]))
        cat = b.op("Concat", feats, name=f"cat{k}", axis=1)
    b.mark_output(b.op("GlobalAveragePool", [b.op("Sigmoid", [cat])], name="y"))
    return build(b)


def _bn(c: int) -> list[np.ndarray]:
    rng = np.random.default_rng(c)
    return [rng.uniform(0.5, 1.5, c).astype(np.float32), rng.normal(0, 0.3, c).astype(np.float32),
            rng.normal(0, 0.3, c).astype(np.float32), rng.uniform(0.5, 1.5, c).astype(np.float32)]


def two_branches() -> ir.Model:
    """a = Relu(x), s = Sigmoid(x), y = Mul(a, s): a and s live at the same time."""
    b = GraphBuilder(17)
    x = b.input((1, 16), name="x")
    b.mark_output(b.op("Mul", [b.op("Relu", [x], name="a"), b.op("Sigmoid", [x], name="s")], name="y"))
    return build(b)


def test_a_sound_plan_runs_like_onnxruntime_and_concats_copy_nothing(monkeypatch):
    model = dense_block()
    p = plan(model, order="memory")
    assert {a.kind for a in p.aliases} == {"inplace", "concat"}
    assert check_by_execution(model, p)
    ex = ArenaExecutor(model, p)
    for kernel, node in zip(ex.kernels, p.schedule):
        if node.op_type == "Concat":  # every concat here is fully aliased: running one is a bug
            monkeypatch.setattr(kernel, "run", lambda feeds: pytest.fail("an aliased concat was executed"))
    feeds = random_inputs(ir.to_proto(model), seed=3)
    assert np.isfinite(ex.run(feeds)["y"]).all()


def test_a_planted_overlap_is_caught():
    model = two_branches()
    good = plan(model)
    assert check_by_execution(model, good)
    bad = edited(good, "s", offset=good.placements[next(v for v in good.placements if v.name == "a")].offset)
    assert any("overlap" in problem for problem in check_plan(model, bad))
    result = check_by_execution(model, bad)
    assert not result and "differs at output 'y'" in result.message


def test_a_tensor_freed_too_early_reads_poison():
    model = two_branches()
    good = plan(model)
    early = edited(good, "a", end=0)  # the plan says nobody reads a after step 0; Mul does
    assert not check_by_execution(model, early)
    feeds = random_inputs(ir.to_proto(model), seed=0)
    unpoisoned = ArenaExecutor(model, early, poison=False).run(feeds)["y"]
    assert np.isfinite(unpoisoned).all()  # without poison the bad plan would look right
    assert np.isnan(ArenaExecutor(model, early).run(feeds)["y"]).any()


def test_a_concat_alias_whose_offset_is_wrong_is_caught():
    b = GraphBuilder(17)
    x = b.input((1, 2, 3), name="x")
    cat = b.op("Concat", [b.op("Relu", [x], name="r"), b.op("Neg", [x], name="n")], name="cat", axis=1)
    b.mark_output(b.op("Exp", [cat], name="y"))
    model = build(b)
    good = plan(model, inplace=False)
    n = good.placements[next(v for v in good.placements if v.name == "n")]
    moved = edited(good, "n", offset=good.arena_size)  # n written outside cat; the alias says inside
    moved = dataclasses.replace(moved, arena_size=good.arena_size + n.nbytes)
    assert any("alias" in problem for problem in check_plan(model, moved))
    assert not check_by_execution(model, moved)


POOLS = [
    ("MaxPool", dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)),
    ("MaxPool", dict(kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1], ceil_mode=1)),
    ("MaxPool", dict(kernel_shape=[2, 2], dilations=[2, 2], pads=[1, 0, 1, 0])),
    ("AveragePool", dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1)),
    ("AveragePool", dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1, count_include_pad=1)),
    ("AveragePool", dict(kernel_shape=[2, 3], strides=[1, 2], auto_pad="VALID")),
]


@pytest.mark.parametrize("op,attrs", POOLS)
def test_pooling_matches_onnxruntime(op, attrs):
    b = GraphBuilder(19)
    x = b.input((1, 2, 8, 7), name="x")
    b.mark_output(b.op("Relu", [b.op(op, [b.op("Neg", [x])], **attrs)]))
    model = build(b)
    assert check_by_execution(model, plan(model))


def test_inference_batch_norm_of_opset_9_matches_onnxruntime():
    b = GraphBuilder(11)
    x = b.input((1, 3, 4, 4), name="x")
    b.mark_output(b.op("Relu", [b.op("BatchNormalization", [b.op("Neg", [x]), *(b.const(a) for a in _bn(3))])]))
    model = build(b)
    assert check_by_execution(model, plan(model))


def test_fused_function_calls_and_subgraphs_execute():
    b = GraphBuilder(17)
    x = b.input((1, 2, 5, 5), name="x")
    y = b.op("Relu", [b.op("Conv", [x, b.const(b.weight([4, 2, 3, 3]))], pads=[1, 1, 1, 1])])
    b.mark_output(b.op("Add", [y, b.op("Sigmoid", [y])]))
    model = build(b)
    run_passes(model, "fuse-conv-act")
    assert model.functions
    assert check_by_execution(model, plan(model))

    then, other = (helper.make_graph([helper.make_node(op, ["a"], ["r"])], op, [],
                                     [helper.make_tensor_value_info("r", TensorProto.FLOAT, [2, 3])])
                   for op in ("Neg", "Abs"))
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Sigmoid", ["x"], ["s"]),
             helper.make_node("ReduceSum", ["x"], ["t"], keepdims=0),
             helper.make_node("Greater", ["t", "zero"], ["cond"]),
             helper.make_node("If", ["cond"], ["i"], then_branch=then, else_branch=other),
             helper.make_node("Add", ["i", "s"], ["out"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [2, 3])],
                              [onnx.numpy_helper.from_array(np.array(0, np.float32), "zero")])
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8))
    assert check_by_execution(model, plan(model), n_inputs=4)


def test_an_op_without_an_implementation_is_a_clear_error():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["r"]),
                               helper.make_node("Mystery", ["r"], ["y"], domain="vendor")], "g", [x],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    model = ir.from_proto(helper.make_model(graph, ir_version=8, opset_imports=[
        helper.make_opsetid("", 17), helper.make_opsetid("vendor", 1)]))
    with pytest.raises(ExecutionError, match="no reference implementation for vendor:Mystery"):
        ArenaExecutor(model, plan(model))


def test_a_value_twice_in_one_concat_sits_in_the_first_slice_and_is_copied_into_the_second():
    b = GraphBuilder(17)
    x = b.input((1, 2), name="x")
    a = b.op("Neg", [x], name="a")
    b.mark_output(b.op("Exp", [b.op("Concat", [a, a], name="cat", axis=1)], name="y"))
    model = build(b)
    p = plan(model)
    assert [(al.value.name, al.offset) for al in p.aliases if al.kind == "concat"] == [("a", 0)]
    assert check_by_execution(model, p)
