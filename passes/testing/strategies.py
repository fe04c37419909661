"""Hypothesis strategies for small, valid, runnable ONNX models full of optimization patterns.

``models()`` draws an opset, a graph input (an image ``[B, C, H, W]``, features ``[B, F]`` or a
sequence ``[B, T, F]``; ``B`` may be the symbolic ``"N"``), then applies single ops (``OPS``) and
multi-node patterns (``MOTIFS``) to recently made values until it reaches its node budget. Every
value left unused becomes a graph output. Sizes stay tiny so each model runs in milliseconds.

A motif is a plain function ``(draw, builder, value) -> value``: it adds nodes consuming
``value`` through the GraphBuilder and returns the value it made. Raise NotApplicable (or call
``builder.require``) when ``value`` does not fit; the builder rolls back what the motif added.
Select or extend the catalog per test::

    def swish(draw, b, v):
        return b.op("Mul", [v, b.op("Sigmoid", [v])])

    @given(models(motifs={**MOTIFS, "swish": swish}, ops=["conv", "activation"]))
    def test_my_pass(model): check_pass("my-pass", model)
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

FLOAT = TensorProto.FLOAT
INT64_MAX = np.iinfo(np.int64).max
DEFAULT_OPSETS = tuple(range(11, 22))

Dim = int | str
Shape = tuple[Dim, ...]
DrawFn = Callable[[st.SearchStrategy[Any]], Any]
Motif = Callable[[DrawFn, "GraphBuilder", str], str]


@functools.cache
def _schema(op_type: str, opset: int) -> onnx.defs.OpSchema:
    return onnx.defs.get_schema(op_type, opset)


class NotApplicable(Exception):
    """The motif does not fit the value it was given (wrong rank, sizes too small, ...)."""


class GraphBuilder:
    """Builds one ONNX graph, tracking every value's dtype and shape so operands always fit.

    For motif authors:
      ``opset``            the default domain's opset: pick the op form it needs.
      ``rng``              a seeded numpy Generator for weights (``weight`` draws from it).
      ``shape(v)``, ``dtype(v)``, ``rank(v)``: what is known about value ``v`` (a name).
      ``op(op_type, inputs, outputs=1, shape=None, **attrs)``: add a node; returns the output name
                           (a list when ``outputs > 1``). Output types come from ONNX shape
                           inference; pass ``shape`` where it cannot know (computed shapes).
      ``const(array, form)``: a constant as an initializer, a Constant node (``value`` or
                           ``value_floats``/``value_float`` form) or an initializer behind Identity.
      ``pool``             float values made so far; the generator picks motif inputs from its end.
      ``mark_output(v)``, ``mark_dead(v)``: make ``v`` a graph output / leave it unused on purpose.
    """

    CONST_FORMS = ("initializer", "constant", "constant_floats", "identity")

    def __init__(self, opset: int, *, seed: int = 0, value_info: bool = True) -> None:
        self.opset = opset
        self.rng = np.random.default_rng(seed)
        self.value_info = value_info
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.inputs: list[str] = []
        self.outputs: list[str] = []
        self.pool: list[str] = []
        self.dead: list[str] = []
        self.applied: list[str] = []  # catalog entries used, in order (written to the doc_string)
        self.types: dict[str, tuple[int, Shape]] = {}
        self.consts: dict[str, np.ndarray] = {}
        self._type_protos: dict[str, onnx.TypeProto] = {}
        self._opset_imports = [helper.make_opsetid("", opset)]
        self._count = 0

    # --- what is known about values ----------------------------------------------------------
    def shape(self, v: str) -> Shape:
        return self.types[v][1]

    def dtype(self, v: str) -> int:
        return self.types[v][0]

    def rank(self, v: str) -> int:
        return len(self.types[v][1])

    def _type_proto(self, v: str) -> onnx.TypeProto:
        tp = self._type_protos.get(v)
        if tp is None:
            tp = self._type_protos[v] = helper.make_tensor_type_proto(*self.types[v])
        return tp

    def require(self, condition: bool) -> None:
        if not condition:
            raise NotApplicable

    def fresh(self, prefix: str) -> str:
        while True:
            self._count += 1
            if f"{prefix}{self._count}" not in self.types:
                return f"{prefix}{self._count}"

    # --- making values -------------------------------------------------------------------------
    def _claim(self, name: str | None, default: str) -> str:
        """``name`` if given (it must be new), else a fresh name from ``default``."""
        if name is None:
            return self.fresh(default)
        if name in self.types:
            raise ValueError(f"value name '{name}' is already used")
        return name

    def input(self, shape: Shape, dtype: int = FLOAT, *, name: str | None = None) -> str:
        name = self._claim(name or f"input{len(self.inputs)}", "input")
        self.inputs.append(name)
        self.types[name] = (dtype, tuple(shape))
        self.pool.append(name)
        return name

    def weight(self, shape: Sequence[int], fan_in: int | None = None) -> np.ndarray:
        """Random float32 weights scaled by 1/sqrt(fan_in), so activations stay near unit size."""
        fan = fan_in or (int(np.prod(shape[1:])) if len(shape) > 1 else 1)
        return (self.rng.standard_normal(tuple(shape)) / np.sqrt(max(fan, 1))).astype(np.float32)

    def const(self, array: np.ndarray, form: str = "initializer", *, name: str | None = None) -> str:
        """A constant spelled in one of CONST_FORMS (value_floats needs opset 12 and a float vector)."""
        array = np.asarray(array)
        if form == "constant_floats" and not (self.opset >= 12 and array.dtype == np.float32 and array.ndim <= 1):
            form = "constant"
        if form in ("initializer", "identity"):
            init = self._claim(name if form == "initializer" else None, "c")
            self.initializers.append(numpy_helper.from_array(array, init))
            self.types[init] = (helper.np_dtype_to_tensor_dtype(array.dtype), array.shape)
            self.consts[init] = array
            if form == "initializer":
                return init
            out = self.op("Identity", [init], name=name)
        elif form == "constant":
            out = self.op("Constant", [], name=name, value=numpy_helper.from_array(array))
        elif form == "constant_floats":
            values = array.tolist()
            out = self.op("Constant", [], name=name,
                          **({"value_float": values} if array.ndim == 0 else {"value_floats": values}))
        else:
            raise ValueError(f"unknown constant form '{form}' (forms: {', '.join(self.CONST_FORMS)})")
        self.consts[out] = array
        if self.pool and self.pool[-1] == out:
            self.pool.pop()  # constants are operands, not activations to build on
        return out

    def op(self, op_type: str, inputs: Sequence[str], *, outputs: int = 1, shape: Shape | None = None,
           name: str | None = None, **attrs: Any) -> Any:
        """Add a node; "" in ``inputs`` omits an optional input. Returns the output name(s).

        ``name`` names the node and its output (outputs ``name_0``, ``name_1``, ... when several)."""
        if name is None:
            outs = [self.fresh("v") for _ in range(outputs)]
        else:
            outs = [self._claim(name if outputs == 1 else f"{name}_{k}", "") for k in range(outputs)]
        node = helper.make_node(op_type, list(inputs), outs, name=name or self.fresh(f"{op_type.lower()}_"), **attrs)
        in_types = {i: self._type_proto(i) for i in inputs if i}
        # only integer constants (shapes, axes, pads, sizes) can change an output shape
        data = {i: numpy_helper.from_array(self.consts[i]) for i in inputs
                if i in self.consts and self.consts[i].dtype.kind in "iu"}
        try:
            inferred = onnx.shape_inference.infer_node_outputs(
                _schema(op_type, self.opset), node, in_types, data, opset_imports=self._opset_imports)
        except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError):
            raise NotApplicable from None
        for k, name in enumerate(outs):
            tt = inferred[name].tensor_type
            dims: Shape | None = shape if shape is not None and k == 0 else None
            if dims is None:
                self.require(tt.HasField("shape"))
                dims = tuple(d.dim_value if d.HasField("dim_value") else d.dim_param for d in tt.shape.dim)
                self.require(all(d != "" and d != 0 for d in dims))  # unknown or empty: not what we want
            self.types[name] = (tt.elem_type, tuple(dims))
            if tt.elem_type == FLOAT:
                self.pool.append(name)
        self.nodes.append(node)
        return outs[0] if outputs == 1 else outs

    def mark_output(self, v: str) -> None:
        if v not in self.outputs and v not in self.inputs:
            self.outputs.append(v)

    def mark_dead(self, v: str) -> None:
        """Leave ``v`` unused on purpose: it never becomes a graph output (food for dead-code removal)."""
        self.dead.append(v)
        self.pool = [p for p in self.pool if p != v]

    # --- trying motifs --------------------------------------------------------------------------
    def checkpoint(self) -> tuple[Any, ...]:
        return (len(self.nodes), len(self.initializers), list(self.pool), list(self.outputs), list(self.dead))

    def rollback(self, cp: tuple[Any, ...]) -> None:
        n_nodes, n_inits, self.pool, self.outputs, self.dead = cp
        del self.nodes[n_nodes:]
        del self.initializers[n_inits:]

    def graph_outputs(self) -> list[str]:
        """The marked outputs, then every pool value no live node consumes."""
        dead = set(self.dead)
        used = {i for n in self.nodes if not dead.issuperset(n.output) for i in n.input}
        outputs = list(self.outputs)
        for v in dict.fromkeys(self.pool):
            if v not in used and v not in self.inputs and v not in dead and v not in outputs:
                outputs.append(v)
        return outputs

    def build(self, *, name: str = "generated", ir_version: int | None = None) -> onnx.ModelProto:
        outputs = self.graph_outputs()
        info = lambda v: helper.make_tensor_value_info(v, *self.types[v])  # noqa: E731
        pinned = {*self.inputs, *outputs}
        inner = [o for n in self.nodes for o in n.output if o and o not in pinned] if self.value_info else []
        graph = helper.make_graph(list(self.nodes), name, [info(v) for v in self.inputs],
                                  [info(v) for v in outputs], initializer=list(self.initializers),
                                  value_info=[info(v) for v in inner])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)],
                                  ir_version=ir_version or (8 if self.opset <= 18 else 9),
                                  producer_name="optgraph.passes.testing")
        if self.applied:
            model.doc_string = "applied: " + ", ".join(self.applied)
        return model


# ------------------------------------------------------------------------------------------------
# shared pieces


def _int_dims(b: GraphBuilder, v: str, start: int = 0) -> tuple[int, ...]:
    dims = b.shape(v)[start:]
    b.require(all(isinstance(d, int) for d in dims))
    return tuple(int(d) for d in dims)  # type: ignore[arg-type]


def param(draw: DrawFn, b: GraphBuilder, array: np.ndarray) -> str:
    """A constant operand in a drawn spelling (mostly an initializer, as exporters write them)."""
    form = draw(st.sampled_from(("initializer", "initializer", "constant", "constant_floats", "identity")))
    return b.const(array, form)


def ints(draw: DrawFn, b: GraphBuilder, values: Sequence[int]) -> str:
    return param(draw, b, np.array(values, dtype=np.int64))


def draw_axis(draw: DrawFn, b: GraphBuilder, v: str, *, min_size: int = 1) -> int:
    """An axis of ``v`` with a known size >= ``min_size`` (channels first: what passes see most)."""
    axes = [i for i, d in enumerate(b.shape(v)) if isinstance(d, int) and d >= min_size]
    b.require(bool(axes))
    return draw(st.sampled_from(sorted(axes, key=lambda i: i != 1)))


def _window_out(n: int, k: int, s: int, p0: int, p1: int, d: int = 1) -> int:
    span = n + p0 + p1 - d * (k - 1) - 1
    if span < 0:
        raise NotApplicable
    return span // s + 1


def axis_attr_or_input(draw: DrawFn, b: GraphBuilder, op_type: str, v: str, axes: list[int] | None,
                        input_from: int, **attrs: Any) -> str:
    """Ops whose axes moved from an attribute to an input at ``input_from`` (Squeeze, ReduceMean, ...)."""
    if axes is None:
        return b.op(op_type, [v], **attrs)
    if b.opset >= input_from:
        return b.op(op_type, [v, ints(draw, b, axes)], **attrs)
    return b.op(op_type, [v], axes=axes, **attrs)


# ------------------------------------------------------------------------------------------------
# single ops (OPS)


def conv(draw: DrawFn, b: GraphBuilder, v: str, *, kernel: int | None = None, stride: int | None = None,
         pads: Sequence[int] | None = None, dilation: int | None = None, group: int | None = None,
         out_channels: int | None = None, bias: bool | None = None, weight: str | None = None,
         form: str | None = None) -> str:
    """Conv on a [B, C, H, W] value; unset parameters are drawn (groups incl. depthwise)."""
    b.require(b.rank(v) == 4)
    c, h, w = _int_dims(b, v, 1)
    if group is None:
        group = draw(st.sampled_from([1, 1, c] + [g for g in (2, 3) if c % g == 0 and g < c]))
    b.require(c % group == 0)
    if weight is not None:
        out_channels = int(b.shape(weight)[0])
    elif out_channels is None:
        out_channels = group * draw(st.integers(1, 2 if group == c else max(1, 8 // group)))
    k = kernel if kernel is not None else draw(st.sampled_from((1, 3)))
    d = dilation if dilation is not None else (draw(st.sampled_from((1, 1, 2))) if k > 1 else 1)
    s = stride if stride is not None else draw(st.sampled_from((1, 1, 2)))
    if pads is None:
        half = d * (k // 2)
        style = draw(st.sampled_from(("same", "zero", "asymmetric")))
        if style == "asymmetric":
            pads = [draw(st.integers(0, max(half, 1))) for _ in range(4)]
        else:
            pads = [half if style == "same" else 0] * 4
    _window_out(h, k, s, pads[0], pads[2], d)
    _window_out(w, k, s, pads[1], pads[3], d)
    if weight is None:
        array = b.weight([out_channels, c // group, k, k])
        weight = b.const(array, form) if form else param(draw, b, array)
    inputs = [v, weight]
    if bias if bias is not None else draw(st.booleans()):
        array = (0.1 * b.rng.standard_normal(out_channels)).astype(np.float32)
        inputs.append(b.const(array, form) if form else param(draw, b, array))
    explicit = draw(st.booleans())  # exporters differ in writing default attributes
    attrs: dict[str, Any] = {"kernel_shape": [k, k]} if explicit or draw(st.booleans()) else {}
    for key, value, default in (("strides", [s, s], [1, 1]), ("pads", list(pads), [0] * 4),
                                ("dilations", [d, d], [1, 1]), ("group", group, 1)):
        if explicit or value != default:
            attrs[key] = value
    return b.op("Conv", inputs, **attrs)


def conv_transpose(draw: DrawFn, b: GraphBuilder, v: str) -> str:
    b.require(b.rank(v) == 4)
    c, _, _ = _int_dims(b, v, 1)
    k, s = draw(st.sampled_from((1, 2, 3))), draw(st.sampled_from((1, 2)))
    p = draw(st.integers(0, (k - 1) // 2))
    out_pad = draw(st.integers(0, s - 1))
    out_channels = draw(st.integers(1, 6))
    inputs = [v, param(draw, b, b.weight([c, out_channels, k, k], fan_in=c * k * k))]
    if draw(st.booleans()):
        inputs.append(param(draw, b, (0.1 * b.rng.standard_normal(out_channels)).astype(np.float32)))
    attrs: dict[str, Any] = {"kernel_shape": [k, k], "strides": [s, s], "pads": [p] * 4}
    if out_pad:
        attrs["output_padding"] = [out_pad, out_pad]
    return b.op("ConvTranspose", inputs, **attrs)


def batchnorm(draw: DrawFn, b: GraphBuilder, v: str, *, form: str | None = None) -> str:
    """Inference BatchNormalization with non-trivial scale, bias, mean and variance."""
    b.require(b.rank(v) >= 2 and isinstance(b.shape(v)[1], int))
    c = int(b.shape(v)[1])
    r = b.rng
    arrays = [r.uniform(0.5, 1.5, c) * r.choice([-1.0, 1.0], c), r.normal(0, 0.5, c), r.normal(0, 0.5, c),
              r.uniform(0.5, 2.0, c)]
    params = [b.const(a.astype(np.float32), form) if form else param(draw, b, a.astype(np.float32)) for a in arrays]
    eps = draw(st.sampled_from((None, 1e-5, 1e-3)))
    return b.op("BatchNormalization", [v, *params], **({} if eps is None else {"epsilon": eps}))


def activation(draw: DrawFn, b: GraphBuilder, v: str) -> str:
    """Relu, LeakyRelu, Clip (attribute form before opset 11, inputs after), Sigmoid, HardSigmoid, Tanh."""
    kind = draw(st.sampled_from(("Relu", "Relu", "LeakyRelu", "Clip", "Sigmoid", "HardSigmoid", "Tanh")))
    if kind == "LeakyRelu":
        alpha = draw(st.sampled_from((None, 0.1, 0.2)))
        return b.op(kind, [v], **({} if alpha is None else {"alpha": alpha}))
    if kind == "HardSigmoid":
        return b.op(kind, [v], **draw(st.sampled_from(({}, {"alpha": 1 / 6, "beta": 0.5}))))
    if kind == "Clip":
        lo, hi = draw(st.sampled_from(((0.0, 6.0), (-1.0, 1.0), (0.0, None), (None, 1.0))))
        if b.opset < 11:
            return b.op(kind, [v], **{k: x for k, x in (("min", lo), ("max", hi)) if x is not None})
        bounds = [param(draw, b, np.array(x, np.float32)) if x is not None else "" for x in (lo, hi)]
        return b.op(kind, [v, *bounds[: 2 if hi is not None else 1]])
    return b.op(kind, [v])


def _broadcast_const(draw: DrawFn, b: GraphBuilder, v: str, fill: Callable[[tuple[int, ...]], np.ndarray]) -> str:
    """A constant that broadcasts to ``v``'s shape without growing it: scalar, per-channel, last dim, or full."""
    shape = b.shape(v)
    options: list[tuple[int, ...]] = [()]
    if shape and isinstance(shape[-1], int):
        options.append((shape[-1],))
    if len(shape) == 4 and isinstance(shape[1], int):
        options += [(shape[1], 1, 1), (1, shape[1], 1, 1)]
    if len(shape) >= 2 and all(isinstance(d, int) for d in shape[1:]):
        options.append(tuple(shape[1:]))  # type: ignore[arg-type]
    return param(draw, b, fill(draw(st.sampled_from(options))).astype(np.float32))


