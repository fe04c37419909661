"""eliminate-concat: golden cases per rule, refusals, Split forms per opset, random graphs, broken variants."""

from __future__ import annotations

import onnx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from onnx import parser

from optgraph.passes.fuse import concat
from optgraph.passes.testing import MOTIFS, assert_equivalent, check_pass, models
from optgraph.passes.testing.golden import assert_rewrites_to, rewrite_text
from optgraph.passes.testing.mutants import assert_idempotent, assert_mutant_caught
from optgraph.passes.testing.strategies import INT64_MAX, DrawFn, GraphBuilder, activation, ints

NEWEST = onnx.defs.onnx_opset_version()
ORT_NEWEST = 26


def header(opset: int = 17) -> str:
    return f'<ir_version: {8 if opset <= 18 else 10}, opset_import: ["" : {opset}]>'


def test_nested_concats_on_one_axis_flatten() -> None:
    text = header() + """
        g (float[2,3] a, float[2,4] b, float[2,5] c) => (float[2,15] y, float[4,7] z) {
          i1 = Concat<axis=1>(a, b)
          i2 = Concat<axis=-1>(c, i1)
          y = Concat<axis=1>(i2, a)
          i3 = Concat<axis=0>(a, a)
          z = Concat<axis=1>(i3, i3)
        }"""
    report = assert_rewrites_to("eliminate-concat", text, header() + """
        g (float[2,3] a, float[2,4] b, float[2,5] c) => (float[2,15] y, float[4,7] z) {
          y = Concat<axis=1>(c, a, b, a)
          i3 = Concat<axis=0>(a, a)
          z = Concat<axis=1>(i3, i3)
        }""")
    assert report.totals() == {"flatten-concat": 1}  # the whole nest in one rewrite at its outermost Concat


def test_a_deep_nest_is_flattened_in_one_rewrite() -> None:
    n = 500  # recursion or a rewrite per level would make this slow (quadratic) or crash
    lines = ["c0 = Concat<axis=0>(a, a)"] + [f"c{i} = Concat<axis=0>(c{i - 1}, a)" for i in range(1, n)]
    text = header() + f"g (float[1] a) => (float[{n + 1}] c{n - 1}) {{ {' '.join(lines)} }}"
    out, report = rewrite_text("eliminate-concat", text)
    assert report.totals() == {"flatten-concat": 1}
    (node,) = out.graph.node
    assert list(node.input) == ["a"] * (n + 1)


def test_inner_concat_with_another_use_stays() -> None:
    text = header() + """
        g (float[2,3] a, float[2,4] b) => (float[2,10] y, float[2,7] i1) {
          i1 = Concat<axis=1>(a, b)
          y = Concat<axis=1>(i1, a)
        }"""
    assert assert_rewrites_to("eliminate-concat", text, text).totals() == {}


def test_single_input_concat_goes_unless_it_would_become_an_identity() -> None:
    assert_rewrites_to("eliminate-concat", header() + """
        g (float[2,3] a) => (float[2,3] y, float[2,3] z) {
          r = Relu(a)
          c = Concat<axis=0>(r)
          y = Sigmoid(c)
          z = Concat<axis=1>(a)
        }""", header() + """
        g (float[2,3] a) => (float[2,3] y, float[2,3] z) {
          r = Relu(a)
          y = Sigmoid(r)
          z = Concat<axis=1>(a)
        }""")


def test_constants_merge_and_an_all_constant_concat_becomes_a_constant() -> None:
    text = header() + """
        g (float[2,3] a) => (int64[4] s, float[2,7] y) <int64[2] k1 = {1, 2}, int64[2] k2 = {3, 4},
                                                         float[2,2] p = {1, 2, 3, 4}> {
          k0 = Constant<value_ints = [9]>()
          k3 = Concat<axis=0>(k1, k2)
          s = Concat<axis=0>(k3)
          q = Identity(p)
          y = Concat<axis=1>(q, p, a)
        }"""
    out, report = rewrite_text("eliminate-concat", text)
    assert report.totals() == {"flatten-concat": 1, "fold-constant-concat": 2}
    assert_rewrites_to("eliminate-concat", text, header() + """
        g (float[2,3] a) => (int64[4] s, float[2,7] y) <int64[4] k = {1, 2, 3, 4}, float[2,4] pp = {1, 2, 1, 2, 3, 4, 3, 4}> {
          k0 = Constant<value_ints = [9]>()
          s = Concat<axis=0>(k)
          y = Concat<axis=1>(pp, a)
        }""")  # s stays a Concat: as a graph output it could only become an Identity of the constant
    assert_equivalent(parser.parse_model(text), out)


