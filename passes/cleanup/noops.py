"""Remove nodes that compute their input unchanged at inference time.

Identity, Dropout (inference mode, mask unused), Cast to the type it already has, Reshape /
Flatten / Expand to the shape it already has, Transpose by the identity permutation, Pad by zeros,
a Slice covering everything, Add/Sub of 0 and Mul/Div by 1 where broadcasting does not grow the
input, and Concat/Split/Sum/Max/Min/Mean of a single piece. Each check needs the facts to be
known (a constant operand, a static dimension): unknown means the node stays.

Consumers are rewired to the input with ``Graph.replace_value``. A node whose output is a graph
output is removed only when its input can take over the output's name (an intermediate of the
same graph): otherwise an Identity would have to come back in its place, which gains nothing.
"""

from __future__ import annotations

import numpy as np
import onnx

from optgraph import ir
from optgraph.ir import opset as ops
from optgraph.ir.core import Shape
from optgraph.passes.base import Pass, PassContext, PassResult, counter
from optgraph.passes.registry import register
from optgraph.passes.shapes import ShapeInference, shape_of

INT64_MAX = 2**63 - 1


def broadcast_keeps(shape: Shape | None, other: tuple[int, ...]) -> bool:
    """True when broadcasting a tensor of ``shape`` against one of shape ``other`` cannot change
    its shape: ``other`` has no more axes and each of its dims is 1 or the same static size."""
    if shape is None or len(other) > len(shape):
        return False
    tail = shape[len(shape) - len(other):]
    return all(o == 1 or (isinstance(d, int) and d == o) for d, o in zip(tail, other))


def _static(shape: Shape | None) -> bool:
    return shape is not None and all(isinstance(d, int) for d in shape)


