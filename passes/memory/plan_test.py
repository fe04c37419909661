"""The memory planner: aliases it may and may not make, strategies, ordering, the plan's forms."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from optgraph import ir
from optgraph.passes import PipelineError, run_passes
from optgraph.ir.opset import IN_PLACE, is_onnx
from optgraph.passes.memory import (METADATA_KEY, ORDERS, STRATEGIES, Alias, MemoryPlan, PlanError, PlanMemory,
                                    PlanOptions, check_plan, format_plan, memory_order, placement, plan_memory,
                                    planner)
from optgraph.passes.memory import aliases as alias_rules
from optgraph.passes.memory.liveness import tensor_infos
from optgraph.passes.testing.strategies import MOTIFS, GraphBuilder, activation, conv, models
from optgraph.runtime.executor import ExecutionError, check_by_execution
from optgraph.runtime.cli import main

DIMS = {"N": 2}


def build(b: GraphBuilder) -> ir.Model:
    return ir.from_proto(b.build())


def values(model: ir.Model) -> dict[str, ir.Value]:
    return {v.name: v for n in model.graph for v in n.outputs if v is not None}


def plan(model: ir.Model, **options: object) -> MemoryPlan:
    return plan_memory(model, tensor_infos(model, DIMS), dims=DIMS, **options)  # type: ignore[arg-type]


def aliases(p: MemoryPlan) -> set[tuple[str, str, int, str]]:
    return {(a.value.name, a.into.name, a.offset, a.kind) for a in p.aliases}


def conv1x1(b: GraphBuilder, x: str, out: int, name: str) -> str:
    w = b.const(b.weight([out, int(b.shape(x)[1]), 1, 1]))
    return b.op("Conv", [x, w], name=name, kernel_shape=[1, 1])


def inception(batch: int = 1) -> ir.Model:
    """x -> conv a, conv b -> Relu each -> Concat(ra, rb) -> Relu -> output."""
    b = GraphBuilder(17)
    x = b.input((batch, 3, 4, 4), name="x")
    ra = b.op("Relu", [conv1x1(b, x, 2, "a")], name="ra")
    rb = b.op("Relu", [conv1x1(b, x, 5, "b")], name="rb")
    b.mark_output(b.op("Relu", [b.op("Concat", [ra, rb], name="cat", axis=1)], name="y"))
    return build(b)


# ------------------------------------------------------------------------------------------------
# aliases


def test_elementwise_ops_write_over_an_input_that_dies_there():
    model = inception()
    p = plan(model)
    assert {("a", "ra", 0, "inplace"), ("b", "rb", 0, "inplace")} <= aliases(p)
    offsets = {v.name: pl.offset for v, pl in p.placements.items()}
    assert offsets["a"] == offsets["ra"]
    assert check_plan(model, p) == []


def test_an_input_read_later_is_not_overwritten_in_place():
    b = GraphBuilder(17)
    x = b.input((1, 8), name="x")
    a = b.op("Sigmoid", [x], name="a")
    r = b.op("Relu", [a], name="r")
    b.mark_output(b.op("Add", [a, r], name="y"))
    assert ("a", "r", 0, "inplace") not in aliases(plan(build(b)))


def test_in_place_needs_the_same_size_and_type():
    b = GraphBuilder(17)
    x = b.input((1, 4, 1), name="x")
    a = b.op("Relu", [x], name="a")
    wide = b.op("Add", [a, b.const(np.ones((1, 4, 3), np.float32))], name="wide")  # broadcast grows it
    b.mark_output(b.op("Cast", [wide], name="y", to=7))
    assert not aliases(plan(build(b)))


def test_contiguous_concat_inputs_are_written_into_its_output():
    p = plan(inception())
    a_bytes = 2 * 4 * 4 * 4
    assert {("ra", "cat", 0, "concat"), ("rb", "cat", a_bytes, "concat")} <= aliases(p)
    assert p.lower_bound < p.file_order_lower_bound


def test_a_concat_over_batch_two_is_not_contiguous_and_is_not_aliased():
    p = plan(inception(batch=2))
    assert not [a for a in p.aliases if a.kind == "concat"]


def test_graph_inputs_and_a_value_in_two_concats_are_copied():
    b = GraphBuilder(17)
    x = b.input((1, 2, 3), name="x")
    a = b.op("Relu", [x], name="a")
    s = b.op("Sigmoid", [x], name="s")
    c1 = b.op("Concat", [x, a], name="c1", axis=1)
    c2 = b.op("Concat", [s, a], name="c2", axis=1)  # a is already inside c1
    b.mark_output(b.op("Add", [c1, c2], name="y"))
    model = build(b)
    p = plan(model)
    assert {(v, into) for v, into, _, kind in aliases(p) if kind == "concat"} == {("a", "c1"), ("s", "c2")}
    assert check_plan(model, p) == []


def test_a_concat_output_that_is_a_graph_output_keeps_its_own_buffer():
    b = GraphBuilder(17)
    x = b.input((1, 2), name="x")
    b.mark_output(b.op("Concat", [b.op("Relu", [x], name="a"), b.op("Neg", [x], name="n")], name="y", axis=1))
    assert not [a for a in plan(build(b)).aliases if a.kind == "concat"]


def dense_block(layers: int = 3) -> ir.Model:
    """DenseNet style: layer k concatenates the block input and every feature so far."""
    b = GraphBuilder(17)
    x = b.input((1, 2, 4, 4), name="x")
    feats = [b.op("Relu", [x], name="f0")]
    cat = feats[0]
    for k in range(1, layers + 1):
        feats.append(conv1x1(b, b.op("Sigmoid", [cat], name=f"act{k}"), 2, f"f{k}"))
        cat = b.op("Concat", feats, name=f"cat{k}", axis=1)
    b.mark_output(b.op("Relu", [cat], name="y"))
    return build(b)


def test_dense_blocks_lay_their_features_out_once():
    model = dense_block()
    p = plan(model)
    got = aliases(p)
    assert {("cat1", "cat2", 0, "concat"), ("cat2", "cat3", 0, "concat")} <= got
    assert {("f0", "cat1", 0, "concat"), ("f3", "cat3", 3 * 128, "concat")} <= got
    offsets = {v.name: pl.offset for v, pl in p.placements.items()}
    assert offsets["f2"] == offsets["cat3"] + 2 * 128
    assert check_plan(model, p) == []


def test_a_concat_input_read_after_the_concat_keeps_the_concat_from_being_overwritten():
    b = GraphBuilder(17)
    x = b.input((1, 2), name="x")
    a = b.op("Relu", [x], name="a")
    cat = b.op("Concat", [a, b.op("Neg", [x], name="n")], name="cat", axis=1)
    s = b.op("Sigmoid", [cat], name="s")  # cat dies here, but a (inside cat) is read below
    b.mark_output(b.op("Concat", [s, b.op("Exp", [a], name="e")], name="y", axis=1))
    model = build(b)
    p = plan(model)
    assert ("a", "cat", 0, "concat") in aliases(p)
    assert ("cat", "s", 0, "inplace") not in aliases(p)
    assert check_plan(model, p) == []


def split_model(batch: int = 1) -> ir.Model:
    """One conv computing two branches' inputs, split on channels (what horizontal fusion makes)."""
    b = GraphBuilder(17)
    x = b.input((batch, 3, 4, 4), name="x")
    s0, s1 = b.op("Split", [conv1x1(b, x, 6, "both"), b.const(np.array([2, 4], np.int64))], outputs=2,
                  name="s", axis=1)
    b.mark_output(b.op("Add", [b.op("Sigmoid", [s0], name="g"), conv1x1(b, s1, 2, "c")], name="y"))
    return build(b)


