"""Opset-aware reading of operator parameters that moved from attributes to inputs.

ONNX moved many parameters from attributes to (usually constant) inputs over the years: the axes
of Squeeze/Unsqueeze (opset 13) and of the Reduce ops (ReduceSum 13, the others 18), Split's sizes
(13), Clip's bounds (11), Pad's pads and value (11), Slice's starts/ends/axes/steps (10), TopK's k
(10), Dropout's ratio (12). A pass that reads ``node.attr("axes")`` works on one opset and silently
misreads the other, so passes read them here::

    from optgraph.ir import opset
    axes = opset.axes(node, model.opset(), rank=len(x.shape))   # normalized, defaults resolved
    raw = opset.operand(node, model.opset(), "pads")            # array, None or opset.ABSENT

``operand`` distinguishes a parameter that is absent (the op's default applies) from one that is
given but not a known constant (None): a rewrite must treat the second as unknown.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from typing import Any

import numpy as np

from optgraph.ir.constants import constant_array
from optgraph.ir.core import Graph, Model, Node, Shape, walk_graphs


class _Absent(enum.Enum):
    ABSENT = "absent"


ABSENT = _Absent.ABSENT
"""The parameter is not given at all: the operator's default applies."""

Operand = np.ndarray | None | _Absent

REDUCE_OPS = frozenset({"ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean",
                        "ReduceMin", "ReduceProd", "ReduceSum", "ReduceSumSquare"})

# op -> parameter -> (first opset where it is an input, input index). Before that opset it is an
# attribute of the same name.
_MOVED: dict[str, dict[str, tuple[int, int]]] = {
    "Squeeze": {"axes": (13, 1)},
    "Unsqueeze": {"axes": (13, 1)},
    "Split": {"split": (13, 1)},
    "Clip": {"min": (11, 1), "max": (11, 2)},
    "Pad": {"pads": (11, 1), "value": (11, 2)},
    "Slice": {"starts": (10, 1), "ends": (10, 2), "axes": (10, 3), "steps": (10, 4)},
    "TopK": {"k": (10, 1)},
    "Dropout": {"ratio": (12, 1)},
    "Upsample": {"scales": (9, 1)},
    **{op: {"axes": (13 if op == "ReduceSum" else 18, 1)} for op in REDUCE_OPS},
}


def operand(node: Node, opset: int, name: str) -> Operand:
    """Parameter ``name`` of ``node`` as an array, wherever this opset keeps it.

    Returns ABSENT when the node does not give it, None when it is an input that is not a known
    constant. Parameters that never moved are read as attributes.
    """
    since, index = _MOVED.get(node.op_type, {}).get(name, (None, -1))
    if since is not None and opset >= since:
        if index >= len(node.inputs) or node.inputs[index] is None:
            return ABSENT
        return constant_array(node.inputs[index])
    value = node.attr(name)
    if value is None:
        return ABSENT
    return np.asarray(value)


def ints(node: Node, opset: int, name: str) -> list[int] | None | _Absent:
    """``operand`` as a list of Python ints (a scalar becomes a one-element list)."""
    value = operand(node, opset, name)
    if value is None or value is ABSENT:
        return value
    return [int(x) for x in np.asarray(value).reshape(-1)]


def normalize_axes(axes: list[int], rank: int) -> tuple[int, ...] | None:
    """Axes made non-negative; None when one is out of range for ``rank``."""
    out = []
    for a in axes:
        if not -rank <= a < rank:
            return None
        out.append(a % rank)
    return tuple(out)


def axes(node: Node, opset: int, rank: int | None = None, shape: Shape | None = None) -> tuple[int, ...] | None:
    """The axes a Squeeze, Unsqueeze or Reduce* node acts on, non-negative, defaults resolved.

    ``rank`` is the input's rank (for Unsqueeze: the output's, which the axes refer to); ``shape``
    (the input's) lets Squeeze's default "every size-1 axis" resolve. None when not known.
    """
    if shape is not None and rank is None:
        rank = len(shape)
    given = ints(node, opset, "axes")
    if given is None:
        return None
    if node.op_type == "Unsqueeze" and rank is not None and given is not ABSENT:
        rank += len(given)
    if given is ABSENT or (not given and node.op_type in REDUCE_OPS):
        if node.op_type in REDUCE_OPS:
            if node.attr("noop_with_empty_axes", 0):
                return ()
            return None if rank is None else tuple(range(rank))
        if node.op_type == "Squeeze":
            if shape is None or not all(isinstance(d, int) for d in shape):
                return None
            return tuple(i for i, d in enumerate(shape) if d == 1)
        return None
    if rank is None:
        return tuple(given) if all(a >= 0 for a in given) else None
    return normalize_axes(given, rank)


