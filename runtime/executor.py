"""Run a model exactly as a memory plan lays it out, to prove the plan by execution.

Every activation lives in one preallocated byte arena at the offset the plan gives it: each
node reads its inputs from there and its outputs are written there, so an in-place alias really
overwrites the input and a Concat whose inputs were written into its output copies nothing
(only inputs the plan did not alias are copied into their slices), and a Split's outputs that the
plan makes views of its input are not written at all. Whenever the plan says a
tensor's last reader has run, the bytes no live tensor still covers are *poisoned* (0xFF, a NaN
in every float type). A plan that lets a live tensor be overwritten, frees one too early or
aliases wrongly therefore produces wrong outputs instead of lucky right ones, and
``check_by_execution`` compares the outputs with onnxruntime's.

Node implementations come from onnx's reference evaluator, one single-node model per node (with
the model's opsets and local functions), so any standard op runs; the few ops it gets wrong
(pooling with ceil_mode, inference BatchNormalization before opset 14) run in numpy. It is slow;
it is a checker, not a runtime.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import onnx
from onnx.reference import ReferenceEvaluator

from optgraph import ir
from optgraph.ir import progress
from optgraph.ir.order import outer_inputs
from optgraph.passes.memory import MemoryPlan, Placement, contiguous_concat
from optgraph.passes.testing.oracle import Comparison, compare_arrays, make_session, random_inputs

POISON = 0xFF


class ExecutionError(ir.OptGraphError):
    """The model cannot be run under this plan (an op without an implementation, a shape the
    plan did not size for)."""


class _Kernel:
    """One node as a single-node model on onnx's reference evaluator."""

    def __init__(self, node: ir.Node, proto: onnx.NodeProto, model: onnx.ModelProto) -> None:
        self.inputs = [v for v in [*node.inputs, *outer_inputs(node)] if v is not None]
        self.outputs = [v for v in node.outputs if v is not None]
        graph = onnx.helper.make_graph(
            [proto], "node", [onnx.ValueInfoProto(name=v.name) for v in dict.fromkeys(self.inputs)],
            [onnx.ValueInfoProto(name=v.name) for v in self.outputs])
        single = onnx.helper.make_model(graph, opset_imports=model.opset_import, functions=model.functions,
                                        ir_version=model.ir_version)
        try:
            self.evaluator = ReferenceEvaluator(single)
        except Exception as e:
            raise ExecutionError(f"no reference implementation for {node.domain or 'ai.onnx'}:{node.op_type} "
                                 f"(node '{node.name}'): {type(e).__name__}: {e}") from None

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return [np.asarray(a) for a in self.evaluator.run(None, feeds)]


Fn = Callable[..., np.ndarray]


