"""remove-dead: golden cases, subgraph uses, and a broken variant that the tests must catch."""

from __future__ import annotations

import pytest
from hypothesis import given
from onnx import parser

from optgraph import ir
from optgraph.passes import PassContext, PassResult
from optgraph.passes.cleanup import dce
from optgraph.passes.manager import PassFailure
from optgraph.passes.testing.check import check_pass
from optgraph.passes.testing.golden import assert_rewrites_to, rewrite_text
from optgraph.passes.testing.strategies import models

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
    with pytest.raises((AssertionError, ir.VerificationError, PassFailure)):  # wrong graph, or a crash
        test_outer_values_used_by_subgraphs_stay()


def test_loaded_model_is_valid_after_dce() -> None:
    model = ir.from_proto(parser.parse_model(HEADER + """
        g (float[2] x) => (float[2] y) { a = Relu(x)  b = Neg(a)  y = Abs(a) }"""))
    from optgraph.passes import run_passes

    run_passes(model, "remove-dead", verify_each=True)
    ir.verify(model)
    assert [n.op_type for n in model.graph] == ["Relu", "Abs"]


def test_unused_optional_outputs_are_dropped() -> None:
    out, report = rewrite_text("remove-dead", HEADER + """
        g (float[1, 1, 4, 4] x) => (float[1, 1, 2, 2] y) {
          p, idx = MaxPool <kernel_shape = [2, 2], strides = [2, 2]> (x)
          d, mask = Dropout(p)
          y = Relu(d)
        }""")
    assert [list(n.output) for n in out.graph.node][:2] == [["p"], ["d"]]
    assert report.totals() == {"optional_outputs_removed": 2}


def test_optional_outputs_that_switch_the_computation_stay() -> None:
    """BatchNormalization before opset 14 runs in training mode when its statistics are outputs."""
    text = '<ir_version: 8, opset_import: ["" : 9]>' + """
        g (float[2, 3] x, float[3] s, float[3] b, float[3] m, float[3] v) => (float[2, 3] y) {
          y, mean, var, sm, sv = BatchNormalization(x, s, b, m, v)
        }"""
    out, report = rewrite_text("remove-dead", text)
    assert len(out.graph.node[0].output) == 5 and report.totals() == {}


def test_uncalled_functions_are_removed_called_ones_stay() -> None:
    out, report = rewrite_text("remove-dead", '<ir_version: 8, opset_import: ["" : 17, "local" : 1]>' + """
        g (bool c, float[2] x) => (float[2] y) {
          y = If(c) <then_branch = t () => (float[2] r) { r = local.outer(x) },
                     else_branch = e () => (float[2] r) { r = Abs(x) }>
        }
        <domain: "local", opset_import: ["" : 17, "local" : 1]> outer (a) => (b) { b = local.inner(a) }
        <domain: "local", opset_import: ["" : 17]> inner (a) => (b) { b = Relu(a) }
        <domain: "local", opset_import: ["" : 17]> unused (a) => (b) { b = Neg(a) }""")
    assert sorted(f.name for f in out.functions) == ["inner", "outer"]
    assert report.totals() == {"functions_removed": 1}


def test_unused_graph_inputs_are_kept() -> None:
    out, _ = rewrite_text("remove-dead", HEADER + """
        g (float[2] x, float[2] spare) => (float[2] y) { y = Relu(x) }""")
    assert [i.name for i in out.graph.input] == ["x", "spare"]


def test_broken_optional_output_rule_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Dropping BatchNormalization's statistics outputs too would change a training-mode graph."""
    monkeypatch.setattr(dce, "_OUTPUTS_MATTER", frozenset())
    with pytest.raises(AssertionError):
        test_optional_outputs_that_switch_the_computation_stay()


@given(models(motifs=["dead_branch", "graph_output_inside", "conv_bn_act", "duplicate"]))
def test_property_equivalent(model) -> None:  # type: ignore[no-untyped-def]
    check_pass("remove-dead", model)
