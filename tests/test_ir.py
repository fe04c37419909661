"""Unit tests of the IR: use lists, node order, names, subgraphs, functions, loading and saving."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx.helper as oh
import onnx.parser
import pytest

from optgraph import ir
from optgraph.ir.order import outer_inputs, sort
from optgraph.passes.manager import run_passes
from optgraph.passes.testing.oracle import assert_equivalent

from ir_samples import BRANCHES, CHAIN, FUNCTIONS, LOOP, load_text



def load_proto(proto: onnx.ModelProto) -> ir.Model:
    return ir.from_bytes(proto.SerializeToString())


def by_output(graph: ir.Graph) -> dict[str, ir.Value]:
    """The graph's values (inputs, initializers, node outputs) by name."""
    values = {v.name: v for v in [*graph.inputs, *graph.initializers.values()]}
    values.update((v.name, v) for node in graph for v in node.outputs if v is not None)
    return values


def make_model(nodes: list[onnx.NodeProto], inputs: list[str], outputs: list[str],
               initializers: list[onnx.TensorProto] = (), **kwargs: object) -> onnx.ModelProto:
    """A float[2] model from helper-built nodes (for graphs the text syntax cannot express)."""
    vi = [oh.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [2]) for n in [*inputs, *outputs]]
    graph = oh.make_graph(nodes, "g", vi[:len(inputs)], vi[len(inputs):], list(initializers))
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)], ir_version=8, **kwargs)


# --- use lists ----------------------------------------------------------------------------------

def test_use_lists_follow_every_edit() -> None:
    model = load_text(CHAIN)
    g = model.graph
    relu, add, mul = list(g)
    x, a, b = g.inputs[0], relu.output, add.output
    assert a.uses == ((add, 0), (add, 1)) and x.uses == ((relu, 0), (mul, 1))
    assert a.consumers == [add]

    add.set_input(1, x)
    assert a.uses == ((add, 0),) and (add, 1) in x.uses
    mul.replace_input(x, a)
    assert (mul, 1) not in x.uses and (mul, 1) in a.uses and mul.inputs == (b, a)

    neg = g.make_node("Neg", [a], before=mul)
    assert (neg, 0) in a.uses and neg.output.producer is neg and list(g) == [relu, add, neg, mul]
    g.replace_value(b, neg.output)
    assert b.uses == () and mul.inputs == (neg.output, a) and (mul, 0) in neg.output.uses

    with pytest.raises(ValueError, match="still used"):
        g.remove(relu)
    g.remove(add)
    assert (add, 0) not in a.uses and (add, 1) not in x.uses and add.graph is None
    ir.verify(model)
    assert [v.name for v in mul.inputs] == [neg.output.name, "A"]


def test_iterating_while_removing_the_current_and_the_next_node() -> None:
    dead = "\n".join(f"  d{i} = Neg(X)" for i in range(6))
    model = load_text(f"""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2] X) => (float[2] Y) {{
        {dead}
          Y = Relu(X)
        }}""")
    g = model.graph
    nodes = {n.output.name: n for n in g}
    visited = []
    for node in g:
        visited.append(node.output.name)
        if node.output.name in ("d1", "d4"):
            g.remove(nodes[f"d{int(node.output.name[1]) + 1}"])  # the next node goes first
            g.remove(node)
    assert visited == ["d0", "d1", "d3", "d4", "Y"]
    assert [n.output.name for n in g] == ["d0", "d3", "Y"] and len(g) == 3
    assert [n.output.name for n in reversed(g)] == ["Y", "d3", "d0"]
    ir.verify(model)