def _pool(node: ir.Node) -> Fn | None:
    """MaxPool/AveragePool: the reference evaluator sizes ceil_mode windows wrongly (one output
    row and column too many)."""
    auto_pad = node.attr("auto_pad", "NOTSET")
    if len([v for v in node.outputs if v is not None]) != 1 or auto_pad not in ("NOTSET", "VALID"):
        return None
    kernel = list(node.attr("kernel_shape"))
    n = len(kernel)
    strides = list(node.attr("strides", [1] * n))
    dilations = list(node.attr("dilations", [1] * n))
    pads = list(node.attr("pads", [0] * 2 * n)) if auto_pad == "NOTSET" else [0] * 2 * n
    ceil, count_pad = bool(node.attr("ceil_mode", 0)), bool(node.attr("count_include_pad", 0))
    is_max = node.op_type == "MaxPool"
    window = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]

    def run(x: np.ndarray) -> np.ndarray:
        spatial = x.shape[2:]
        sizes, widths = [], []
        for i in range(n):
            span = spatial[i] + pads[i] + pads[i + n] - window[i]
            out = (-(-span // strides[i]) if ceil else span // strides[i]) + 1
            if ceil and (out - 1) * strides[i] >= spatial[i] + pads[i]:
                out -= 1  # the last window must start inside the input or its leading pad
            sizes.append(out)
            overflow = max(0, (out - 1) * strides[i] + window[i] - (spatial[i] + pads[i] + pads[i + n]))
            widths.append((pads[i], pads[i + n] + overflow))

        def windows(a: np.ndarray) -> np.ndarray:
            view = np.lib.stride_tricks.sliding_window_view(a, window, axis=tuple(range(2, 2 + n)))
            picks = tuple(slice(0, o * s, s) for o, s in zip(sizes, strides))
            return view[(slice(None), slice(None), *picks, *(slice(None, None, d) for d in dilations))]

        axes = tuple(range(2 + n, 2 + 2 * n))
        if is_max:
            low = np.finfo(x.dtype).min if np.issubdtype(x.dtype, np.floating) else np.iinfo(x.dtype).min
            return windows(np.pad(x, [(0, 0), (0, 0), *widths], constant_values=low)).max(axis=axes)
        total = windows(np.pad(x, [(0, 0), (0, 0), *widths])).sum(axis=axes)
        if count_pad:  # the pads count, the ceil_mode overflow does not
            padded = [s + pads[i] + pads[i + n] for i, s in enumerate(spatial)]
            inside = np.pad(np.ones(padded, x.dtype), [(0, w[1] - pads[i + n]) for i, w in enumerate(widths)])
        else:
            inside = np.pad(np.ones(spatial, x.dtype), widths)
        return (total / windows(inside[None, None]).sum(axis=axes)).astype(x.dtype)

    return run


def _batch_norm(node: ir.Node) -> Fn | None:
    """Inference BatchNormalization: the reference evaluator's opset 9-13 version applies the
    momentum attribute's default and computes training statistics."""
    if len([v for v in node.outputs if v is not None]) != 1 or node.attr("training_mode", 0):
        return None
    eps = node.attr("epsilon", 1e-5)

    def run(x: np.ndarray, scale: np.ndarray, bias: np.ndarray, mean: np.ndarray, var: np.ndarray) -> np.ndarray:
        per_channel = (-1,) + (1,) * (x.ndim - 2)
        s, b, m, v = (a.reshape(per_channel) for a in (scale, bias, mean, var))
        return (s * (x - m) / np.sqrt(v + eps) + b).astype(x.dtype)

    return run


_NUMPY = {"MaxPool": _pool, "AveragePool": _pool, "BatchNormalization": _batch_norm}


class _Numpy:
    """One node in numpy, for the ops the reference evaluator gets wrong."""

    def __init__(self, node: ir.Node, fn: Fn) -> None:
        self.inputs = [v for v in node.inputs if v is not None]
        self.outputs = [v for v in node.outputs if v is not None]
        self.fn = fn

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return [self.fn(*(feeds[v.name] for v in self.inputs))]


def _kernel(node: ir.Node, proto: onnx.NodeProto, model: onnx.ModelProto) -> _Numpy | _Kernel:
    factory = _NUMPY.get(node.op_type) if node.domain in ("", "ai.onnx") else None
    fn = factory(node) if factory is not None else None
    return _Numpy(node, fn) if fn is not None else _Kernel(node, proto, model)


class ArenaExecutor:
    """Runs ``model`` with its activations where ``plan`` puts them (see the module docstring)."""

    def __init__(self, model: ir.Model, plan: MemoryPlan, *, poison: bool = True) -> None:
        self.model = model
        self.plan = plan
        self.poison = poison
        proto = ir.to_proto(model)  # its nodes are written in graph order
        index = {id(n): i for i, n in enumerate(model.graph)}
        self.kernels = [_kernel(n, proto.graph.node[index[id(n)]], proto) for n in plan.schedule]
        self.parent = {a.value: (a.into, a.offset) for a in plan.aliases}
        self.views = {a.value for a in plan.aliases if a.kind == "split"}  # never written: they are their input
        self.constants = {v.name: v.const.numpy() for v in model.graph.initializers.values() if v.const is not None}
        self.starting: dict[int, list[Placement]] = {}
        for p in plan.placements.values():
            self.starting.setdefault(p.start, []).append(p)

    def _offset_in(self, v: ir.Value, container: ir.Value) -> int | None:
        """Where the plan's aliases put ``v`` inside ``container`` (through any chain), if they do."""
        at = 0
        while v in self.parent:
            v, offset = self.parent[v]
            at += offset
            if v is container:
                return at
        return None

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The graph outputs for ``feeds``, computed in the plan's arena."""
        plan = self.plan
        arena = np.full(plan.arena_size, POISON, dtype=np.uint8)
        others: dict[str, np.ndarray] = {**self.constants, **{k: np.asarray(a) for k, a in feeds.items()}}
        live: list[Placement] = []

        def slot(p: Placement) -> np.ndarray:
            info = plan.infos[p.value]
            dtype = onnx.helper.tensor_dtype_to_np_dtype(info.dtype)
            return arena[p.offset:p.offset + p.nbytes].view(dtype).reshape(info.shape)

        def read(v: ir.Value) -> np.ndarray:
            p = plan.placements.get(v)
            if p is not None:
                return slot(p).copy()
            if v.name not in others:
                raise ExecutionError(f"'{v.name}' is read before anything wrote it")
            return others[v.name]

        for step, (node, kernel) in enumerate(zip(plan.schedule, self.kernels)):
            live += self.starting.get(step, [])
            out = node.outputs[0] if node.outputs else None
            if node.op_type == "Concat" and node.domain in ("", "ai.onnx") and out in plan.placements and any(
                    self._offset_in(v, out) is not None for v in node.inputs if v is not None):
                self._fill_concat(node, arena, read)
            elif not all(v in self.views for v in kernel.outputs):
                results = kernel.run({v.name: read(v) for v in kernel.inputs})
                for v, result in zip(kernel.outputs, results):
                    if v in self.views:
                        continue
                    p = plan.placements.get(v)
                    if p is None:
                        others[v.name] = result.copy()
                        continue
                    target = slot(p)
                    if result.shape != target.shape or result.dtype != target.dtype:
                        raise ExecutionError(
                            f"node '{node.name}' ({node.op_type}) made '{v.name}' {result.dtype}{list(result.shape)}, "
                            f"but the plan sized it as {target.dtype}{list(target.shape)}")
                    np.copyto(target, result)
            if self.poison:
                live = self._poison_dead(step, live, arena)
        return {v.name: others[v.name] for v in self.model.graph.outputs}

    def _fill_concat(self, node: ir.Node, arena: np.ndarray, read: Any) -> None:
        """A Concat whose inputs the plan put inside its output: copy only the inputs its aliases
        do not place at their slice (the second of a repeated input, a graph input, ...)."""
        out = node.outputs[0]
        assert out is not None
        if not contiguous_concat(node, self.plan.infos):
            raise ExecutionError(f"the plan aliases into Concat '{node.name}', whose inputs are not contiguous slices")
        base = self.plan.placements[out].offset
        at = 0
        for v in node.inputs:
            if v is None:
                continue
            n = self.plan.infos[v].nbytes
            if self._offset_in(v, out) != at:
                arena[base + at:base + at + n] = np.ascontiguousarray(read(v)).view(np.uint8).reshape(-1)
            at += n

    def _poison_dead(self, step: int, live: list[Placement], arena: np.ndarray) -> list[Placement]:
        """Poison the bytes of tensors whose last reader ran at ``step`` that no live tensor covers."""
        still = [p for p in live if p.end > step]
        for p in live:
            if p.end != step:
                continue
            covered = sorted((q.offset, q.offset + q.nbytes) for q in still
                             if q.offset < p.offset + p.nbytes and p.offset < q.offset + q.nbytes)
            at = p.offset
            for lo, hi in covered:
                if lo > at:
                    arena[at:lo] = POISON
                at = max(at, hi)
            if at < p.offset + p.nbytes:
                arena[at:p.offset + p.nbytes] = POISON
        return still


def check_by_execution(model: ir.Model, plan: MemoryPlan, *, n_inputs: int = 2, seed: int = 0,
                       rtol: float = 1e-4, atol: float = 1e-5) -> Comparison:
    """Run ``model`` under ``plan`` and on onnxruntime with seeded random inputs; compare outputs
    with the oracle's tolerances. Truthy when they agree."""
    proto = ir.to_proto(model)
    session = make_session(proto)
    executor = ArenaExecutor(model, plan)
    names = [o.name for o in session.get_outputs()]
    worst = (-1.0, "", 0.0, 0.0, seed)
    for s in progress.track(range(seed, seed + n_inputs), "plan check: running in the arena"):
        feeds = random_inputs(proto, seed=s, dims=plan.dims)
        expected = session.run(None, feeds)
        got = executor.run(feeds)
        for name, a in zip(names, expected):
            c = compare_arrays(np.asarray(a), got[name], rtol, atol)
            if not c.ok:
                return Comparison(False, name, c.abs_err, c.rel_err, s,
                                  f"the plan's execution differs at output '{name}' (seed {s}): {c.detail}")
            if c.ratio > worst[0]:
                worst = (c.ratio, name, c.abs_err, c.rel_err, s)
    _, name, abs_err, rel_err, s = worst
    return Comparison(True, name, abs_err, rel_err, s,
                      f"the plan's execution matches onnxruntime on {n_inputs} input(s) from seed {seed}")
