"""fold-constants: golden folds (shape chains included), what must not fold, dtypes, size cap,
property tests with the oracle, broken variants."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import pytest
from hypothesis import given
from onnx import numpy_helper, parser

from optgraph.passes.cleanup import fold
from optgraph.passes.testing.check import check_pass
from optgraph.passes.testing.golden import assert_rewrites_to, rewrite_text
from optgraph.passes.testing.strategies import models


def header(opset: int = 17) -> str:
    return f'<ir_version: 8, opset_import: ["" : {opset}]>'


def folded(text: str, spec: str = "fold-constants,remove-dead") -> tuple[onnx.ModelProto, dict[str, Any]]:
    out, report = rewrite_text(spec, text)
    return out, {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}


SHAPE_CHAIN = """
    g (float[{batch}, 3, 4] x) => (float[{batch}, 12] y) {{
      s = Shape(x)
      i = Constant <value = int64 {{0}}> ()
      b = Gather <axis = 0> (s, i)
      u = Unsqueeze <axes = [0]> (b)
      m = Constant <value = int64[1] {{-1}}> ()
      t = Concat <axis = 0> (u, m)
      y = Reshape(x, t)
    }}"""


def test_exporter_shape_chain_collapses_when_the_shape_is_static() -> None:
    out, consts = folded(header(11) + SHAPE_CHAIN.format(batch=2))
    assert [n.op_type for n in out.graph.node] == ["Reshape"]
    (target,) = consts.values()
    assert target.dtype == np.int64 and target.tolist() == [2, -1]
    check_pass("fold-constants", parser.parse_model(header(11) + SHAPE_CHAIN.format(batch=2)))


def test_dim_param_stays_symbolic() -> None:
    out, _ = folded(header(11) + SHAPE_CHAIN.format(batch="N"))
    assert [n.op_type for n in out.graph.node] == ["Shape", "Gather", "Unsqueeze", "Concat", "Reshape"]
    assert out.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"


def test_static_dims_of_a_symbolic_shape_fold() -> None:
    out, consts = folded(header(17) + """
        g (float[N, 3, 4] x) => (float[N, 4, 3] y) {
          s = Shape(x)
          i = Constant <value = int64[2] {2, 1}> ()
          last = Gather <axis = 0> (s, i)
          tail = Shape <start = -2> (x)
          head = Shape <end = 1> (x)
          t = Concat <axis = 0> (head, last)
          y = Reshape(x, t)
          unused_tail = Identity(tail)
        }""")
    ops = [n.op_type for n in out.graph.node]
    assert ops == ["Shape", "Concat", "Reshape"]  # Shape(end=1) picks N: stays
    assert sorted(v.tolist() for v in consts.values()) == [[4, 3]]


def test_shape_start_end_select_dims() -> None:
    """Opset 15's start/end: the result is not the full shape."""
    _, consts = folded(header(17) + """
        g (float[2, 3, 4] x) => (int64[2] y) { s = Shape <start = 1> (x)  y = Identity(s) }""")
    assert [v.tolist() for v in consts.values()] == [[3, 4]]
    _, consts = folded(header(17) + """
        g (float[2, 3, 4] x) => (int64[1] y) { s = Shape <start = -3, end = -2> (x)  y = Identity(s) }""")
    assert [v.tolist() for v in consts.values()] == [[2]]


def test_constant_value_floats_stay_float32_and_ints_int64() -> None:
    _, consts = folded(header() + """
        g (float[2] x) => (float[2] y, int64[2] k) {
          c = Constant <value_floats = [1.5, 2.5]> ()
          d = Mul(c, c)
          y = Add(x, d)
          i = Constant <value_ints = [3, 4]> ()
          j = Add(i, i)
          k = Identity(j)
        }""")
    by_dtype = {str(v.dtype): v.tolist() for v in consts.values()}
    assert by_dtype == {"float32": [2.25, 6.25], "int64": [6, 8]}


def test_cast_keeps_the_exact_dtype() -> None:
    _, consts = folded(header() + """
        g (float16[2] x) => (float16[2] y) <float[2] c = {1.0, 2.0}> { h = Cast <to = 10> (c)  y = Add(x, h) }""")
    assert [v.dtype for v in consts.values()] == [np.float16]


def test_constant_nodes_become_initializers_with_fresh_names() -> None:
    out, consts = folded(header() + """
        g (float[2] x) => (float[2] y) { c = Constant <value = float[2] {1.0, 2.0}> ()  y = Add(x, c) }""")
    assert [n.op_type for n in out.graph.node] == ["Add"]
    assert list(consts) != ["c"] and len(consts) == 1