def test_insert_before_and_after_move_a_node() -> None:
    model = load_text(CHAIN)
    g = model.graph
    relu, add, mul = list(g)
    neg = g.make_node("Neg", [g.inputs[0]])
    g.remove(neg)
    neg.set_inputs([g.inputs[0]])
    g.insert_after(mul, neg)  # after the tail: the new tail
    assert list(g) == [relu, add, mul, neg] and list(reversed(g))[0] is neg
    g.remove(neg)
    neg.set_inputs([g.inputs[0]])
    g.insert_before(relu, neg)  # before the head: the new head
    assert list(g) == [neg, relu, add, mul] and len(g) == 4
    with pytest.raises(ValueError, match="already belongs"):
        g.insert_after(add, neg)
    ir.verify(model)


def test_fresh_names_never_reuse_an_old_name() -> None:
    model = load_text(CHAIN)
    g = model.graph
    relu, add, mul = list(g)
    given = {g.fresh_name(n) for n in ("A", "A", "X", "Y", "")}
    assert given.isdisjoint({"A", "B", "X", "Y"}) and len(given) == 5
    mul.replace_input(add.output, relu.output)
    g.remove(add)  # 'B' is gone from the graph but stays reserved
    assert g.make_node("Neg", [relu.output], name="B").output.name != "B"
    w = g.add_initializer(np.ones(2, np.float32), "W")
    g.remove_initializer(w)
    w2 = g.add_initializer(np.ones(2, np.float32), "W")
    assert w2.name != w.name and w.name == "W"
    with pytest.raises(ValueError, match="already used"):
        w2.name = "A"


# --- replace_value on graph outputs -------------------------------------------------------------

def test_replace_value_hands_an_output_name_to_an_intermediate() -> None:
    proto = onnx.parser.parse_model("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[N, 4] X) => (float[N, 4] Y) {
          A = Neg(X)
          Y = Identity(A)
        }""")
    model = load_proto(proto)
    g = model.graph
    neg, ident = list(g)
    g.replace_value(ident.output, neg.output)
    g.remove(ident)
    assert len(g) == 1 and g.outputs == (neg.output,)
    assert neg.output.name == "Y" and neg.output.dtype == onnx.TensorProto.FLOAT
    assert neg.output.shape == ("N", 4)
    ir.verify(model)
    out = ir.to_proto(model)
    assert out.graph.output[0] == proto.graph.output[0]
    assert_equivalent(proto, out)


@pytest.mark.parametrize("replacement", ["X", "Z"])
def test_replace_value_keeps_the_output_name_through_an_identity(replacement: str) -> None:
    """Neither a graph input nor another output can take the name: an Identity keeps it."""
    proto = onnx.parser.parse_model("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[N, 4] X) => (float[N, 4] Y, float[N, 4] Z) {
          Y = Identity(X)
          Z = Identity(X)
        }""")
    proto.graph.output[0].doc_string = "the first output"
    model = load_proto(proto)
    g = model.graph
    old = g.outputs[0]
    new = by_output(g)[replacement]
    g.replace_value(old, new)
    run_passes(model, "remove-dead")
    ir.verify(model)
    assert [v.name for v in g.outputs] == ["Y", "Z"] and g.inputs[0].name == "X"
    keep = g.outputs[0]
    assert keep is not new and keep.producer.op_type == "Identity" and keep.producer.inputs == (new,)
    assert (keep.dtype, keep.shape, keep.doc_string) == (onnx.TensorProto.FLOAT, ("N", 4), "the first output")
    out = ir.to_proto(model)
    assert out.graph.output[0] == proto.graph.output[0]
    assert_equivalent(proto, out)


# --- subgraphs ----------------------------------------------------------------------------------

def test_outer_values_read_by_if_branches_count_as_uses() -> None:
    proto = onnx.parser.parse_model(BRANCHES)
    model = load_proto(proto)
    g = model.graph
    neg, relu, if_node = list(g)
    then_g, else_g = if_node.subgraphs()
    (add,), (ident,) = list(then_g), list(else_g)
    assert relu.output.uses == ((add, 0),)
    assert set(neg.output.uses) == {(add, 1), (ident, 0)}
    assert {v.name for v in outer_inputs(if_node)} == {"A", "B"}

    report = run_passes(model, "remove-dead")
    assert len(g) == 3, report
    assert_equivalent(proto, ir.to_proto(model))

    g.set_outputs([neg.output])  # the If is dead now: removing it drops its branches' uses
    g.remove(if_node)
    assert relu.output.uses == () and neg.output.uses == ()
    run_passes(model, "remove-dead")
    assert [n.op_type for n in g] == ["Neg"]
    ir.verify(model)