def test_split_outputs_are_views_of_their_input():
    model = split_model()
    p = plan(model)
    assert {("s_0", "both", 0, "split"), ("s_1", "both", 2 * 16 * 4, "split")} <= aliases(p)
    assert not [a for a in plan(split_model(batch=2)).aliases if a.kind == "split"]
    assert not [a for a in p.aliases if a.kind == "inplace" and a.value.name in ("s_0", "both")]
    assert check_plan(model, p) == []
    assert check_by_execution(model, p)


def test_a_split_of_a_concat_that_holds_its_inputs_copies():
    b = GraphBuilder(17)
    x = b.input((1, 2, 3), name="x")
    a = b.op("Relu", [x], name="a")
    cat = b.op("Concat", [b.op("Neg", [x], name="n"), a], name="cat", axis=1)
    s0, s1 = b.op("Split", [cat, b.const(np.array([2, 2], np.int64))], outputs=2, name="s", axis=1)
    b.mark_output(b.op("Add", [b.op("Add", [s0, s1]), a], name="y"))  # a is read again after the split
    model = build(b)
    p = plan(model)
    assert ("a", "cat", 2 * 3 * 4, "concat") in aliases(p) and not [al for al in p.aliases if al.kind == "split"]
    assert check_plan(model, p) == []


