"""tensorrt-ready: whole-input pools become global pools, equivalently; look-alikes stay; the
rewritten model parses in TensorRT where the original does not."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from onnx import parser

from optgraph.passes.cleanup import tensorrt_ready
from optgraph.passes.testing.check import check_pass
from optgraph.passes.testing.strategies import MOTIFS, NotApplicable, models
from optgraph.runtime import tensorrt

HEADER = '<ir_version: 8, opset_import: ["" : 17]>'


def pool_model(attrs: str, op: str = "AveragePool", shape: str = "1, 4, 7, 7", out: str = "1, 4, 1, 1") -> str:
    return HEADER + f"""
        g (float[{shape}] x) => (float[{out}] y) {{ p = {op} <{attrs}> (x)  y = Relu(p) }}"""


def rewritten_ops(text: str) -> list[str]:
    out, _ = check_pass("tensorrt-ready", parser.parse_model(text))
    return [n.op_type for n in out.graph.node]


@pytest.mark.parametrize(("op", "attrs", "expected"), [
    # transformers' EfficientNet pooler: nn.AvgPool2d(1280, ceil_mode=True) over a 7x7 map
    ("AveragePool", "kernel_shape = [1280, 1280], strides = [1280, 1280], ceil_mode = 1", "GlobalAveragePool"),
    ("AveragePool", "kernel_shape = [7, 7]", "GlobalAveragePool"),
    ("AveragePool", "kernel_shape = [7, 7], count_include_pad = 1", "GlobalAveragePool"),
    # as PyTorch exports it: count_include_pad = 1 (no padding, so nothing to include)
    ("AveragePool", "kernel_shape = [1280, 1280], strides = [1280, 1280], ceil_mode = 1, count_include_pad = 1",
     "GlobalAveragePool"),
    ("MaxPool", "kernel_shape = [7, 7], strides = [2, 2]", "GlobalMaxPool"),
    ("MaxPool", "kernel_shape = [9, 8], strides = [9, 9], ceil_mode = 1", "GlobalMaxPool"),
    ("LpPool", "kernel_shape = [7, 7], p = 3", "GlobalLpPool"),
])
def test_whole_input_pool_becomes_global(op: str, attrs: str, expected: str) -> None:
    assert rewritten_ops(pool_model(attrs, op)) == [expected, "Relu"]


@pytest.mark.parametrize(("op", "attrs", "shape", "out"), [
    ("AveragePool", "kernel_shape = [3, 3]", "1, 4, 7, 7", "1, 4, 5, 5"),
    ("AveragePool", "kernel_shape = [7, 7], pads = [1, 1, 1, 1]", "1, 4, 7, 7", "1, 4, 3, 3"),
    ("LpPool", "kernel_shape = [9, 9], strides = [9, 9], ceil_mode = 1", "1, 4, 7, 7", "1, 4, 1, 1"),
    ("AveragePool", "kernel_shape = [7, 7]", "1, 4, H, W", "1, 4, 1, 1"),
    ("AveragePool", "kernel_shape = [7, 7], strides = [1, 1]", "1, 4, 7, 8", "1, 4, 1, 2"),
    ("MaxPool", "kernel_shape = [7, 7], dilations = [2, 2]", "1, 4, 13, 13", "1, 4, 1, 1"),
])
def test_look_alikes_stay(op: str, attrs: str, shape: str, out: str) -> None:
    text = pool_model(attrs, op, shape, out)
    from optgraph.passes.testing.golden import rewrite_text

    result, report = rewrite_text("tensorrt-ready", text)
    assert result.graph.node[0].op_type == op and report.totals() == {}


def whole_pool(draw, b, v):  # type: ignore[no-untyped-def]
    """A pool whose window covers the whole (static) feature map, oversized with ceil_mode or exact."""
    b.require(b.rank(v) == 4)
    shape = b.shape(v)
    if not all(isinstance(d, int) for d in shape[2:]):
        raise NotApplicable
    h, w = int(shape[2]), int(shape[3])
    op = draw(st.sampled_from(("AveragePool", "MaxPool")))
    oversize = draw(st.integers(0, 40))
    kernel = [h + oversize, w + oversize]
    attrs = {"kernel_shape": kernel, "strides": [max(kernel)] * 2, "ceil_mode": int(oversize > 0)}
    if op == "AveragePool":
        attrs["count_include_pad"] = draw(st.integers(0, 1))
    return b.op(op, [v], **attrs)


@given(models(motifs={"whole_pool": whole_pool, "conv_act": MOTIFS["conv_act"]}, inputs=["image"]))
def test_property_equivalent(model) -> None:  # type: ignore[no-untyped-def]
    check_pass("tensorrt-ready", model)


def test_broken_window_check_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Turning a pool that does not cover the map into a global pool changes the output."""
    monkeypatch.setattr(tensorrt_ready, "pools_whole_input", lambda node, shape: shape is not None)
    with pytest.raises(AssertionError):
        check_pass("tensorrt-ready", parser.parse_model(pool_model("kernel_shape = [2, 2], strides = [2, 2]",
                                                                   shape="1, 1, 2, 4", out="1, 1, 1, 2")))


@pytest.mark.tensorrt
@pytest.mark.skipif(not tensorrt.available(), reason="neither tensorrt nor tensorrt_rtx imports")
def test_tensorrt_parses_the_rewrite_it_rejects_before() -> None:
    text = pool_model("kernel_shape = [1280, 1280], strides = [1280, 1280], ceil_mode = 1")
    original = parser.parse_model(text)
    assert not tensorrt.parse(original.SerializeToString()).ok
    rewritten, _ = check_pass("tensorrt-ready", original)
    assert tensorrt.parse(rewritten.SerializeToString()).ok