def test_outer_values_read_by_a_loop_body_count_as_uses() -> None:
    proto = onnx.parser.parse_model(LOOP)
    model = load_proto(proto)
    g = model.graph
    relu = next(n for n in g if n.op_type == "Relu")
    loop = next(n for n in g if n.op_type == "Loop")
    (body,) = loop.subgraphs()
    assert [n.op_type for n, _ in relu.output.uses] == ["Add"] and relu.output.uses[0][0].graph is body
    assert outer_inputs(loop) == [relu.output]
    run_passes(model, "remove-dead")
    assert relu.graph is g
    assert_equivalent(proto, ir.to_proto(model))


def test_nested_subgraph_reading_its_enclosing_branch_is_not_an_outer_input() -> None:
    """Regression: a value defined in a branch and read by an If nested in that branch is local."""
    inner = oh.make_node("If", ["c"], ["r"],
                         then_branch=oh.make_graph([oh.make_node("Neg", ["b"], ["t"])], "t", [],
                                                   [oh.make_tensor_value_info("t", onnx.TensorProto.FLOAT, [2])]),
                         else_branch=oh.make_graph([oh.make_node("Abs", ["X"], ["e"])], "e", [],
                                                   [oh.make_tensor_value_info("e", onnx.TensorProto.FLOAT, [2])]))
    branch = oh.make_graph([oh.make_node("Relu", ["X"], ["b"]), inner], "outer_then", [],
                           [oh.make_tensor_value_info("r", onnx.TensorProto.FLOAT, [2])])
    other = oh.make_graph([oh.make_node("Identity", ["X"], ["o"])], "outer_else", [],
                          [oh.make_tensor_value_info("o", onnx.TensorProto.FLOAT, [2])])
    top = oh.make_node("If", ["c"], ["Y"], then_branch=branch, else_branch=other)
    proto = make_model([top], ["X"], ["Y"])
    proto.graph.input.insert(0, oh.make_tensor_value_info("c", onnx.TensorProto.BOOL, []))
    model = load_proto(proto)
    ir.verify(model)
    (if_node,) = list(model.graph)
    assert {v.name for v in outer_inputs(if_node)} == {"X", "c"}  # not 'b': the inner If's reads stay inside
    assert_equivalent(proto, ir.to_proto(model))