def test_opset_decides_the_op_version() -> None:
    """Unsqueeze-11 takes axes as an attribute; evaluating it as Unsqueeze-13 would fail."""
    out, consts = folded(header(11) + """
        g (float[1, 2] x) => (float[1, 2] y) <int64 c = {2}> {
          u = Unsqueeze <axes = [0]> (c)
          t = Concat <axis = 0> (u, u)
          f = Cast <to = 1> (t)
          s = Constant <value = int64[2] {1, 2}> ()
          r = Reshape(f, s)
          y = Add(x, r)
        }""")
    assert [n.op_type for n in out.graph.node] == ["Add"]
    assert [v.tolist() for v in consts.values()] == [[[2.0, 2.0]]]


def test_random_ops_never_fold() -> None:
    out, _ = folded(header() + """
        g (float[2] x) => (float[2] y) <float[2] c = {1.0, 2.0}> {
          r = RandomNormalLike(c)
          u = RandomUniform <shape = [2]> ()
          b = Bernoulli(c)
          s = Add(r, u)
          t = Add(s, b)
          y = Add(x, t)
        }""")
    assert [n.op_type for n in out.graph.node] == ["RandomNormalLike", "RandomUniform", "Bernoulli", "Add", "Add",
                                                   "Add"]


def test_deny_list_and_dequantize_default() -> None:
    text = header() + """
        g (float[2, 2] x) => (float[2, 2] y) <float[2, 2] w = {1.0, 2.0, 3.0, 4.0}> {
          t = Transpose(w)
          y = MatMul(x, t)
        }"""
    out, _ = folded(text, "fold-constants{deny=Transpose;Relu}")
    assert [n.op_type for n in out.graph.node] == ["Transpose", "MatMul"]
    out, _ = folded(header() + """
        g (float[2] x) => (float[2] y) <int8[2] q = {1, 2}, float s = {0.5}> {
          d = DequantizeLinear(q, s)
          y = Mul(x, d)
        }""")
    assert [n.op_type for n in out.graph.node] == ["DequantizeLinear", "Mul"]


def test_size_limit_keeps_big_results_unfolded() -> None:
    text = header() + """
        g (float[1100, 1000] x) => (float[1100, 1000] y) {
          s = Constant <value = int64[2] {1100, 1000}> ()
          z = ConstantOfShape <value = float[1] {1.0}> (s)
          y = Add(x, z)
        }"""
    out, _ = folded(text)  # 4.4 MB: past the default cap of 4 MiB
    assert [n.op_type for n in out.graph.node] == ["ConstantOfShape", "Add"]
    out, _ = folded(text, "fold-constants{size_limit=5000000},remove-dead")
    assert [n.op_type for n in out.graph.node] == ["Add"]


def test_shared_weights_are_not_duplicated_past_the_cap() -> None:
    """Transposing a weight that is also used elsewhere would copy it: the copy counts."""
    out, _ = folded(header() + """
        g (float[2, 2] x) => (float[2, 2] y) <float[2, 2] w = {1.0, 2.0, 3.0, 4.0}> {
          t = Transpose(w)
          a = MatMul(x, t)
          y = Add(a, w)
        }""", "fold-constants{size_limit=8}")
    assert [n.op_type for n in out.graph.node] == ["Transpose", "MatMul", "Add"]


def test_graph_outputs_are_not_folded_away() -> None:
    assert_rewrites_to("fold-constants", header() + """
        g (float[2] x) => (float[2] y, float[2] k) <float[2] c = {1.0, 2.0}> {
          k = Neg(c)
          y = Add(x, c)
        }""", header() + """
        g (float[2] x) => (float[2] y, float[2] k) <float[2] c = {1.0, 2.0}> {
          k = Neg(c)
          y = Add(x, c)
        }""")


def test_subgraph_nodes_fold_into_the_subgraph() -> None:
    out, _ = folded(header() + """
        g (bool b, float[2] x) => (float[2] y) <float[2] c = {1.0, 2.0}> {
          y = If(b) <then_branch = t () => (float[2] r) { n = Neg(c)  r = Add(x, n) },
                     else_branch = e () => (float[2] r) { r = Abs(x) }>
        }""")
    then = next(a.g for a in out.graph.node[0].attribute if a.name == "then_branch")
    assert [n.op_type for n in then.node] == ["Add"] and len(then.initializer) == 1


@given(models(motifs=["constant_subgraph", "shape_chain", "constant_params", "conv_bn_act", "shared_weights"]))
def test_property_equivalent(model) -> None:  # type: ignore[no-untyped-def]
    check_pass("fold-constants", model)