# ------------------------------------------------------------------------------------------------
# placement, lower bounds, ordering


def test_alignment_and_the_figures_hold():
    p = plan(inception(), alignment=64)
    roots = [pl for v, pl in p.placements.items() if v not in {a.value for a in p.aliases}]
    assert all(pl.offset % 64 == 0 for pl in roots)
    assert p.lower_bound <= p.arena_size <= p.naive_size
    assert set(p.strategies) == set(STRATEGIES) and p.strategies[p.strategy] == p.arena_size


def test_the_default_strategy_is_the_smallest_arena_and_is_the_one_starred(monkeypatch):
    from optgraph.passes.memory import planner as mp

    real = mp.place

    def breadth_worse(groups, n_steps, strategy, alignment, profile):  # type: ignore[no-untyped-def]
        offsets, size = real(groups, n_steps, strategy, alignment, profile)
        return offsets, size + (4096 if strategy == "greedy-breadth" else 0)

    monkeypatch.setattr(mp, "place", breadth_worse)
    p = plan(inception())
    assert p.strategy == "greedy-size" and p.arena_size == min(p.strategies.values())
    assert p.strategies["greedy-breadth"] > p.arena_size
    starred = [line for line in format_plan(p).splitlines() if line.startswith("*")]
    assert len(starred) == 1 and "greedy-size" in starred[0]
    asked = plan(inception(), strategy="greedy-breadth")  # an explicit choice is kept, even when larger
    assert asked.strategy == "greedy-breadth" and asked.arena_size == asked.strategies["greedy-breadth"]


def branchy() -> ir.Model:
    """Two branches, each a big tensor then a small one; the file runs both big ones first."""
    b = GraphBuilder(17)
    x = b.input((1, 2, 8, 8), name="x")
    big1, big2 = conv1x1(b, x, 16, "big1"), conv1x1(b, x, 16, "big2")
    small1, small2 = conv1x1(b, big1, 1, "small1"), conv1x1(b, big2, 1, "small2")
    b.mark_output(b.op("Add", [small1, small2], name="y"))
    return build(b)


def test_memory_order_lowers_the_peak_of_a_branchy_graph_and_is_deterministic():
    model = branchy()
    p = plan(model, order="memory", inplace=False, concat=False, split=False)
    assert p.order == "memory"
    assert [n.name for n in p.schedule] == ["big1", "small1", "big2", "small2", "y"]
    assert p.lower_bound < p.file_order_lower_bound
    assert memory_order(model, tensor_infos(model)) == memory_order(model, tensor_infos(model))


def test_memory_order_never_does_worse_than_the_file():
    model = inception()
    p = plan(model, order="memory")
    assert p.order == "file" and p.lower_bound == plan(model).lower_bound  # no lower peak: the file order stays


def test_plans_are_byte_identical_across_runs_and_survive_json():
    first = json.dumps(plan(dense_block(), order="memory").to_json())
    model = dense_block()
    p = plan(model, order="memory")
    assert json.dumps(p.to_json()) == first
    back = MemoryPlan.from_json(model, json.loads(first))
    assert back.placements == p.placements and back.aliases == p.aliases and back.schedule == p.schedule
    assert check_plan(model, back) == []


def test_bad_options_and_foreign_json_are_clear_errors():
    with pytest.raises(PlanError, match="unknown strategy 'nope'"):
        plan(inception(), strategy="nope")
    with pytest.raises(PlanError, match="unknown order"):
        plan(inception(), order="random")
    with pytest.raises(PlanError, match="not an optgraph memory plan"):
        MemoryPlan.from_json(inception(), {"format": "x"}, {})
    data = plan(inception()).to_json()
    data["tensors"][0]["name"] = "nope"
    with pytest.raises(PlanError, match="does not match the model"):
        MemoryPlan.from_json(inception(), data, tensor_infos(inception()))


def test_the_pass_reports_a_summary_and_can_attach_the_plan():
    model = inception()
    report = run_passes(model, "plan-memory{order=memory,attach=true}")
    summary = report.results["plan-memory"]
    assert summary["arena_bytes"] >= summary["lower_bound_bytes"] > 0
    attached = json.loads(model.metadata_props[METADATA_KEY])
    assert attached["arena_bytes"] == summary["arena_bytes"] and attached["tensors"]
    with pytest.raises(PipelineError, match="strategy"):
        run_passes(inception(), "plan-memory{strategy=nope}")