def test_a_branch_returning_an_outer_value_depends_on_it() -> None:
    """Regression: a subgraph output naming an outer value is an implicit input of the node."""
    model = load_text("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (bool c, float[2] X) => (float[2] Y) {
          A = Neg(X)
          Y = If(c) <then_branch = t () => (float[2] A) { }, else_branch = e () => (float[2] r) { r = Abs(X) }>
        }""")
    neg, if_node = list(model.graph)
    assert {v.name for v in outer_inputs(if_node)} == {"A", "X"}
    sort(model.graph)
    assert list(model.graph) == [neg, if_node]


# --- functions, order, errors -------------------------------------------------------------------

def test_model_local_functions_round_trip() -> None:
    proto = onnx.parser.parse_model(FUNCTIONS)
    model = load_proto(proto)
    fn = model.functions[("local", "leaky", "")]
    assert fn.attributes == ["alpha"] and [n.op_type for n in fn.graph] == ["LeakyRelu", "Identity"]
    assert fn.graph.inputs[0].name == "x" and fn.graph.outputs[0].name == "y"
    leaky = next(iter(fn.graph))
    assert leaky.attrs["alpha"].ref == "alpha"
    assert ir.to_proto(model) == proto
    for node in [*model.graph, *fn.graph]:  # re-encode everything: the ref must survive
        node.name = node.name
    out = ir.to_proto(model)
    assert onnx.printer.to_text(out) == onnx.printer.to_text(proto)
    assert out.functions[0].node[0].attribute[0].ref_attr_name == "alpha"
    assert_equivalent(proto, out)


def test_unsorted_nodes_are_sorted_stably_on_load() -> None:
    nodes = [oh.make_node("Add", ["B", "X"], ["C"], name="c"), oh.make_node("Neg", ["A"], ["B"], name="b"),
             oh.make_node("Relu", ["X"], ["A"], name="a"), oh.make_node("Abs", ["X"], ["D"], name="d"),
             oh.make_node("Sum", ["C", "D"], ["Y"], name="y")]
    proto = make_model(nodes, ["X"], ["Y"])
    model = load_proto(proto)
    assert [n.name for n in model.graph] == ["a", "b", "c", "d", "y"]
    ir.verify(model)
    assert_equivalent(proto, ir.to_proto(model))


def test_a_cycle_is_an_invalid_model_naming_the_cycle() -> None:
    nodes = [oh.make_node("Relu", ["B"], ["A"], name="first"), oh.make_node("Neg", ["A"], ["B"], name="second"),
             oh.make_node("Add", ["B", "X"], ["Y"], name="out")]
    with pytest.raises(ir.InvalidModelError, match="cycle: (first -> second -> first|second -> first -> second)"):
        load_proto(make_model(nodes, ["X"], ["Y"]))


def test_a_name_produced_twice_is_an_invalid_model() -> None:
    nodes = [oh.make_node("Relu", ["X"], ["A"], name="one"), oh.make_node("Neg", ["X"], ["A"], name="two"),
             oh.make_node("Identity", ["A"], ["Y"])]
    with pytest.raises(ir.InvalidModelError, match="'A' is (defined|produced) twice"):
        load_proto(make_model(nodes, ["X"], ["Y"]))
    init = onnx.numpy_helper.from_array(np.ones(2, np.float32), "X")
    with pytest.raises(ir.InvalidModelError, match="'A' is defined twice"):  # also when an input is redefined
        load_proto(make_model([oh.make_node("Relu", ["X"], ["A"]), oh.make_node("Neg", ["X"], ["A"])],
                              ["X"], ["A"], [init]))


def test_an_undefined_input_is_an_invalid_model() -> None:
    nodes = [oh.make_node("Add", ["X", "ghost"], ["Y"], name="adder")]
    with pytest.raises(ir.InvalidModelError, match="'adder' reads 'ghost', which nothing defines"):
        load_proto(make_model(nodes, ["X"], ["Y"]))


# --- tensors: external data, laziness, constants ------------------------------------------------

def _weights_model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w = onnx.numpy_helper.from_array(rng.standard_normal((64, 2)).astype(np.float32), "W")
    b = onnx.numpy_helper.from_array(np.arange(64, dtype=np.float32).reshape(64, 1), "bias")
    nodes = [oh.make_node("MatMul", ["W", "X"], ["M"]), oh.make_node("Add", ["M", "bias"], ["Y"])]
    graph = oh.make_graph(nodes, "weights", [oh.make_tensor_value_info("X", onnx.TensorProto.FLOAT, [2, "K"])],
                          [oh.make_tensor_value_info("Y", onnx.TensorProto.FLOAT, [64, "K"])], [w, b])
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)], ir_version=8)


def test_external_data_round_trips(tmp_path: Path) -> None:
    proto = _weights_model()
    path = tmp_path / "model.onnx"
    ir.save(load_proto(proto), path, external_data=True, size_threshold=256)
    assert (tmp_path / "model.onnx.data").stat().st_size >= 64 * 2 * 4
    loaded = ir.load(path)
    w, bias = loaded.graph.initializers["W"].const, loaded.graph.initializers["bias"].const
    assert w.is_external and bias.is_external
    np.testing.assert_array_equal(w.numpy(), onnx.numpy_helper.to_array(proto.graph.initializer[0]))
    np.testing.assert_array_equal(bias.numpy(), np.arange(64, dtype=np.float32).reshape(64, 1))
    assert_equivalent(proto, onnx.load(str(path)))

    again = tmp_path / "again.onnx"
    ir.save(loaded, again)  # external data stays external, and the copy is read back the same
    assert (tmp_path / "again.onnx.data").exists()
    np.testing.assert_array_equal(ir.load(again).graph.initializers["W"].const.numpy(), w.numpy())


def test_loading_reads_no_tensor_data_until_asked(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    onnx.save(_weights_model(), str(path))
    model = ir.load(path)
    tensors = [v.const for v in model.graph.initializers.values()]
    assert all(t._array is None for t in tensors)
    assert tensors[0].shape == (64, 2) and tensors[0].dtype == onnx.TensorProto.FLOAT and tensors[0]._array is None
    assert all(n._attrs is None for n in model.graph)  # attributes are decoded on first use too
    tensors[0].numpy()
    assert tensors[0]._array is not None and tensors[1]._array is None


def test_an_initializer_that_is_also_an_input_is_not_a_constant() -> None:
    proto = _weights_model()
    proto.graph.input.append(oh.make_tensor_value_info("bias", onnx.TensorProto.FLOAT, [64]))
    model = load_proto(proto)
    inits = model.graph.initializers
    assert ir.constant_tensor(inits["bias"]) is None and inits["bias"].is_graph_input
    assert ir.constant_tensor(inits["W"]) is inits["W"].const


def test_constant_tensor_sees_through_identity_chains_and_constant_forms() -> None:
    model = load_text("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[3] X) => (float[3] Y) <float[3] W = {1.0, 2.0, 3.0}> {
          F = Constant <value_floats = [0.5, 1.5, 2.5]> ()
          I = Constant <value_ints = [1, 2, 3]> ()
          S = Constant <value_float = 4.0> ()
          T = Constant <value = float[3] {7.0, 8.0, 9.0}> ()
          T1 = Identity(T)
          T2 = Identity(T1)
          W1 = Identity(W)
          R = Relu(X)
          R1 = Identity(R)
          Y = Sum(X, F, T2, W1, R1)
        }""")
    v = by_output(model.graph)
    f = ir.constant_array(v["F"])
    assert f.dtype == np.float32 and f.tolist() == [0.5, 1.5, 2.5]
    i = ir.constant_array(v["I"])
    assert i.dtype == np.int64 and i.tolist() == [1, 2, 3]
    assert ir.constant_array(v["S"]).shape == () and float(ir.constant_array(v["S"])) == 4.0
    assert ir.constant_array(v["T2"]).tolist() == [7.0, 8.0, 9.0]
    assert ir.constant_array(v["W1"]).tolist() == [1.0, 2.0, 3.0]
    assert ir.constant_tensor(v["R1"]) is None and ir.constant_tensor(v["X"]) is None