def split_sizes(node: Node, opset: int, dim: int | str | None = None) -> list[int] | None:
    """The sizes of a Split's pieces along its axis; None when not known.

    Without explicit sizes the axis is split evenly into the number of outputs (opset 18's
    ``num_outputs`` gives a smaller last piece when it does not divide), which needs ``dim``.
    """
    given = ints(node, opset, "split")
    if given is None:
        return None
    if given is not ABSENT:
        return given
    n = len(node.outputs)
    if not isinstance(dim, int):
        return None
    size = -(-dim // n)  # ceil: matches both the even split and num_outputs' rule
    if node.attr("num_outputs") is None and dim % n:
        return None
    return [size] * (n - 1) + [dim - size * (n - 1)]


def clip_bounds(node: Node, opset: int) -> tuple[float | None, float | None] | None:
    """(min, max) of a Clip, None for an open side; None overall when a bound is not constant."""
    out: list[float | None] = []
    for name in ("min", "max"):
        value = operand(node, opset, name)
        if value is None:
            return None
        out.append(None if value is ABSENT else float(np.asarray(value).reshape(-1)[0]))
    return (out[0], out[1])


def pads(node: Node, opset: int) -> list[int] | None:
    """A Pad node's pads ([begin..., end...] over its axes); None when not a known constant."""
    value = ints(node, opset, "pads")
    if value is ABSENT:
        value = ints(node, opset, "paddings")  # Pad-1 spelled it this way
    return None if value is ABSENT else value


def slice_params(node: Node, opset: int) -> tuple[list[int], list[int], list[int] | None, list[int] | None] | None:
    """(starts, ends, axes, steps) of a Slice; axes/steps are None when absent (the defaults:
    the first len(starts) axes, step 1). None overall when any given one is not constant."""
    values = [ints(node, opset, n) for n in ("starts", "ends", "axes", "steps")]
    if any(v is None for v in values) or values[0] is ABSENT or values[1] is ABSENT:
        return None
    starts, ends, ax, steps = values
    return (starts, ends, None if ax is ABSENT else ax, None if steps is ABSENT else steps)  # type: ignore[return-value]


KNOWN_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "ai.onnx.preview.training"})
"""Domains of the ONNX standard: their ops are pure (no effects beyond their outputs)."""


def removable(node: Node, model: Model) -> bool:
    """A node dead-code elimination may delete: a pure op of a known domain or a call of a
    model-local function."""
    if node.domain in KNOWN_DOMAINS:
        return True
    return (node.domain, node.op_type, node.overload) in model.functions


ONNX_DOMAINS = ("", "ai.onnx")


def is_onnx(node: Node, *ops: str) -> bool:
    """Whether ``node`` is an op of the default ONNX domain (and one of ``ops``, when given)."""
    return node.domain in ONNX_DOMAINS and (not ops or node.op_type in ops)


class Trait(enum.Flag):
    """What a pass may assume about an ONNX op."""

    COMMUTATIVE = enum.auto()
    """Binary (or variadic) op whose operands may be swapped."""
    ELEMENTWISE = enum.auto()
    """Output element i is a function of input elements at i (after broadcasting) and the output
    has the input's type: a reshape commutes with it when the other operands are scalars."""
    IN_PLACE = enum.auto()
    """Output element i depends only on input elements at i: a streaming kernel may write the
    output over a same-sized input (types may differ: Cast, comparisons)."""
    ACTIVATION = enum.auto()
    """Elementwise activation a conv can be fused with (one tensor; Clip also min and max)."""


