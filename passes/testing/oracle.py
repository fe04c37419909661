"""The equivalence oracle: run a reference and a candidate model on the same random inputs.

Both models run on onnxruntime's CPU provider with ORT's own graph optimizations turned off, so
ORT's fusions can neither hide a broken rewrite nor introduce differences of their own. A float
element agrees when ``|a - b| <= atol * scale + rtol * |a|`` (``a`` from the reference), where
``scale = max(1, max |reference output|)``: the absolute slack grows with the output's magnitude,
because a rewrite that reorders float sums is off by a few ulps of the largest term, not of each
element. Integers and booleans must agree exactly; NaN and infinity positions must match.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from optgraph import ir
from optgraph.ir import progress
from optgraph.ir.errors import OptGraphError

DEFAULT_DIM = 2  # size of symbolic and unknown dimensions when ``dims`` does not name them


class ReferenceRunError(OptGraphError):
    """The reference model does not run in onnxruntime: the test graph itself is bad."""


@dataclass
class Comparison:
    """The verdict of ``compare``; truthy when the models agree.

    ``worst_output``, ``max_abs_error`` and ``max_rel_error`` describe the output closest to (or
    furthest past) its tolerance; ``seed`` is the input seed it was seen with. ``max_rel_error`` is
    ``|a - b| / |a|`` over the elements where the reference is non-zero.
    """

    equivalent: bool
    worst_output: str
    max_abs_error: float
    max_rel_error: float
    seed: int
    message: str

    def __bool__(self) -> bool:
        return self.equivalent


ModelLike = onnx.ModelProto | ir.Model


def _as_proto(model: ModelLike) -> onnx.ModelProto:
    return ir.to_proto(model) if isinstance(model, ir.Model) else model


def _feed_shape(vi: onnx.ValueInfoProto, dims: Mapping[str, int],
                shapes: Mapping[str, Sequence[int]]) -> tuple[int, ...]:
    if vi.name in shapes:
        return tuple(shapes[vi.name])
    tt = vi.type.tensor_type
    if not tt.HasField("shape"):
        return (DEFAULT_DIM,)  # unknown rank: a vector is the most likely to be accepted
    out = []
    for d in tt.shape.dim:
        if d.HasField("dim_value"):
            out.append(d.dim_value)
        elif d.HasField("dim_param"):
            out.append(dims.get(d.dim_param, DEFAULT_DIM))
        else:
            out.append(DEFAULT_DIM)
    return tuple(out)


# ops that pass index values through unchanged, followed when looking for where an input indexes
_INDEX_CARRIERS = {"Cast", "Identity", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Expand", "Transpose"}
# random ops: a reference that contains one can disagree with itself
RANDOM_OPS = ("RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli")


def _known_shapes(graph: onnx.GraphProto) -> dict[str, list[int | str | None]]:
    shapes: dict[str, list[int | str | None]] = {t.name: list(t.dims) for t in graph.initializer}
    for vi in (*graph.input, *graph.value_info, *graph.output):
        tt = vi.type.tensor_type
        if vi.name not in shapes and vi.type.HasField("tensor_type") and tt.HasField("shape"):
            shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else d.dim_param or None for d in tt.shape.dim]
    for n in graph.node:
        if n.op_type == "Constant" and n.domain in ("", "ai.onnx") and n.output:
            for a in n.attribute:
                if a.name == "value":
                    shapes[n.output[0]] = list(a.t.dims)
    return shapes


def index_bounds(model_proto: ModelLike, dims: Mapping[str, int] | None = None) -> dict[str, int]:
    """For integer graph inputs used as Gather/GatherElements indices (directly or through casts
    and reshapes), the size of the indexed axis: random indices drawn below it stay in range.

    An input that indexes several tables gets the smallest bound; one whose table size is unknown
    gets none.
    """
    proto = _as_proto(model_proto)
    graph, dims = proto.graph, dims or {}
    shapes = _known_shapes(graph)
    users: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for n in graph.node:
        for i, name in enumerate(n.input):
            users.setdefault(name, []).append((n, i))
    inits = {t.name for t in graph.initializer}
    bounds: dict[str, int] = {}
    for vi in graph.input:
        if vi.name in inits:
            continue
        found: list[int] = []
        todo, seen = [vi.name], {vi.name}
        while todo:
            for node, slot in users.get(todo.pop(), []):
                if node.domain not in ("", "ai.onnx"):
                    continue
                if node.op_type in ("Gather", "GatherElements") and slot == 1:
                    axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
                    shape = shapes.get(node.input[0])
                    if shape is not None and -len(shape) <= axis < len(shape):
                        d = shape[axis]
                        size = d if isinstance(d, int) and d > 0 else dims.get(d) if isinstance(d, str) else None
                        if size:
                            found.append(size)
                elif node.op_type in _INDEX_CARRIERS and slot == 0:
                    for out in node.output:
                        if out not in seen:
                            seen.add(out)
                            todo.append(out)
        if found:
            bounds[vi.name] = min(found)
    return bounds


def random_inputs(model_proto: ModelLike, *, seed: int, dims: Mapping[str, int] | None = None,
                  shapes: Mapping[str, Sequence[int]] | None = None) -> dict[str, np.ndarray]:
    """One seeded feed per real graph input (initializers listed as inputs keep their values).

    Floats are standard normal; integers that index a table (``index_bounds``) cover the whole
    table, other integers are 0..3 so they stay valid as indices, axes or counts; booleans are
    random masks. An input named in ``shapes`` takes that shape; a symbolic dimension takes
    ``dims[name]`` or 2.
    """
    proto = _as_proto(model_proto)
    dims = dims or {}
    rng = np.random.default_rng(seed)
    inits = {t.name for t in proto.graph.initializer}
    bounds = index_bounds(proto, dims)
    feeds: dict[str, np.ndarray] = {}
    for vi in proto.graph.input:
        if vi.name in inits:
            continue
        if not vi.type.HasField("tensor_type"):
            raise ValueError(f"input '{vi.name}' is not a tensor; the oracle feeds tensors only")
        elem = vi.type.tensor_type.elem_type
        try:
            dtype = onnx.helper.tensor_dtype_to_np_dtype(elem)
        except KeyError:
            raise ValueError(f"input '{vi.name}' has element type {elem}, which the oracle cannot feed") from None
        shape = _feed_shape(vi, dims, shapes or {})
        if dtype == np.bool_:
            arr = np.asarray(rng.random(shape) < 0.5)  # a 0-d comparison gives a numpy scalar ORT refuses
        elif np.issubdtype(dtype, np.integer):
            high = min(bounds.get(vi.name, 4), int(np.iinfo(dtype).max) + 1)
            arr = rng.integers(0, high, size=shape).astype(dtype)
        elif np.issubdtype(dtype, np.floating):
            arr = rng.standard_normal(shape).astype(dtype)
        elif dtype == np.object_:
            arr = rng.choice(np.array(["a", "b", "c"], dtype=object), size=shape)
        else:
            raise ValueError(f"input '{vi.name}' has element type {onnx.TensorProto.DataType.Name(elem)}, "
                             f"which the oracle cannot feed")
        feeds[vi.name] = arr
    return feeds


def make_session(proto: onnx.ModelProto):  # type: ignore[no-untyped-def]
    """An onnxruntime CPU session with ORT's own graph optimizations off (see the module doc)."""
    import onnxruntime as ort  # optional dependency: only the oracle needs it

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.intra_op_num_threads = 1  # deterministic reductions, and polite on small CI machines
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 4  # fatal only: failures reach the caller as exceptions, not log lines
    return ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:400]}"


