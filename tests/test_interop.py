"""Interop: onnx-graphsurgeon round trips keep results; the networkx view has the graph's edges."""

from __future__ import annotations

import networkx as nx
import numpy as np
import onnx
import onnx.parser
import pytest

from optgraph import ir
from optgraph.ir.order import outer_inputs
from optgraph.passes.testing.networks import inception_like
from optgraph.passes.testing.oracle import assert_equivalent

from ir_samples import BRANCHES, FUNCTIONS, load_text

gs = pytest.importorskip("onnx_graphsurgeon")

WEIGHTED = """
<ir_version: 8, opset_import: ["" : 17]>
chain (float[N, 4] X) => (float[N, 4] Y) <float[4] W = {1.0, 2.0, 3.0, 4.0}> {
  A = Relu(X)
  B = Add(A, A)
  C = Mul(B, W)
  Y = Sub(C, X)
}
"""



def assert_valid_order(graph: ir.Graph, order: list[ir.Node]) -> None:
    """Every value a node reads (directly or from its subgraphs) is produced earlier in ``order``."""
    position = {id(n): i for i, n in enumerate(order)}
    assert sorted(position.values()) == list(range(len(graph))) and len(order) == len(graph)
    for node in order:
        for v in [*node.inputs, *outer_inputs(node)]:
            if v is not None and v.producer is not None and v.producer.graph is graph:
                assert position[id(v.producer)] < position[id(node)], f"{node!r} comes before {v.producer!r}"


# --- onnx-graphsurgeon --------------------------------------------------------------------------

def test_graphsurgeon_round_trip_keeps_results_and_model_fields() -> None:
    proto = inception_like(blocks=2, channels=8, spatial=8)
    model = ir.from_proto(proto)
    back = ir.from_graphsurgeon(ir.to_graphsurgeon(model))
    assert back.ir_version == proto.ir_version and back.opset_imports == model.opset_imports
    assert [n.name for n in back.graph] == [n.name for n in proto.graph.node]
    assert back.graph.inputs[0].shape == model.graph.inputs[0].shape and back.graph.inputs[0].shape[0] == "N"
    ir.verify(back)
    assert_equivalent(proto, back)


def test_graphsurgeon_round_trip_keeps_subgraphs_and_functions() -> None:
    for text in [BRANCHES, FUNCTIONS]:
        proto = onnx.parser.parse_model(text)
        back = ir.from_graphsurgeon(ir.to_graphsurgeon(ir.from_proto(proto)))
        assert back.opset_imports == {o.domain: o.version for o in proto.opset_import}
        assert len(back.functions) == len(proto.functions)
        ir.verify(back)
        assert_equivalent(proto, back)


def test_an_edit_made_in_graphsurgeon_comes_back() -> None:
    """Bypass the Relu in graphsurgeon, then check the IR model computes the edited function."""
    proto = onnx.parser.parse_model(WEIGHTED)
    graph = ir.to_graphsurgeon(ir.from_proto(proto))
    relu = next(n for n in graph.nodes if n.op == "Relu")
    add = next(n for n in graph.nodes if n.op == "Add")
    add.inputs = [relu.inputs[0], relu.inputs[0]]
    graph.cleanup().toposort()
    back = ir.from_graphsurgeon(graph)
    assert [n.op_type for n in back.graph] == ["Add", "Mul", "Sub"]
    expected = onnx.parser.parse_model(WEIGHTED.replace("A = Relu(X)", "A = Identity(X)"))
    assert_equivalent(expected, back)
    with pytest.raises(AssertionError, match="differs"):  # and the edit is visible to the oracle
        assert_equivalent(proto, back)


def test_a_graph_built_in_graphsurgeon_gets_a_runnable_ir_version() -> None:
    x = gs.Variable("x", dtype=np.float32, shape=("N", 3))
    y = gs.Variable("y", dtype=np.float32, shape=("N", 3))
    graph = gs.Graph(nodes=[gs.Node("Relu", inputs=[x], outputs=[y])], inputs=[x], outputs=[y], opset=17)
    assert graph.ir_version is None
    model = ir.from_graphsurgeon(graph)
    assert model.ir_version == 8  # the lowest IR that supports opset 17
    reference = onnx.parser.parse_model("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[N, 3] x) => (float[N, 3] y) { y = Relu(x) }""")
    assert_equivalent(reference, model)


# --- networkx -----------------------------------------------------------------------------------

def test_networkx_view_has_one_edge_per_value_read() -> None:
    model = load_text(WEIGHTED)
    relu, add, mul, sub = list(model.graph)
    view = ir.to_networkx(model.graph)
    assert list(view.nodes) == [relu, add, mul, sub]
    edges = {(u, v, k.name) for u, v, k in view.edges(keys=True)}
    assert edges == {(relu, add, "A"), (add, mul, "B"), (mul, sub, "C")}
    assert view.edges[relu, add, relu.output]["value"] is relu.output

    full = ir.to_networkx(model.graph, with_values=True)
    x, w = model.graph.inputs[0], model.graph.initializers["W"]
    assert set(full.nodes) == {relu, add, mul, sub, x, w}
    assert {(u, v) for u, v, k in full.edges(keys=True) if k is x} == {(x, relu), (x, sub)}
    assert list(full.successors(w)) == [mul]
    assert nx.immediate_dominators(full, x)[sub] is x  # X reaches Sub directly, around the chain


def test_networkx_view_records_subgraph_reads_as_implicit_edges() -> None:
    model = load_text(BRANCHES)
    neg, relu, if_node = list(model.graph)
    view = ir.to_networkx(model.graph, with_values=True)
    c = model.graph.inputs[0]
    assert view.edges[c, if_node, c]["implicit"] is False
    assert view.edges[neg, if_node, neg.output]["implicit"] is True
    assert view.edges[relu, if_node, relu.output]["implicit"] is True
    (then_g, _) = if_node.subgraphs()
    assert ir.to_networkx(then_g).number_of_edges() == 0  # A and B are not nodes of the branch


@pytest.mark.parametrize("text", [WEIGHTED, BRANCHES])
def test_topological_sort_of_the_view_is_a_valid_order(text: str) -> None:
    model = load_text(text)
    order = list(nx.topological_sort(ir.to_networkx(model.graph)))
    assert_valid_order(model.graph, order)


def test_topological_sort_of_a_large_view_is_a_valid_order() -> None:
    model = ir.from_proto(inception_like(blocks=6, channels=8, spatial=8))
    view = ir.to_networkx(model.graph)
    assert view.number_of_nodes() == len(model.graph) and nx.is_directed_acyclic_graph(view)
    assert_valid_order(model.graph, list(nx.topological_sort(view)))
    assert_valid_order(model.graph, list(reversed(list(nx.topological_sort(view.reverse(copy=False))))))


def test_an_order_that_ignores_subgraph_reads_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without its implicit edges the view admits the If before Neg; the order check objects."""
    from optgraph.ir import interop

    model = load_text(BRANCHES)
    neg, relu, if_node = list(model.graph)
    bad_order = [if_node, neg, relu]

    def admits(view: nx.MultiDiGraph, order: list[ir.Node]) -> bool:
        return all(order.index(u) < order.index(v) for u, v in view.edges())

    assert not admits(ir.to_networkx(model.graph), bad_order)
    monkeypatch.setattr(interop, "outer_inputs", lambda node: [])
    assert admits(ir.to_networkx(model.graph), bad_order)
    with pytest.raises(AssertionError, match="comes before"):
        assert_valid_order(model.graph, bad_order)