@given(models(motifs=["constant_subgraph", "shape_chain"], value_info=False))
def test_property_equivalent_without_value_info(model) -> None:  # type: ignore[no-untyped-def]
    check_pass("fold-constants", model)


def test_broken_evaluator_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Folding with a skewed evaluator (every float result off by 1%) must fail the oracle."""
    reference = fold._reference
    monkeypatch.setattr(fold, "_reference", lambda *a: [r * 1.01 if r.dtype.kind == "f" else r
                                                         for r in reference(*a)])
    model = parser.parse_model(header() + """
        g (float[2] x) => (float[2] y) <float[2] c = {1.0, 2.0}> { n = Neg(c)  y = Add(x, n) }""")
    with pytest.raises(AssertionError):
        check_pass("fold-constants", model)


def test_broken_shape_slice_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Folding Shape(start=1) as the whole shape (a bug peers have) must fail the oracle."""
    monkeypatch.setattr(fold, "shape_slice", lambda node, rank: (0, rank))
    model = parser.parse_model(header() + """
        g (float[2, 3, 4] x) => (float[6, 4] y) {
          s = Shape <start = 2> (x)
          m = Constant <value = int64[1] {-1}> ()
          t = Concat <axis = 0> (m, s)
          y = Reshape(x, t)
        }""")
    check_pass("remove-dead", model)
    with pytest.raises(AssertionError):
        check_pass("fold-constants", model)


def test_wide_gather_elements_folds() -> None:
    """onnx's reference GatherElements fails past 64 choices (BERT's 512-wide token-type buffer)."""
    data = ", ".join(str(i) for i in range(512))
    _, consts = folded(header() + f"""
        g (int64[1, 3] x) => (int64[1, 3] y) {{
          d = Constant <value = int64[1, 512] {{{data}}}> ()
          i = Constant <value = int64[1, 3] {{5, -1, 300}}> ()
          e = GatherElements <axis = 1> (d, i)
          y = Add(x, e)
        }}""")
    assert [v.tolist() for v in consts.values()] == [[[5, 511, 300]]]


@pytest.mark.parametrize("opset", [11, 13, 15])
def test_batch_norm_folds_with_the_running_statistics(opset: int) -> None:
    """onnx's reference BatchNormalization-9..13 normalises with the batch's own statistics when
    ``momentum`` is set (its default); those versions use the running mean and variance."""
    _, consts = folded(header(opset) + """
        g (float[2, 1] x) => (float[2, 1] y) {
          c = Constant <value = float[2, 1] {0.5, -0.5}> ()
          s = Constant <value = float[1] {2.0}> ()
          b = Constant <value = float[1] {1.0}> ()
          m = Constant <value = float[1] {0.25}> ()
          v = Constant <value = float[1] {3.0}> ()
          n = BatchNormalization <epsilon = 1.0> (c, s, b, m, v)
          y = Add(x, n)
        }""")
    (folded_bn,) = consts.values()
    np.testing.assert_allclose(folded_bn, [[1.25], [0.25]], rtol=1e-6)


def test_skipped_folds_do_not_keep_the_fixed_point_going() -> None:
    from optgraph import ir
    from optgraph.passes import run_passes

    model = ir.from_proto(parser.parse_model(header() + """
        g (float[1100, 1000] x) => (float[1100, 1000] y) {
          s = Constant <value = int64[2] {1100, 1000}> ()
          z = ConstantOfShape <value = float[1] {1.0}> (s)
          y = Add(x, z)
        }"""))
    report = run_passes(model, "default")
    assert report.converged["simplify"] and report.iterations["simplify"] <= 2


# A Pad whose pads are computed: shape inference learns the Pad's output shape only once the pads
# are folded, and the Shape of that output folds one sweep later (Swin's window padding).
PADDED_SHAPE = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[1, 2, 3, 3] x) => (float[1, 2, 4, 4] y) <int64[8] a = {0, 0, 0, 0, 0, 0, 1, 1}, int64 one = {1}> {
  pads = Mul(a, one)
  t = Pad(x, pads)
  s = Shape(t)
  r = Reshape(t, s)
  y = Relu(r)
}
"""


def test_shapes_learned_from_a_fold_are_used_in_the_next_sweep() -> None:
    _, once = rewrite_text("fold-constants{rounds=1}", PADDED_SHAPE)
    assert once.totals() == {"Mul_folded": 1}
    _, report = rewrite_text("fold-constants", PADDED_SHAPE)
    assert report.totals() == {"Mul_folded": 1, "Shape_folded": 1}


def test_shapes_false_folds_constant_inputs_only() -> None:
    _, report = rewrite_text("fold-constants{shapes=false}", PADDED_SHAPE)
    assert report.totals() == {"Mul_folded": 1}