@dataclass
class ArrayCheck:
    """How one output pair compares: ``ratio`` > 1 means past tolerance."""

    ok: bool
    ratio: float
    abs_err: float
    rel_err: float
    detail: str


def compare_arrays(a: np.ndarray, b: np.ndarray, rtol: float, atol: float) -> ArrayCheck:
    if a.dtype != b.dtype:
        return ArrayCheck(False, np.inf, np.inf, np.inf, f"dtype {b.dtype} instead of {a.dtype}")
    if a.shape != b.shape:
        return ArrayCheck(False, np.inf, np.inf, np.inf, f"shape {b.shape} instead of {a.shape}")
    if a.size == 0:
        return ArrayCheck(True, 0.0, 0.0, 0.0, "")
    if not np.issubdtype(a.dtype, np.inexact):
        bad = int(np.count_nonzero(a != b))
        return ArrayCheck(bad == 0, np.inf if bad else 0.0, np.inf if bad else 0.0, np.inf if bad else 0.0,
                      f"{bad} of {a.size} elements differ" if bad else "")
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    finite_a, finite_b = np.isfinite(a64), np.isfinite(b64)
    # non-finite elements (NaN, +-inf) must sit at the same positions with the same value
    special_bad = (finite_a != finite_b) | (~finite_a & ~finite_b & ~((a64 == b64) | (np.isnan(a64) & np.isnan(b64))))
    if special_bad.any():
        n = int(np.count_nonzero(special_bad))
        return ArrayCheck(False, np.inf, np.inf, np.inf, f"{n} of {a.size} elements differ in NaN/inf positions")
    both = finite_a
    if not both.any():
        return ArrayCheck(True, 0.0, 0.0, 0.0, "")
    ra, rb = a64[both], b64[both]
    scale = max(1.0, float(np.max(np.abs(ra))))
    diff = np.abs(ra - rb)
    allowed = atol * scale + rtol * np.abs(ra)
    ratio = float(np.max(diff / allowed))
    nz = ra != 0
    rel = float(np.max(diff[nz] / np.abs(ra[nz]))) if nz.any() else 0.0
    abs_err = float(np.max(diff))
    detail = f"max abs error {abs_err:.3g} (allowed {atol * scale:.3g} + {rtol:g}*|ref|), max rel error {rel:.3g}"
    return ArrayCheck(ratio <= 1.0, ratio, abs_err, rel, detail)


