"""Rewrite, equivalently, what TensorRT's ONNX parser rejects in real exports.

Whole-window pooling: a pool whose window covers the whole feature map is a global pool.
Exporters emit it for ``nn.AvgPool2d(k, ceil_mode=True)`` with ``k`` larger than the map (the
transformers EfficientNet pooler uses k = hidden size, 1280): the output is 1x1 and every window
is clipped to the map, so with ``count_include_pad=0`` it averages exactly the whole map. TensorRT
refuses such a window size ("Kernel dimensions must be less than..."), so the model cannot be
built at all; GlobalAveragePool / GlobalMaxPool / GlobalLpPool compute the same and parse.
PyTorch exports these pools with count_include_pad=1, which changes nothing here: without
padding, the part of a window past the input's edge is not padding, and both PyTorch and
onnxruntime divide by the clipped window (the mean of the whole map).
"""

from __future__ import annotations

import math

from optgraph import ir
from optgraph.ir.opset import is_onnx
from optgraph.ir.core import Shape
from optgraph.passes.base import Pass, PassContext, PassResult, counter
from optgraph.passes.registry import register
from optgraph.passes.shapes import ShapeInference, shape_of

_GLOBAL = {"AveragePool": "GlobalAveragePool", "MaxPool": "GlobalMaxPool", "LpPool": "GlobalLpPool"}


def pools_whole_input(node: ir.Node, shape: Shape | None) -> bool:
    """True when every output position of this pool sees the whole spatial extent of its input.

    Needs static spatial dims, no padding, unit dilations, and each spatial output size 1; a
    window larger than the input (clipped by ceil_mode) is accepted for AveragePool and MaxPool.
    """
    if shape is None or len(shape) < 3 or not all(isinstance(d, int) and d > 0 for d in shape[2:]):
        return False
    spatial = [int(d) for d in shape[2:]]  # type: ignore[arg-type]
    kernel = node.attr("kernel_shape")
    if kernel is None or len(kernel) != len(spatial):
        return False
    if node.attr("auto_pad", "NOTSET") not in ("NOTSET", "VALID") or any(node.attr("pads", [0])):
        return False
    if any(d != 1 for d in node.attr("dilations", [1] * len(spatial))):
        return False
    strides = node.attr("strides", [1] * len(spatial))
    ceil = bool(node.attr("ceil_mode", 0))
    for d, k, s in zip(spatial, kernel, strides):
        if k < d:
            return False
        if k > d and node.op_type == "LpPool":
            return False
        out = (math.ceil if ceil else math.floor)((d - k) / s) + 1
        if out != 1:
            return False
    return True


@register
class TensorRTReady(Pass):
    name = "tensorrt-ready"
    description = "Rewrite what TensorRT's ONNX parser rejects (whole-input pools become global pools)"
    preserves = frozenset({ShapeInference})

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        stats = counter()
        root = ir.Rewriter(model.graph)
        for graph in model.all_graphs():
            rw = root.on(graph)
            for node in graph:
                target = _GLOBAL.get(node.op_type)
                if target is None or not is_onnx(node) or len(node.outputs) != 1 \
                        or node.inputs[0] is None:
                    continue
                x, y = node.inputs[0], node.output
                if not pools_whole_input(node, shape_of(x, ctx)):
                    continue
                attrs = {"p": node.attr("p", 2)} if target == "GlobalLpPool" else {}
                new = rw.make_node(target, [x], attrs, name=node.name or target, before=node).output
                rw.set_type(new, y.dtype, y.shape)
                rw.replace(y, new)
                rw.remove(node)
                stats[f"{node.op_type}_to_{target}"] += 1
        return PassResult(root.changed, stats)
