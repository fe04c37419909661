"""Hand-built, deterministic models: an Inception-style network and a scale series of its family.

Both are built from conv-bn-relu units and Inception blocks: parallel 1x1 convs on one input
(some followed by 3x3/5x5 conv-bn-relu), a max-pool branch with a 1x1 conv, all concatenated in
order on channels, with a residual Add. They are what fusion passes are for, so tests and
benchmarks use them as realistic workloads. Weights are seeded; BN parameters are non-trivial.
"""

from __future__ import annotations

import numpy as np
import onnx

from optgraph.passes.testing.strategies import GraphBuilder, Shape

OPSET = 17


def _conv_bn_relu(b: GraphBuilder, x: str, out_channels: int, kernel: int, prefix: str, *, stride: int = 1) -> str:
    """Conv (no bias, as PyTorch exports it before BN) -> BatchNormalization -> Relu."""
    in_channels = int(b.shape(x)[1])
    w = b.const(b.weight([out_channels, in_channels, kernel, kernel]), name=f"{prefix}.conv.weight")
    pad = kernel // 2
    y = b.op("Conv", [x, w], name=f"{prefix}.conv", kernel_shape=[kernel, kernel], strides=[stride, stride],
             pads=[pad] * 4, dilations=[1, 1], group=1)
    r = b.rng
    params = {"weight": r.uniform(0.5, 1.5, out_channels), "bias": r.normal(0.0, 0.2, out_channels),
              "running_mean": r.normal(0.0, 0.2, out_channels), "running_var": r.uniform(0.5, 1.5, out_channels)}
    bn_inputs = [b.const(v.astype(np.float32), name=f"{prefix}.bn.{k}") for k, v in params.items()]
    y = b.op("BatchNormalization", [y, *bn_inputs], name=f"{prefix}.bn", epsilon=1e-5)
    return b.op("Relu", [y], name=f"{prefix}.relu")


def _inception_block(b: GraphBuilder, x: str, out_channels: int, prefix: str, *, residual: bool) -> str:
    """Four branches concatenated in order: 1x1 | 1x1->3x3 | 1x1->5x5 | maxpool->1x1."""
    c = out_channels // 4
    widths = [out_channels - 3 * c, c, c, c]  # sums to out_channels
    b1 = _conv_bn_relu(b, x, widths[0], 1, f"{prefix}.b1")
    b2 = _conv_bn_relu(b, _conv_bn_relu(b, x, max(c // 2, 1), 1, f"{prefix}.b2.reduce"), widths[1], 3, f"{prefix}.b2")
    b3 = _conv_bn_relu(b, _conv_bn_relu(b, x, max(c // 2, 1), 1, f"{prefix}.b3.reduce"), widths[2], 5, f"{prefix}.b3")
    pooled = b.op("MaxPool", [x], name=f"{prefix}.b4.pool", kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1])
    b4 = _conv_bn_relu(b, pooled, widths[3], 1, f"{prefix}.b4")
    y = b.op("Concat", [b1, b2, b3, b4], name=f"{prefix}.concat", axis=1)
    if residual and b.shape(x) == b.shape(y):
        y = b.op("Relu", [b.op("Add", [x, y], name=f"{prefix}.residual")], name=f"{prefix}.residual.relu")
    return y


def _head(b: GraphBuilder, x: str, classes: int) -> str:
    y = b.op("Flatten", [b.op("GlobalAveragePool", [x], name="head.pool")], name="head.flatten", axis=1)
    features = int(b.shape(y)[1])
    w = b.const(b.weight([classes, features]), name="head.fc.weight")
    bias = b.const((0.1 * b.rng.standard_normal(classes)).astype(np.float32), name="head.fc.bias")
    return b.op("Gemm", [y, w, bias], name="logits", transB=1)


def _image_input(b: GraphBuilder, batch: int | str, spatial: int) -> str:
    shape: Shape = (batch, 3, spatial, spatial)
    return b.input(shape, name="image")


def inception_like(blocks: int = 4, channels: int = 16, spatial: int = 16, batch: int | str = "N",
                   seed: int = 0, classes: int = 10) -> onnx.ModelProto:
    """Stem conv-bn-relu, ``blocks`` Inception blocks (a residual Add on every second one, a
    stride-2 max-pool after every fourth), then GlobalAveragePool -> Flatten -> Gemm."""
    if blocks < 1 or channels < 4 or spatial < 1:
        raise ValueError("inception_like needs blocks >= 1, channels >= 4 and spatial >= 1")
    b = GraphBuilder(OPSET, seed=seed)
    x = _conv_bn_relu(b, _image_input(b, batch, spatial), channels, 3, "stem")
    for i in range(blocks):
        x = _inception_block(b, x, channels, f"block{i}", residual=i % 2 == 1)
        if i % 4 == 3 and i + 1 < blocks and int(b.shape(x)[2]) >= 4:
            x = b.op("MaxPool", [x], name=f"block{i}.downsample", kernel_shape=[2, 2], strides=[2, 2])
    _head(b, x, classes)
    return b.build(name="inception_like")


BLOCK_NODES = 23  # nodes per Inception block with its residual Add and Relu


def synthetic(n_nodes_target: int, seed: int = 0) -> onnx.ModelProto:
    """A model of the inception_like family with about ``n_nodes_target`` nodes (within one
    block's size), for scale benchmarks (1.6k, 16k, 64k nodes). Channels and spatial size are
    tiny so that even the largest file stays small; every block keeps shapes, so the chain of
    blocks can be arbitrarily long."""
    b = GraphBuilder(OPSET, seed=seed)
    x = _conv_bn_relu(b, _image_input(b, "N", 8), 8, 3, "stem")
    i = 0
    while len(b.nodes) + BLOCK_NODES + 3 <= max(n_nodes_target, BLOCK_NODES + 6):
        x = _inception_block(b, x, 8, f"block{i}", residual=True)
        i += 1
    _head(b, x, 4)
    return b.build(name=f"synthetic_{n_nodes_target}")