class NondeterministicReference(ReferenceRunError):
    """The reference disagrees with itself on the same inputs: no pass can be judged against it."""


def random_ops(model_proto: ModelLike) -> list[tuple[str, str]]:
    """The nodes that make a model's outputs random, as (kind, node name): random generators, and
    Dropout with a ``training_mode`` input that is not a constant false (kind
    ``Dropout (training_mode)``)."""
    proto = _as_proto(model_proto)
    graphs = [proto.graph, *(f for f in proto.functions)]
    falses: set[str] = set()
    found = []
    for g in graphs:
        inits = g.initializer if isinstance(g, onnx.GraphProto) else []
        falses.update(t.name for t in inits if t.data_type == onnx.TensorProto.BOOL
                      and not onnx.numpy_helper.to_array(t).any())
        for n in g.node:
            if n.op_type == "Constant" and n.output and any(
                    a.name == "value" and a.t.data_type == onnx.TensorProto.BOOL
                    and not onnx.numpy_helper.to_array(a.t).any() for a in n.attribute):
                falses.add(n.output[0])
        for n in g.node:
            training = n.op_type == "Dropout" and len(n.input) > 2 and n.input[2] and n.input[2] not in falses
            if n.domain in ("", "ai.onnx") and (n.op_type in RANDOM_OPS or training):
                found.append((n.op_type + (" (training_mode)" if training else ""), n.name))
    return found


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and bool(np.array_equal(a, b, equal_nan=np.issubdtype(a.dtype, np.inexact)))


