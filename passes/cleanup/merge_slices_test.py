"""merge-slices: Swin's patch merging, refusals, random Slice chains on the oracle."""

from __future__ import annotations

import onnx
import pytest
from hypothesis import given

from optgraph import ir
from optgraph.passes import run_passes
from optgraph.passes.testing import check_pass, models
from optgraph.passes.testing.golden import assert_rewrites_to, rewrite_text

ORT_NEWEST = 26
C = "int64[1] z = {0}, int64[1] one = {1}, int64[1] big = {9223372036854775807}, int64[1] two = {2}"


def test_patch_merging_slices_become_one_per_output() -> None:
    """x[:, 0::2, 0::2] and x[:, 0::2, 1::2]: three Slices become two, the shared one dies."""
    report = assert_rewrites_to("merge-slices,remove-dead", f"""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1, 4, 4, 3] x) => (float[1, 2, 2, 3] y) <{C}, int64[1] ax = {{-2}}> {{
          r = Slice(x, z, big, one, two)
          a = Slice(r, z, big, ax, two)
          b = Slice(r, one, big, ax, two)
          y = Add(a, b)
        }}""", """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1, 4, 4, 3] x) => (float[1, 2, 2, 3] y)
        <int64[2] s0 = {0, 0}, int64[2] e = {9223372036854775807, 9223372036854775807}, int64[2] ax = {1, 2},
         int64[2] st = {2, 2}, int64[2] s1 = {0, 1}, int64[2] e1 = {9223372036854775807, 9223372036854775807},
         int64[2] ax1 = {1, 2}, int64[2] st1 = {2, 2}> {
          a = Slice(x, s0, e, ax, st)
          b = Slice(x, s1, e1, ax1, st1)
          y = Add(a, b)
        }""")
    assert report.totals()["slice-of-slice"] == 2


REFUSALS = {
    "same axis": ("r = Slice(x, z, big, one, two)  y = Slice(r, one, big, one)", "float[1, 4, 4, 3] x"),
    "negative axis naming the same axis": ("r = Slice(x, z, big, one, two)  y = Slice(r, one, big, neg)",
                                           "float[1, 4, 4, 3] x"),
    "computed bounds": ("r = Slice(x, z, big, one, two)  y = Slice(r, k, big, two)", "float[1, 4, 4, 3] x, int64[1] k"),
    "axes omitted on both (axis 0 twice)": ("r = Slice(x, z, big)  y = Slice(r, one, big)", "float[1, 4, 4, 3] x"),
}


@pytest.mark.parametrize("case", REFUSALS, ids=list(REFUSALS))
def test_refusals(case: str) -> None:
    body, inputs = REFUSALS[case]
    _, report = rewrite_text("merge-slices", f"""
        <ir_version: 8, opset_import: ["" : 17]>
        g ({inputs}) => (float y) <{C}, int64[1] neg = {{-3}}> {{ {body} }}""")
    assert report.totals() == {}


@given(models(motifs=["slice_chain", "graph_output_inside"], ops=["activation", "binary", "transpose"],
              opsets=range(11, ORT_NEWEST + 1), max_nodes=14))
def test_random_slice_chains_stay_equivalent_and_none_is_left(model: onnx.ModelProto) -> None:
    out, _ = check_pass("merge-slices", model)
    report = run_passes(ir.from_proto(out), "merge-slices")
    assert not report.totals(), f"left mergeable: {report.totals()}"