def test_scalar_constants_keep_rank_zero(tmp_path: Path) -> None:
    """Regression: Tensor(array=...) made every scalar shape (1,), which changes broadcasting."""
    model = load_text("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float X) => (float Y) {
          Y = Neg(X)
        }""")
    g = model.graph
    c = g.add_initializer(np.float32(2.0), "two")
    assert c.shape == () and c.const.numpy().shape == ()
    (neg,) = list(g)
    add = g.make_node("Add", [neg.output, c])
    g.replace_value(neg.output, add.output)
    add.set_input(0, neg.output)  # replace_value moved this use too
    path = tmp_path / "scalar.onnx"
    ir.save(model, path)
    assert list(onnx.load(str(path)).graph.initializer[0].dims) == []
    assert_equivalent(onnx.parser.parse_model("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float X) => (float Y) <float two = {2.0}> {
          N = Neg(X)
          Y = Add(N, two)
        }"""), onnx.load(str(path)))


# --- the verifier -------------------------------------------------------------------------------

def test_verifier_catches_a_missing_use() -> None:
    model = load_text(CHAIN)
    relu, add, _ = list(model.graph)
    del relu.output._uses[(add, 1)]
    with pytest.raises(ir.VerificationError, match="'A' does not record its use"):
        ir.verify(model)