def binary(draw: DrawFn, b: GraphBuilder, v: str) -> str:
    """Add/Mul/Sub/Div with a broadcast constant or another value of the same shape."""
    op = draw(st.sampled_from(("Add", "Mul", "Sub", "Div")))
    peers = [u for u in b.pool if u != v and b.types[u] == b.types[v]]
    if op != "Div" and peers and draw(st.booleans()):
        return b.op(op, [v, draw(st.sampled_from(peers))])
    if op == "Div":  # divisors away from zero keep the output well conditioned
        c = _broadcast_const(draw, b, v, lambda s: b.rng.uniform(0.5, 2.0, s) * b.rng.choice([-1.0, 1.0], s))
        return b.op(op, [v, c])
    c = _broadcast_const(draw, b, v, lambda s: b.rng.standard_normal(s))
    return b.op(op, [c, v] if draw(st.booleans()) else [v, c])


def concat(draw: DrawFn, b: GraphBuilder, v: str) -> str:
    """Concat ``v`` with 1-2 values (``v`` itself included) that match it except on the axis."""
    shape = b.shape(v)
    axis = draw_axis(draw, b, v)

    def fits(u: str) -> bool:
        s = b.shape(u)
        return b.dtype(u) == FLOAT and len(s) == len(shape) and all(x == y for i, (x, y) in enumerate(zip(s, shape))
                                                                    if i != axis)
    partners = [u for u in b.pool if fits(u)]
    pieces = [v, *[draw(st.sampled_from(partners)) for _ in range(draw(st.integers(1, 2)))]]
    pieces = draw(st.permutations(pieces))
    return b.op("Concat", pieces, axis=axis - len(shape) if draw(st.booleans()) else axis)


