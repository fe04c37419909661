"""fuse-pad-conv: golden cases in both Pad forms, refusals, equivalence on random pads, a broken variant."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from onnx import helper, numpy_helper, parser

from optgraph.passes.fuse import fuse_pad
from optgraph.passes.testing import assert_equivalent, check_pass
from optgraph.passes.testing.golden import assert_rewrites_to, rewrite_text

W = "float[1,1,3,3] w = {1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0}"


def test_input_form_pad_becomes_conv_pads() -> None:
    report = assert_rewrites_to("fuse-pad-conv", f"""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1,1,5,5] x) => (float[1,1,3,4] y) <{W}, int64[8] p = {{0, 0, 0, 1, 0, 0, 1, 1}}> {{
          t = Pad(x, p)
          y = Conv<strides=[2,2], pads=[0,0,1,0]>(t, w)
        }}""", f"""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1,1,5,5] x) => (float[1,1,3,4] y) <{W}> {{
          y = Conv<auto_pad="NOTSET", strides=[2,2], pads=[0,1,2,1]>(x, w)
        }}""")
    assert report.totals() == {"pad-into-conv": 1}


def test_valid_auto_pad_conv_takes_the_pads() -> None:
    before = f"""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1,1,5,5] x) => (float[1,1,3,3] y) <{W}, int64[8] p = {{0, 0, 0, 0, 0, 0, 1, 1}}> {{
          t = Pad(x, p)
          y = Conv<auto_pad="VALID", strides=[2,2]>(t, w)
        }}"""
    assert_equivalent(parser.parse_model(before), rewrite_text("fuse-pad-conv", before)[0])
    assert_rewrites_to("fuse-pad-conv", before, f"""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1,1,5,5] x) => (float[1,1,3,3] y) <{W}> {{
          y = Conv<auto_pad="NOTSET", strides=[2,2], pads=[0,0,1,1]>(x, w)
        }}""")


def test_attribute_form_pad_at_opset_10() -> None:
    assert_rewrites_to("fuse-pad-conv", f"""
        <ir_version: 5, opset_import: ["" : 10]>
        g (float[1,1,5,5] x) => (float[1,1,5,5] y) <{W}> {{
          t = Pad<pads=[0, 0, 1, 1, 0, 0, 1, 1]>(x)
          y = Conv(t, w)
        }}""", f"""
        <ir_version: 5, opset_import: ["" : 10]>
        g (float[1,1,5,5] x) => (float[1,1,5,5] y) <{W}> {{
          y = Conv<auto_pad="NOTSET", pads=[1, 1, 1, 1]>(x, w)
        }}""")


REFUSED = {
    "reflect mode": 't = Pad<mode="reflect">(x, p)\n y = Conv(t, w)',
    "non-zero value": 't = Pad(x, p, one)\n y = Conv(t, w)',
    "channel padding": 't = Pad(x, pc)\n y = Conv(t, w2)',
    "crop": 't = Pad(x, neg)\n y = Conv(t, w)',
    "same auto_pad conv": 't = Pad(x, p)\n y = Conv<auto_pad="SAME_UPPER">(t, w)',
    "pad used elsewhere": 't = Pad(x, p)\n c = Conv(t, w)\n y = Add(c, c)\n z = Identity(t)',
    "max pool": 't = Pad(x, p)\n y = MaxPool<kernel_shape=[3,3]>(t)',
}


@pytest.mark.parametrize("case", REFUSED)
def test_refusals(case: str) -> None:
    outputs = "float[1,1,5,5] y, float z" if "elsewhere" in case else "float y"
    text = f"""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1,1,5,5] x) => ({outputs}) <{W}, float[1,2,3,3] w2 = {{{", ".join(["1.0"] * 18)}}},
            int64[8] p = {{0, 0, 1, 1, 0, 0, 1, 1}}, int64[8] pc = {{0, 1, 0, 0, 0, 0, 0, 0}},
            int64[8] neg = {{0, 0, -1, 0, 0, 0, 0, 0}}, float one = {{1.0}}> {{
          {REFUSED[case]}
        }}"""
    _, report = rewrite_text("fuse-pad-conv", text)
    assert report.totals() == {}


def _model(opset: int, pads: list[int], conv_pads: list[int], stride: int) -> onnx.ModelProto:
    rng = np.random.default_rng(sum(pads) + 7 * stride)
    w = numpy_helper.from_array(rng.standard_normal((3, 2, 3, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(3).astype(np.float32), "b")
    inits = [w, b]
    if opset < 11:
        pad = helper.make_node("Pad", ["x"], ["t"], pads=pads)
    else:
        inits.append(numpy_helper.from_array(np.array(pads, np.int64), "p"))
        pad = helper.make_node("Pad", ["x", "p"], ["t"])
    conv = helper.make_node("Conv", ["t", "w", "b"], ["y"], pads=conv_pads, strides=[stride, stride])
    graph = helper.make_graph([pad, conv], "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT,
                                                                               ["N", 2, 7, 6])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 3, None, None])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=7)


SPATIAL = st.lists(st.integers(0, 2), min_size=4, max_size=4)


@given(st.sampled_from([10, 11, 13, 17, 18]), SPATIAL, SPATIAL, st.integers(1, 2))
def test_random_pads_stay_equivalent(opset: int, spatial: list[int], conv_pads: list[int], stride: int) -> None:
    pads = [0, 0, spatial[0], spatial[1], 0, 0, spatial[2], spatial[3]]
    out, report = check_pass("fuse-pad-conv", _model(opset, pads, conv_pads, stride))
    assert report.totals() == {"pad-into-conv": 1}
    assert [n.op_type for n in out.graph.node] == ["Conv"]


def test_broken_variant_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Adding begin and end pads the wrong way round changes results on asymmetric pads."""
    def swapped(self: fuse_pad.PadIntoConv, m: object, rw: object) -> object:
        pad = m.node("pad")  # type: ignore[attr-defined]
        pads, _ = fuse_pad.pad_params(pad)
        conv = m.node("conv")  # type: ignore[attr-defined]
        return rw.like(conv, [m.value("x"), *conv.inputs[1:]],  # type: ignore[attr-defined]
                       {"pads": [pads[6], pads[7], pads[2], pads[3]]})

    monkeypatch.setattr(fuse_pad.PadIntoConv, "rewrite", swapped)
    model = _model(17, [0, 0, 2, 0, 0, 0, 0, 1], [0, 0, 0, 0], 1)
    out, _ = rewrite_text("fuse-pad-conv", onnx.printer.to_text(model))
    with pytest.raises(AssertionError):
        assert_equivalent(model, out)
