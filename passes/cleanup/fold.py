"""Constant folding: compute at optimization time what only depends on constants.

One forward sweep in topological order: a node whose inputs are all constants is evaluated and
its outputs become new initializers (fresh names), so the nodes after it see constants in turn
and whole chains collapse in one sweep. Shape computations fold once shapes are known: Shape and
Size of a value whose (selected) dims are static, and Gather/Slice picking static dims out of a
Shape; a dim_param stays symbolic, so whatever depends on it is left alone. Constant nodes become
initializers.

Evaluation uses onnx's reference evaluator, node by node: it ships with onnx (no extra
dependency), implements every op at every opset version exactly as the specification words it,
and costs well under a millisecond per node, where building an onnxruntime session per node costs
several. Results whose dtype or shape disagree with what shape inference says are not used.

Never folded: random ops, ops in ``deny`` (by default DequantizeLinear: TensorRT's explicit
quantization needs the Q/DQ pairs on weights), ops of other domains, nodes holding subgraphs and
nodes producing graph outputs (their value would need an Identity to keep the name). A fold may
grow the model by at most ``size_limit`` bytes (outputs minus the constants that die with the
node), and all folds of one run together by no more than that either.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections import Counter
from dataclasses import dataclass

import numpy as np
import onnx

from optgraph import ir
from optgraph.ir import opset as ops
from optgraph.ir.serde import node_proto
from optgraph.passes.base import Pass, PassContext, PassResult, counter
from optgraph.passes.registry import register
from optgraph.passes.shapes import shape_of

# Ops whose output can be much larger than their inputs: evaluated only when shape inference
# says how large the result will be.
_GROWS = frozenset({"ConstantOfShape", "Expand", "Tile", "Range", "Resize", "Upsample", "OneHot", "Pad",
                    "EyeLike", "MatMul", "Gemm", "Einsum", "Col2Im", "Add", "Sub", "Mul", "Div", "Pow", "Where",
                    "Max", "Min", "Sum", "Mean", "And", "Or", "Xor", "Equal", "Less", "Greater", "LessOrEqual",
                    "GreaterOrEqual", "BitShift", "Mod", "PRelu", "Concat"})


def _nbytes(shape: tuple[int | str | None, ...] | None, dtype: int) -> int | None:
    """Bytes of a tensor of that static shape and dtype, None when not static or not sized."""
    if shape is None or not all(isinstance(d, int) for d in shape) or not dtype:
        return None
    size = ir.itemsize(dtype)
    return None if size is None else math.prod(shape) * size  # type: ignore[arg-type]


def shape_slice(node: ir.Node, rank: int) -> tuple[int, int]:
    """The [start, end) range of dims a Shape node returns (opset 15's start/end, clamped)."""
    start, end = node.attr("start", 0), node.attr("end", rank)
    start = min(max(start + rank if start < 0 else start, 0), rank)
    end = min(max(end + rank if end < 0 else end, 0), rank)
    return start, end


@register
class FoldConstants(Pass):
    name = "fold-constants"
    description = "Evaluate nodes whose inputs are constants (shape computations included) into initializers"

    @dataclass
    class Options:
        size_limit: int = 4 << 20  # bytes one fold, and one run's folds together, may grow the model by
        deny: tuple[str, ...] = ("DequantizeLinear",)  # op types never folded (random ops never are)
        shapes: bool = True  # also fold Shape/Size of values with static dims (off: constant inputs only)
        rounds: int = 4  # sweeps at most, with shapes inferred again after each that folded something

    def covers(self, required: Pass) -> bool:
        """A run folding shape computations too covers one that folds constant inputs only."""
        return isinstance(required, FoldConstants) and \
            dataclasses.replace(required.options, shapes=self.options.shapes) == self.options and \
            (self.options.shapes or not required.options.shapes)

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        stats = counter()
        self._budget = self.options.size_limit
        self._ctx = ctx
        rw = ir.Rewriter(model.graph)
        for _ in range(self.options.rounds if self.options.shapes else 1):
            if not self._sweep(model, rw, stats):
                break
            # What this sweep folded (a Pad's pads, a Reshape's target) gives shape inference
            # shapes it could not find before, and Shape nodes further on fold with them.
            ctx.invalidate()
        return PassResult(rw.changed, +stats)

    def _sweep(self, model: ir.Model, root: ir.Rewriter, stats: Counter[str]) -> int:
        """One walk over every graph; the number of nodes folded."""
        folded = 0
        opset = model.opset()
        opsets = {d or "": v for d, v in model.opset_imports.items()}
        for graph in model.all_graphs(functions=False):  # function bodies cannot hold initializers
            rw = root.on(graph)
            for node in graph:
                if not ops.is_onnx(node) or any(v is not None and v.is_graph_output for v in node.outputs):
                    continue
                if node.op_type == "Constant":
                    done = self._constant_node(rw, node)
                elif node.op_type in self.options.deny or node.op_type in ops.RANDOM_OPS or node.op_type == "Identity" \
                        or node.subgraphs():
                    continue
                else:
                    values = self._shape_values(node, opset) \
                        if self.options.shapes and node.op_type in ("Shape", "Size", "Gather", "Slice") else None
                    done = self._replace(rw, node, values, stats) if values is not None else \
                        self._evaluate(rw, node, opsets, stats)
                if done:
                    stats[f"{node.op_type}_folded"] += 1
                    folded += 1
        return folded

    # --- shapes ---------------------------------------------------------------------------------

    def _shape(self, v: ir.Value) -> tuple[int | str | None, ...] | None:
        return shape_of(v, self._ctx)

    def _shape_values(self, node: ir.Node, opset: int) -> list[np.ndarray] | None:
        """Shape/Size of a value with static dims, and Gather/Slice of static dims of a Shape."""
        if node.op_type in ("Shape", "Size"):
            x = node.inputs[0]
            shape = self._shape(x) if x is not None and ir.constant_tensor(x) is None else None
            if shape is None:
                return None
            if node.op_type == "Size":
                return [np.array(math.prod(shape), np.int64)] if all(isinstance(d, int) for d in shape) else None  # type: ignore[arg-type]
            start, end = shape_slice(node, len(shape))
            dims = shape[start:end]
            return [np.array(dims, np.int64)] if all(isinstance(d, int) for d in dims) else None
        src = node.inputs[0].producer if node.inputs[0] is not None else None
        if src is None or src.op_type != "Shape" or not ops.is_onnx(src) or src.inputs[0] is None:
            return None
        shape = self._shape(src.inputs[0])
        if shape is None:
            return None
        start, end = shape_slice(src, len(shape))
        dims = np.array([d if isinstance(d, int) else -1 for d in shape[start:end]], np.int64)
        # Evaluate on the dims with unknown ones marked -1: the result is usable if it picked none.
        consts = [ir.constant_array(v) if v is not None else None for v in node.inputs[1:]]
        if any(c is None for c, v in zip(consts, node.inputs[1:]) if v is not None):
            return None
        if node.op_type == "Gather" and node.attr("axis", 0) == 0 and consts and consts[0] is not None:
            idx = consts[0]
            if np.any(idx < -len(dims)) or np.any(idx >= len(dims)):
                return None
            picked = dims[idx]
        elif node.op_type == "Slice" and len(node.inputs) >= 3:
            feeds = [dims, *consts]
            try:
                picked = _reference(node, {"": max(opset, 10)}, feeds)[0]
            except Exception:
                return None
        else:
            return None
        picked = np.asarray(picked, np.int64)
        return None if np.any(picked < 0) else [picked]

    # --- replacing ------------------------------------------------------------------------------

    def _constant_node(self, rw: ir.Rewriter, node: ir.Node) -> bool:
        t = ir.constant_tensor(node.output)
        if t is None:
            return False
        rw.replace(node.output, rw.add_initializer(t, node.output.name))
        rw.remove(node)
        return True

    def _replace(self, rw: ir.Rewriter, node: ir.Node, values: list[np.ndarray], stats: Counter[str]) -> bool:
        """Swap the node for initializers holding ``values`` (one per output present)."""
        outs = [v for v in node.outputs if v is not None]
        for v, arr in zip(outs, values, strict=True):
            if v.dtype and v.dtype != onnx.helper.np_dtype_to_tensor_dtype(arr.dtype) or \
                    v.shape is not None and len(v.shape) != arr.ndim or \
                    v.shape is not None and any(isinstance(d, int) and d != a for d, a in zip(v.shape, arr.shape)):
                stats["skipped_type_mismatch"] += 1
                return False
        growth = sum(int(a.nbytes) for a in values) - sum(c.nbytes for c in self._dying_constants(node))
        if growth > self.options.size_limit or growth > self._budget:
            stats["skipped_size_limit"] += 1
            return False
        self._budget -= growth
        for v, arr in zip(outs, values):
            rw.replace(v, rw.add_initializer(ir.Tensor(array=arr), v.name))
        rw.remove(node)
        return True

    def _dying_constants(self, node: ir.Node) -> list[ir.Tensor]:
        """Constants only this node reads: folding it frees them."""
        out: dict[int, ir.Tensor] = {}
        for v in node.inputs:
            if v is not None and not v.is_graph_output and all(c is node for c in v.consumers):
                t = ir.constant_tensor(v)
                if t is not None:
                    out[id(v)] = t
        return list(out.values())

    # --- evaluating -----------------------------------------------------------------------------

    def _evaluate(self, rw: ir.Rewriter, node: ir.Node, opsets: dict[str, int], stats: Counter[str]) -> bool:
        consts = []
        for v in node.inputs:
            t = ir.constant_tensor(v) if v is not None else None
            if v is not None and t is None:
                return False
            consts.append(t)
        if not any(c is not None for c in consts) or any(v is not None and v.type_proto is not None
                                                         for v in node.outputs):
            return False
        for v in node.outputs:
            if v is not None:
                self._shape(v)
        if any(v is not None and not v.dtype for v in node.outputs):
            stats["skipped_unknown_type"] += 1
            return False
        expected = [_nbytes(v.shape, v.dtype) for v in node.outputs if v is not None]
        in_bytes = sum(c.nbytes for c in consts if c is not None)
        if None in expected:
            if node.op_type in _GROWS or in_bytes > self.options.size_limit:
                stats["skipped_unknown_size"] += 1
                return False
        elif sum(expected) - in_bytes > self.options.size_limit:  # type: ignore[arg-type]
            stats["skipped_size_limit"] += 1
            return False
        feeds = [c.numpy() if c is not None else None for c in consts]
        try:
            results = _reference(node, opsets, feeds)
        except Exception:  # the evaluator does not support this case: leave the node
            stats[f"skipped_not_evaluable_{node.op_type}"] += 1
            return False
        arrays = []
        for r in results:
            if not isinstance(r, (np.ndarray, np.generic)) or np.asarray(r).dtype == np.object_:
                return False
            arrays.append(np.asarray(r))
        return self._replace(rw, node, arrays, stats)


@functools.cache
def _overrides() -> list[type]:
    """Ops whose onnx reference implementation is replaced (onnx.reference is imported on first
    use: loading it costs a tenth of a second that a run with nothing to evaluate need not pay)."""
    from onnx.reference.op_run import OpRun

    class GatherElements(OpRun):
        """onnx 1.23's reference GatherElements uses np.choose, which takes at most 64 choices, and
        its fallback reshapes wrongly: BERT's token-type buffer (512 wide) fails. Same semantics."""

        op_domain = ""

        def _run(self, data: np.ndarray, indices: np.ndarray, axis: int = 0) -> tuple[np.ndarray]:
            indices = np.where(indices < 0, indices + data.shape[axis], indices)
            return (np.take_along_axis(data, indices, axis=axis),)

    class BatchNormalization(OpRun):
        """onnx 1.23's reference BatchNormalization of opsets 9-13 normalises with the batch's
        own statistics whenever ``momentum`` is set (its default is), although those versions
        compute with the running mean and variance. Inference semantics; training mode is not
        folded."""

        op_domain = ""

        def _run(self, x: np.ndarray, scale: np.ndarray, bias: np.ndarray, mean: np.ndarray, var: np.ndarray,
                 epsilon: float = 1e-5, momentum: float | None = None, training_mode: int = 0,
                 spatial: int = 1, is_test: int = 1) -> tuple[np.ndarray]:
            if training_mode:
                raise NotImplementedError("training-mode BatchNormalization")
            shape = (-1,) + (1,) * (x.ndim - 2)
            y = (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + epsilon) * scale.reshape(shape)
            return ((y + bias.reshape(shape)).astype(x.dtype),)

    return [GatherElements, BatchNormalization]


def _reference(node: ir.Node, opsets: dict[str, int], feeds: list[np.ndarray | None]) -> list:
    """Run one node with onnx's reference evaluator; ``feeds`` follow the node's inputs.

    The node goes in a one-node model carrying the opset imports: given a bare NodeProto the
    evaluator would run the op's newest version, whatever the model's opset says.
    """
    proto = node_proto(node)
    graph = onnx.GraphProto(name="fold", node=[proto])
    graph.input.extend(onnx.ValueInfoProto(name=name) for name in proto.input if name)
    graph.output.extend(onnx.ValueInfoProto(name=name) for name in proto.output if name)
    model = onnx.ModelProto(ir_version=8, graph=graph)
    for domain, version in opsets.items():
        model.opset_import.add(domain=domain, version=version)
    named = {name: arr for name, arr in zip(proto.input, feeds) if name}
    from onnx.reference import ReferenceEvaluator

    return ReferenceEvaluator(model, new_ops=_overrides()).run(None, named)