def split_op(draw: DrawFn, b: GraphBuilder, v: str, axis: int, sizes: Sequence[int]) -> list[str]:
    """Split in the opset's form: ``split`` attribute before 13, input from 13 (num_outputs from 18)."""
    n = len(sizes)
    equal = len(set(sizes)) == 1 and draw(st.booleans())  # equal pieces may omit the sizes
    if b.opset < 13:
        return b.op("Split", [v], outputs=n, axis=axis, **({} if equal else {"split": list(sizes)}))
    if equal:
        return b.op("Split", [v], outputs=n, axis=axis, **({"num_outputs": n} if b.opset >= 18 else {}))
    return b.op("Split", [v, ints(draw, b, sizes)], outputs=n, axis=axis)


def split(draw: DrawFn, b: GraphBuilder, v: str) -> str:
    axis = draw_axis(draw, b, v, min_size=2)
    n = int(b.shape(v)[axis])
    k = draw(st.integers(2, min(4, n)))
    if n % k == 0 and draw(st.booleans()):
        sizes = [n // k] * k
    else:
        cuts = sorted(draw(st.lists(st.integers(1, n - 1), min_size=k - 1, max_size=k - 1, unique=True)))
        sizes = [e - s for s, e in zip([0, *cuts], [*cuts, n])]
    return draw(st.sampled_from(split_op(draw, b, v, axis, sizes)))


def slice_(draw: DrawFn, b: GraphBuilder, v: str) -> str:
    shape = b.shape(v)
    axis = draw_axis(draw, b, v, min_size=2)
    n = int(shape[axis])
    start = draw(st.integers(0, n - 1))
    end = draw(st.integers(start + 1, n))
    step = draw(st.sampled_from((1, 1, 2)))
    start_v = start - n if draw(st.booleans()) else start
    end_v = INT64_MAX if end == n and draw(st.booleans()) else end
    inputs = [v, ints(draw, b, [start_v]), ints(draw, b, [end_v]),
              ints(draw, b, [axis - len(shape) if draw(st.booleans()) else axis])]
    if step != 1 or draw(st.booleans()):
        inputs.append(ints(draw, b, [step]))
    return b.op("Slice", inputs)


def reshape(draw: DrawFn, b: GraphBuilder, v: str, *, target: Shape | None = None) -> str:
    """Reshape (merge two dims, split one, or keep the shape), spelled with literal, 0 and -1 entries."""
    shape = b.shape(v)
    b.require(len(shape) >= 1)
    if target is None:
        how = draw(st.sampled_from(("merge", "split", "same")))
        ints_at = [i for i, d in enumerate(shape) if isinstance(d, int)]
        if how == "merge":
            pairs = [i for i in ints_at if i + 1 in ints_at]
            b.require(bool(pairs))
            i = draw(st.sampled_from(pairs))
            target = (*shape[:i], shape[i] * shape[i + 1], *shape[i + 2:])  # type: ignore[operator]
        elif how == "split":
            options = [(i, f) for i in ints_at for f in range(2, int(shape[i])) if int(shape[i]) % f == 0]
            b.require(bool(options))
            i, f = draw(st.sampled_from(options))
            target = (*shape[:i], f, int(shape[i]) // f, *shape[i + 1:])
        else:
            target = shape
    spec: list[int] = []
    for i, d in enumerate(target):
        if isinstance(d, str):
            b.require(i < len(shape) and shape[i] == d)  # a symbolic dim can only be copied in place
            spec.append(0)
        elif i < len(shape) and shape[i] == d and draw(st.booleans()):
            spec.append(0)
        else:
            spec.append(int(d))
    literal = [i for i, s in enumerate(spec) if s > 0]
    if literal and not any(isinstance(d, str) for d in target) and draw(st.booleans()):
        spec[draw(st.sampled_from(literal))] = -1
    return b.op("Reshape", [v, ints(draw, b, spec)], shape=tuple(target))


def transpose(draw: DrawFn, b: GraphBuilder, v: str, *, perm: Sequence[int] | None = None) -> str:
    rank = b.rank(v)
    b.require(rank >= 2)
    perm = list(perm) if perm is not None else draw(st.permutations(range(rank)))
    if perm == list(range(rank))[::-1] and draw(st.booleans()):
        return b.op("Transpose", [v])  # no perm attribute: reverse the dims
    return b.op("Transpose", [v], perm=perm)


def flatten(draw: DrawFn, b: GraphBuilder, v: str) -> str:
    rank = b.rank(v)
    axis = draw(st.integers(0, rank))
    return b.op("Flatten", [v], axis=axis - rank if axis and draw(st.booleans()) else axis)


def matmul(draw: DrawFn, b: GraphBuilder, v: str, *, out_features: int | None = None, weight: str | None = None) -> str:
    b.require(b.rank(v) >= 2)
    (k,) = _int_dims(b, v, b.rank(v) - 1)
    m = out_features or draw(st.integers(1, 8))
    return b.op("MatMul", [v, weight or param(draw, b, b.weight([k, m], fan_in=k))])


def gemm(draw: DrawFn, b: GraphBuilder, v: str, *, out_features: int | None = None) -> str:
    """Gemm on [B, K] (transB=1 as PyTorch exports it, or a [K, M] weight), bias in any broadcast shape."""
    b.require(b.rank(v) == 2)
    (k,) = _int_dims(b, v, 1)
    m = out_features or draw(st.integers(1, 8))
    trans_b = draw(st.booleans())
    w = b.weight([m, k] if trans_b else [k, m], fan_in=k)
    inputs = [v, param(draw, b, w)]
    bias_shape = draw(st.sampled_from(((m,), (1, m), (), None)))
    if bias_shape is not None:
        inputs.append(param(draw, b, (0.1 * b.rng.standard_normal(bias_shape)).astype(np.float32)))
    attrs: dict[str, Any] = {"transB": 1} if trans_b else {}
    if draw(st.booleans()):
        attrs.update(alpha=draw(st.sampled_from((0.5, 2.0))), beta=draw(st.sampled_from((0.5, 2.0))))
    return b.op("Gemm", inputs, **attrs)


def identity(draw: DrawFn, b: GraphBuilder, v: str) -> str:
    return b.op("Identity", [v])


def dropout(draw: DrawFn, b: GraphBuilder, v: str) -> str:
    """Inference Dropout (an identity); ratio as attribute before opset 12, input after; maybe a mask."""
    outputs = draw(st.sampled_from((1, 1, 2)))
    if b.opset < 12:
        inputs, attrs = [v], {"ratio": 0.3}
    else:
        inputs, attrs = [v, param(draw, b, np.array(0.3, np.float32))] if draw(st.booleans()) else [v], {}
    out = b.op("Dropout", inputs, outputs=outputs, **attrs)
    return out if outputs == 1 else out[0]


def unsqueeze(draw: DrawFn, b: GraphBuilder, v: str) -> str:
    rank = b.rank(v)
    b.require(rank <= 4)
    axis = draw(st.integers(-(rank + 1), rank))
    return axis_attr_or_input(draw, b, "Unsqueeze", v, [axis], 13)


def squeeze(draw: DrawFn, b: GraphBuilder, v: str) -> str:
    """Squeeze given size-1 axes, or (axes omitted) every size-1 axis when all sizes are known."""
    shape = b.shape(v)
    ones = [i for i, d in enumerate(shape) if d == 1]
    b.require(bool(ones))
    if len(ones) < len(shape) and all(isinstance(d, int) for d in shape) and draw(st.booleans()):
        return axis_attr_or_input(draw, b, "Squeeze", v, None, 13)
    axes = draw(st.lists(st.sampled_from(ones), min_size=1, unique=True))
    return axis_attr_or_input(draw, b, "Squeeze", v, sorted(axes), 13)


def reduce_mean(draw: DrawFn, b: GraphBuilder, v: str) -> str:
    """ReduceMean (axes attribute before opset 18, input from 18; omitted axes reduce all)."""
    rank = b.rank(v)
    b.require(rank >= 1)
    axes: list[int] | None = sorted(draw(st.lists(st.integers(0, rank - 1), min_size=1, max_size=rank,
                                                  unique=True)))
    keepdims = draw(st.sampled_from((None, 0, 1)))
    if keepdims != 0 and draw(st.integers(0, 3)) == 0:
        axes = None
    b.require(keepdims != 0 or len(axes or ()) < rank)  # keep at least one axis
    if axes and draw(st.booleans()):
        axes = [a - rank for a in axes]
    return axis_attr_or_input(draw, b, "ReduceMean", v, axes, 18,
                               **({} if keepdims is None else {"keepdims": keepdims}))


def pool(draw: DrawFn, b: GraphBuilder, v: str) -> str:
    """GlobalAveragePool, MaxPool or AveragePool on [B, C, H, W]."""
    b.require(b.rank(v) == 4)
    _, h, w = _int_dims(b, v, 1)
    kind = draw(st.sampled_from(("GlobalAveragePool", "MaxPool", "AveragePool")))
    if kind == "GlobalAveragePool":
        return b.op(kind, [v])
    k, s = draw(st.sampled_from((2, 3))), draw(st.sampled_from((1, 2)))
    pads = [draw(st.integers(0, k // 2)) for _ in range(4)]
    sizes = [(h, pads[0], pads[2]), (w, pads[1], pads[3])]
    for n, p0, p1 in sizes:
        _window_out(n, k, s, p0, p1)
    attrs: dict[str, Any] = {"kernel_shape": [k, k], "strides": [s, s], "pads": pads}
    if all((n + p0 + p1 - k) % s == 0 for n, p0, p1 in sizes) and draw(st.booleans()):
        attrs["ceil_mode"] = 1  # only where ceil and floor agree, so no window starts in the padding
    if kind == "AveragePool" and draw(st.booleans()):
        attrs["count_include_pad"] = 1
    return b.op(kind, [v], **attrs)


def pad(draw: DrawFn, b: GraphBuilder, v: str, *, pads: Sequence[int] | None = None) -> str:
    """Pad the last two non-batch axes (pads attribute before opset 11, inputs after)."""
    shape = b.shape(v)
    rank = len(shape)
    b.require(rank >= 2)
    mode = draw(st.sampled_from(("constant", "constant", "reflect", "edge")))
    if pads is None:
        axes = range(max(1, rank - 2), rank)  # never the batch axis
        before = [draw(st.integers(0, 2)) if i in axes else 0 for i in range(rank)]
        after = [draw(st.integers(0, 2)) if i in axes else 0 for i in range(rank)]
        pads = before + after
        if mode == "reflect":
            b.require(all(isinstance(shape[i], int) and max(before[i], after[i]) < shape[i] for i in axes))
    value = draw(st.sampled_from((None, 0.5))) if mode == "constant" else None
    attrs = {"mode": mode} if mode != "constant" or draw(st.booleans()) else {}
    if b.opset < 11:
        return b.op("Pad", [v], pads=list(pads), **attrs, **({} if value is None else {"value": value}))
    inputs = [v, ints(draw, b, pads)]
    if value is not None:
        inputs.append(param(draw, b, np.array(value, np.float32)))
    return b.op("Pad", inputs, **attrs)


def cast(draw: DrawFn, b: GraphBuilder, v: str) -> str:
    """Cast to the same type, or a round trip through double. (Not float16: its rounding would
    turn a last-bit difference upstream into a 1e-3 one, failing correct rewrites.)"""
    via = draw(st.sampled_from((None, TensorProto.DOUBLE)))
    if via is None:
        return b.op("Cast", [v], to=FLOAT)
    return b.op("Cast", [b.op("Cast", [v], to=via)], to=FLOAT)


OPS: dict[str, Motif] = {  # catalog order matters: shrinking moves toward the first entry
    "conv": conv, "activation": activation, "batchnorm": batchnorm, "binary": binary, "cast": cast,
    "concat": concat, "conv_transpose": conv_transpose, "dropout": dropout, "flatten": flatten, "gemm": gemm,
    "identity": identity, "matmul": matmul, "pad": pad, "pool": pool, "reduce_mean": reduce_mean,
    "reshape": reshape, "slice": slice_, "split": split, "squeeze": squeeze, "transpose": transpose,
    "unsqueeze": unsqueeze,
}


# ------------------------------------------------------------------------------------------------
# motifs: the patterns optimization passes look for


def conv_bn_act(draw: DrawFn, b: GraphBuilder, v: str) -> str:
    """Conv -> BatchNormalization -> (activation)."""
    y = batchnorm(draw, b, conv(draw, b, v))
    return activation(draw, b, y) if draw(st.booleans()) else y


def conv_act(draw: DrawFn, b: GraphBuilder, v: str) -> str:
    return activation(draw, b, conv(draw, b, v))


def constant_params(draw: DrawFn, b: GraphBuilder, v: str) -> str:
    """Conv -> BN whose weights are Constant nodes (value or value_floats) or Identity of initializers."""
    form = draw(st.sampled_from(("constant", "constant_floats", "identity")))
    return batchnorm(draw, b, conv(draw, b, v, form=form), form=form)


def parallel_convs(draw: DrawFn, b: GraphBuilder, v: str) -> str:
    """2-4 convs with the same kernel, stride and pads on one input, maybe concatenated in order."""
    b.require(b.rank(v) == 4)
    k = draw(st.sampled_from((1, 1, 3)))
    s = draw(st.sampled_from((1, 1, 2)))
    p = draw(st.sampled_from((0, k // 2)))
    branches = [conv(draw, b, v, kernel=k, stride=s, pads=[p] * 4, dilation=1, group=1)
                for _ in range(draw(st.integers(2, 4)))]
    if draw(st.booleans()):
        branches = [activation(draw, b, y) if draw(st.booleans()) else y for y in branches]
    if draw(st.booleans()):
        return b.op("Concat", branches, axis=1)
    return branches[-1]


def parallel_matmuls(draw: DrawFn, b: GraphBuilder, v: str) -> str:
    """Q/K/V style: 2-3 MatMul (+ bias Add) or Gemm on one input, maybe concatenated."""
    b.require(b.rank(v) >= 2)
    use_gemm = b.rank(v) == 2 and draw(st.booleans())
    branches = []
    for _ in range(draw(st.integers(2, 3))):
        m = draw(st.integers(1, 6))
        if use_gemm:
            branches.append(gemm(draw, b, v, out_features=m))
            continue
        y = matmul(draw, b, v, out_features=m)
        if draw(st.booleans()):
            y = b.op("Add", [y, param(draw, b, (0.1 * b.rng.standard_normal(m)).astype(np.float32))])
        branches.append(y)
    if draw(st.booleans()):
        return b.op("Concat", branches, axis=-1)
    return branches[0]


def _same_shape_pieces(draw: DrawFn, b: GraphBuilder, v: str, n: int) -> list[str]:
    return [v] + [activation(draw, b, v) for _ in range(n - 1)]


def nested_concat(draw: DrawFn, b: GraphBuilder, v: str) -> str:
    """Concat(Concat(a, b), c) or Concat(a, Concat(b, c)) on one axis."""
    shape = b.shape(v)
    axis = draw_axis(draw, b, v)
    p = _same_shape_pieces(draw, b, v, draw(st.integers(3, 4)))
    if draw(st.booleans()):
        return b.op("Concat", [b.op("Concat", p[:2], axis=axis), *p[2:]], axis=axis)
    return b.op("Concat", [p[0], b.op("Concat", p[1:], axis=axis - len(shape))], axis=axis)


def concat_split(draw: DrawFn, b: GraphBuilder, v: str) -> str:
    """Concat of pieces followed by a Split into exactly those pieces."""
    if b.rank(v) == 4 and draw(st.booleans()):
        pieces = [conv(draw, b, v, kernel=1, stride=1, pads=[0] * 4, group=1) for _ in range(draw(st.integers(2, 3)))]
        axis = 1
    else:
        axis = draw_axis(draw, b, v)
        pieces = _same_shape_pieces(draw, b, v, draw(st.integers(2, 3)))
    sizes = [int(b.shape(p)[axis]) for p in pieces]
    outs = split_op(draw, b, b.op("Concat", pieces, axis=axis), axis, sizes)
    return b.op("Add", [outs[0], outs[-1]]) if len(set(sizes)) == 1 and draw(st.booleans()) else outs[-1]


def shared_weights(draw: DrawFn, b: GraphBuilder, v: str) -> str:
    """One weight initializer used by two convs (on ``v`` and on an activation of it)."""
    b.require(b.rank(v) == 4)
    c = _int_dims(b, v, 1)[0]
    k = draw(st.sampled_from((1, 3)))
    w = b.const(b.weight([draw(st.integers(1, 6)), c, k, k]))
    args = dict(kernel=k, stride=1, pads=[k // 2] * 4, dilation=1, group=1, weight=w)
    y1 = conv(draw, b, v, **args)
    y2 = conv(draw, b, activation(draw, b, v), **args)
    return batchnorm(draw, b, y2) if draw(st.booleans()) else b.op("Add", [y1, y2])


def scaled_layer(draw: DrawFn, b: GraphBuilder, v: str) -> str:
    """A Mul by a constant feeding a Conv, ConvTranspose, MatMul or Gemm: mostly a scalar,
    sometimes per-feature, sometimes also read elsewhere, sometimes the 0.5 that completes a GELU
    (``x * (1 + erf(x / sqrt 2)) * 0.5``, or tanh's form) before the next layer."""
    rank = b.rank(v)
    layers = [f for f, ok in ((conv, rank == 4), (conv_transpose, rank == 4), (matmul, rank >= 2),
                              (gemm, rank == 2)) if ok]
    b.require(bool(layers))
    if draw(st.integers(0, 3)) == 0:
        root2, one = (param(draw, b, np.array(c, np.float32)) for c in (1.4142135, 1.0))
        curve = b.op(draw(st.sampled_from(("Erf", "Tanh"))), [b.op("Div", [v, root2])])
        v = b.op("Mul", [v, b.op("Add", [curve, one])])
    shape = draw(st.sampled_from(((), (), (1,), (1,) * rank, _int_dims(b, v, rank - 1), (1,) * (rank + 1))))
    value = np.full(shape, draw(st.sampled_from((0.5, 0.5, -1.5, 0.0, 3.0e-3))), np.float32)
    if shape and shape[-1] > 1:
        value = value * b.rng.uniform(0.5, 2.0, shape).astype(np.float32)  # per feature: not a scalar
    s = param(draw, b, value)
    y = b.op("Mul", [v, s] if draw(st.booleans()) else [s, v])
    out = draw(st.sampled_from(layers))(draw, b, y)
    if draw(st.integers(0, 4)) == 0:
        b.mark_output(y)  # the scaled value is needed as it is: the Mul must stay
    return out


def slice_chain(draw: DrawFn, b: GraphBuilder, v: str) -> str:
    """``x[:, a::2, b::2]`` as exporters write it: Slices one axis at a time, the first one read by
    one or two Slices (same axis or another), maybe also by something else."""
    y = slice_(draw, b, v)
    outs = [slice_(draw, b, y) for _ in range(draw(st.integers(1, 2)))]
    if draw(st.integers(0, 3)) == 0:
        outs.append(activation(draw, b, y))
    for extra in outs[1:]:
        b.mark_output(extra)
    return outs[0]


def graph_output_inside(draw: DrawFn, b: GraphBuilder, v: str) -> str:
    """A value that is both a graph output and consumed further (conv before its BN, or a no-op)."""
    if b.rank(v) == 4 and draw(st.booleans()):
        y = conv(draw, b, v)
        b.mark_output(y)
        return batchnorm(draw, b, y)
    y = b.op("Identity", [v]) if v in b.inputs or draw(st.booleans()) else v  # an input cannot be an output
    b.mark_output(y)
    return activation(draw, b, y)


def no_op(draw: DrawFn, b: GraphBuilder, v: str) -> str:
    """An op that changes nothing: Identity, Dropout, Cast to the same type, Reshape to the same
    shape, identity Transpose, zero Pad, Add 0 / Sub 0 / Mul 1 / Div 1, Unsqueeze -> Squeeze."""
    rank = b.rank(v)
    kind = draw(st.sampled_from(("identity", "dropout", "cast", "reshape", "transpose", "pad", "add0", "mul1",
                                 "sub0", "div1", "unsqueeze_squeeze")))
    if kind == "identity":
        return b.op("Identity", [v])
    if kind == "dropout":
        return dropout(draw, b, v)
    if kind == "cast":
        return b.op("Cast", [v], to=FLOAT)
    if kind == "reshape":
        return reshape(draw, b, v, target=b.shape(v))
    if kind == "transpose":
        return transpose(draw, b, v, perm=range(rank))
    if kind == "pad":
        return pad(draw, b, v, pads=[0] * (2 * rank))
    if kind == "unsqueeze_squeeze":
        axis = draw(st.integers(0, rank))
        u = axis_attr_or_input(draw, b, "Unsqueeze", v, [axis], 13)
        return axis_attr_or_input(draw, b, "Squeeze", u, [axis], 13)
    op, fill = {"add0": ("Add", 0.0), "sub0": ("Sub", 0.0), "mul1": ("Mul", 1.0), "div1": ("Div", 1.0)}[kind]
    c = _broadcast_const(draw, b, v, lambda s: np.full(s, fill))
    return b.op(op, [c, v] if op in ("Add", "Mul") and draw(st.booleans()) else [v, c])


def duplicate(draw: DrawFn, b: GraphBuilder, v: str) -> str:
    """The same node twice on the same inputs (common-subexpression food), then combined."""
    kinds = ["Relu", "Sigmoid", "Transpose"] + (["Conv"] if b.rank(v) == 4 else []) + ["MatMul"]
    kind = draw(st.sampled_from(kinds))
    if kind == "Conv":
        c = _int_dims(b, v, 1)[0]
        inputs, attrs = [v, b.const(b.weight([draw(st.integers(1, 4)), c, 1, 1]))], {"kernel_shape": [1, 1]}
    elif kind == "MatMul":
        b.require(b.rank(v) >= 2)
        (k,) = _int_dims(b, v, b.rank(v) - 1)
        inputs, attrs = [v, b.const(b.weight([k, draw(st.integers(1, 4))]))], {}
    elif kind == "Transpose":
        b.require(b.rank(v) >= 2)
        inputs, attrs = [v], {"perm": draw(st.permutations(range(b.rank(v))))}
    else:
        inputs, attrs = [v], {}
    y1, y2 = b.op(kind, inputs, **attrs), b.op(kind, inputs, **attrs)
    combine = draw(st.sampled_from(("Add", "Mul", "leaves")))
    return y2 if combine == "leaves" else b.op(combine, [y1, y2])


def constant_subgraph(draw: DrawFn, b: GraphBuilder, v: str) -> str:
    """Ops whose inputs are all constants (foldable): a transposed weight, a product of scales,
    a reshaped bias."""
    kind = draw(st.sampled_from(("transposed_weight", "scale_product", "reshaped_bias")))
    shape = b.shape(v)
    if kind == "transposed_weight":
        b.require(len(shape) >= 2)
        (k,) = _int_dims(b, v, len(shape) - 1)
        w = b.op("Transpose", [param(draw, b, b.weight([draw(st.integers(1, 6)), k], fan_in=k))], perm=[1, 0])
        return matmul(draw, b, v, weight=w)
    if kind == "scale_product":
        c1 = _broadcast_const(draw, b, v, lambda s: b.rng.uniform(0.5, 1.5, s))
        c2 = param(draw, b, b.rng.uniform(0.5, 1.5, b.shape(c1)).astype(np.float32))
        return b.op("Mul", [v, b.op("Mul", [c1, c2])])
    b.require(len(shape) == 4)
    c = _int_dims(b, v, 1)[0]
    bias = b.op("Reshape", [param(draw, b, b.rng.standard_normal(c).astype(np.float32)), ints(draw, b, [c, 1, 1])])
    return b.op("Add", [v, bias])


def shape_chain(draw: DrawFn, b: GraphBuilder, v: str) -> str:
    """Exporter-style ``x.view(x.size(0), -1)``: Shape -> Gather -> Unsqueeze -> Concat -> Reshape."""
    shape = b.shape(v)
    keep = draw(st.integers(1, 2))
    b.require(len(shape) > keep)
    rest = _int_dims(b, v, keep)
    dims = b.op("Shape", [v])
    parts = []
    for i in range(keep):
        g = b.op("Gather", [dims, ints(draw, b, i)], axis=0)
        parts.append(axis_attr_or_input(draw, b, "Unsqueeze", g, [0], 13))
    new_shape = b.op("Concat", [*parts, ints(draw, b, [-1])], axis=0)
    return b.op("Reshape", [v, new_shape], shape=(*shape[:keep], int(np.prod(rest))))


def residual(draw: DrawFn, b: GraphBuilder, v: str) -> str:
    """y = act(v + f(v)) with f a shape-keeping conv(-bn) or a square MatMul."""
    if b.rank(v) == 4:
        c = _int_dims(b, v, 1)[0]
        k = draw(st.sampled_from((1, 3)))
        y = conv(draw, b, v, kernel=k, stride=1, pads=[k // 2] * 4, dilation=1, group=1, out_channels=c)
        y = batchnorm(draw, b, y) if draw(st.booleans()) else y
    else:
        b.require(b.rank(v) >= 2)
        y = matmul(draw, b, v, out_features=_int_dims(b, v, b.rank(v) - 1)[0])
    out = b.op("Add", [v, y] if draw(st.booleans()) else [y, v])
    return activation(draw, b, out) if draw(st.booleans()) else out


def dead_branch(draw: DrawFn, b: GraphBuilder, v: str) -> str:
    """A live activation with a side branch (an activation, or a conv) whose result reaches no
    graph output."""
    y = activation(draw, b, v)
    b.mark_dead(conv(draw, b, y) if b.rank(y) == 4 and draw(st.booleans()) else activation(draw, b, y))
    return y


MOTIFS: dict[str, Motif] = {
    "conv_bn_act": conv_bn_act, "conv_act": conv_act, "constant_params": constant_params,
    "parallel_convs": parallel_convs, "parallel_matmuls": parallel_matmuls, "nested_concat": nested_concat,
    "concat_split": concat_split, "shared_weights": shared_weights, "graph_output_inside": graph_output_inside,
    "no_op": no_op, "duplicate": duplicate, "constant_subgraph": constant_subgraph, "shape_chain": shape_chain,
    "residual": residual, "dead_branch": dead_branch, "scaled_layer": scaled_layer,
    "slice_chain": slice_chain,
}


# ------------------------------------------------------------------------------------------------
# the strategy


Catalog = Mapping[str, Motif] | Sequence[str | Motif] | None


def _catalog(selection: Catalog, registry: Mapping[str, Motif], what: str) -> list[tuple[str, Motif]]:
    if selection is None:
        return list(registry.items())
    if isinstance(selection, Mapping):
        return list(selection.items())
    out = []
    for item in selection:
        if callable(item):
            out.append((item.__name__, item))
        elif item in registry:
            out.append((item, registry[item]))
        else:
            raise ValueError(f"unknown {what} '{item}'; known: {', '.join(sorted(registry))}")
    return out


INPUT_KINDS = ("image", "image", "image", "features", "sequence")


def models(*, motifs: Catalog = None, ops: Catalog = None, opsets: Sequence[int] = DEFAULT_OPSETS,
           min_nodes: int = 2, max_nodes: int = 25, inputs: Sequence[str] = INPUT_KINDS,
           value_info: bool = True) -> st.SearchStrategy[onnx.ModelProto]:
    """Random valid models (onnx.ModelProto) that onnxruntime runs.

    ``motifs``/``ops`` select catalog entries by name (from MOTIFS/OPS) or give functions or a
    name->function mapping; ``[]`` leaves that catalog out. ``inputs`` picks the graph input kinds
    ("image", "features", "sequence"). ``value_info=False`` leaves intermediate shapes out, as
    some exporters do. The model's doc_string lists the catalog entries applied, in order.
    """
    motif_list = _catalog(motifs, MOTIFS, "motif")
    op_list = _catalog(ops, OPS, "op")
    if not motif_list and not op_list:
        raise ValueError("models() needs at least one motif or op")
    unknown = sorted(set(inputs) - set(INPUT_KINDS))
    if unknown:
        raise ValueError(f"unknown input kinds {unknown}; known: {sorted(set(INPUT_KINDS))}")
    return _models([x for x in (motif_list, op_list) if x], list(opsets), min_nodes, max_nodes, list(inputs),
                   value_info)


@st.composite
def _models(draw: DrawFn, catalogs: list[list[tuple[str, Motif]]], opsets: list[int], min_nodes: int,
            max_nodes: int, inputs: list[str], value_info: bool) -> onnx.ModelProto:
    opset = draw(st.sampled_from(opsets))
    b = GraphBuilder(opset, seed=draw(st.integers(0, 2**32 - 1)), value_info=value_info)
    batch = draw(st.sampled_from((1, 2, "N")))
    kind = draw(st.sampled_from(inputs))
    if kind == "image":
        b.input((batch, draw(st.integers(1, 6)), draw(st.integers(3, 8)), draw(st.integers(3, 8))))
    elif kind == "features":
        b.input((batch, draw(st.integers(2, 8))))
    else:
        b.input((batch, draw(st.integers(2, 5)), draw(st.integers(2, 8))))
    target = draw(st.integers(min_nodes, max_nodes))
    misses = 0
    while len(b.nodes) < target and misses < 20:
        name, fn = draw(st.sampled_from(draw(st.sampled_from(catalogs))))
        for attempt in range(3):  # a recent value first, then any: rank-changing ops must not starve convs
            v = draw(st.sampled_from(b.pool[-4:] if attempt == 0 else b.pool))
            cp = b.checkpoint()
            try:
                fn(draw, b, v)
                b.require(len(b.nodes) <= max_nodes)
                b.applied.append(name)
                break
            except NotApplicable:
                b.rollback(cp)
        else:
            misses += 1
    if not b.nodes:  # every draw missed
        b.op("Relu", [b.inputs[0]])
    return b.build()