class _Finder:
    """The no-op checks; each returns the input the node's output equals, or None."""

    def __init__(self, ctx: PassContext) -> None:
        self.ctx = ctx

    def shape(self, v: ir.Value | None) -> Shape | None:
        return None if v is None else shape_of(v, self.ctx)

    def dtype(self, v: ir.Value) -> int:
        shape_of(v, self.ctx)
        return v.dtype

    def find(self, node: ir.Node, opset: int) -> ir.Value | None:
        check = _CHECKS.get(node.op_type)
        if check is None or not ops.is_onnx(node) or not node.inputs or node.inputs[0] is None:
            return None
        if any(v is not None and v.is_used for v in node.outputs[1:]):
            return None  # only the first output is replaced (a used Dropout mask stays)
        return check(self, node, opset)

    def _Identity(self, node: ir.Node, opset: int) -> ir.Value | None:
        return node.inputs[0]

    def _Dropout(self, node: ir.Node, opset: int) -> ir.Value | None:
        if opset < 7 and not node.attr("is_test", 0):
            return None  # Dropout-6 and older drop at random unless is_test is set
        if opset >= 12 and len(node.inputs) > 2 and node.inputs[2] is not None:
            training = ir.constant_array(node.inputs[2])
            if training is None or bool(training):
                return None
        return node.inputs[0]

    def _Cast(self, node: ir.Node, opset: int) -> ir.Value | None:
        x = node.inputs[0]
        return x if self.dtype(x) and self.dtype(x) == node.attr("to") else None

    def _CastLike(self, node: ir.Node, opset: int) -> ir.Value | None:
        x, like = node.inputs[0], node.inputs[1]
        return x if like is not None and self.dtype(x) and self.dtype(x) == self.dtype(like) else None

    def _Reshape(self, node: ir.Node, opset: int) -> ir.Value | None:
        x = node.inputs[0]
        shape = self.shape(x)
        if opset < 5 or len(node.inputs) < 2 or shape is None:
            return None
        target = ir.constant_array(node.inputs[1])
        if target is None or target.ndim != 1 or len(target) != len(shape):
            return None
        copy_zero = not node.attr("allowzero", 0)
        wild = [i for i, t in enumerate(target) if t == -1]
        for i, (t, d) in enumerate(zip(target.tolist(), shape)):
            if i in wild:
                continue
            if not ((t == 0 and copy_zero) or (isinstance(d, int) and d == t and (t != 0 or not copy_zero))):
                return None
        # A single -1 next to matching dims must equal the remaining dim (the sizes are equal).
        return x if len(wild) <= 1 else None

    def _Flatten(self, node: ir.Node, opset: int) -> ir.Value | None:
        shape = self.shape(node.inputs[0])
        if shape is None or len(shape) != 2:
            return None
        return node.inputs[0] if node.attr("axis", 1) in (1, -1) else None

    def _Transpose(self, node: ir.Node, opset: int) -> ir.Value | None:
        perm = node.attr("perm")
        if perm is None:
            shape = self.shape(node.inputs[0])
            return node.inputs[0] if shape is not None and len(shape) <= 1 else None
        return node.inputs[0] if list(perm) == list(range(len(perm))) else None

    def _Pad(self, node: ir.Node, opset: int) -> ir.Value | None:
        pads = ops.pads(node, opset)
        return node.inputs[0] if pads is not None and not any(pads) else None

    def _Slice(self, node: ir.Node, opset: int) -> ir.Value | None:
        x = node.inputs[0]
        params = ops.slice_params(node, opset)
        shape = self.shape(x)
        if params is None or shape is None:
            return None
        starts, ends, axes, steps = params
        axes_n = ops.normalize_axes(axes if axes is not None else list(range(len(starts))), len(shape))
        if axes_n is None:
            return None
        for k, axis in enumerate(axes_n):
            dim = shape[axis]
            if steps is not None and steps[k] != 1:
                return None
            from_start = starts[k] == 0 or (isinstance(dim, int) and starts[k] <= -dim)
            to_end = ends[k] >= INT64_MAX or (isinstance(dim, int) and ends[k] >= dim)
            if not (from_start and to_end):
                return None
        return x

    def _Expand(self, node: ir.Node, opset: int) -> ir.Value | None:
        target = ir.constant_array(node.inputs[1]) if len(node.inputs) > 1 else None
        if target is None or target.ndim != 1:
            return None
        x = node.inputs[0]
        return x if broadcast_keeps(self.shape(x), tuple(int(t) for t in target)) else None

    def _neutral(self, node: ir.Node, element: int, commutes: bool) -> ir.Value | None:
        """x op c where c is all ``element``, of x's dtype, and does not broadcast x larger."""
        if len(node.inputs) != 2 or node.inputs[1] is None:
            return None
        a, b = node.inputs
        for x, c in ([(a, b), (b, a)] if commutes else [(a, b)]):
            const = ir.constant_tensor(c)
            if const is None or x is None or const.dtype == onnx.TensorProto.STRING:
                continue
            if self.dtype(x) == const.dtype and np.all(const.numpy() == element) \
                    and broadcast_keeps(self.shape(x), const.shape):
                return x
        return None

    def _Add(self, node: ir.Node, opset: int) -> ir.Value | None:
        return self._neutral(node, 0, True)

    def _Sub(self, node: ir.Node, opset: int) -> ir.Value | None:
        return self._neutral(node, 0, False)

    def _Mul(self, node: ir.Node, opset: int) -> ir.Value | None:
        return self._neutral(node, 1, True)

    def _Div(self, node: ir.Node, opset: int) -> ir.Value | None:
        return self._neutral(node, 1, False)

    def _single(self, node: ir.Node, opset: int) -> ir.Value | None:
        live = [v for v in node.inputs if v is not None]
        return live[0] if len(live) == 1 and len(node.inputs) == 1 else None

    def _Split(self, node: ir.Node, opset: int) -> ir.Value | None:
        return node.inputs[0] if len(node.outputs) == 1 else None


_CHECKS = {
    "Identity": _Finder._Identity, "Dropout": _Finder._Dropout, "Cast": _Finder._Cast,
    "CastLike": _Finder._CastLike, "Reshape": _Finder._Reshape, "Flatten": _Finder._Flatten,
    "Transpose": _Finder._Transpose, "Pad": _Finder._Pad, "Slice": _Finder._Slice, "Expand": _Finder._Expand,
    "Add": _Finder._Add, "Sub": _Finder._Sub, "Mul": _Finder._Mul, "Div": _Finder._Div, "Split": _Finder._Split,
    **dict.fromkeys(("Concat", "Sum", "Max", "Min", "Mean"), _Finder._single),
}


@register
class RemoveNoOps(Pass):
    name = "remove-noops"
    description = "Remove Identity and nodes that are no-ops at inference (Dropout, same-type Cast, x+0, ...)"
    preserves = frozenset({ShapeInference})
    # The checks need constant operands and static shapes: a Reshape's target is often a shape
    # computation, a Mul's 1 a Constant node. Folding them is what makes `dce` drop dead work.
    requires = ("fold-constants",)

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        stats = counter()
        finder = _Finder(ctx)
        root = ir.Rewriter(model.graph)
        for graph, opset in ops.graphs_with_opset(model):
            rw = root.on(graph)
            for node in graph:
                x = finder.find(node, opset)
                if x is None or not rw.replace_if_free(node.output, x):
                    continue
                rw.remove(node)
                stats[f"{node.op_type}_removed"] += 1
        return PassResult(root.changed, stats)