def test_one_options_class_serves_the_api_the_pass_and_the_command(tmp_path, capsys):
    """PlanOptions checks once; the pass's options extend it; optgraph plan's arguments come from it."""
    message = "alignment must be at least 1, got 0"
    with pytest.raises(PlanError, match=message):
        plan(inception(), alignment=0)
    with pytest.raises(PipelineError, match=message):
        run_passes(inception(), "plan-memory{alignment=0}")
    path = tmp_path / "m.onnx"
    ir.save(inception(), path)
    assert main(["plan", str(path), "--dim", "N=2", "--alignment", "0"]) == 2
    assert message in capsys.readouterr().err
    assert {f.name for f in dataclasses.fields(PlanOptions)} < {f.name for f in dataclasses.fields(PlanMemory.Options)}
    with pytest.raises(SystemExit):
        main(["plan", "--help"])
    usage = capsys.readouterr().out
    for f in dataclasses.fields(PlanOptions):
        assert (f"--no-{f.name}" if f.default is True else f"--{f.name}") in usage
    assert main(["plan", str(path), "--dim", "N=2", "--no-inplace", "--order", "memory"]) == 0
    expected = format_plan(plan(inception(), inplace=False, order="memory"))
    assert capsys.readouterr().out.strip() == expected


# ------------------------------------------------------------------------------------------------
# the checker, and broken planners it must catch


def edited(p: MemoryPlan, name: str, **changes: int) -> MemoryPlan:
    """A copy of ``p`` with one placement changed."""
    placements = dict(p.placements)
    v = next(v for v in placements if v.name == name)
    placements[v] = dataclasses.replace(placements[v], **changes)
    return dataclasses.replace(p, placements=placements)


def test_the_checker_reports_overlaps_wrong_lifetimes_and_bad_aliases():
    model = inception(batch=2)  # no concat aliases: ra and rb have buffers of their own
    good = plan(model)
    assert check_plan(model, good) == []
    offset = {v.name: pl.offset for v, pl in good.placements.items()}
    assert any("'rb' and 'ra' are live at the same time and overlap" in problem
               for problem in check_plan(model, edited(good, "rb", offset=offset["ra"])))
    assert any("'ra' is live at steps" in problem for problem in check_plan(model, edited(good, "ra", end=0)))
    v = {x.name: x for x in good.placements}
    wrong = dataclasses.replace(good, aliases=[*good.aliases, Alias(v["a"], v["b"], 0, "inplace")])
    assert any("aliased twice" in problem or "elementwise" in problem for problem in check_plan(model, wrong))


def reused_input() -> ir.Model:
    """x -> Sigmoid a; Neg(a) r; Add(a, r): a outlives the Neg."""
    b = GraphBuilder(17)
    x = b.input((1, 8), name="x")
    a = b.op("Sigmoid", [x], name="a")
    r = b.op("Neg", [a], name="r")
    b.mark_output(b.op("Add", [a, r], name="y"))
    return build(b)


def test_an_in_place_rule_that_ignores_lifetimes_is_caught(monkeypatch):
    def careless(live, infos, parent):  # a deliberately broken rule: same size is enough
        for node in live.schedule:
            y = node.outputs[0]
            if node.op_type in IN_PLACE and y in live.tensors:
                for x in node.inputs:
                    if x in live.tensors and x not in parent and infos[x].nbytes == infos[y].nbytes:
                        parent[x] = Alias(x, y, 0, "inplace")
                        break

    monkeypatch.setattr(planner, "inplace_aliases", careless)
    model = reused_input()
    p = plan(model)
    assert check_plan(model, p)
    assert not check_by_execution(model, p)


def test_a_placement_that_ignores_lifetimes_is_caught(monkeypatch):
    monkeypatch.setattr(placement, "_best_fit", lambda forbidden, alignment: 0)
    model = inception()
    p = plan(model, inplace=False, concat=False, split=False)
    assert any("overlap" in problem for problem in check_plan(model, p))
    assert not check_by_execution(model, p)


def test_a_concat_rule_that_ignores_the_layout_is_caught(monkeypatch):
    monkeypatch.setattr(alias_rules, "contiguous_concat", lambda node, infos: is_onnx(node, "Concat"))
    model = inception(batch=2)
    p = plan(model)
    assert [a for a in p.aliases if a.kind == "concat"]
    with pytest.raises(ExecutionError, match="not contiguous"):
        check_by_execution(model, p)