def compare(reference: ModelLike, candidate: ModelLike, *, n_inputs: int = 3, seed: int = 0,
            dims: Mapping[str, int] | None = None, rtol: float = 1e-4, atol: float = 1e-5,
            feeds: Iterable[Mapping[str, np.ndarray]] | None = None,
            shapes: Mapping[str, Sequence[int]] | None = None, check_reference: bool = True) -> Comparison:
    """Run both models on ``n_inputs`` seeded feeds (seeds ``seed``, ``seed+1``, ...), or on the
    given ``feeds`` (batches of real data, numbered from 0), and compare; ``dims`` and ``shapes``
    size the random feeds as in ``random_inputs``.

    The reference runs twice on the first feed: if it disagrees with itself (a model exported in
    training mode, random ops) NondeterministicReference names the random ops instead of any
    candidate being blamed (``check_reference=False`` skips this for a reference already checked).
    Outputs are matched by position and must agree in name, dtype and shape. A candidate that
    onnxruntime cannot load or run is reported as a mismatch; a reference that cannot run raises
    ReferenceRunError.
    """
    ref_proto, cand_proto = _as_proto(reference), _as_proto(candidate)
    what = "seed" if feeds is None else "batch"

    def mismatch(output: str, s: int, why: str) -> Comparison:
        return Comparison(False, output, np.inf, np.inf, s, f"candidate differs ({what} {s}): {why}")

    with progress.status("check: loading both models in onnxruntime"):
        try:
            ref_sess = make_session(ref_proto)
        except Exception as e:
            raise ReferenceRunError(f"the reference model does not load in onnxruntime: {_one_line(e)}") from None
        try:
            cand_sess = make_session(cand_proto)
        except Exception as e:
            return mismatch("", seed, f"it does not load in onnxruntime: {_one_line(e)}")
    ref_names = [o.name for o in ref_sess.get_outputs()]
    cand_names = [o.name for o in cand_sess.get_outputs()]
    if ref_names != cand_names:
        return mismatch("", seed, f"outputs {cand_names} instead of {ref_names}")
    if feeds is None:
        batches: Iterable[tuple[int, Mapping[str, np.ndarray]]] = (
            (s, random_inputs(ref_proto, seed=s, dims=dims, shapes=shapes)) for s in range(seed, seed + n_inputs))
    else:
        names = [i.name for i in ref_sess.get_inputs()]
        batches = ((i, {n: np.asarray(f[n]) for n in names if n in f}) for i, f in enumerate(feeds))

    def run_reference(s: int, feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        try:
            return [np.asarray(a) for a in ref_sess.run(None, dict(feed))]
        except Exception as e:
            raise ReferenceRunError(f"the reference model fails in onnxruntime ({what} {s}): {_one_line(e)}") from None

    worst: tuple[float, str, float, float, int, str] = (-1.0, "", 0.0, 0.0, seed, "")
    count = 0
    total = n_inputs if feeds is None else len(feeds) if isinstance(feeds, Sequence) else None
    with progress.steps("check: running both models", total) as step:
        for s, feed in batches:
            ref_out = run_reference(s, feed)
            if count == 0 and check_reference:
                again = run_reference(s, feed)
                differ = [name for name, a, b in zip(ref_names, ref_out, again) if not _same(a, b)]
                if differ:
                    ops = random_ops(ref_proto)
                    kinds = Counter(kind for kind, _ in ops)
                    first = next((f" (first '{name}')" for _, name in ops if name), "")
                    cause = "random ops: " + ", ".join(f"{k} x {n}" for k, n in kinds.items()) + first if ops else \
                        "no known random op found"
                    raise NondeterministicReference(
                        f"the reference model is not deterministic: two runs on the same inputs differ at output "
                        f"'{differ[0]}' ({cause}); export it in eval mode or remove the random ops")
            count += 1
            try:
                cand_out = cand_sess.run(None, dict(feed))
            except Exception as e:
                return mismatch("", s, f"it fails in onnxruntime: {_one_line(e)}")
            for name, a, b in zip(ref_names, ref_out, cand_out):
                c = compare_arrays(a, np.asarray(b), rtol, atol)
                if not c.ok:
                    return Comparison(False, name, c.abs_err, c.rel_err, s,
                                      f"candidate differs at output '{name}' ({what} {s}): {c.detail}")
                if c.ratio > worst[0]:
                    worst = (c.ratio, name, c.abs_err, c.rel_err, s, c.detail)
            step()
    if not count:
        raise ReferenceRunError("no inputs to compare on (the data is empty)")
    _, name, abs_err, rel_err, s, detail = worst
    where = f"; closest to tolerance: output '{name}' ({what} {s}): {detail}" if name and detail else ""
    source = f"{n_inputs} input(s) from seed {seed}" if feeds is None else f"{count} batch(es) of data"
    return Comparison(True, name, abs_err, rel_err, s, f"equivalent on {source}{where}")


def assert_equivalent(reference: ModelLike, candidate: ModelLike, **kwargs: object) -> Comparison:
    """``compare`` and raise AssertionError with its one-line message on a mismatch."""
    result = compare(reference, candidate, **kwargs)  # type: ignore[arg-type]
    if not result:
        raise AssertionError(result.message)
    return result
