"""simplify-layout: golden collapses, the cases that must stay, property tests, broken variants."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from onnx import parser

from optgraph.passes.cleanup import layout
from optgraph.passes.testing.check import check_pass
from optgraph.passes.testing.golden import rewrite_text
from optgraph.passes.testing.strategies import MOTIFS, models, reshape, transpose

HEADER = '<ir_version: 8, opset_import: ["" : 17]>'


def after(text: str) -> list[str]:
    out, _ = check_pass("simplify-layout,remove-dead", parser.parse_model(HEADER + text))
    return [n.op_type for n in out.graph.node if n.op_type != "Constant"]


def test_reshape_transpose_reshape_is_one_transpose() -> None:
    """x.view(b*h, t, d).transpose(1, 2).view(b, h, d, t), as the dynamo exporter writes it."""
    out, _ = check_pass("simplify-layout,remove-dead", parser.parse_model(HEADER + """
        g (float[1, 3, 4, 5] x) => (float[1, 3, 5, 4] y) {
          s1 = Constant <value = int64[3] {-1, 4, 5}> ()
          a = Reshape(x, s1)
          b = Transpose <perm = [0, 2, 1]> (a)
          s2 = Constant <value = int64[4] {1, 3, 5, 4}> ()
          y = Reshape(b, s2)
        }"""))
    assert [n.op_type for n in out.graph.node] == ["Transpose"]
    assert list(out.graph.node[0].attribute[0].ints) == [0, 1, 3, 2]


def test_transposes_cancel_and_reshapes_merge() -> None:
    assert after("""g (float[2, 3, 4] x) => (float[2, 3, 4] y) {
        a = Transpose <perm = [2, 0, 1]> (x)
        b = Relu(a)
        c = Transpose <perm = [1, 2, 0]> (b)
        d = Transpose <perm = [2, 0, 1]> (c)
        y = Transpose <perm = [1, 2, 0]> (d)
    }""") == ["Transpose", "Relu", "Transpose"]
    assert after("""g (float[2, 3, 4] x) => (float[4, 6] y) {
        a = Flatten <axis = 2> (x)
        zero = Constant <value = int64[1] {0}> ()
        u = Unsqueeze(a, zero)
        s = Constant <value = int64[2] {4, 6}> ()
        y = Reshape(u, s)
    }""") == ["Reshape"]


def test_reshape_of_reshape_with_symbolic_dims() -> None:
    ops = after("""g (float[N, 3, 4] x) => (float[N, 12] y, float[N, 2, 6] z) {
        s1 = Constant <value = int64[2] {-1, 12}> ()
        a = Reshape(x, s1)
        y = Relu(a)
        s2 = Constant <value = int64[3] {-1, 2, 6}> ()
        z = Reshape(a, s2)
    }""")
    assert ops == ["Reshape", "Relu", "Reshape"]


def test_zero_in_the_outer_target_refers_to_the_intermediate() -> None:
    """Reshape(Reshape(x[2,3,4], [6,4]), [0,-1]) copies 6, not x's 2: it must not read x."""
    text = HEADER + """
        g (float[N, 3, 4] x) => (float[M, 4] y) {
          s1 = Constant <value = int64[2] {-1, 4}> ()
          a = Reshape(x, s1)
          s2 = Constant <value = int64[2] {0, -1}> ()
          y = Reshape(a, s2)
        }"""
    out, report = rewrite_text("simplify-layout", text)
    assert [r.stats for r in report.passes if r.name == "simplify-layout"] == [{}]
    first, last = [n for n in out.graph.node if n.op_type == "Reshape"]
    assert last.input[0] == first.output[0]