def test_a_split_rule_with_the_slices_swapped_is_caught(monkeypatch):
    def swapped(graph, infos, activations, parent):  # a deliberately broken rule: slices reversed
        for node in graph:
            if node.op_type == "Split":
                outs = node.outputs
                parent[outs[1]] = Alias(outs[1], node.inputs[0], 0, "split")
                parent[outs[0]] = Alias(outs[0], node.inputs[0], infos[outs[1]].nbytes, "split")

    monkeypatch.setattr(planner, "split_aliases", swapped)
    model = split_model()
    p = plan(model)
    assert any("Split" in problem for problem in check_plan(model, p))
    assert not check_by_execution(model, p)


# ------------------------------------------------------------------------------------------------
# properties on generated models


def dense(draw, b: GraphBuilder, v: str) -> str:
    """A dense block: each layer concatenates everything before it on channels."""
    b.require(b.rank(v) == 4)
    feats, cat = [v], v
    for _ in range(draw(st.integers(1, 3))):
        feats.append(conv(draw, b, activation(draw, b, cat), kernel=1, stride=1, pads=[0] * 4, group=1,
                          out_channels=draw(st.integers(1, 3))))
        cat = b.op("Concat", feats, axis=1)
    return cat


def shared_concat_input(draw, b: GraphBuilder, v: str) -> str:
    """One value in two concats, and read again after them."""
    b.require(b.rank(v) >= 2)
    a, c = activation(draw, b, v), activation(draw, b, v)
    axis = draw(st.integers(0, b.rank(v) - 1))
    first = b.op("Concat", [a, c] if draw(st.booleans()) else [c, a], axis=axis)
    second = b.op("Concat", [a, v], axis=axis)
    return b.op("Add", [b.op("Add", [first, second]), b.op("Concat", [a, a], axis=axis)])


MEMORY_MOTIFS = {**MOTIFS, "dense": dense, "shared_concat_input": shared_concat_input}


@given(models(motifs=MEMORY_MOTIFS, max_nodes=20), st.sampled_from(STRATEGIES), st.sampled_from(ORDERS))
def test_generated_plans_are_sound_and_execute_like_onnxruntime(proto, strategy, order):
    model = ir.from_proto(proto)
    infos = tensor_infos(model, DIMS)
    p = plan_memory(model, infos, strategy=strategy, order=order, dims=DIMS)
    assert check_plan(model, p) == []
    assert p.file_order_lower_bound >= p.lower_bound or order == "file" and not p.aliases
    for name, size in p.strategies.items():
        assert size >= p.lower_bound, name
    bare = plan_memory(model, infos, strategy=strategy, inplace=False, concat=False, split=False, dims=DIMS)
    assert bare.lower_bound == p.file_order_lower_bound
    result = check_by_execution(model, p, n_inputs=1)
    assert result, result.message


# ------------------------------------------------------------------------------------------------
# the command line


def test_optgraph_plan_prints_the_figures_and_writes_json_and_a_plot(tmp_path, capsys):
    path = tmp_path / "m.onnx"
    ir.save(dense_block(), path)
    out_json, out_png = tmp_path / "plan.json", tmp_path / "plan.png"
    assert main(["plan", str(path), "--json", str(out_json), "--plot", str(out_png), "--order", "memory",
                 "--passes", "fuse", "--check", "--inputs", "1"]) == 0
    text = capsys.readouterr().out
    assert "greedy-size" in text and "lower bound, file order" in text and "checked:" in text
    data = json.loads(out_json.read_text())
    assert data["format"] == "optgraph-memory-plan" and data["aliases"] and data["schedule"]
    assert out_png.stat().st_size > 0


def test_optgraph_plan_folds_the_shape_computations_it_needs(tmp_path, capsys):
    from optgraph.passes.memory.liveness_test import sliced_by_a_shape_computation

    path = tmp_path / "m.onnx"
    ir.save(sliced_by_a_shape_computation(), path)
    before = path.read_bytes()
    assert main(["plan", str(path), "--dim", "N=6", "--check", "--inputs", "1"]) == 0
    out = capsys.readouterr()
    assert "checked:" in out.out and "planned with them folded (6 -> 2 nodes)" in out.err
    assert path.read_bytes() == before


def test_optgraph_plan_names_a_missing_dim(tmp_path, capsys):
    b = GraphBuilder(17)
    b.mark_output(b.op("Relu", [b.input(("batch", 4), name="x")]))
    path = tmp_path / "m.onnx"
    ir.save(build(b), path)
    assert main(["plan", str(path)]) == 2
    assert "--dim batch=SIZE" in capsys.readouterr().err
    assert main(["plan", str(path), "--dim", "batch=8"]) == 0