def test_verifier_catches_a_read_before_definition() -> None:
    model = load_text(CHAIN)
    relu = next(iter(model.graph))
    late = model.graph.make_node("Neg", [model.graph.inputs[0]], name="late")  # after every reader
    relu.set_input(0, late.output)
    with pytest.raises(ir.VerificationError, match=f"reads '{late.output.name}' before it is defined"):
        ir.verify(model)


def test_verifier_catches_a_duplicate_name() -> None:
    model = load_text(CHAIN)
    _, add, _ = list(model.graph)
    add.output._name = "A"  # bypasses the name check on purpose
    with pytest.raises(ir.VerificationError, match="'A' is defined twice"):
        ir.verify(model)


def test_verifier_catches_a_stale_use() -> None:
    model = load_text(CHAIN)
    relu, add, mul = list(model.graph)
    relu.output._uses[(mul, 0)] = None
    with pytest.raises(ir.VerificationError, match="stale use"):
        ir.verify(model)


# --- saving -------------------------------------------------------------------------------------

@pytest.mark.parametrize("text", [CHAIN, BRANCHES, LOOP, FUNCTIONS])
def test_saving_is_deterministic_and_a_fixed_point(text: str, tmp_path: Path) -> None:
    proto = onnx.parser.parse_model(text)
    proto.metadata_props.add(key="k", value="v")
    proto.graph.initializer.append(onnx.numpy_helper.from_array(np.arange(300, dtype=np.float32), "unused"))
    model = load_proto(proto)
    first, second = tmp_path / "a.onnx", tmp_path / "b.onnx"
    ir.save(model, first)
    ir.save(model, second)
    assert first.read_bytes() == second.read_bytes()
    third, fourth = tmp_path / "c.onnx", tmp_path / "d.onnx"
    ir.save(ir.load(first), third)
    ir.save(ir.load(third), fourth)
    assert third.read_bytes() == first.read_bytes() == fourth.read_bytes()

    for graph in model.all_graphs():  # edited nodes are re-encoded from their fields
        for node in graph:
            node.doc_string = node.doc_string
    ir.save(model, first)
    ir.save(model, second)
    assert first.read_bytes() == second.read_bytes()
    ir.save(ir.load(first), third)
    assert third.read_bytes() == first.read_bytes()
    assert onnx.printer.to_text(onnx.load(str(first))) == onnx.printer.to_text(proto)


def test_unset_model_fields_stay_unset() -> None:
    """Regression: proto2 keeps presence, so writing "" for unset fields made a different file."""
    proto = make_model([oh.make_node("Relu", ["X"], ["Y"])], ["X"], ["Y"])
    proto.functions.append(oh.make_function("local", "f", ["a"], ["b"], [oh.make_node("Neg", ["a"], ["b"])],
                                            [oh.make_opsetid("", 17)]))
    assert not proto.HasField("producer_version") and not proto.functions[0].HasField("doc_string")
    out = ir.to_proto(load_proto(proto))
    assert out.SerializeToString() == proto.SerializeToString()


