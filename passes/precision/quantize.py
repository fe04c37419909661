"""INT8 explicit quantization (``quantize-int8``): QuantizeLinear/DequantizeLinear written where
TensorRT fuses them into INT8 kernels.

TensorRT's guidance for explicit quantization: quantize the inputs of the compute layers (Conv,
ConvTranspose, Gemm, MatMul), not their outputs; it fuses DQ into the layer and the next Q into
its epilogue. Here:

- every activation read by a quantized layer gets one Q/DQ pair (symmetric int8, zero point 0,
  per tensor, scale = calibrated threshold / 127), shared by all its quantized readers;
- constant weights become DequantizeLinear of an int8 initializer, scaled per output channel
  (Conv axis 0; ConvTranspose axis 1, one scale per in-group channel across the groups; Gemm
  axis 0 with transB, else 1; MatMul the last axis); the bias stays float (TensorRT's parser
  rejects an int32 bias DequantizeLinear);
- a residual Add of a quantized Conv's output gets Q/DQ on its other input, so Conv+bias+Add
  (+ReLU) becomes one INT8 kernel;
- everything else (pooling, reshapes, Softmax, normalizations) is left alone: TensorRT moves Q/DQ
  through pooling and reshapes itself.

optgraph's fused Conv+activation units (``optgraph`` domain functions) are quantized like Conv.
Ranges come from ``PassContext.ranges`` (calibration): without them the pass refuses, since
invented scales would give an arbitrary model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import onnx

from optgraph import ir
from optgraph.ir.order import topological_order
from optgraph.passes.base import Pass, PassContext, PassResult, counter
from optgraph.passes.registry import register
from optgraph.passes.shapes import ShapeInference

FLOAT = onnx.TensorProto.FLOAT
COMPUTE = ("Conv", "ConvTranspose", "Gemm", "MatMul")
FUSED_DOMAIN = "optgraph"  # fuse-conv-act's Conv+activation units


class QuantizeError(ir.OptGraphError):
    """quantize-int8 cannot run: no calibration ranges, or an opset without per-channel Q/DQ."""


def _kind(node: ir.Node) -> str | None:
    """The compute op ``node`` is (a fused unit counts as Conv), or None."""
    if node.domain in ("", "ai.onnx") and node.op_type in COMPUTE:
        return node.op_type
    if node.domain == FUSED_DOMAIN and node.op_type.startswith("Conv"):
        return "Conv"
    return None


def weight_axis(kind: str, node: ir.Node, rank: int) -> int:
    """The output-channel axis of ``kind``'s weight (input 1)."""
    if kind == "ConvTranspose":
        return 1
    if kind == "Gemm":
        return 0 if node.attr("transB", 0) else 1
    if kind == "MatMul":
        return rank - 1
    return 0


def weight_scales(w: np.ndarray, axis: int) -> np.ndarray:
    """Per-channel symmetric scales of ``w`` along ``axis``. A grouped ConvTranspose weight is
    [Cin, Cout/group, ...]: each axis-1 scale spans that in-group channel of every group."""
    amax = np.moveaxis(np.abs(w), axis, 0).reshape(w.shape[axis], -1).max(axis=1)
    return (np.where(amax > 0, amax, 1.0) / 127.0).astype(np.float32)


def calibrated_tensors(model: ir.Model) -> list[str]:
    """The activations whose ranges the pass may read (a compute layer's input, an Add's inputs):
    calibration needs statistics of these only."""
    names: dict[str, None] = {}
    for node in model.graph:
        if _kind(node) is not None and node.inputs and node.inputs[0] is not None:
            names[node.inputs[0].name] = None
        elif node.op_type == "Add" and node.domain in ("", "ai.onnx"):
            names.update((v.name, None) for v in node.inputs if v is not None and v.const is None)
    return list(names)


