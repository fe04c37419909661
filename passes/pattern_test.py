"""The pattern-rewrite API: matching, refusal, the worklist driver, labels, trace and its guards."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import parser

from optgraph import ir
from optgraph.passes import PassContext, PipelineError, parse_pipeline, registry, run_passes
from optgraph.passes.pattern import (Match, MatchResult, RewritePass, Rewriter, Rule, RuleEditError, Var,
                                     apply_rules, match_pattern, op)
from optgraph.passes.testing import assert_equivalent
from optgraph.passes.testing.golden import assert_rewrites_to

HEADER = '<ir_version: 8, opset_import: ["" : 17]>'


def load(body: str) -> ir.Model:
    return ir.from_proto(parser.parse_model(HEADER + body))


def ops(model: ir.Model) -> list[str]:
    return [n.op_type for n in model.graph]


class DoubleNeg(Rule):
    name = "double-neg"
    labels = ("neg",)
    pattern = op.Neg(op.Neg(Var("x")))

    def rewrite(self, m: Match, rw: Rewriter) -> ir.Value:
        return m.value("x")


class MulByOne(Rule):
    """x * 1 -> x, whichever side the constant is on."""

    name = "mul-one"
    labels = ("arith",)
    pattern = op.Mul(Var("x"), Var("one", const=True))

    def check(self, m: Match) -> MatchResult:
        if not np.all(m.array("one") == 1):
            return MatchResult.fail("the constant is not all ones")
        if m.value("x").shape != m.root.output.shape:
            return MatchResult.fail("broadcasting changes the shape")
        return MatchResult.OK

    def rewrite(self, m: Match, rw: Rewriter) -> ir.Value:
        return m.value("x")


def test_commutative_operands_and_check_reasons() -> None:
    model = load("""
        g (float[2] x) => (float[2] a, float[2] b, float[2] c) <float[2] one = {1.0, 1.0}, float[2] two = {2.0, 2.0}> {
          a = Mul(x, one)
          b = Mul(one, x)
          c = Mul(x, two)
        }""")
    trace: list[str] = []
    stats = apply_rules(model, [MulByOne()], trace=trace)
    assert stats == {"mul-one": 2}
    assert ops(model) == ["Mul", "Identity", "Identity"]  # a, b are outputs: Identities keep their names
    assert [v.name for v in model.graph.outputs] == ["a", "b", "c"]
    assert trace == ["mul-one at Mul: the constant is not all ones"]


def test_a_repeated_variable_must_bind_one_value() -> None:
    swish = op.Mul(Var("x"), op.Sigmoid(Var("x")))
    model = load("""
        g (float[2] x, float[2] y) => (float[2] a, float[2] b) {
          s = Sigmoid(x)
          a = Mul(s, x)
          b = Mul(y, s)
        }""")
    a, b = (n for n in model.graph if n.op_type == "Mul")
    assert isinstance(match_pattern(swish, a), Match)
    miss = match_pattern(swish, b)
    assert isinstance(miss, MatchResult) and "bound to a different value" in miss.reason


def test_attribute_constraints_default_and_predicate() -> None:
    model = load("""
        g (float[1,2,4,4] x, float[2,2,1,1] w) => (float[1,2,4,4] a, float[1,2,4,4] b, float[1,2,4,4] c) {
          a = Conv(x, w)
          b = Conv<group=1>(x, w)
          c = Conv<group=2>(x, w)
        }""")
    p = op.Conv(Var("x"), Var("w"), attrs={"group": 1})
    results = [match_pattern(p, n) for n in model.graph]
    assert [isinstance(r, Match) for r in results] == [True, True, False]
    assert "has group=2, not 1" in results[2].reason  # type: ignore[union-attr]
    strided = op.Conv(Var("x"), Var("w"), attrs={"strides": lambda s: s is not None and s != [1, 1]})
    assert not any(isinstance(match_pattern(strided, n), Match) for n in model.graph)


def test_optional_operands_and_extra_inputs() -> None:
    model = load("""
        g (float[1,2,4,4] x, float[2,2,1,1] w, float[2] b) => (float[1,2,4,4] y, float[1,2,4,4] z) {
          y = Conv(x, w)
          z = Conv(x, w, b)
        }""")
    y, z = model.graph
    two = op.Conv(Var("x"), Var("w"))
    three = op.Conv(Var("x"), Var("w"), Var("b", optional=True))
    assert isinstance(match_pattern(two, y), Match)
    assert "has 3 inputs, the pattern 2" in match_pattern(two, z).reason  # type: ignore[union-attr]
    m = match_pattern(three, y)
    assert isinstance(m, Match) and m.optional("b") is None and m.array_or_none("b") is None


def test_intermediate_used_outside_or_graph_output_is_refused() -> None:
    model = load("""
        g (float[2] x) => (float[2] a, float[2] n2, float[2] c) {
          n1 = Neg(x)
          a = Neg(n1)
          u = Neg(x)
          n2 = Neg(u)
          v = Neg(x)
          w = Neg(v)
          c = Add(w, v)
        }""")
    before = ir.to_proto(model)
    trace: list[str] = []
    stats = apply_rules(model, [DoubleNeg()], trace=trace)
    assert stats == {"double-neg": 2}  # a and n2; w = Neg(Neg(x)) stays: Add also reads v
    assert "double-neg at Neg: 'v' would be removed but Add also uses it" in trace
    assert ops(model) == ["Neg", "Neg", "Add", "Identity", "Identity"]
    assert_equivalent(before, ir.to_proto(model))


def test_graph_output_intermediate_is_refused() -> None:
    model = load("""
        g (float[2] x) => (float[2] n1, float[2] y) {
          n1 = Neg(x)
          y = Neg(n1)
        }""")
    trace: list[str] = []
    assert apply_rules(model, [DoubleNeg()], trace=trace) == {}
    assert "double-neg at Neg: 'n1' would be removed but is a graph output" in trace


def test_worklist_revisits_only_neighbours_and_cascades() -> None:
    n = 300
    lines = [f"n{i + 1} = Neg(n{i})" for i in range(2 * n)]
    model = load(f"g (float[2] n0) => (float[2] n{2 * n}) {{ {' '.join(lines)} }}")
    calls = 0

    class Counting(DoubleNeg):
        def match(self, node: ir.Node, env: object) -> Match | MatchResult:  # type: ignore[override]
            nonlocal calls
            calls += 1
            return super().match(node, env)  # type: ignore[arg-type]

    stats = apply_rules(model, [Counting()])
    assert stats == {"double-neg": n}
    assert ops(model) == ["Identity"]
    assert calls <= 4 * 2 * n  # linear: each rewrite re-examines a few neighbours, never the graph


def test_rewrite_cap_reports_non_convergence() -> None:
    class Flip(Rule):  # Relu -> Relu forever: a rule that never converges
        name = "flip"
        pattern = op.Relu(Var("x"))

        def rewrite(self, m: Match, rw: Rewriter) -> ir.Value:
            return rw.like(m.root, [m.value("x")])

    model = load("g (float[2] x) => (float[2] y) { y = Relu(x) }")
    stats = apply_rules(model, [Flip()], max_rewrites=5)
    assert stats == {"flip": 5, "not_converged": 1}
    ir.verify(model)


def test_benefit_orders_rules_at_a_node() -> None:
    class Low(DoubleNeg):
        name = "low"
        benefit = 1

    class High(DoubleNeg):
        name = "high"
        benefit = 5

    model = load("g (float[2] x) => (float[2] y) { a = Neg(x)  y = Neg(a) }")
    assert apply_rules(model, [Low(), High()]) == {"high": 1}


class Arith(RewritePass):
    name = "test-arith"
    description = "test rules"
    rules = (DoubleNeg(), MulByOne())


def test_labels_select_rules_and_unknown_labels_are_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_PASSES", dict(registry._PASSES))
    registry.register(Arith)
    text = """
        g (float[2] x) => (float[2] y) <float[2] one = {1.0, 1.0}, float[2] b> { a = Neg(x)  b = Neg(a)  y = Mul(b, one) }"""
    for spec, expected in [("test-arith", ["Identity"]), ("test-arith{disable=neg}", ["Neg", "Neg"]),
                           ("test-arith{enable=arith}", ["Neg", "Neg"]),
                           ("test-arith{enable=double-neg}", ["Mul"]), ("test-arith{disable=neg;arith}", ["Neg", "Neg", "Mul"])]:
        model = load(text)
        (p,) = parse_pipeline(spec)
        p.run(model, PassContext())
        assert ops(model) == expected, spec
    with pytest.raises(PipelineError, match="no rule or label 'nope'"):
        parse_pipeline("test-arith{disable=nope}")


def test_trace_goes_to_the_report(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_PASSES", dict(registry._PASSES))
    registry.register(Arith)
    model = load("g (float[2] x) => (float[2] y) <float[2] two = {2.0, 2.0}> { y = Mul(x, two) }")
    report = run_passes(model, "test-arith{trace=true}")
    assert report.results["test-arith"]["trace"] == ["mul-one at Mul: the constant is not all ones"]
    assert report.to_dict()["totals"] == {}


def test_failed_checks_leave_the_graph_untouched() -> None:
    text = """
        g (float[2] x) => (float[2] y) <float[2] two = {2.0, 2.0}> { y = Mul(x, two) }"""
    model = load(text)
    apply_rules(model, [MulByOne()])
    assert ir.to_proto(model).SerializeToString() == ir.to_proto(load(text)).SerializeToString()


def test_removed_constants_and_constant_nodes_go_too() -> None:
    class AddZero(Rule):
        name = "add-zero"
        pattern = op.Add(op.Neg(Var("x"), name="neg"), Var("zero", const=True))

        def rewrite(self, m: Match, rw: Rewriter) -> ir.Value:
            return rw.like(m.node("neg"), [m.value("x")])

    model = load("""
        g (float[2] x) => (float[2] y, float[2] z) <float[2] zero = {0.0, 0.0}> {
          zc = Constant<value = float[2] {0.0, 0.0}>()
          zi = Identity(zc)
          n1 = Neg(x)
          y = Add(n1, zi)
          n2 = Neg(x)
          z = Add(zero, n2)
        }""")
    before = ir.to_proto(model)
    assert apply_rules(model, [AddZero()]) == {"add-zero": 2}
    assert ops(model) == ["Neg", "Neg"]
    assert not model.graph.initializers  # zero, zc and zi went with their last user
    assert_equivalent(before, ir.to_proto(model))


def test_rewrites_reach_subgraphs() -> None:
    model = load("""
        g (bool[1] c, float[2] x) => (float[2] y) {
          y = If(c) <then_branch = t () => (float[2] r) { n = Neg(x)  r = Neg(n) },
                     else_branch = e () => (float[2] r) { r = Identity(x) }>
        }""")
    before = ir.to_proto(model)
    assert apply_rules(model, [DoubleNeg()]) == {"double-neg": 1}
    ir.verify(model)
    assert_equivalent(before, ir.to_proto(model))


def test_like_keeps_name_attributes_and_doc() -> None:
    model = load("g (float[2] x) => (float[2] y) { y = LeakyRelu<alpha=0.3>(x) }")
    (node,) = model.graph
    node.doc_string = "why"
    rw = Rewriter(model, model.graph, node)
    out = rw.like(node, [node.inputs[0]])
    new = out.producer
    assert new is not None and new.name == node.name and new.attr("alpha") == pytest.approx(0.3)
    assert new.doc_string == "why" and rw.created == [new]


class MergeScales(Rule):
    """(x * a) * b with constants a, b -> x * (a * b): the example of docs/pass-authors.md."""

    name = "merge-scales"
    labels = ("arith",)
    pattern = op.Mul(op.Mul(Var("x"), Var("a", const=True), name="inner"), Var("b", const=True))

    def check(self, m: Match) -> MatchResult:
        a, b = m.array("a"), m.array("b")
        if a.dtype != b.dtype:
            return MatchResult.fail(f"constants of different types ({a.dtype}, {b.dtype})")
        if np.broadcast_shapes(a.shape, b.shape) not in (a.shape, b.shape):
            return MatchResult.fail("the merged constant would be larger than both")
        return MatchResult.OK

    def rewrite(self, m: Match, rw: Rewriter) -> ir.Value:
        scale = rw.const(m.array("a") * m.array("b"), "scale")
        return rw.like(m.root, [m.value("x"), scale])


class MergeScalesPass(RewritePass):
    name = "merge-scales"
    description = "Merge chained multiplications by constants"
    rules = (MergeScales(),)


def test_the_pass_author_guide_example(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_PASSES", dict(registry._PASSES))
    registry.register(MergeScalesPass)
    assert_rewrites_to("merge-scales", '''
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2] x) => (float[2] y) <float[2] a = {2.0, 3.0}, float b = {2.0}> {
          t = Mul(x, a)
          y = Mul(t, b)
        }''', '''
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2] x) => (float[2] y) <float[2] s = {4.0, 6.0}> { y = Mul(x, s) }''')
    refused = '''
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2,1] x) => (float[2,2] y) <float[2,1] a = {2.0, 3.0}, float[1,2] b = {2.0, 1.0}> {
          t = Mul(x, a)
          y = Mul(t, b)
        }'''
    report = assert_rewrites_to("merge-scales{trace=true}", refused, refused)
    assert "merge-scales at Mul: the merged constant would be larger than both" in report.results["merge-scales"]["trace"]


def test_ops_of_other_domains_are_not_candidates() -> None:
    model = ir.from_proto(parser.parse_model('<ir_version: 8, opset_import: ["" : 17, "acme" : 1]>' + """
        g (float[2] x) => (float[2] y, float[2] z) {
          a = acme.Neg(x)
          y = acme.Neg(a)
          b = Neg(x)
          z = Neg(b)
        }"""))
    assert apply_rules(model, [DoubleNeg()]) == {"double-neg": 1}
    assert [n.domain for n in model.graph] == ["acme", "acme", ""]


class EditsInRewrite(Rule):
    """A rule that edits the graph itself (sets an input of a node outside its replacement)."""

    name = "edits-in-rewrite"
    pattern = op.Neg(op.Neg(Var("x")))

    def rewrite(self, m: Match, rw: Rewriter) -> ir.Value:
        rw.set_input(m.root, 0, m.value("x"))
        return m.value("x")


class EditsAroundTheRewriter(EditsInRewrite):
    def rewrite(self, m: Match, rw: Rewriter) -> ir.Value:
        m.root.set_attr("tag", 1)  # straight on the IR, not through rw
        return m.value("x")


@pytest.mark.parametrize(("rule", "message"), [(EditsInRewrite(), "'edits-in-rewrite' made a 'input' edit"),
                                               (EditsAroundTheRewriter(), "changed the matched Neg")])
def test_a_rule_that_edits_is_refused(rule: Rule, message: str) -> None:
    model = load("""
        g (float[2] x) => (float[2] y) {
          a = Neg(x)
          y = Neg(a)
        }""")
    with pytest.raises(RuleEditError, match=message):
        apply_rules(model, [rule])


def test_the_driver_edits_through_the_rewriter() -> None:
    model = load("""
        g (float[2] x) => (float[2] y) {
          a = Neg(x)
          b = Neg(a)
          y = Relu(b)
        }""")
    rw = ir.Rewriter(model.graph)
    heard: list[str] = []
    rw.listen(lambda kind, obj: heard.append(kind))
    assert apply_rules(model, [DoubleNeg()], rewriter=rw) == {"double-neg": 1}
    assert rw.changed and heard == ["replace", "remove", "remove"] and ops(model) == ["Relu"]
