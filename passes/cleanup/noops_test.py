"""remove-noops: golden cases for each no-op, the look-alikes that must stay, property tests with
the oracle, and broken variants the tests must catch."""

from __future__ import annotations

import pytest
from hypothesis import given
from onnx import parser

from optgraph.passes.cleanup import noops
from optgraph.passes.testing.check import check_pass
from optgraph.passes.testing.golden import assert_rewrites_to, rewrite_text
from optgraph.passes.testing.strategies import MOTIFS, models


def header(opset: int = 17) -> str:
    return f'<ir_version: 8, opset_import: ["" : {opset}]>'


def removed(body: str, *, opset: int = 17, inputs: str = "float[N, 3, 4] x",
            output: str = "float[N, 3, 4] y") -> list[str]:
    """Op types left after remove-noops (and removing what that left dead) on ``y = Relu(t)``."""
    out, _ = rewrite_text("remove-noops,remove-dead", f"""{header(opset)}
        g ({inputs}) => ({output}) {{ {body}  y = Relu(t) }}""")
    return [n.op_type for n in out.graph.node]


@pytest.mark.parametrize("body", [
    "t = Identity(x)",
    "t = Dropout(x)",
    "t, mask = Dropout(x)",  # mask present but unused
    "r = Constant <value = float {0.5}> ()  f = Constant <value = bool {0}> ()  t = Dropout(x, r, f)",
    "t = Cast <to = 1> (x)",
    "s = Constant <value = int64[3] {0, 3, 4}> ()  t = Reshape(x, s)",
    "s = Constant <value = int64[3] {0, 0, -1}> ()  t = Reshape(x, s)",
    "t = Transpose <perm = [0, 1, 2]> (x)",
    "p = Constant <value = int64[6] {0, 0, 0, 0, 0, 0}> ()  t = Pad(x, p)",
    "s = Constant <value = int64[1] {0}> ()  e = Constant <value = int64[1] {9223372036854775807}> ()  "
    "t = Slice(x, s, e)",
    "s = Constant <value = int64[2] {0, -9}> ()  e = Constant <value = int64[2] {3, 4}> ()  "
    "a = Constant <value = int64[2] {1, 2}> ()  t = Slice(x, s, e, a)",
    "s = Constant <value = int64[2] {3, 1}> ()  t = Expand(x, s)",
    "z = Constant <value = float[1, 1] {0.0}> ()  t = Add(z, x)",
    "z = Constant <value = float[3, 1] {0.0, 0.0, 0.0}> ()  t = Sub(x, z)",
    "o = Constant <value = float {1.0}> ()  t = Mul(x, o)",
    "o = Constant <value = float[4] {1.0, 1.0, 1.0, 1.0}> ()  t = Div(x, o)",
    "t = Concat <axis = 1> (x)",
    "t = Split <axis = 1> (x)",
    "t = Sum(x)",
    "t = Max(x)",
])
def test_no_op_is_removed(body: str) -> None:
    assert removed(body) == ["Relu"], body


@pytest.mark.parametrize(("opset", "body"), [
    (6, "t = Dropout <is_test = 1> (x)"),
    (10, "t = Pad <pads = [0, 0, 0, 0, 0, 0]> (x)"),
    (9, "t = Slice <starts = [0], ends = [4], axes = [2]> (x)"),
])
def test_no_op_in_older_opsets(opset: int, body: str) -> None:
    assert removed(body, opset=opset) == ["Relu"], body


@pytest.mark.parametrize("body", [
    "t, mask = Dropout(x)  m = Cast <to = 1> (mask)",  # the mask is used
    "r = Constant <value = float {0.5}> ()  f = Constant <value = bool {1}> ()  t = Dropout(x, r, f)",  # training
    "t = Cast <to = 10> (x)",
    "s = Constant <value = int64[3] {0, 4, 3}> ()  t = Reshape(x, s)",
    "s = Constant <value = int64[2] {0, 12}> ()  t = Reshape(x, s)",
    "t = Transpose <perm = [0, 2, 1]> (x)",
    "p = Constant <value = int64[6] {0, 0, 1, 0, 0, 0}> ()  t = Pad(x, p)",
    "s = Constant <value = int64[1] {0}> ()  e = Constant <value = int64[1] {3}> ()  "
    "a = Constant <value = int64[1] {2}> ()  t = Slice(x, s, e, a)",
    "s = Constant <value = int64[1] {0}> ()  e = Constant <value = int64[1] {1000}> ()  t = Slice(x, s, e)",  # N
    "s = Constant <value = int64[1] {-1}> ()  e = Constant <value = int64[1] {-9223372036854775807}> ()  "
    "a = Constant <value = int64[1] {1}> ()  st = Constant <value = int64[1] {-1}> ()  t = Slice(x, s, e, a, st)",
    "s = Constant <value = int64[3] {2, 3, 4}> ()  t = Expand(x, s)",  # N may be 1: grows
    "z = Constant <value = float[2, 1, 1, 1] {0.0, 0.0}> ()  t = Add(x, z)",  # broadcasts to rank 4
    "z = Constant <value = float[1] {0.5}> ()  t = Add(x, z)",
    "z = Constant <value = float {0.0}> ()  t = Sub(z, x)",  # 0 - x is not x
    "o = Constant <value = float {1.0}> ()  t = Div(o, x)",
])
def test_look_alikes_stay(body: str) -> None:
    assert "Relu" in removed(body) and len(removed(body)) > 1, body