def test_value_info_fills_in_an_untyped_output() -> None:
    """Regression: value_info naming a graph output was dropped even when the output had no type."""
    proto = make_model([oh.make_node("Relu", ["X"], ["Y"])], ["X"], [])
    proto.graph.output.append(onnx.ValueInfoProto(name="Y"))
    proto.graph.value_info.append(oh.make_tensor_value_info("Y", onnx.TensorProto.FLOAT, ["N"]))
    model = load_proto(proto)
    y = model.graph.outputs[0]
    assert (y.dtype, y.shape) == (onnx.TensorProto.FLOAT, ("N",))
    out = ir.to_proto(model)
    assert out.graph.output[0] == proto.graph.value_info[0] and not out.graph.value_info


def test_omit_output_refuses_used_outputs_and_trims_trailing_ones() -> None:
    model = ir.from_proto(onnx.parser.parse_model("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[4] x) => (float[4] y, float[4] b) { a, b, c = Split <num_outputs = 3> (x)  y = Abs(a) }"""))
    split = next(iter(model.graph))
    with pytest.raises(ValueError, match="still used"):
        split.omit_output(0)
    split.omit_output(2)
    assert [v.name if v else None for v in split.outputs] == ["a", "b"]
    ir.verify(model)


def _loaded_leaky_relu() -> ir.Model:
    node = oh.make_node("LeakyRelu", ["x"], ["y"], name="act", alpha=0.1)
    node.metadata_props.add(key="origin", value="export")
    return ir.from_proto(make_model([node], ["x"], ["y"]))


def test_loaded_node_attrs_and_metadata_are_read_only_views() -> None:
    # These edits used to succeed and were silently lost on save: the node kept its loaded proto.
    node = next(iter(_loaded_leaky_relu().graph))
    with pytest.raises(TypeError):
        node.attrs["alpha"] = ir.Attr("alpha", ir.AT.FLOAT, 0.5)  # type: ignore[index]
    with pytest.raises(TypeError):
        node.metadata_props["origin"] = "edited"  # type: ignore[index]
    value = node.output
    with pytest.raises(TypeError):
        value.metadata_props["k"] = "v"  # type: ignore[index]
    with pytest.raises(AttributeError):
        value.producer = None  # type: ignore[misc]
    with pytest.raises(TypeError):
        node.graph.initializers["w"] = value  # type: ignore[index]


def test_attribute_and_metadata_edits_on_a_loaded_node_are_saved() -> None:
    model = _loaded_leaky_relu()
    node = next(iter(model.graph))
    node.set_attr("alpha", 0.5)
    node.set_metadata("origin", "edited")
    node.set_metadata("pass", "test")
    saved = ir.to_proto(model).graph.node[0]
    assert oh.get_attribute_value(saved.attribute[0]) == pytest.approx(0.5)
    assert {p.key: p.value for p in saved.metadata_props} == {"origin": "edited", "pass": "test"}
    again = ir.from_proto(ir.to_proto(model))
    node = next(iter(again.graph))
    node.set_metadata("origin", None)
    assert {p.key: p.value for p in ir.to_proto(again).graph.node[0].metadata_props} == {"pass": "test"}


def test_the_rewriter_records_every_edit_and_shares_its_record() -> None:
    model = _loaded_leaky_relu()
    node = next(iter(model.graph))
    rw = ir.Rewriter(model.graph)
    heard: list[str] = []
    rw.listen(lambda kind, obj: heard.append(kind))
    assert not rw.changed
    rw.set_input(node, 0, node.inputs[0])  # the same value: no edit
    assert not rw.changed and heard == []
    rw.set_attr(node, "alpha", 0.2)
    rw.set_metadata(node, "origin", None)
    neg = rw.make_node("Neg", [node.inputs[0]])
    rw.replace(node.output, neg.output)
    rw.remove(node)
    sub = ir.Rewriter(ir.Graph("other"))
    assert rw.on(model.graph) is rw and not sub.changed
    other = rw.on(ir.Graph("body"))
    assert other.changed  # one record
    assert heard == ["attr", "metadata", "create", "replace", "remove"]
    ir.verify(model)
    saved = ir.to_proto(model).graph
    assert [n.op_type for n in saved.node] == ["Neg"] and saved.output[0].name == "y"