_C, _E, _I, _A = Trait.COMMUTATIVE, Trait.ELEMENTWISE, Trait.IN_PLACE, Trait.ACTIVATION
TRAITS: dict[str, Trait] = {
    "Abs": _E | _I, "Acos": _E | _I, "Acosh": _E | _I, "Add": _C | _E | _I, "And": _C | _I, "Asin": _E | _I,
    "Asinh": _E | _I, "Atan": _E | _I, "Atanh": _E | _I, "BatchNormalization": _I, "BitShift": _I,
    "BitwiseAnd": _C | _I, "BitwiseNot": _I, "BitwiseOr": _C | _I, "BitwiseXor": _C | _I, "Cast": _I,
    "Ceil": _E | _I, "Celu": _I | _A, "Clip": _I | _A, "Cos": _E | _I, "Cosh": _E | _I, "Div": _E | _I,
    "Dropout": _I, "Elu": _E | _I | _A, "Equal": _C | _I, "Erf": _E | _I, "Exp": _E | _I, "Floor": _E | _I,
    "Gelu": _E | _I | _A, "Greater": _I, "GreaterOrEqual": _I, "HardSigmoid": _E | _I | _A,
    "HardSwish": _E | _I | _A, "Identity": _I, "IsInf": _E | _I, "IsNaN": _E | _I, "LeakyRelu": _E | _I | _A,
    "Less": _I, "LessOrEqual": _I, "Log": _E | _I, "Max": _C | _E | _I, "Mean": _C | _I, "Min": _C | _E | _I,
    "Mish": _E | _I | _A, "Mod": _I, "Mul": _C | _E | _I, "Neg": _E | _I, "Not": _E | _I, "Or": _C | _I,
    "PRelu": _I, "Pow": _E | _I, "Reciprocal": _E | _I, "Relu": _E | _I | _A, "Round": _E | _I,
    "Selu": _E | _I | _A, "Sigmoid": _E | _I | _A, "Sign": _E | _I, "Sin": _E | _I, "Sinh": _E | _I,
    "Softplus": _E | _I | _A, "Softsign": _E | _I, "Sqrt": _E | _I, "Sub": _E | _I, "Sum": _C | _I,
    "Tan": _E | _I, "Tanh": _E | _I | _A, "ThresholdedRelu": _E | _I | _A, "Where": _I, "Xor": _C | _I,
}
"""The op traits of the default domain, in one table (an op not listed has none)."""


def ops_with(trait: Trait) -> frozenset[str]:
    return frozenset(op for op, t in TRAITS.items() if trait in t)


COMMUTATIVE = ops_with(Trait.COMMUTATIVE)
ELEMENTWISE = ops_with(Trait.ELEMENTWISE)
IN_PLACE = ops_with(Trait.IN_PLACE)
ACTIVATIONS = ("Relu", "LeakyRelu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu", "Selu",
               "Celu", "Softplus", "ThresholdedRelu", "Mish", "Gelu")
"""The ACTIVATION ops in the order the fusion pattern tries them."""


def attrs_key(node: Node) -> tuple[Any, ...]:
    """A hashable digest of a node's attributes (equal for equal attributes)."""
    return tuple(sorted((a.name, a.type, repr(a.value)) for a in node.attrs.values()))


def activation_key(act: Node) -> tuple[Any, ...] | None:
    """What makes two activation nodes compute the same function; None if an operand is not constant."""
    bounds = []
    for v in act.inputs[1:]:
        if v is None:
            bounds.append(None)
            continue
        a = constant_array(v)
        if a is None:
            return None
        bounds.append((a.dtype.str, a.tolist()))
    return (act.op_type, attrs_key(act), tuple(bounds))


RANDOM_OPS = frozenset({"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Bernoulli",
                        "Multinomial"})
"""Ops whose result differs from run to run: never folded, never merged."""


def graphs_with_opset(model: Model) -> Iterator[tuple[Graph, int]]:
    """Every graph of the model (main graph, function bodies, their subgraphs) with the opset of
    the default domain that applies inside it."""
    roots = [(model.graph, model.opset())]
    for fn in model.functions.values():
        version = fn.opset_imports.get("", fn.opset_imports.get("ai.onnx", model.opset()))
        roots.append((fn.graph, version))
    for root, version in roots:
        for g in walk_graphs(root):
            yield g, version