@register
class QuantizeInt8(Pass):
    """Insert Q/DQ for TensorRT INT8 (symmetric; activations per tensor, weights per channel)."""

    name = "quantize-int8"
    description = "INT8 Q/DQ where TensorRT fuses them (needs calibration ranges: optgraph quantize)"

    @dataclass
    class Options:
        exclude: str = ""  # a regex: nodes whose name matches (re.search) stay float
        exclude_ops: tuple[str, ...] = ()  # compute op types left float
        residual: bool = True  # Q/DQ on the other input of a quantized Conv's residual Add

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        ranges = ctx.ranges
        if not ranges:
            raise QuantizeError("quantize-int8 needs calibration data (optgraph quantize --calib DATA); "
                                     "random data would give arbitrary scales")
        if model.opset() < 13:
            raise QuantizeError(f"quantize-int8 needs opset 13 or newer (per-channel DequantizeLinear); "
                                     f"the model has {model.opset()}")
        ctx.get(ShapeInference)  # dtypes of every tensor: only float32 activations are quantized
        opt = self.options
        name_re = re.compile(opt.exclude) if opt.exclude else None
        graph = model.graph
        rw = ir.Rewriter(graph)
        stats = counter()
        qdq: dict[str, ir.Value] = {}
        zero = rw.add_initializer(np.zeros((), np.int8), "int8_zero")

        def activation(value: ir.Value, before: ir.Node) -> ir.Value | None:
            if value.name in qdq:
                return qdq[value.name]
            top = ranges.get(value.name)
            if top is None or not top > 0 or value.dtype != FLOAT:
                return None
            scale = rw.add_initializer(np.array(top / 127.0, np.float32), f"{value.name}_scale")
            q = rw.make_node("QuantizeLinear", [value, scale, zero], name=f"{value.name}_quantize", before=before)
            rw.set_type(q.output, onnx.TensorProto.INT8, value.shape)
            dq = rw.make_node("DequantizeLinear", [q.output, scale, zero], name=f"{value.name}_dequantize",
                          before=before)
            rw.set_type(dq.output, FLOAT, value.shape)
            qdq[value.name] = dq.output
            stats["activations_quantized"] += 1
            return dq.output

        quantized: set[ir.Node] = set()
        weights: dict[tuple[ir.Value, int], ir.Value] = {}
        for node in list(graph):
            kind = _kind(node)
            if kind is None or kind in opt.exclude_ops or (name_re is not None and name_re.search(node.name)):
                continue
            x, w = node.inputs[0], node.inputs[1] if len(node.inputs) > 1 else None
            if x is None or w is None:
                continue
            array = ir.constant_array(w)
            if array is None or array.dtype != np.float32 or (kind == "Gemm" and node.attr("transA", 0)):
                continue  # activation x activation MatMuls and float16 weights stay float
            if ranges.get(x.name, 0.0) <= 0 or x.dtype != FLOAT:
                continue
            axis = weight_axis(kind, node, array.ndim)
            key = (w, axis)
            if key not in weights:  # a weight shared by several layers is quantized once
                scales = weight_scales(array, axis)
                shape = [1] * array.ndim
                shape[axis] = -1
                q = np.clip(np.round(array / scales.reshape(shape)), -127, 127).astype(np.int8)
                wq = rw.add_initializer(q, f"{w.name}_int8")
                ws = rw.add_initializer(scales, f"{w.name}_scale")
                wz = rw.add_initializer(np.zeros(len(scales), np.int8), f"{w.name}_zero")
                dq = rw.make_node("DequantizeLinear", [wq, ws, wz], {"axis": axis}, name=f"{w.name}_dequantize",
                              before=node)
                rw.set_type(dq.output, FLOAT, w.shape)
                weights[key] = dq.output
                stats["weights_quantized"] += 1
            dx = activation(x, node)
            assert dx is not None
            rw.set_input(node, 0, dx)
            rw.set_input(node, 1, weights[key])
            if not w.is_used and not w.is_graph_output and w.name in graph.initializers:
                rw.remove_initializer(w)
            quantized.add(node)
            stats["layers_quantized"] += 1
        if opt.residual:
            for node in list(graph):
                if node.op_type != "Add" or node.domain not in ("", "ai.onnx") or len(node.inputs) != 2:
                    continue
                a, b = node.inputs
                if a is None or b is None or a.const is not None or b.const is not None:
                    continue
                from_conv = [v is not None and v.producer in quantized and _kind(v.producer) == "Conv"
                             and v.num_uses == 1 for v in (a, b)]
                if from_conv.count(True) == 0:
                    continue
                other = 1 if from_conv[0] else 0
                value = node.inputs[other]
                assert value is not None
                dv = activation(value, node)
                if dv is not None:
                    rw.set_input(node, other, dv)
                    stats["residuals_quantized"] += 1
        if not zero.is_used:
            rw.remove_initializer(zero)
        if stats["residuals_quantized"]:
            rw.reorder(topological_order(graph))  # a Q/DQ made for a later layer may now also feed an earlier Add
        return PassResult(rw.changed, stats)