def test_reshapes_around_elementwise_math_go() -> None:
    """Linear on a 3-D input: Reshape -> Gemm -> Reshape -> GELU -> Reshape -> Gemm."""
    ops = after("""g (float[4, 8] h) => (float[4, 8] y) <float[8, 8] w = {""" + ", ".join(["0.1"] * 64) + """}> {
        s3 = Constant <value = int64[3] {1, 4, 8}> ()
        u = Reshape(h, s3)
        half = Constant <value = float {0.5}> ()
        three = Constant <value = float {3.0}> ()
        a = Mul(u, half)
        p = Pow(u, three)
        q = Add(u, p)
        t = Tanh(q)
        one = Constant <value = float[1] {1.0}> ()
        v = Add(t, one)
        r = Mul(a, v)
        s2 = Constant <value = int64[2] {-1, 8}> ()
        back = Reshape(r, s2)
        y = Gemm(back, w)
    }""")
    assert ops == ["Mul", "Pow", "Add", "Tanh", "Add", "Mul", "Gemm"]


@pytest.mark.parametrize("operand", [
    "c = Constant <value = float[1, 1, 8] {1, 2, 3, 4, 5, 6, 7, 8}> ()",  # not a scalar: broadcasts on u's axes
    "c = Constant <value = float[1, 1, 1] {2.0}> ()",  # rank 3: would raise the rank of h
])
def test_reshapes_around_broadcasting_operands_stay(operand: str) -> None:
    text = HEADER + """g (float[4, 8] h) => (float[4, 8] y) {
        s3 = Constant <value = int64[3] {1, 4, 8}> ()
        u = Reshape(h, s3)
        """ + operand + """
        m = Mul(u, c)
        s2 = Constant <value = int64[2] {-1, 8}> ()
        y = Reshape(m, s2)
    }"""
    _, report = rewrite_text("simplify-layout", text)
    assert "reshapes_around_elementwise" not in report.totals()


def test_chain_ending_in_a_graph_output_keeps_the_name() -> None:
    out, _ = check_pass("simplify-layout,remove-dead", parser.parse_model(HEADER + """
        g (float[2, 3] x) => (float[2, 3] y) {
          a = Transpose <perm = [1, 0]> (x)
          y = Transpose <perm = [1, 0]> (a)
        }"""))
    assert [o.name for o in out.graph.output] == ["y"]


def layout_chain(draw, b, v):  # type: ignore[no-untyped-def]
    """Two to four random Reshapes and Transposes in a row, sometimes with a scalar op between."""
    for _ in range(draw(st.integers(2, 4))):
        if draw(st.booleans()):
            v = transpose(draw, b, v)
        else:
            v = reshape(draw, b, v)
        if draw(st.integers(0, 3)) == 0:
            v = b.op("Mul", [v, b.const(np.array(2.0, np.float32))])
    return v


@given(models(motifs={"layout_chain": layout_chain, "shape_chain": MOTIFS["shape_chain"],
                      "no_op": MOTIFS["no_op"]}, ops=["reshape", "transpose", "flatten", "unsqueeze", "squeeze",
                                                  "split", "activation", "binary"]))
def test_property_equivalent(model) -> None:  # type: ignore[no-untyped-def]
    check_pass("simplify-layout", model)


def test_broken_composite_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Treating a permuted result as a plain reshape scrambles the elements."""
    def wrong(source, result):  # type: ignore[no-untyped-def]
        return ("Reshape", list(result.shape))

    monkeypatch.setattr(layout, "single_op", wrong)
    model = parser.parse_model(HEADER + """
        g (float[2, 3] x) => (float[6] y) {
          a = Transpose <perm = [1, 0]> (x)
          s = Constant <value = int64[1] {6}> ()
          y = Reshape(a, s)
        }""")
    with pytest.raises(AssertionError):
        check_pass("simplify-layout", model)


def test_broken_zero_rule_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Letting a Reshape with a 0 in its target skip the intermediate changes the result shape."""
    original = layout.SimplifyLayout._reshape_of_reshape

    def careless(rw, node):  # type: ignore[no-untyped-def]
        rw.del_attr(node, "allowzero")
        inner = node.inputs[0].producer
        if inner is not None and inner.op_type == "Reshape":
            rw.set_input(node, 0, inner.inputs[0])
            return True
        return original(rw, node)

    monkeypatch.setattr(layout.SimplifyLayout, "_reshape_of_reshape", staticmethod(careless))
    model = parser.parse_model(HEADER + """
        g (float[N, 3, 4] x) => (float[M, 4] y) {
          s1 = Constant <value = int64[2] {-1, 4}> ()
          a = Reshape(x, s1)
          s2 = Constant <value = int64[2] {0, -1}> ()
          y = Reshape(a, s2)
        }""")
    with pytest.raises(AssertionError):
        check_pass("simplify-layout", model)


