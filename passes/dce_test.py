"""remove-dead: golden cases, subgraph uses, and a broken variant that the tests must catch."""

from __future__ import annotations

import pytest
from onnx import parser

from optgraph import ir
from optgraph.passes import PassContext, PassResult, dce
from optgraph.passes.testing.golden import assert_rewrites_to, rewrite_text

HEADER = '<ir_version: 8, opset_import: ["" : 17, "acme" : 1]>'


def test_removes_dead_chain_and_unused_initializer() -> None:
    report = assert_rewrites_to("remove-dead", HEADER + """
        g (float[2] x) => (float[2] y) <float[2] unused = {1.0, 2.0}, float[2] w = {3.0, 4.0}> {
          a = Relu(x)
          d1 = Sigmoid(a)
          d2 = Mul(d1, unused)
          y = Add(a, w)
        }""", HEADER + """
        g (float[2] x) => (float[2] y) <float[2] w = {3.0, 4.0}> {
          a = Relu(x)
          y = Add(a, w)
        }""")
    assert report.totals() == {"nodes_removed": 2, "initializers_removed": 1}


def test_keeps_graph_inputs_outputs_and_unknown_domains() -> None:
    same = HEADER + """
        g (float[2] x, float[2] unused_input) => (float[2] y, float[2] a) {
          a = Relu(x)
          probe = acme.Probe(a)
          y = Identity(a)
        }"""
    report = assert_rewrites_to("remove-dead", same, same)
    assert report.totals() == {}


def test_outer_values_used_by_subgraphs_stay() -> None:
    text = HEADER + """
        g (bool c, float[2] x) => (float[2] y) {
          outer = Relu(x)
          dead = Abs(x)
          y = If(c) <then_branch = t () => (float[2] r) { r = Neg(outer) },
                     else_branch = e () => (float[2] r) { unused = Exp(outer)  r = Identity(outer) }>
        }"""
    out, report = rewrite_text("remove-dead", text)
    assert [n.op_type for n in out.graph.node] == ["Relu", "If"]
    else_branch = next(a.g for a in out.graph.node[1].attribute if a.name == "else_branch")
    assert [n.op_type for n in else_branch.node] == ["Identity"]
    assert report.totals() == {"nodes_removed": 2}


def test_removing_if_releases_outer_uses() -> None:
    text = HEADER + """
        g (bool c, float[2] x) => (float[2] y) {
          outer = Relu(x)
          dead = If(c) <then_branch = t () => (float[2] r) { r = Neg(outer) },
                        else_branch = e () => (float[2] r) { r = Identity(outer) }>
          y = Abs(x)
        }"""
    out, _ = rewrite_text("remove-dead", text)
    assert [n.op_type for n in out.graph.node] == ["Abs"]


def test_broken_variant_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """A DCE that does not see subgraph uses of outer values must fail the subgraph test."""
    original_run = dce.DeadCodeElimination.run

    def naive_run(self: dce.DeadCodeElimination, model: ir.Model, ctx: PassContext) -> PassResult:
        for g in model.all_graphs():
            for node in g:
                for i, v in enumerate(node.inputs):
                    if v is not None and v.graph is not g:
                        del v._uses[(node, i)]  # forget uses that cross into a subgraph
        return original_run(self, model, ctx)

    monkeypatch.setattr(dce.DeadCodeElimination, "run", naive_run)
    with pytest.raises((AssertionError, ir.VerificationError, KeyError)):  # wrong graph, or a crash
        test_outer_values_used_by_subgraphs_stay()


def test_loaded_model_is_valid_after_dce() -> None:
    model = ir.from_proto(parser.parse_model(HEADER + """
        g (float[2] x) => (float[2] y) { a = Relu(x)  b = Neg(a)  y = Abs(a) }"""))
    from optgraph.passes import run_passes

    run_passes(model, "remove-dead", verify_each=True)
    ir.verify(model)
    assert [n.op_type for n in model.graph] == ["Relu", "Abs"]