@pytest.mark.parametrize("opset", range(11, NEWEST + 1))
def test_concat_then_split_into_the_same_pieces_cancels(opset: int) -> None:
    if opset < 13:
        split, extra = "Split<axis=1, split=[3, 4, 3]>(t)", ""
    elif opset < 18:
        split, extra = "Split<axis=1>(t, sz)", ", int64[3] sz = {3, 4, 3}"
    else:  # num_outputs: equal pieces, the last one smaller (here 4, 4, 2)
        split, extra = "Split<axis=1, num_outputs=3>(t)", ""
    sizes = (3, 4, 2) if opset >= 18 else (3, 4, 3)
    c_width = sizes[2]
    a_width = 3 if opset < 18 else 4
    text = header(opset) + f"""
        g (float[2,{a_width}] a, float[2,4] b, float[2,{c_width}] c) => (float[2,{a_width}] p, float[2,4] q, float[2,{c_width}] r, float[2,10] t) {{
          t = Concat<axis=1>(a, b, c)
          p, q, r = {split}
        }}"""
    if extra:
        text = text.replace(") {", f") <{extra[2:]}> {{", 1)
    report = assert_rewrites_to("eliminate-concat", text, header(opset) + f"""
        g (float[2,{a_width}] a, float[2,4] b, float[2,{c_width}] c) => (float[2,{a_width}] p, float[2,4] q, float[2,{c_width}] r, float[2,10] t) {{
          t = Concat<axis=1>(a, b, c)
          p = Identity(a)
          q = Identity(b)
          r = Identity(c)
        }}""")
    assert report.totals() == {"concat-split": 1}
    if opset <= ORT_NEWEST:
        out, _ = rewrite_text("eliminate-concat", text)
        assert_equivalent(parser.parse_model(text), out)


def test_split_into_other_pieces_stays_and_slices_of_one_piece_cancel() -> None:
    text = header() + """
        g (float[2,3] a, float[2,4] b) => (float[2,3] p, float[2,4] q, float[2,5] r, float[2,2] u)
          <int64[2] sz = {2, 5}, int64[1] st = {3}, int64[1] en = {9223372036854775807}, int64[1] ax = {-1},
           int64[1] st2 = {1}, int64[1] en2 = {3}> {
          t = Concat<axis=1>(a, b)
          x, r = Split<axis=1>(t, sz)
          p = Slice(t, st2, en2)
          q = Slice(t, st, en, ax)
          u = Relu(x)
        }"""
    out, report = rewrite_text("eliminate-concat", text)
    assert report.totals() == {"concat-slice": 1}  # q is b; p slices rows, not the concat axis
    assert [n.op_type for n in out.graph.node] == ["Concat", "Split", "Slice", "Relu", "Identity"]
    assert_equivalent(parser.parse_model(text), out)


# ------------------------------------------------------------------------------------------------
# random graphs


def concat_slice(draw: DrawFn, b: GraphBuilder, v: str) -> str:
    """Concat of pieces, then a Slice taking one piece back out (bounds spelled in several ways)."""
    shape = b.shape(v)
    axes = [i for i, d in enumerate(shape) if isinstance(d, int)]
    b.require(bool(axes))
    axis = draw(st.sampled_from(axes))
    pieces = [v, *(activation(draw, b, v) for _ in range(draw(st.integers(1, 2))))]
    cat = b.op("Concat", pieces, axis=axis)
    k = draw(st.integers(0, len(pieces) - 1))
    size, total = int(shape[axis]), int(shape[axis]) * len(pieces)
    start, end = k * size, (k + 1) * size
    start_v = start - total if draw(st.booleans()) else start
    end_v = INT64_MAX if end == total and draw(st.booleans()) else end
    return b.op("Slice", [cat, ints(draw, b, [start_v]), ints(draw, b, [end_v]),
                          ints(draw, b, [axis - len(shape) if draw(st.booleans()) else axis])])

STRATEGY = st.one_of(*(models(motifs={**{k: MOTIFS[k] for k in ("nested_concat", "concat_split", "parallel_convs",
                                                                  "shape_chain")}, "concat_slice": concat_slice},
                              ops=["concat", "split", "slice", "activation"], opsets=range(11, ORT_NEWEST + 1),
                              max_nodes=20, value_info=vi) for vi in (True, False)))


@given(STRATEGY)
def test_random_graphs_stay_equivalent_and_nothing_is_left(model: onnx.ModelProto) -> None:
    assert_idempotent("eliminate-concat", model)


@pytest.mark.parametrize("broken", ["axes_ignored", "slice_takes_the_first_piece"])
def test_broken_variants_are_caught(broken: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if broken == "axes_ignored":
        monkeypatch.setattr(concat, "axis_of", lambda node: 0)
        strategy = models(motifs=["nested_concat", "concat_split"], ops=["concat"], opsets=[11, 17])
    else:
        monkeypatch.setattr(concat.CancelSlice, "rewrite", lambda self, m, rw: m.kept[0].inputs[0])
        strategy = models(motifs={"concat_slice": concat_slice}, ops=[], opsets=[17])

    assert_mutant_caught("eliminate-concat", strategy)


def test_a_concat_freed_by_another_rewrite_is_flattened_in_the_same_run() -> None:
    # v5 feeds both the outer Concat and a Split; once the Split is cancelled, v5 has one reader
    # left and the outer Concat must be looked at again (found by the thorough property run).
    text = header(11) + """
        g (float[1,1,3,3] x) => (float[1,3,3,3] v7, float[1,1,3,3] p, float[1,1,3,3] q)
          <float[1,1,3,3] a, float[1,1,3,3] b> {
          a = Relu(x)
          b = Sigmoid(x)
          v5 = Concat<axis=-3>(a, b)
          v7 = Concat<axis=1>(x, v5)
          p, q = Split<axis=1, split=[1, 1]>(v5)
        }"""
    report = assert_rewrites_to("eliminate-concat", text, header(11) + """
        g (float[1,1,3,3] x) => (float[1,3,3,3] v7, float[1,1,3,3] p, float[1,1,3,3] q) {
          p = Relu(x)
          q = Sigmoid(x)
          v7 = Concat<axis=1>(x, p, q)
        }""")
    assert report.totals() == {"concat-split": 1, "flatten-concat": 1}
