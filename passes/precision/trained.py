"""Small models trained on scikit-learn's bundled data, for precision tests that need real accuracy.

Random weights say nothing about accuracy, so the precision tests use these: a conv net with
BatchNormalization, a residual Add and a Concat on the 8x8 handwritten digits, and an MLP on the
breast-cancer table. Training is numpy only (no torch, no onnxruntime), seeded, a few seconds at
most; the held-out split is fixed (``train_test_split``, ``random_state=0``, stratified).

The conv net's convolutions keep their seeded random filters (BatchNormalization statistics are
measured on the training images, so BN is real); its classifier is trained by gradient descent.
The MLP is trained end to end.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import onnx
from numpy.lib.stride_tricks import sliding_window_view
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 10  # one onnxruntime accepts (helper.make_model writes a newer one)


@dataclass(frozen=True)
class Trained:
    """A trained model with its data: ``x_train`` doubles as calibration data."""

    model: onnx.ModelProto
    input_name: str
    x_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    def accuracy(self, logits: np.ndarray) -> float:
        """Held-out top-1 accuracy (percent) of ``logits`` computed on ``x_test``."""
        return float((logits.argmax(axis=1) == self.y_test).mean() * 100.0)


def _split(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split
    xa, xb, ya, yb = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    return xa, xb, ya, yb


def _softmax_grad(logits: np.ndarray, y: np.ndarray) -> np.ndarray:
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(len(y)), y] -= 1.0
    return p / len(y)


class _Adam:
    def __init__(self, params: list[np.ndarray], lr: float) -> None:
        self.params, self.lr, self.t = params, lr, 0
        self.m = [np.zeros_like(p) for p in params]
        self.v = [np.zeros_like(p) for p in params]

    def step(self, grads: list[np.ndarray]) -> None:
        self.t += 1
        for p, g, m, v in zip(self.params, grads, self.m, self.v):
            m *= 0.9
            m += 0.1 * g
            v *= 0.999
            v += 0.001 * g * g
            p -= self.lr * (m / (1 - 0.9 ** self.t)) / (np.sqrt(v / (1 - 0.999 ** self.t)) + 1e-8)


def _model(nodes: list[onnx.NodeProto], inits: dict[str, np.ndarray], inp: tuple[str, list], out: tuple[str, list],
           name: str) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, name, [helper.make_tensor_value_info(inp[0], TensorProto.FLOAT, inp[1])],
        [helper.make_tensor_value_info(out[0], TensorProto.FLOAT, out[1])],
        [numpy_helper.from_array(np.ascontiguousarray(v, dtype=np.float32), k) for k, v in sorted(inits.items())])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="optgraph-tests")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


# --- the digits conv net --------------------------------------------------------------------
def _conv(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """NCHW convolution, stride 1, 'same' padding."""
    k = w.shape[2]
    xp = np.pad(x, ((0, 0), (0, 0), (k // 2, k // 2), (k // 2, k // 2)))
    win = sliding_window_view(xp, (k, k), axis=(2, 3))  # N, C, H, W, k, k
    return np.einsum("nchwij,ocij->nohw", win, w, optimize=True) + b[None, :, None, None]


def _bn_params(y: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    c = y.shape[1]
    return {"scale": rng.uniform(0.8, 1.2, c), "bias": rng.uniform(-0.1, 0.1, c),
            "mean": y.mean(axis=(0, 2, 3)), "var": y.var(axis=(0, 2, 3)) + 1e-3}


def _bn(y: np.ndarray, p: dict[str, np.ndarray]) -> np.ndarray:
    s = (p["scale"] / np.sqrt(p["var"] + 1e-5))[None, :, None, None]
    return (y - p["mean"][None, :, None, None]) * s + p["bias"][None, :, None, None]


@functools.cache
def digits_cnn() -> Trained:
    """Conv+BN+ReLU, a residual block (Conv+BN, Add, ReLU), a 1x1 branch concatenated with it,
    MaxPool, Flatten and a trained Gemm classifier; input ``x`` [N,1,8,8] scaled to [0,1]."""
    from sklearn.datasets import load_digits
    data = load_digits()
    x = (data.images / 16.0).astype(np.float32)[:, None]
    xa, xb, ya, yb = _split(x, data.target)
    rng = np.random.default_rng(0)
    c = 8
    w1, b1 = rng.normal(0, np.sqrt(2 / 9), (c, 1, 3, 3)), rng.normal(0, 0.1, c)
    w2, b2 = rng.normal(0, np.sqrt(2 / (9 * c)), (c, c, 3, 3)), rng.normal(0, 0.1, c)
    w3, b3 = rng.normal(0, np.sqrt(2 / c), (c, c, 1, 1)), rng.normal(0, 0.1, c)

    def features(v: np.ndarray, bn: tuple[dict[str, np.ndarray], dict[str, np.ndarray]] | None = None
                 ) -> tuple[np.ndarray, tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]:
        y1 = _conv(v, w1, b1)
        p1 = bn[0] if bn else _bn_params(y1, rng)
        a = np.maximum(_bn(y1, p1), 0)
        y2 = _conv(a, w2, b2)
        p2 = bn[1] if bn else _bn_params(y2, rng)
        r = np.maximum(_bn(y2, p2) + a, 0)
        cat = np.concatenate([r, np.maximum(_conv(r, w3, b3), 0)], axis=1)
        n = cat.shape[0]
        pooled = cat.reshape(n, 2 * c, 4, 2, 4, 2).max(axis=(3, 5))
        return pooled.reshape(n, -1), (p1, p2)

    fa, bn = features(xa.astype(np.float64))
    wg = np.zeros((fa.shape[1], 10))
    bg = np.zeros(10)
    opt = _Adam([wg, bg], 0.01)
    for _ in range(300):
        g = _softmax_grad(fa @ wg + bg, ya)
        opt.step([fa.T @ g + 1e-4 * wg, g.sum(axis=0)])

    inits: dict[str, np.ndarray] = {"w1": w1, "b1": b1, "w2": w2, "b2": b2, "w3": w3, "b3": b3,
                                    "fc_w": wg.T, "fc_b": bg}
    for i, p in enumerate(bn, 1):
        inits.update({f"bn{i}_{k}": v for k, v in p.items()})
    conv = functools.partial(helper.make_node, "Conv")

    def bn_node(i: int, x_: str, y_: str) -> onnx.NodeProto:
        return helper.make_node("BatchNormalization", [x_, *(f"bn{i}_{k}" for k in ("scale", "bias", "mean", "var"))],
                                [y_], name=f"bn{i}", epsilon=1e-5)

    nodes = [
        conv(["x", "w1", "b1"], ["c1"], name="conv1", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        bn_node(1, "c1", "n1"), helper.make_node("Relu", ["n1"], ["a"], name="relu1"),
        conv(["a", "w2", "b2"], ["c2"], name="conv2", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        bn_node(2, "c2", "n2"), helper.make_node("Add", ["n2", "a"], ["s"], name="residual"),
        helper.make_node("Relu", ["s"], ["r"], name="relu2"),
        conv(["r", "w3", "b3"], ["c3"], name="conv3", kernel_shape=[1, 1]),
        helper.make_node("Relu", ["c3"], ["a3"], name="relu3"),
        helper.make_node("Concat", ["r", "a3"], ["cat"], name="concat", axis=1),
        helper.make_node("MaxPool", ["cat"], ["pool"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["pool"], ["flat"], name="flatten", axis=1),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], name="fc", transB=1),
    ]
    model = _model(nodes, inits, ("x", ["N", 1, 8, 8]), ("logits", ["N", 10]), "digits_cnn")
    return Trained(model, "x", xa, xb, yb)


# --- the tabular MLP ------------------------------------------------------------------------
@functools.cache
def tabular_mlp() -> Trained:
    """Gemm+ReLU, Gemm+ReLU, Gemm on the breast-cancer table (30 standardized features, 2 classes;
    the standardization is the model's first Sub and Div)."""
    from sklearn.datasets import load_breast_cancer
    data = load_breast_cancer()
    xa, xb, ya, yb = _split(data.data.astype(np.float32), data.target)
    mean, std = xa.mean(axis=0), xa.std(axis=0) + 1e-6
    z = (xa - mean) / std
    rng = np.random.default_rng(1)
    sizes = [30, 32, 16, 2]
    ws = [rng.normal(0, np.sqrt(2 / a), (a, b)) for a, b in zip(sizes, sizes[1:])]
    bs = [np.zeros(b) for b in sizes[1:]]
    opt = _Adam([*ws, *bs], 0.01)
    for _ in range(300):
        acts = [z]
        for i, (w, b) in enumerate(zip(ws, bs)):
            h = acts[-1] @ w + b
            acts.append(np.maximum(h, 0) if i < len(ws) - 1 else h)
        g = _softmax_grad(acts[-1], ya)
        gw, gb = [], []
        for i in reversed(range(len(ws))):
            gw.insert(0, acts[i].T @ g + 1e-4 * ws[i])
            gb.insert(0, g.sum(axis=0))
            g = (g @ ws[i].T) * (acts[i] > 0) if i else g
        opt.step([*gw, *gb])

    inits = {"mean": mean, "std": std}
    nodes = [helper.make_node("Sub", ["x", "mean"], ["centered"], name="center"),
             helper.make_node("Div", ["centered", "std"], ["z"], name="scale")]
    prev = "z"
    for i, (w, b) in enumerate(zip(ws, bs), 1):
        inits[f"fc{i}_w"], inits[f"fc{i}_b"] = w, b
        out = "logits" if i == len(ws) else f"h{i}"
        nodes.append(helper.make_node("Gemm", [prev, f"fc{i}_w", f"fc{i}_b"], [out if i == len(ws) else f"g{i}"],
                                      name=f"fc{i}"))
        if i < len(ws):
            nodes.append(helper.make_node("Relu", [f"g{i}"], [out], name=f"relu{i}"))
        prev = out
    model = _model(nodes, inits, ("x", ["N", 30]), ("logits", ["N", 2]), "tabular_mlp")
    return Trained(model, "x", xa, xb, yb)