def test_reshape_zero_copies_dims_only_when_allowzero_is_off() -> None:
    body = "s = Constant <value = int64[3] {0, 3, 4}> ()  t = Reshape <allowzero = 1> (x, s)"
    assert removed(body) == ["Reshape", "Relu"]  # the Constant is folded (remove-noops requires it)
    assert removed(body, inputs="float[0, 3, 4] x", output="float[0, 3, 4] y") == ["Relu"]


def test_add_bias_of_shape_n_c_1_1_is_not_per_channel() -> None:
    """[2,C,1,1] zeros added to a batch-1 map broadcast the batch: not a no-op."""
    out = removed("z = Constant <value = float[2, 3, 1, 1] {0.0, 0.0, 0.0, 0.0, 0.0, 0.0}> ()  t = Add(x, z)",
                  inputs="float[1, 3, 4, 4] x", output="float[2, 3, 4, 4] y")
    assert out == ["Add", "Relu"]


def test_graph_output_keeps_its_name_and_type() -> None:
    assert_rewrites_to("remove-noops", header() + """
        g (float[N, 3] x) => (float[N, 3] y) { a = Relu(x)  y = Identity(a) }""", header() + """
        g (float[N, 3] x) => (float[N, 3] y) { y = Relu(x) }""")
    out, _ = rewrite_text("remove-noops", header() + """
        g (float[N, 3] x) => (float[N, 3] y) { a = Relu(x)  y = Identity(a) }""")
    dims = out.graph.output[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["N", 3]


def test_identity_from_input_to_output_stays() -> None:
    """Removing it would need another Identity: graph input and output names are both pinned."""
    text = header() + "g (float[2] x) => (float[2] y, float[2] z) { y = Identity(x)  z = Identity(y) }"
    out, report = rewrite_text("remove-noops", text)
    assert [n.op_type for n in out.graph.node] == ["Identity", "Identity"]
    assert report.totals() == {}


def test_chains_and_subgraphs() -> None:
    assert_rewrites_to("remove-noops", header() + """
        g (bool c, float[2] x) => (float[2] y) {
          a = Identity(x)
          b = Dropout(a)
          y = If(c) <then_branch = t () => (float[2] r) { i = Identity(b)  r = Neg(i) },
                     else_branch = e () => (float[2] r) { r = Abs(b) }>
        }""", header() + """
        g (bool c, float[2] x) => (float[2] y) {
          y = If(c) <then_branch = t () => (float[2] r) { r = Neg(x) },
                     else_branch = e () => (float[2] r) { r = Abs(x) }>
        }""")


def test_unknown_domain_is_left_alone() -> None:
    text = '<ir_version: 8, opset_import: ["" : 17, "acme" : 1]> g (float[2] x) => (float[2] y) ' \
           "{ a = acme.Identity(x)  y = Relu(a) }"
    out, _ = rewrite_text("remove-noops", text)
    assert [n.op_type for n in out.graph.node] == ["Identity", "Relu"]


@given(models(motifs=["no_op", "graph_output_inside", "conv_bn_act", "shape_chain"],
              ops=["identity", "dropout", "cast", "reshape", "transpose", "pad", "slice", "binary", "concat",
                   "split", "activation"]))
def test_property_equivalent(model) -> None:  # type: ignore[no-untyped-def]
    check_pass("remove-noops", model)


@given(models(motifs=["no_op"], value_info=False))
def test_property_equivalent_without_value_info(model) -> None:  # type: ignore[no-untyped-def]
    check_pass("remove-noops", model)


def test_broken_broadcast_check_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """A version that ignores broadcasting removes Add(x, zeros[2,1,1,1]) and changes the shape."""
    monkeypatch.setattr(noops, "broadcast_keeps", lambda shape, other: True)
    model = parser.parse_model(header() + """
        g (float[1, 3, 2, 2] x) => (float[2, 3, 2, 2] y) {
          z = Constant <value = float[2, 1, 1, 1] {0.0, 0.0}> ()
          t = Add(x, z)
          y = Relu(t)
        }""")
    with pytest.raises(AssertionError):
        check_pass("remove-noops", model)


def test_broken_reshape_check_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """A version that only compares ranks removes a Reshape that swaps dims."""
    monkeypatch.setitem(noops._CHECKS, "Reshape", lambda self, node, opset: node.inputs[0])
    model = parser.parse_model(header() + """
        g (float[2, 3] x) => (float[3, 2] y) {
          s = Constant <value = int64[2] {3, 2}> ()
          t = Reshape(x, s)
          y = Relu(t)
        }""")
    with pytest.raises(AssertionError):
        check_pass("remove-noops", model)


def test_the_no_op_motif_is_in_the_catalog() -> None:
    assert "no_op" in MOTIFS
