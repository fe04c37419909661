"""cse: golden merges, what must never merge, property tests with the oracle, broken variants."""

from __future__ import annotations

import pytest
from hypothesis import given
from onnx import parser

from optgraph import ir
from optgraph.passes.cleanup import cse
from optgraph.passes.testing.check import check_pass
from optgraph.passes.testing.golden import assert_rewrites_to, rewrite_text
from optgraph.passes.testing.strategies import models

HEADER = '<ir_version: 8, opset_import: ["" : 17, "acme" : 1]>'


def ops_after(body: str, outputs: str = "float[2, 3] y") -> list[str]:
    out, _ = rewrite_text("cse,remove-dead", f"{HEADER} g (float[2, 3] x) => ({outputs}) {{ {body} }}")
    return [n.op_type for n in out.graph.node]


def test_duplicates_merge_and_their_users_follow() -> None:
    report = assert_rewrites_to("cse", HEADER + """
        g (float[2, 3] x) => (float[2, 3] y) {
          a = Relu(x)
          b = Relu(x)
          c = Neg(a)
          d = Neg(b)
          y = Add(c, d)
        }""", HEADER + """
        g (float[2, 3] x) => (float[2, 3] y) {
          a = Relu(x)
          c = Neg(a)
          y = Add(c, c)
        }""")
    assert report.totals() == {"nodes_merged": 2}


def test_commutative_inputs_in_any_order() -> None:
    assert ops_after("x2 = Neg(x)  a = Add(x, x2)  b = Add(x2, x)  y = Mul(a, b)") == ["Neg", "Add", "Mul"]
    assert ops_after("x2 = Neg(x)  a = Sub(x, x2)  b = Sub(x2, x)  y = Mul(a, b)") == ["Neg", "Sub", "Sub", "Mul"]


def test_attributes_and_output_arity_must_match() -> None:
    assert ops_after("a = Transpose <perm = [1, 0]> (x)  b = Transpose <perm = [1, 0]> (x)  y = Add(a, b)",
                     outputs="float[3, 2] y") == ["Transpose", "Add"]
    assert ops_after("a = LeakyRelu <alpha = 0.1> (x)  b = LeakyRelu <alpha = 0.2> (x)  y = Add(a, b)") == \
        ["LeakyRelu", "LeakyRelu", "Add"]
    assert ops_after("a, m = Dropout(x)  b = Dropout(x)  k = Cast <to = 1> (m)  s = Add(a, b)  y = Add(s, k)") == \
        ["Dropout", "Dropout", "Cast", "Add", "Add"]


def test_random_and_unknown_ops_never_merge() -> None:
    assert ops_after("a = RandomNormalLike(x)  b = RandomNormalLike(x)  y = Add(a, b)") == \
        ["RandomNormalLike", "RandomNormalLike", "Add"]
    assert ops_after("a = acme.Counter(x)  b = acme.Counter(x)  y = Add(a, b)") == ["Counter", "Counter", "Add"]


def test_equal_constants_merge_by_content() -> None:
    out, report = rewrite_text("cse,remove-dead", HEADER + """
        g (float[2] x) => (float[2] y) <float[2] w1 = {1.0, 2.0}, float[2] w2 = {1.0, 2.0}, float[2] w3 = {1.0, 3.0},
                                         float[2] z1 = {0.0, 0.0}, float[2] z2 = {-0.0, 0.0}> {
          a = Mul(x, w1)
          b = Mul(x, w2)
          c = Mul(x, w3)
          d = Add(a, z1)
          e = Add(b, z2)
          f = Add(d, e)
          y = Add(f, c)
        }""")
    assert sorted(t.name for t in out.graph.initializer) == ["w1", "w3", "z1", "z2"]  # -0.0 is not 0.0
    assert report.totals()["initializers_merged"] == 1 and report.totals()["nodes_merged"] == 1


def test_initializers_that_are_graph_inputs_are_not_constants() -> None:
    out, _ = rewrite_text("cse", HEADER + """
        g (float[2] x, float[2] w1) => (float[2] y) <float[2] w1 = {1.0, 2.0}, float[2] w2 = {1.0, 2.0}> {
          a = Mul(x, w1)
          b = Mul(x, w2)
          y = Add(a, b)
        }""")
    assert len(out.graph.initializer) == 2 and len(out.graph.node) == 3


def test_graph_outputs_keep_their_names() -> None:
    text = HEADER + "g (float[2] x) => (float[2] y, float[2] z) { y = Relu(x)  z = Relu(x) }"
    out, report = rewrite_text("cse", text)
    assert [o.name for o in out.graph.output] == ["y", "z"]
    assert len(out.graph.node) == 2 and report.totals() == {}  # merging would need an Identity
    assert_rewrites_to("cse", HEADER + """
        g (float[2] x) => (float[2] z) { a = Relu(x)  b = Relu(x)  z = Add(a, b) }""", HEADER + """
        g (float[2] x) => (float[2] z) { a = Relu(x)  z = Add(a, a) }""")
    assert_rewrites_to("cse", HEADER + """
        g (float[2] x) => (float[2] y, float[2] z) { a = Relu(x)  y = Neg(a)  z = Relu(x) }""", HEADER + """
        g (float[2] x) => (float[2] y, float[2] z) { z = Relu(x)  y = Neg(z) }""")


def test_nodes_with_subgraphs_stay_and_subgraphs_are_merged_inside() -> None:
    out, _ = rewrite_text("cse", HEADER + """
        g (bool c, float[2] x) => (float[2] y) {
          a = If(c) <then_branch = t () => (float[2] r) { p = Neg(x)  q = Neg(x)  r = Add(p, q) },
                     else_branch = e () => (float[2] r) { r = Abs(x) }>
          b = If(c) <then_branch = t2 () => (float[2] r2) { r2 = Neg(x) },
                     else_branch = e2 () => (float[2] r2) { r2 = Abs(x) }>
          y = Add(a, b)
        }""")
    assert [n.op_type for n in out.graph.node] == ["If", "If", "Add"]
    then = next(a.g for a in out.graph.node[0].attribute if a.name == "then_branch")
    assert [n.op_type for n in then.node] == ["Neg", "Add"]


@given(models(motifs=["duplicate", "shared_weights", "parallel_convs", "constant_params", "graph_output_inside"]))
def test_property_equivalent(model) -> None:  # type: ignore[no-untyped-def]
    check_pass("cse", model)


def test_broken_attribute_comparison_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """A CSE that ignores attributes merges Transposes with different perms."""
    monkeypatch.setattr(cse, "attr_key", lambda node: ())
    model = parser.parse_model(HEADER + """
        g (float[2, 3, 4] x) => (float[4, 3, 2] y) {
          a = Transpose <perm = [2, 1, 0]> (x)
          b = Transpose <perm = [0, 2, 1]> (x)
          c = Transpose <perm = [1, 2, 0]> (b)
          y = Add(a, c)
        }""")
    check_pass("remove-dead", model)  # the model itself is fine
    with pytest.raises(AssertionError):
        check_pass("cse", model)


def test_broken_constant_comparison_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """A CSE that compares constants by shape only merges different weights."""
    monkeypatch.setattr(cse, "content", lambda t: b"")
    monkeypatch.setattr(ir.Tensor, "same_contents", lambda a, b: True)
    model = parser.parse_model(HEADER + """
        g (float[2] x) => (float[2] y) <float[2] w1 = {1.0, 2.0}, float[2] w2 = {3.0, 4.0}> {
          a = Mul(x, w1)
          b = Mul(x, w2)
          y = Sub(a, b)
        }""")
    with pytest.raises(AssertionError):
        check_pass("cse", model)
