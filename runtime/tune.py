"""``optgraph tune``: search the pipeline choices for one model with TensorRT builds in the loop.

A candidate is a set of choices (``Choices``): which fusion and cleanup passes run, horizontal
fusion with or without a Split (and its minimum branch count), the conv+activation units after
the fixed point, inside it or not at all, the order of the passes inside the fixed point, and
one builder setting: how many auxiliary streams TensorRT may run parallel branches on (parallel
branches cannot share activation memory; one stream lets them). Each candidate is optimized,
written, and hashed (SHA-256 of the written model): choices that give the same graph and builder
setting share one engine build. A cheap cost model ranks the candidates not built yet
from the optimized graph alone (engine layers and standalone kernels estimated from fusable
chains; the arena of optgraph's memory planner times the parallel branches TensorRT runs on
streams of their own), and only the best-ranked are built; its Spearman correlation with the
measured figures over the built candidates says how far to trust it. The objective is a weighted
mean of engine figures, each divided by the original model's: ``layers``, ``kernels``
(standalone generated kernels), ``memory`` (activation bytes).

The search is seeded with the original model, ``default`` and ``default`` built on one stream,
then alternates: a few new candidates (mutations of the best measured so far, or random ones,
from ``--seed``) are optimized and estimated, and the best-estimated ones not built yet are built, until the builds
or seconds run out or no new graph turns up. With a build budget only, the run is reproducible
from the seed; a time budget can stop it earlier on a slower machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from optgraph import ir
from optgraph.ir.opset import is_onnx

METRICS = ("layers", "kernels", "memory")
ORDERS = ("cleanup-first", "fuse-first", "concat-first")
CLEANUP = ("fold-constants", "remove-noops", "cse", "simplify-layout", "merge-slices", "tensorrt-ready")
FUSIONS = ("fuse-pad-conv", "fuse-conv-bn", "fuse-input-scale", "fuse-conv-sum", "fuse-branch-pairs", "fuse-horizontal",
           "eliminate-concat")
EXPLORE, BUILD, KEEP = 4, 2, 6  # candidates optimized and built per round; the best-ranked kept for later
STALE_ROUNDS = 8  # rounds in a row without a new graph end the search


class TuneError(ir.OptGraphError):
    """Bad tune options, or no candidate TensorRT could build (exit 2)."""


@dataclass(frozen=True)
class Choices:
    """One point of the search space; ``DEFAULT`` is the ``default`` pipeline."""

    horizontal: str = "concat"  # off | concat (fuse only branches meeting in a Concat) | split
    min_branches: int = 2
    conv_act: str = "after"  # off | after (the fixed point) | inside (it)
    layout: bool = True  # simplify-layout
    tensorrt_ready: bool = True
    conv_bn: bool = True
    pad_conv: bool = True
    concat: bool = True  # eliminate-concat
    cse: bool = True
    fold: bool = True  # fold-constants
    noops: bool = True  # remove-noops
    order: str = "cleanup-first"  # of the passes inside the fixed point (ORDERS)
    aux_streams: int | None = None  # a builder setting, not a pass: None leaves it to TensorRT

    def pipeline(self) -> tuple[str, str]:
        """(the passes repeated to a fixed point, the passes run once after it)."""
        off = {"simplify-layout": not self.layout, "tensorrt-ready": not self.tensorrt_ready,
               "fuse-conv-bn": not self.conv_bn, "fuse-pad-conv": not self.pad_conv,
               "eliminate-concat": not self.concat, "cse": not self.cse, "fuse-horizontal": self.horizontal == "off",
               "fold-constants": not self.fold, "remove-noops": not self.noops}
        fusions = list(FUSIONS)
        if self.order == "concat-first":
            fusions = ["fuse-pad-conv", "fuse-conv-bn", "fuse-input-scale", "fuse-conv-sum", "fuse-branch-pairs",
                       "eliminate-concat", "fuse-horizontal"]
        cleanup = list(CLEANUP)
        loop = ["infer-shapes", *(fusions + cleanup if self.order == "fuse-first" else cleanup + fusions)]
        loop = [p for p in loop if not off.get(p, False)]
        if self.horizontal != "off":
            at = loop.index("fuse-horizontal")
            options = [f"split={'true' if self.horizontal == 'split' else 'false'}"]
            if self.min_branches != 2:
                options.append(f"min_branches={self.min_branches}")
            loop[at] = "fuse-horizontal{" + ",".join(options) + "}"
        if self.conv_act == "inside":
            loop.append("fuse-conv-act")
        loop.append("remove-dead")
        return ",".join(loop), "fuse-conv-act,remove-dead" if self.conv_act == "after" else ""

    def distance(self) -> int:
        """How many choices differ from ``default``."""
        return sum(getattr(self, f.name) != getattr(DEFAULT, f.name) for f in dataclasses.fields(self))

    def label(self) -> str:
        """What differs from ``default``, e.g. ``horizontal=split conv_act=off``."""
        diff = [f"{f.name}={_text(getattr(self, f.name))}" for f in dataclasses.fields(self)
                if getattr(self, f.name) != getattr(DEFAULT, f.name)]
        return " ".join(diff) or "default"


DEFAULT = Choices()
ONE_STREAM = Choices(aux_streams=0)  # seeded too: where branches run in parallel, the cheapest memory lever
SPACE: dict[str, tuple[Any, ...]] = {
    "horizontal": ("off", "concat", "split"), "min_branches": (2, 3, 4), "conv_act": ("off", "after", "inside"),
    "layout": (True, False), "tensorrt_ready": (True, False), "conv_bn": (True, False), "pad_conv": (True, False),
    "concat": (True, False), "cse": (True, False), "fold": (True, False), "noops": (True, False), "order": ORDERS,
    "aux_streams": (None, 0, 1),
}


def _text(v: Any) -> str:
    if v is None:
        return "auto"
    return ("on" if v else "off") if isinstance(v, bool) else str(v)


def steps(loop: str, after: str) -> list[Any]:
    """PassManager steps for a spec: ``loop`` repeated until nothing changes, then ``after`` once."""
    from optgraph.passes.manager import FixedPoint, parse_pipeline

    head = [FixedPoint("tuned", parse_pipeline(loop), 8)] if loop else []
    return head + parse_pipeline(after)


def random_choices(rng: np.random.Generator) -> Choices:
    return Choices(**{k: values[int(rng.integers(len(values)))] for k, values in SPACE.items()})


def mutate(c: Choices, rng: np.random.Generator) -> Choices:
    """``c`` with one choice changed."""
    key = list(SPACE)[int(rng.integers(len(SPACE)))]
    others = [v for v in SPACE[key] if v != getattr(c, key)]
    return dataclasses.replace(c, **{key: others[int(rng.integers(len(others)))]})


# ------------------------------------------------------------------------------------------------
# objective, cost model, rank correlation


def parse_objective(text: str) -> dict[str, float]:
    """``layers``, ``memory``, ``kernels``, or weights such as ``layers=1,memory=0.5``."""
    weights: dict[str, float] = {}
    for item in filter(None, (x.strip() for x in text.split(","))):
        name, sep, value = item.partition("=")
        name = name.strip()
        try:
            weight = float(value) if sep else 1.0
        except ValueError:
            weight = -1.0
        if name not in METRICS or not math.isfinite(weight) or weight < 0 or name in weights:
            raise TuneError(f"--objective expects {'|'.join(METRICS)} or weights like layers=1,memory=0.5, "
                            f"got '{text}'")
        weights[name] = weight
    if not weights or not any(weights.values()):
        raise TuneError(f"--objective needs a metric with a positive weight, got '{text}'")
    return weights


def objective(figures: Mapping[str, float | None], base: Mapping[str, float | None],
              weights: Mapping[str, float]) -> float:
    """The weighted mean of ``figures`` relative to ``base`` (1.0 = as good as the base)."""
    total = 0.0
    for name, w in weights.items():
        value, ref = figures.get(name), base.get(name)
        if value is None or ref is None:
            return math.inf
        total += w * value / max(ref, 1)
    return total / sum(weights.values())


# Ops TensorRT removes or computes at build time: no layer of their own.
_FREE = frozenset({"Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Dropout", "Concat", "Shape", "Size",
                   "Constant", "ConstantOfShape"})
# Ops that run as a standalone generated kernel when nothing absorbs them.
_COPIES = frozenset({"Slice", "Pad", "Gather", "Expand", "Tile", "Cast", "Transpose", "Where"})


def estimate(model: ir.Model) -> dict[str, float | None]:
    """Engine layers and standalone kernels TensorRT is likely to make of ``model``.

    A layer per compute node (Conv, MatMul, pools, a fused conv+activation unit, ...); an
    elementwise node joins a layer when all its operands come from that layer (SiLU's
    ``x * sigmoid(x)``) or when it is the only reader of that layer's output (the conv+bias+
    activation, residual-add and pointwise fusions TensorRT makes; not a broadcasting one, such as
    a squeeze-excitation scale), else it starts a standalone kernel; a Split costs one copy kernel
    per output; reshapes, concats and constant or shape computations cost nothing (TensorRT
    removes or folds them). ``streams`` is the widest fan-out of one tensor into layers that are
    not elementwise (an Inception block's parallel branches): TensorRT runs such branches on
    auxiliary streams, whose tensors cannot share memory.
    """
    from optgraph.passes.shapes import infer_shapes

    infer_shapes(model)  # the shapes tell a residual Add from a broadcasting scale (annotations only)
    graph = model.graph
    const: set[ir.Value] = {v for v in graph.initializers.values()}
    layers = kernels = 0
    layer_of: dict[ir.Value, int] = {}  # a tensor -> the estimated layer that writes it
    for node in graph:
        if all(v is None or v in const or ir.constant_tensor(v) is not None for v in node.inputs):
            const.update(v for v in node.outputs if v is not None)  # folded at build time
            continue
        op = node.op_type if node.domain in ("", "ai.onnx") else ""
        if op in _FREE:
            continue
        if op == "Split":  # a copy kernel per output
            for v in (v for v in node.outputs if v is not None):
                layers, kernels = layers + 1, kernels + 1
                layer_of[v] = layers
            continue
        outputs = [v for v in node.outputs if v is not None]
        if op in _ELEMENTWISE:
            data = [v for v in node.inputs if v is not None and v not in const and ir.constant_tensor(v) is None]
            groups = {layer_of.get(v) for v in data}
            same = len({v.shape for v in data}) == 1 and data[0].shape is not None  # no broadcast (a residual Add)
            sole = [layer_of[v] for v in data if v in layer_of and len(v.uses) == 1 and not v.is_graph_output]
            if len(groups) == 1 and None not in groups:
                joined = groups.pop()  # every operand from one layer: x * sigmoid(x) after a conv
            elif (len(data) == 1 or same) and sole:
                joined = sole[0]  # the only reader of a layer's output: conv + bias + activation, residual Add
            else:
                joined = None
            if joined is not None:
                layer_of.update((v, joined) for v in outputs)
                continue
        layers += 1
        layer_of.update((v, layers) for v in outputs)
        if op in _ELEMENTWISE or op in _COPIES:
            kernels += 1
    streams = 1
    for v in [*graph.inputs, *(o for n in graph for o in n.outputs if o is not None)]:
        if v in const or v.const is not None:  # weights shared by several layers are no branches
            continue
        readers = {id(user) for user, _ in v.uses
                   if not (is_onnx(user) and (user.op_type in _FREE or user.op_type in _ELEMENTWISE))}
        streams = max(streams, len(readers))
    return {"layers": layers, "kernels": kernels, "streams": streams}


def _elementwise() -> frozenset[str]:
    from optgraph.ir.opset import IN_PLACE

    return IN_PLACE | {"BatchNormalization", "PRelu"}


_ELEMENTWISE = _elementwise()


def predicted_memory(model: ir.Model, dims: Mapping[str, int]) -> int | None:
    """The arena optgraph's memory planner needs for ``model`` (None when it cannot size it); the
    cost model multiplies it by the estimated streams.
    May fold shape computations in ``model`` (see ``plannable_infos``): call it last."""
    from optgraph.passes.base import PassContext
    from optgraph.passes.memory import plan_memory
    from optgraph.passes.memory.liveness import plannable_infos

    ctx = PassContext(dims=dims)
    ctx.bind(model)
    try:
        return plan_memory(model, plannable_infos(model, ctx), dims=dims).arena_size
    except ir.OptGraphError:
        return None


def ranks(x: Sequence[float]) -> np.ndarray:
    """Ranks 1..n, ties sharing their average rank (what Spearman's coefficient needs)."""
    a = np.asarray(x, dtype=float)
    order = np.argsort(a, kind="stable")
    r = np.empty(len(a))
    r[order] = np.arange(1, len(a) + 1)
    for value in np.unique(a):
        tied = a == value
        r[tied] = r[tied].mean()
    return r


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rank correlation; None with fewer than 3 pairs or a constant side."""
    pairs = [(a, b) for a, b in zip(x, y) if a is not None and b is not None and math.isfinite(a) and math.isfinite(b)]
    if len(pairs) < 3:
        return None
    rx, ry = ranks([a for a, _ in pairs]), ranks([b for _, b in pairs])
    if rx.std() == 0 or ry.std() == 0:
        return None
    return float(np.corrcoef(rx, ry)[0, 1])


# ------------------------------------------------------------------------------------------------
# the search


@dataclass
class Candidate:
    id: int
    label: str
    loop: str
    after: str
    choices: Choices | None  # None for the original model
    sha256: str = ""
    nodes: int = 0
    optimize_seconds: float = 0.0
    predicted: dict[str, float | None] = field(default_factory=dict)
    predicted_objective: float = math.inf
    duplicate_of: int | None = None
    built: bool = False
    build_index: int | None = None  # 1 for the first engine built, ...
    measured: dict[str, float | None] = field(default_factory=dict)
    objective: float | None = None
    build_seconds: float | None = None
    error: str = ""
    path: str = field(default="", repr=False)

    @property
    def aux_streams(self) -> int | None:
        return None if self.choices is None else self.choices.aux_streams

    def spec(self) -> dict[str, Any]:
        """The pipeline as ``optgraph tune --replay`` reads it, and the builder setting it was measured with."""
        return {"format": "optgraph-tune-spec", "version": 1, "label": self.label, "loop": self.loop,
                "after": self.after, "choices": None if self.choices is None else dataclasses.asdict(self.choices),
                "build": {"aux_streams": self.aux_streams}}

    def build_hint(self, path: str) -> str:
        """The command that builds the engine this candidate was measured as."""
        aux = "" if self.aux_streams is None else f" --aux-streams {self.aux_streams}"
        return f"optgraph build {path} -o ENGINE --passes none{aux}"

    def row(self) -> dict[str, Any]:
        return {"id": self.id, "label": self.label, "sha256": self.sha256, "nodes": self.nodes,
                "optimize_seconds": round(self.optimize_seconds, 3), "predicted": self.predicted,
                "predicted_objective": _finite(self.predicted_objective), "duplicate_of": self.duplicate_of,
                "built": self.built, "build_index": self.build_index, "measured": self.measured,
                "objective": _finite(self.objective),
                "build_seconds": None if self.build_seconds is None else round(self.build_seconds, 3),
                "error": self.error, "loop": self.loop, "after": self.after}


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else round(x, 6)


# (model file, aux streams) -> {"ok", "layers", "kernels", "memory", "seconds", "error"}
Builder = Callable[[str, int | None], dict[str, Any]]


def trt_builder(dims: Mapping[str, int]) -> Builder:
    """Builds with runtime/tensorrt.py and reads the engine report's totals."""
    from optgraph.runtime import tensorrt

    tensorrt.trt()  # one clear error before any work when TensorRT is missing

    def build(path: str, aux_streams: int | None) -> dict[str, Any]:
        r = tensorrt.build(path, dims=dims, aux_streams=aux_streams, keep_log=False)
        if not r.ok or r.report is None:
            return {"ok": False, "seconds": r.seconds, "error": (r.errors or ["build failed"])[0]}
        return {"ok": True, "layers": r.report.num_layers, "kernels": r.report.standalone_kernels,
                "memory": r.report.activation_bytes, "seconds": r.seconds, "error": ""}

    return build


@dataclass
class Result:
    candidates: list[Candidate]
    best: Candidate
    original: Candidate
    weights: dict[str, float]
    spearman: dict[str, float | None]
    builds: int
    seconds: float
    stopped: str  # why the search ended: builds, seconds, exhausted
    dims: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"format": "optgraph-tune", "version": 1, "objective": self.weights, "dims": self.dims,
                "builds": self.builds,
                "seconds": round(self.seconds, 1), "stopped": self.stopped, "best": self.best.id,
                "spec": self.best.spec(), "spearman": self.spearman,
                "before": {"measured": self.original.measured, "objective": _finite(self.original.objective)},
                "after": {"measured": self.best.measured, "objective": _finite(self.best.objective)},
                "candidates": [c.row() for c in self.candidates]}


class Search:
    """One tuning run; ``run`` returns the Result, the winner's file is ``best.path`` until ``close``."""

    def __init__(self, model_path: str, *, weights: Mapping[str, float], builder: Builder, builds: int = 50,
                 seconds: float | None = None, seed: int = 0, dims: Mapping[str, int] | None = None,
                 log: Callable[[str], None] = lambda _: None) -> None:
        if builds < 1:
            raise TuneError(f"--builds must be at least 1, got {builds}")
        self.path, self.weights, self.builder = model_path, dict(weights), builder
        self.budget, self.seconds, self.dims = builds, seconds, interface_dims(ir.load(model_path), dims or {})
        self.rng = np.random.default_rng(seed)
        self.log = log
        self.folder = tempfile.mkdtemp(prefix="optgraph-tune-")
        self.candidates: list[Candidate] = []
        self.by_sha: dict[tuple[str, int | None], Candidate] = {}
        self.seen: set[Choices | None] = set()
        self.builds = 0
        self.start = time.perf_counter()
        self.base_measured: dict[str, float | None] = {}
        self.base_predicted: dict[str, float | None] = {}

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def _time_left(self) -> bool:
        return self.seconds is None or time.perf_counter() - self.start < self.seconds

    def optimize(self, choices: Choices | None) -> Candidate:
        """Run the candidate's pipeline, write and hash the result, estimate it."""
        from optgraph.passes.manager import PassManager, node_count
        from optgraph.passes.base import PassContext

        self.seen.add(choices)
        loop, after = choices.pipeline() if choices is not None else ("", "")
        label = "original" if choices is None else choices.label()
        c = Candidate(len(self.candidates), label, loop, after, choices)
        self.candidates.append(c)
        t0 = time.perf_counter()
        model = ir.load(self.path)
        PassManager(steps(loop, after), ctx=PassContext(dims=self.dims)).run(model)
        c.nodes = node_count(model)
        folder = os.path.join(self.folder, str(c.id))
        os.mkdir(folder)
        c.path = os.path.join(folder, "model.onnx")
        ir.save(model, c.path)
        c.sha256 = _sha256(os.path.join(folder, f) for f in sorted(os.listdir(folder)))
        c.optimize_seconds = time.perf_counter() - t0
        c.predicted = estimate(model)
        if c.aux_streams is not None:
            c.predicted["streams"] = min(c.predicted["streams"], c.aux_streams + 1)
        arena = predicted_memory(model, self.dims)
        c.predicted["memory"] = None if arena is None else arena * c.predicted["streams"]
        del model
        gc.collect()  # the pass manager moves a model's objects to the oldest generation: free each one now
        if choices is None:
            self.base_predicted = dict(c.predicted)
        c.predicted_objective = objective(c.predicted, self.base_predicted, self.weights)
        key = (c.sha256, c.aux_streams)
        same = self.by_sha.get(key)
        if same is not None:
            c.duplicate_of = same.id
            shutil.rmtree(folder)
        else:
            self.by_sha[key] = c
        return c

    def build(self, c: Candidate) -> None:
        out = self.builder(c.path, c.aux_streams)
        self.builds += 1
        c.built, c.build_index, c.build_seconds, c.error = True, self.builds, out["seconds"], out.get("error", "")
        if out["ok"]:
            c.measured = {k: out[k] for k in METRICS}
            if not self.base_measured:  # the original, or the first candidate TensorRT could build
                self.base_measured = dict(c.measured)
        self._score()
        self.log(f"build {self.builds}: #{c.id} {c.label}: " + (
            f"{c.measured['layers']} layers, {c.measured['kernels']} kernels, "
            f"{_mib(c.measured['memory'])} MiB, objective {c.objective:.4f}" if out["ok"] else f"failed: {c.error}"))
        best = self.best()
        for other in self.candidates:  # of the built files, only the best one's is kept
            if other.built and other is not best and other.path:
                self._drop(other)

    def _score(self) -> None:
        for c in self.candidates:
            if c.built and c.measured:
                c.objective = objective(c.measured, self.base_measured, self.weights)

    def best(self) -> Candidate | None:
        built = [c for c in self.candidates if c.built and c.measured]
        if not built:
            return None
        tie = {m: 1.0 for m in METRICS}  # ties go to the better engine overall, then to the fewest changed choices
        return min(built, key=lambda c: (c.objective, objective(c.measured, self.base_measured, tie),
                                         c.choices.distance() if c.choices is not None else 0, c.id))

    def _pending(self) -> list[Candidate]:
        return [c for c in self.candidates if c.duplicate_of is None and not c.built and c.path]

    def _drop(self, c: Candidate) -> None:
        shutil.rmtree(os.path.dirname(c.path))
        c.path = ""

    def run(self) -> Result:
        stopped = "exhausted"
        for seed in (None, DEFAULT, ONE_STREAM):
            c = self.optimize(seed)
            if c.duplicate_of is None and self.builds < self.budget:
                self.build(c)
        stale = 0
        while True:
            if self.builds >= self.budget:
                stopped = "builds"
                break
            if not self._time_left():
                stopped = "seconds"
                break
            fresh = 0
            for choices in self._propose(EXPLORE):
                if not self._time_left():
                    break
                fresh += self.optimize(choices).duplicate_of is None
            pending = sorted(self._pending(), key=lambda c: (c.predicted_objective, c.id))
            for c in pending[:BUILD]:
                if self.builds >= self.budget or not self._time_left():
                    break
                self.build(c)
            for c in pending[KEEP:]:  # ranked out by the cost model: never built
                c.error = "ranked out by the cost model"
                self._drop(c)
            stale = 0 if fresh else stale + 1
            if stale >= STALE_ROUNDS and not self._pending():
                break
        for c in self._pending():  # optimized, never built: their files go
            self._drop(c)
        for c in self.candidates:  # a duplicate shares its original's figures
            if c.duplicate_of is not None:
                twin = self.candidates[c.duplicate_of]
                c.measured, c.objective, c.error = dict(twin.measured), twin.objective, twin.error
        best = self.best()
        if best is None:
            errors = [c.error for c in self.candidates if c.error]
            raise TuneError("TensorRT built none of the candidates: " + (errors[0] if errors else "no build ran"))
        built = [c for c in self.candidates if c.built and c.measured]
        rho = {m: spearman([c.predicted.get(m) for c in built], [c.measured.get(m) for c in built])
               for m in METRICS}
        rho["objective"] = spearman([c.predicted_objective for c in built], [c.objective for c in built])
        return Result(self.candidates, best, self.candidates[0], self.weights, rho, self.builds,
                      time.perf_counter() - self.start, stopped, self.dims)

    def _propose(self, n: int) -> Iterable[Choices]:
        """Up to ``n`` choices not tried yet: mutations of the three best measured, or random."""
        parents = sorted((c for c in self.candidates if c.choices is not None and c.built and c.measured),
                         key=lambda c: (c.objective, c.id))[:3]
        out: list[Choices] = []
        for _ in range(50 * n):
            if len(out) == n:
                break
            if parents and self.rng.random() < 0.6:
                parent = parents[int(self.rng.integers(len(parents)))].choices
                assert parent is not None
                choices = mutate(parent, self.rng)
            else:
                choices = random_choices(self.rng)
            if choices not in self.seen and choices not in out:
                out.append(choices)
        return out


def interface_dims(model: ir.Model, dims: Mapping[str, int]) -> dict[str, int]:
    """``dims``, plus 1 for every other symbolic dim of the graph inputs: the sizes TensorRT's
    one-point profile takes (runtime/tensorrt.py), so the planner sizes what the builder builds."""
    out = dict(dims)
    for v in model.graph.inputs:
        for d in v.shape or ():
            if isinstance(d, str) and d not in out:
                out[d] = 1
    return out


def _sha256(paths: Iterable[str]) -> str:
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def _mib(b: float | None) -> str:
    return "?" if b is None else f"{b / 2**20:.2f}"


# ------------------------------------------------------------------------------------------------
# reports


def markdown(result: Result, model: str, output: str) -> str:
    """The candidate table (one row per candidate, duplicates pointing at their twin)."""
    w = ", ".join(f"{k}={v:g}" for k, v in result.weights.items())
    rho = ", ".join(f"{k} {'n/a' if v is None else f'{v:+.2f}'}" for k, v in result.spearman.items())
    b, o = result.best, result.original
    lines = [f"# optgraph tune: {os.path.basename(model)}", "",
             f"Objective {w} (each figure relative to the original's); {result.builds} builds in "
             f"{result.seconds:.0f} s, stopped by {result.stopped}; {len(result.candidates)} candidates, "
             f"{len(result.candidates) - sum(c.duplicate_of is not None for c in result.candidates)} distinct graphs.",
             "", f"Best: #{b.id} `{b.label}`: {_figures(b.measured)} (objective {b.objective:.4f}) against the "
             f"original's {_figures(o.measured)} (objective {_fmt(o.objective)}); its engine: "
             f"`{b.build_hint(os.path.basename(output))}`.", "",
             f"Cost model, Spearman over the built candidates: {rho}.", "",
             "| # | choices | nodes | est. layers | est. kernels | est. MiB (arena x streams) | est. objective "
             "| layers | kernels | activation MiB | objective | build s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in result.candidates:
        m = c.measured
        if c.duplicate_of is not None:
            measured = [f"= #{c.duplicate_of}", "", "", "", ""]
        elif not c.built:
            measured = ["not built", "", "", "", ""]
        elif not m:
            measured = ["failed", "", "", "", _fmt(c.build_seconds, 1)]
        else:
            measured = [str(m["layers"]), str(m["kernels"]), _mib(m["memory"]), _fmt(c.objective),
                        _fmt(c.build_seconds, 1)]
        p = c.predicted
        star = " **best**" if c is b else ""
        lines.append(f"| {c.id} | `{c.label}`{star} | {c.nodes} | {p.get('layers')} | {p.get('kernels')} | "
                     f"{_mib(p.get('memory'))} | {_fmt(c.predicted_objective)} | " + " | ".join(measured) + " |")
    return "\n".join(lines) + "\n"


def _figures(m: Mapping[str, Any]) -> str:
    if not m:
        return "not built"
    return f"{m['layers']} layers, {m['kernels']} standalone kernels, {_mib(m['memory'])} MiB activations"


def _fmt(x: float | None, digits: int = 4) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def plot(result: Result, path: str) -> None:
    """Estimated against measured objective over the built candidates, and the best over builds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    built = [c for c in result.candidates if c.built and c.measured]
    order = sorted(built, key=lambda c: c.build_index or 0)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
    ax1.scatter([c.predicted_objective for c in built], [c.objective for c in built], s=18)
    ax1.scatter([result.best.predicted_objective], [result.best.objective], s=60, marker="*", color="red", label="best")
    ax1.scatter([result.original.predicted_objective], [result.original.objective], s=40, marker="s", color="black",
                label="original")
    rho = result.spearman.get("objective")
    ax1.set_title(f"cost model: Spearman {'n/a' if rho is None else f'{rho:+.2f}'}")
    ax1.set_xlabel("estimated objective")
    ax1.set_ylabel("measured objective")
    ax1.legend()
    best, curve = math.inf, []
    for c in order:
        best = min(best, c.objective if c.objective is not None else math.inf)
        curve.append(best)
    ax2.plot(range(1, len(curve) + 1), curve, drawstyle="steps-post")
    ax2.scatter(range(1, len(order) + 1), [c.objective for c in order], s=10, alpha=0.5)
    ax2.set_xlabel("build")
    ax2.set_ylabel("objective (1 = original)")
    ax2.set_title("best so far")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------
# the command


def outputs(out: str) -> dict[str, str]:
    """The files tune writes beside OUT."""
    stem = out[:-5] if out.endswith(".onnx") else out
    return {"spec": f"{stem}.spec.json", "json": f"{stem}.tune.json", "md": f"{stem}.tune.md",
            "png": f"{stem}.tune.png"}


def cmd_tune(args: argparse.Namespace) -> int:
    from optgraph.ir.serde import write_atomic
    from optgraph.runtime.cli import _check_output_path, _dims, _load

    _check_output_path(args.model, args.output)
    dims = _dims(args.dim)
    if args.replay:
        return _replay(args, dims)
    weights = parse_objective(args.objective)
    if args.seconds is not None and args.seconds <= 0:
        raise TuneError(f"--seconds must be positive, got {args.seconds}")
    _load(args.model)  # a bad model is one clear error before TensorRT is needed
    say = (lambda _: None) if args.quiet else (lambda s: print(f"optgraph: {s}", file=sys.stderr))
    checked = ""
    search = Search(args.model, weights=weights, builder=trt_builder(dims), builds=args.builds,
                    seconds=args.seconds, seed=args.seed, dims=dims, log=say)
    try:
        result = search.run()
        if args.check:
            from optgraph.passes.testing.oracle import compare

            check = compare(ir.to_proto(_load(args.model)), ir.to_proto(ir.load(result.best.path)),
                            n_inputs=args.inputs, seed=0, dims=dims)
            if not check.equivalent:
                print(f"optgraph: mismatch: the winner #{result.best.id} differs: {check.message}; "
                      "nothing written", file=sys.stderr)
                return 1
            checked = f"  check: the winner matches the input on onnxruntime ({check.message})"
        files = outputs(args.output)
        png = None
        if not args.no_plot:
            try:
                plot(result, f"{files['png']}.tmp.png")
                png = files["png"]
            except ImportError:
                print("optgraph: warning: matplotlib is not installed; no plot", file=sys.stderr)
        ir.save(ir.load(result.best.path), args.output)
        write_atomic(files["spec"], (json.dumps(result.best.spec(), indent=2) + "\n").encode())
        write_atomic(files["json"], (json.dumps(result.to_json(), indent=2) + "\n").encode())
        write_atomic(files["md"], markdown(result, args.model, args.output).encode())
        if png is not None:
            os.replace(f"{png}.tmp.png", png)
    finally:
        search.close()
        if os.path.exists(f"{outputs(args.output)['png']}.tmp.png"):  # a failure after the plot: no partial output
            os.remove(f"{outputs(args.output)['png']}.tmp.png")
    if not args.quiet:
        b, o = result.best, result.original
        rho = result.spearman["objective"]
        print(f"{args.model} -> {args.output}: best #{b.id} `{b.label}` of {len(result.candidates)} candidates "
              f"({result.builds} builds, {result.seconds:.0f} s, stopped by {result.stopped})")
        print(f"  original: {_figures(o.measured)}; objective {_fmt(o.objective)}")
        print(f"  best:     {_figures(b.measured)}; objective {_fmt(b.objective)}; "
              f"its engine: {b.build_hint(args.output)}")
        print(f"  cost model Spearman (objective): {'n/a' if rho is None else f'{rho:+.2f}'}; "
              f"table {outputs(args.output)['md']}")
        if args.check:
            print(checked)
    return 0


def _replay(args: argparse.Namespace, dims: dict[str, int]) -> int:
    """Run a spec written by an earlier tune (no TensorRT needed)."""
    from optgraph.passes.base import PassContext
    from optgraph.passes.manager import PassManager, PipelineError
    from optgraph.runtime.cli import _load

    try:
        with open(args.replay) as f:
            spec = json.load(f)
        if spec.get("format") != "optgraph-tune-spec" or spec.get("version") != 1:
            raise ValueError("not an optgraph tune spec (version 1)")
        pipeline = steps(str(spec["loop"]), str(spec["after"]))
    except (OSError, ValueError, KeyError, TypeError, AttributeError, PipelineError) as e:
        raise TuneError(f"cannot use --replay '{args.replay}': {e}") from None
    model = _load(args.model)
    PassManager(pipeline, ctx=PassContext(dims=dims)).run(model)
    ir.save(model, args.output)
    if not args.quiet:
        aux = (spec.get("build") or {}).get("aux_streams")
        hint = "" if aux is None else f"; build it with --aux-streams {aux}, as tune measured it"
        print(f"{args.model} -> {args.output}: replayed `{spec.get('label', '')}`{hint}")
    return 0


def add_command(sub: Any) -> None:
    from optgraph.runtime.cli import _positive

    p = sub.add_parser("tune", help="search pipeline choices for one model with TensorRT builds in the loop")
    p.add_argument("model", help="the ONNX model (never modified)")
    p.add_argument("-o", "--output", required=True,
                   help="the winning model; beside it OUT.spec.json, OUT.tune.json, OUT.tune.md, OUT.tune.png")
    p.add_argument("--builds", type=_positive, default=50, help="most engine builds (default 50)")
    p.add_argument("--seconds", type=float, help="stop starting new work after this many seconds")
    p.add_argument("--objective", default="layers=1,memory=1",
                   help="layers | kernels | memory, or weights such as layers=1,memory=0.5 (default layers=1,memory=1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the search (default 0)")
    p.add_argument("--dim", action="append", default=[], metavar="NAME=SIZE", help="size of a symbolic dimension")
    p.add_argument("--check", action="store_true", help="compare the winner with the input on onnxruntime first")
    p.add_argument("--inputs", type=_positive, default=3, help="random input sets for --check (default 3)")
    p.add_argument("--replay", metavar="SPEC.json", help="run the pipeline of a spec tune wrote; no search")
    p.add_argument("--no-plot", action="store_true", help="no OUT.tune.png")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    p.set_defaults(func=cmd_tune)