def test_a_transpose_read_by_a_split_moves_after_it() -> None:
    """timm's qkv.reshape(b, n, 3, h, d).permute(2, 0, 3, 1, 4).unbind(0), legacy export."""
    out, report = check_pass("simplify-layout,remove-dead", parser.parse_model(HEADER + """
        g (float[1, 5, 3, 2, 4] x) => (float[2, 5, 4] q, float[2, 4, 5] k) {
          t = Transpose <perm = [2, 0, 3, 1, 4]> (x)
          sizes = Constant <value = int64[3] {1, 1, 1}> ()
          a, b, c = Split <axis = 0> (t, sizes)
          zero = Constant <value = int64[1] {0}> ()
          q1 = Squeeze(a, zero)
          q = Squeeze(q1, zero)
          k1 = Squeeze(b, zero)
          k2 = Squeeze(k1, zero)
          k = Transpose <perm = [0, 2, 1]> (k2)
        }"""))
    assert report.totals()["split_before_transpose"] == 1
    split = next(n for n in out.graph.node if n.op_type == "Split")
    assert split.input[0] == "x" and [a.i for a in split.attribute if a.name == "axis"] == [2]
    names = [n.name for n in out.graph.node if n.name]
    assert len(names) == len(set(names)) == 3  # the Split and the two Transposes read: names of their own


def test_the_moved_split_and_transposes_keep_doc_strings_and_metadata() -> None:
    model = parser.parse_model(HEADER + """
        g (float[2, 6] x) => (float[3, 2] a, float[3, 2] b) {
          t = Transpose <perm = [1, 0]> (x)
          a, b = Split <axis = 0> (t)
        }""")
    for node, text in zip(model.graph.node, ("the transpose", "the split")):
        node.doc_string = text
        node.metadata_props.add(key="origin", value=text)
    out, _ = check_pass("simplify-layout", model)
    kept = {n.op_type: (n.doc_string, {p.key: p.value for p in n.metadata_props}) for n in out.graph.node}
    assert kept == {"Split": ("the split", {"origin": "the split"}),
                    "Transpose": ("the transpose", {"origin": "the transpose"})}


def test_a_transpose_with_another_reader_stays_before_the_split() -> None:
    text = HEADER + """
        g (float[2, 4] x) => (float[2, 2] a, float[2, 2] b, float[4, 2] t) {
          t = Transpose <perm = [1, 0]> (x)
          a, b = Split <axis = 0> (t)
        }"""
    _, report = check_pass("simplify-layout", parser.parse_model(text))
    assert "split_before_transpose" not in report.totals()


def test_split_sizes_given_as_an_attribute_move_with_the_split() -> None:
    """Before opset 13 the sizes are the ``split`` attribute; the moved Split must keep them."""
    out, report = check_pass("simplify-layout", parser.parse_model("""
        <ir_version: 6, opset_import: ["" : 11]>
        g (float[2, 6] x) => (float[2, 2] a, float[4, 2] b) {
          t = Transpose <perm = [1, 0]> (x)
          a, b = Split <axis = 0, split = [2, 4]> (t)
        }"""))
    assert report.totals()["split_before_transpose"] == 1
    split = next(n for n in out.graph.node if n.op_type == "Split")
    assert {a.name: (a.i if a.name == "axis" else list(a.ints)) for a in split.attribute} == {"axis": 1, "split": [2, 4]}
