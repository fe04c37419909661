"""Activation memory planning: every activation gets an offset in one arena.

Tensors that are never live at the same step may share bytes. On top of lifetimes, three kinds of
reuse are planned and recorded as explicit alias records:

- **in-place**: an elementwise op (Relu, Add, BatchNormalization, ...) writes its output over an
  input of the same size and type that dies at that op;
- **concat**: when a Concat's inputs are contiguous slices of its output (every dimension before
  the axis is 1, e.g. a channel concat at batch 1 in NCHW), the producers write straight into
  the output and the Concat neither copies nor needs memory of its own. A concat whose inputs
  start with all the inputs of an earlier concat (DenseNet re-concatenates every earlier feature
  at each layer) takes that concat as its prefix, so a block's features are laid out once;
- **split**: the mirror case: a Split's outputs are views of their slices of its input.

A tensor and everything aliased into it form a *group* that the planner places as a unit. Each
byte range of a group is reserved from the first to the last step any tensor covering it is
live, so a feature that is produced late does not hold memory early.

Strategies: ``greedy-size`` is TensorFlow Lite's arena planner (largest tensor first, into the
tightest gap among the tensors it overlaps in time); ``greedy-breadth`` places first the groups
live at the busiest steps, in the order they are produced, which packs the peak the way a
stack would and fits the quieter stretches into its holes. The
lower bound is the largest sum of live bytes over the steps; ``order=memory`` looks for a
schedule with a lower one. See docs/memory-planning.md for the JSON form of a plan.
"""

from __future__ import annotations

import heapq
import json
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from optgraph import ir
from optgraph.ir.opset import IN_PLACE, is_onnx
from optgraph.ir.order import outer_inputs
from optgraph.passes.base import Pass, PassContext, PassResult
from optgraph.passes.liveness import (Liveness, TensorInfo, TensorInfos, is_activation, live_profile, liveness,
                                      tensor_infos)
from optgraph.passes.registry import register

STRATEGIES = ("greedy-size", "greedy-breadth")
ORDERS = ("file", "memory")
METADATA_KEY = "optgraph.memory_plan"



class PlanError(ir.OptGraphError):
    """A memory plan that does not fit the model (bad JSON, unknown tensors, bad options)."""


@dataclass(frozen=True)
class Alias:
    """``value`` lives at byte ``offset`` inside ``into``'s storage (kind "concat" or "inplace")."""

    value: ir.Value
    into: ir.Value
    offset: int
    kind: str


@dataclass(frozen=True)
class Placement:
    """Where an activation lives: arena bytes ``offset``..``offset+nbytes``, steps ``start``..``end``."""

    value: ir.Value
    offset: int
    nbytes: int
    start: int
    end: int


@dataclass
class MemoryPlan:
    """A schedule, an arena offset for every activation, and the aliases that let them share."""

    schedule: list[ir.Node]
    placements: dict[ir.Value, Placement]
    aliases: list[Alias]
    infos: Mapping[ir.Value, TensorInfo]
    arena_size: int
    naive_size: int
    lower_bound: int
    file_order_lower_bound: int
    strategy: str
    order: str  # where the schedule comes from: "file", or "memory" when that order has a lower peak
    alignment: int
    strategies: dict[str, int] = field(default_factory=dict)  # arena size each strategy reaches
    dims: dict[str, int] = field(default_factory=dict)
    input_bytes: int = 0
    output_bytes: int = 0
    constant_bytes: int = 0

    def summary(self) -> dict[str, Any]:
        """The figures without the per-tensor detail (what pipeline reports carry)."""
        return {
            "strategy": self.strategy, "order": self.order, "alignment": self.alignment,
            "arena_bytes": self.arena_size, "naive_bytes": self.naive_size, "lower_bound_bytes": self.lower_bound,
            "file_order_lower_bound_bytes": self.file_order_lower_bound, "strategies": dict(self.strategies),
            "tensors": len(self.placements), "aliases": len(self.aliases),
            "inplace_aliases": sum(a.kind == "inplace" for a in self.aliases),
            "concat_aliases": sum(a.kind == "concat" for a in self.aliases),
            "split_aliases": sum(a.kind == "split" for a in self.aliases),
            "input_bytes": self.input_bytes, "output_bytes": self.output_bytes,
            "constant_bytes": self.constant_bytes,
        }

    def to_json(self) -> dict[str, Any]:
        """The plan as JSON data (schema: docs/memory-planning.md)."""
        file_index = {id(n): i for i, n in enumerate(self.schedule[0].graph)} if self.schedule else {}
        data: dict[str, Any] = {"format": "optgraph-memory-plan", "version": 1, "dims": dict(self.dims)}
        data.update(self.summary())
        data["schedule"] = [{"node": n.name, "op": n.op_type, "index": file_index[id(n)]} for n in self.schedule]
        data["tensors"] = [
            {"name": p.value.name, "dtype": onnx.TensorProto.DataType.Name(self.infos[p.value].dtype),
             "shape": list(self.infos[p.value].shape), "bytes": p.nbytes, "offset": p.offset,
             "start": p.start, "end": p.end}
            for p in self.placements.values()]
        data["aliases"] = [{"tensor": a.value.name, "into": a.into.name, "offset": a.offset, "kind": a.kind}
                           for a in self.aliases]
        return data

    @classmethod
    def from_json(cls, model: ir.Model, data: Mapping[str, Any],
                  infos: Mapping[ir.Value, TensorInfo] | None = None) -> MemoryPlan:
        """Read a plan written by ``to_json`` back onto ``model`` (the same graph it was made for);
        sizes are worked out again with the plan's dims unless ``infos`` gives them."""
        if data.get("format") != "optgraph-memory-plan" or data.get("version") != 1:
            raise PlanError("not an optgraph memory plan (version 1)")
        if infos is None:
            infos = tensor_infos(model, data.get("dims"))
        nodes = list(model.graph)
        values = {v.name: v for n in nodes for v in n.outputs if v is not None}
        try:
            schedule = [nodes[s["index"]] for s in data["schedule"]]
            placements = {}
            for t in data["tensors"]:
                v = values[t["name"]]
                placements[v] = Placement(v, int(t["offset"]), int(t["bytes"]), int(t["start"]), int(t["end"]))
            aliases = [Alias(values[a["tensor"]], values[a["into"]], int(a["offset"]), a["kind"])
                       for a in data["aliases"]]
        except (KeyError, IndexError, TypeError) as e:
            raise PlanError(f"the plan does not match the model: missing or unknown {e}") from None
        return cls(schedule, placements, aliases, infos, int(data["arena_bytes"]), int(data["naive_bytes"]),
                   int(data["lower_bound_bytes"]), int(data["file_order_lower_bound_bytes"]), data["strategy"],
                   data["order"], int(data["alignment"]), dict(data.get("strategies", {})),
                   dict(data.get("dims", {})))


# ------------------------------------------------------------------------------------------------
# aliases


def _contiguous(node: ir.Node, op: str, whole: ir.Value | None, infos: Mapping[ir.Value, TensorInfo]) -> bool:
    if not is_onnx(node, op) or whole is None or whole not in infos:
        return False
    shape = infos[whole].shape
    axis = node.attr("axis", 0)
    axis = axis + len(shape) if axis < 0 else axis
    return 0 <= axis < len(shape) and all(d == 1 for d in shape[:axis])


def contiguous_concat(node: ir.Node, infos: Mapping[ir.Value, TensorInfo]) -> bool:
    """True when the Concat's output is its inputs' bytes one after another (dims before the axis are 1)."""
    return _contiguous(node, "Concat", node.outputs[0] if node.outputs else None, infos)


def contiguous_split(node: ir.Node, infos: Mapping[ir.Value, TensorInfo]) -> bool:
    """True when the Split's outputs are its input's bytes one after another (dims before the axis are 1)."""
    return _contiguous(node, "Split", node.inputs[0] if node.inputs else None, infos)


def _offsets(parts: Sequence[ir.Value | None], infos: Mapping[ir.Value, TensorInfo]) -> list[int]:
    """Byte offset of each part (a Concat's inputs, a Split's outputs) in the whole they tile."""
    offsets, at = [], 0
    for v in parts:
        offsets.append(at)
        at += infos[v].nbytes if v is not None else 0
    return offsets


def _find(v: ir.Value, up: dict[ir.Value, ir.Value]) -> ir.Value:
    """The group root of ``v`` in a union-find over alias links (``up``), compressing the path."""
    root = v
    while root in up:
        root = up[root]
    while v in up and up[v] is not root:
        up[v], v = root, up[v]
    return root


def concat_aliases(graph: ir.Graph, infos: Mapping[ir.Value, TensorInfo], activations: Mapping[ir.Value, Any],
                   parent: dict[ir.Value, Alias]) -> None:
    """Let contiguous Concats' producers write into the output (records go into ``parent``).

    An input is aliased only if it is an activation that is not already inside another tensor:
    graph inputs and initializers are the caller's buffers, and a value feeding two concats can
    sit in only one of them, unless one concat is the other's prefix.
    """
    complete: set[ir.Value] = set()  # concat outputs that hold all of their inputs
    up = {v: a.into for v, a in parent.items()}
    for node in graph:
        out = node.outputs[0] if node.outputs else None
        if out not in activations or not contiguous_concat(node, infos):
            continue
        inputs = node.inputs
        offsets = _offsets(inputs, infos)
        first = 0
        if inputs[0] is not None and inputs[0] in parent:
            prev = _find(inputs[0], up)
            prev_inputs = prev.producer.inputs if prev.producer is not None else ()
            if prev in complete and prev_inputs == inputs[:len(prev_inputs)]:
                parent[prev] = Alias(prev, out, 0, "concat")
                up[prev] = out
                first = len(prev_inputs)
        all_in = True
        for v, offset in zip(inputs[first:], offsets[first:]):
            if v is not None and v in activations and v not in parent and v is not out:
                parent[v] = Alias(v, out, offset, "concat")
                up[v] = out
            else:
                all_in = False
        if all_in:
            complete.add(out)


def split_aliases(graph: ir.Graph, infos: Mapping[ir.Value, TensorInfo], activations: Mapping[ir.Value, Any],
                  parent: dict[ir.Value, Alias]) -> None:
    """Let contiguous Splits' outputs be views of their input (records go into ``parent``).

    An output already written into a concat stays there (the Split copies it); graph outputs
    and a Split of a graph input or initializer get buffers of their own. So does a Split of a
    concat whose inputs were written into it: a view would share bytes with those inputs while
    both are live, which is sound (same data) but not a containment the plan can state.
    """
    holds = {a.into for a in parent.values() if a.kind == "concat"}
    for node in graph:
        whole = node.inputs[0] if node.inputs else None
        if whole not in activations or whole in holds or not contiguous_split(node, infos):
            continue
        for v, offset in zip(node.outputs, _offsets(node.outputs, infos)):
            if v is not None and v in activations and v not in parent:
                parent[v] = Alias(v, whole, offset, "split")


def _subtree_ends(tensors: Mapping[ir.Value, Any], parent: Mapping[ir.Value, Alias]) -> dict[ir.Value, int]:
    """For each tensor, the last step it or anything aliased into it (at any depth) is read."""
    children: dict[ir.Value, list[ir.Value]] = defaultdict(list)
    for v, a in parent.items():
        children[a.into].append(v)
    end = {v: t.end for v, t in tensors.items()}
    for top in [v for v in tensors if v not in parent]:
        stack, order = [top], []
        while stack:
            v = stack.pop()
            order.append(v)
            stack.extend(children[v])
        for v in reversed(order):  # children before their container
            if v in parent:
                end[parent[v].into] = max(end[parent[v].into], end[v])
    return end


def inplace_aliases(live: Liveness, infos: Mapping[ir.Value, TensorInfo], parent: dict[ir.Value, Alias]) -> None:
    """Let elementwise ops write over an input that dies there (records go into ``parent``).

    The input must not sit inside another tensor, and nothing aliased into it may outlive the
    op (a concat's input can be read after the concat, a split's outputs after the split).
    """
    tensors = live.tensors
    subtree_end = _subtree_ends(tensors, parent)
    for step, node in enumerate(live.schedule):
        if node.op_type not in IN_PLACE or not is_onnx(node) or len(node.outputs) != 1:
            continue
        y = node.outputs[0]
        if y not in tensors:
            continue
        for x in dict.fromkeys(v for v in node.inputs if v is not None):
            if (x in tensors and x not in parent and tensors[x].end == step and subtree_end[x] <= step
                    and infos[x].nbytes == infos[y].nbytes and infos[x].dtype == infos[y].dtype):
                parent[x] = Alias(x, y, 0, "inplace")
                break


def _locate(v: ir.Value, parent: Mapping[ir.Value, Alias],
            memo: dict[ir.Value, tuple[ir.Value, int]]) -> tuple[ir.Value, int]:
    """The root of ``v``'s group and the byte offset of ``v`` inside it (memoized, so a whole
    forest costs linear time however deep its chains are)."""
    chain = []
    while v in parent and v not in memo:
        chain.append(v)
        v = parent[v].into
    root, at = memo.get(v, (v, 0))
    for u in reversed(chain):
        at += parent[u].offset
        memo[u] = (root, at)
    return root, at


# ------------------------------------------------------------------------------------------------
# groups and placement


@dataclass
class _Group:
    root: ir.Value
    size: int
    segments: list[tuple[int, int, int, int]]  # (lo, hi, start, end): bytes lo..hi reserved start..end
    index: int  # production order of the root, for deterministic ties


def _segments(members: list[tuple[int, int, int, int]]) -> list[tuple[int, int, int, int]]:
    """Split a group into disjoint byte ranges, each reserved while any member covering it is live."""
    members = sorted(m for m in members if m[1] > m[0])
    if len(members) <= 1:
        return members
    bounds = sorted({b for m in members for b in m[:2]})
    starts: list[tuple[int, int]] = []  # (start, hi) heaps with lazy removal of members ended below
    ends: list[tuple[int, int]] = []
    out: list[tuple[int, int, int, int]] = []
    j = 0
    for lo, hi in zip(bounds, bounds[1:]):
        while j < len(members) and members[j][0] <= lo:
            heapq.heappush(starts, (members[j][2], members[j][1]))
            heapq.heappush(ends, (-members[j][3], members[j][1]))
            j += 1
        while starts and starts[0][1] <= lo:
            heapq.heappop(starts)
        while ends and ends[0][1] <= lo:
            heapq.heappop(ends)
        if not starts:
            continue
        start, end = starts[0][0], -ends[0][0]
        if out and out[-1][1] == lo and out[-1][2:] == (start, end):
            out[-1] = (out[-1][0], hi, start, end)
        else:
            out.append((lo, hi, start, end))
    return out


def _groups(live: Liveness, parent: Mapping[ir.Value, Alias]
            ) -> tuple[list[_Group], dict[ir.Value, tuple[ir.Value, int]]]:
    """The groups to place, and each activation's group root and offset inside it."""
    memo: dict[ir.Value, tuple[ir.Value, int]] = {}
    members: dict[ir.Value, list[tuple[int, int, int, int]]] = defaultdict(list)
    for v, t in live.tensors.items():
        root, at = _locate(v, parent, memo)
        members[root].append((at, at + t.nbytes, t.start, t.end))
    order = {v: i for i, v in enumerate(live.tensors)}
    groups = [_Group(root, live.tensors[root].nbytes, _segments(ms), order[root]) for root, ms in members.items()]
    groups.sort(key=lambda g: g.index)
    return groups, {v: _locate(v, parent, memo) for v in live.tensors}


class _TimeIndex:
    """Placed byte ranges by lifetime: finds those live during a span without scanning them all.

    A segment tree over steps: a range is stored at the O(log n) nodes that cover its span, and a
    query only walks into subtrees that hold something.
    """

    def __init__(self, n_steps: int) -> None:
        self.size = 1
        while self.size < max(n_steps, 1):
            self.size *= 2
        self.here: dict[int, list[tuple[int, int]]] = defaultdict(list)
        self.count = [0] * (2 * self.size)

    def add(self, item: tuple[int, int], start: int, end: int) -> None:
        lo, hi = start + self.size, end + self.size + 1
        while lo < hi:
            if lo & 1:
                self._store(lo, item)
                lo += 1
            if hi & 1:
                hi -= 1
                self._store(hi, item)
            lo >>= 1
            hi >>= 1

    def _store(self, node: int, item: tuple[int, int]) -> None:
        self.here[node].append(item)
        while node:
            self.count[node] += 1
            node >>= 1

    def query(self, start: int, end: int) -> list[tuple[int, int]]:
        """Every stored range whose span meets start..end (a range may come back more than once)."""
        found: list[tuple[int, int]] = []
        stack = [(1, 0, self.size - 1)]
        while stack:
            node, lo, hi = stack.pop()
            if hi < start or lo > end or not self.count[node]:
                continue
            found.extend(self.here.get(node, ()))
            if lo != hi:
                mid = (lo + hi) // 2
                stack.append((2 * node, lo, mid))
                stack.append((2 * node + 1, mid + 1, hi))
        return found


def _align(x: int, alignment: int) -> int:
    return -(-x // alignment) * alignment


def _best_fit(forbidden: list[tuple[int, int]], alignment: int) -> int:
    """The aligned base offset outside every open interval (lo, hi) that wastes the least room
    below the next range up (the tightest gap), else the lowest one above them all."""
    forbidden.sort()
    cur = 0
    best: tuple[int, int] | None = None
    for lo, hi in forbidden:
        if hi <= cur:
            continue
        at = _align(cur, alignment)
        if at <= lo and (best is None or lo - at < best[0]):
            best = (lo - at, at)
        cur = hi
    return best[1] if best is not None else _align(cur, alignment)


def _range_max(profile: np.ndarray) -> list[np.ndarray]:
    """A sparse table: table[k][i] is the max of profile[i : i + 2**k]."""
    table = [profile]
    k = 1
    while (1 << k) <= len(profile):
        prev = table[-1]
        table.append(np.maximum(prev[:-(1 << (k - 1))], prev[1 << (k - 1):]))
        k += 1
    return table


def _peak(table: list[np.ndarray], start: int, end: int) -> int:
    k = (end - start + 1).bit_length() - 1
    return int(max(table[k][start], table[k][end - (1 << k) + 1]))


def place(groups: Sequence[_Group], n_steps: int, strategy: str, alignment: int,
          profile: np.ndarray) -> tuple[list[int], int]:
    """Base offsets for ``groups`` (in their order) and the arena size, by ``strategy``."""
    if strategy == "greedy-size":
        order = sorted(range(len(groups)), key=lambda i: (-groups[i].size, _span(groups[i])[0], groups[i].index))
    elif strategy == "greedy-breadth":
        table = _range_max(profile) if len(profile) else []
        peaks = [_peak(table, *_span(g)) if g.segments else 0 for g in groups]
        order = sorted(range(len(groups)), key=lambda i: (-peaks[i], _span(groups[i])[0], -groups[i].size,
                                                          groups[i].index))
    else:
        raise PlanError(f"unknown strategy '{strategy}' (strategies: {', '.join(STRATEGIES)})")
    index = _TimeIndex(n_steps)
    offsets = [0] * len(groups)
    arena = 0
    for i in order:
        g = groups[i]
        if not g.segments:
            continue
        forbidden = [(plo - hi, phi - lo) for lo, hi, start, end in g.segments for plo, phi in index.query(start, end)]
        at = _best_fit(forbidden, alignment)
        offsets[i] = at
        for lo, hi, start, end in g.segments:
            index.add((at + lo, at + hi), start, end)
        arena = max(arena, at + g.size)
    return offsets, arena


def _span(g: _Group) -> tuple[int, int]:
    if not g.segments:
        return (0, 0)
    return min(s[2] for s in g.segments), max(s[3] for s in g.segments)


# ------------------------------------------------------------------------------------------------
# ordering


def memory_order(model: ir.Model, infos: Mapping[ir.Value, TensorInfo]) -> list[ir.Node]:
    """A topological order that keeps few bytes live: repeatedly run the ready node that adds
    the least (its outputs minus the inputs it is the last reader of); ties keep file order.

    A priority queue with lazy updates: a node's key changes only when it becomes the last
    unrun reader of one of its inputs, so the whole order costs O(edges log nodes).
    """
    graph = model.graph
    nodes = list(graph)
    index = {id(n): i for i, n in enumerate(nodes)}
    reads: list[list[ir.Value]] = []
    readers: dict[ir.Value, list[int]] = defaultdict(list)
    succ: list[list[int]] = [[] for _ in nodes]
    indegree = [0] * len(nodes)
    for i, node in enumerate(nodes):
        vals = list(dict.fromkeys(v for v in [*node.inputs, *outer_inputs(node)] if v is not None))
        reads.append(vals)
        for v in vals:
            readers[v].append(i)
            p = v.producer
            if p is not None and id(p) in index:
                succ[index[id(p)]].append(i)
                indegree[i] += 1
    remaining = {v: len(r) for v, r in readers.items()}

    activations = {v for n in nodes for v in n.outputs if v is not None and is_activation(v)}

    def arena(v: ir.Value) -> int:
        return infos[v].nbytes if v in activations else 0

    out_bytes = [sum(arena(v) for v in n.outputs if v is not None) for n in nodes]

    def key(i: int) -> int:
        return out_bytes[i] - sum(arena(v) for v in reads[i] if remaining[v] == 1)

    done = [False] * len(nodes)
    current = {}
    heap: list[tuple[int, int]] = []
    for i in range(len(nodes)):
        if indegree[i] == 0:
            current[i] = key(i)
            heap.append((current[i], i))
    heapq.heapify(heap)
    order: list[ir.Node] = []
    while heap:
        k, i = heapq.heappop(heap)
        if done[i] or current[i] != k:
            continue
        done[i] = True
        order.append(nodes[i])
        for v in reads[i]:
            remaining[v] -= 1
            if remaining[v] == 1 and arena(v):
                last = next(r for r in readers[v] if not done[r])
                if indegree[last] == 0:
                    current[last] = key(last)
                    heapq.heappush(heap, (current[last], last))
        for j in succ[i]:
            indegree[j] -= 1
            if indegree[j] == 0:
                current[j] = key(j)
                heapq.heappush(heap, (current[j], j))
    if len(order) != len(nodes):
        raise ir.InvalidModelError("the graph has a cycle")
    return order


# ------------------------------------------------------------------------------------------------
# the plan


@dataclass
class _Layout:
    live: Liveness
    parent: dict[ir.Value, Alias]
    groups: list[_Group]
    where: dict[ir.Value, tuple[ir.Value, int]]  # activation -> (group root, offset in it)
    profile: np.ndarray

    @property
    def lower_bound(self) -> int:
        return int(self.profile.max()) if len(self.profile) else 0


def _layout(model: ir.Model, schedule: list[ir.Node], infos: Mapping[ir.Value, TensorInfo], *,
            inplace: bool, concat: bool, split: bool) -> _Layout:
    live = liveness(model, schedule, infos)
    parent: dict[ir.Value, Alias] = {}
    if concat:
        concat_aliases(model.graph, infos, live.tensors, parent)
    if split:
        split_aliases(model.graph, infos, live.tensors, parent)
    if inplace:
        inplace_aliases(live, infos, parent)
    groups, where = _groups(live, parent)
    profile = live_profile(len(schedule), [(hi - lo, s, e) for g in groups for lo, hi, s, e in g.segments])
    return _Layout(live, parent, groups, where, profile)


def plan_memory(model: ir.Model, infos: Mapping[ir.Value, TensorInfo], *, strategy: str = "best",
                order: str = "file", alignment: int = 256, inplace: bool = True, concat: bool = True,
                split: bool = True, dims: Mapping[str, int] | None = None) -> MemoryPlan:
    """Plan the main graph's activations into one arena.

    ``order="memory"`` runs the nodes in ``memory_order`` when that lowers the lower bound, and
    in file order otherwise, so it never does worse than the file.
    """
    if strategy != "best" and strategy not in STRATEGIES:
        raise PlanError(f"unknown strategy '{strategy}' (strategies: best, {', '.join(STRATEGIES)})")
    if order not in ORDERS:
        raise PlanError(f"unknown order '{order}' (orders: {', '.join(ORDERS)})")
    if alignment < 1:
        raise PlanError(f"alignment must be at least 1, got {alignment}")
    file_layout = layout = _layout(model, list(model.graph), infos, inplace=inplace, concat=concat, split=split)
    used = "file"
    if order == "memory":
        other = _layout(model, memory_order(model, infos), infos, inplace=inplace, concat=concat,
                        split=split)
        if other.lower_bound < layout.lower_bound:
            layout, used = other, "memory"
    live = layout.live
    n_steps = len(live.schedule)
    arenas, offsets = {}, {}
    for name in STRATEGIES:
        offsets[name], arenas[name] = place(layout.groups, n_steps, name, alignment, layout.profile)
    if strategy == "best":  # the smallest arena; ties go to the first strategy listed
        strategy = min(STRATEGIES, key=lambda name: arenas[name])
    chosen = offsets[strategy]
    base = {g.root: at for g, at in zip(layout.groups, chosen)}
    placements = {}
    for v, t in live.tensors.items():
        root, at = layout.where[v]
        placements[v] = Placement(v, base[root] + at, t.nbytes, t.start, t.end)
    aliases = [layout.parent[v] for v in live.tensors if v in layout.parent]
    return MemoryPlan(
        list(live.schedule), placements, aliases, infos, arenas[strategy],
        naive_size=sum(_align(t.nbytes, alignment) for t in live.tensors.values()),
        lower_bound=layout.lower_bound, file_order_lower_bound=file_layout.live.lower_bound, strategy=strategy,
        order=used, alignment=alignment, strategies=arenas, dims=dict(dims or {}),
        input_bytes=live.input_bytes, output_bytes=live.output_bytes, constant_bytes=live.constant_bytes)


# ------------------------------------------------------------------------------------------------
# checking


def check_plan(model: ir.Model, plan: MemoryPlan) -> list[str]:
    """Everything wrong with ``plan`` for ``model`` (empty when it is sound).

    Checked: lifetimes match the schedule; every activation fits in the arena; each alias
    record is one the rules allow and matches the offsets; and no two tensors live at the same
    step share a byte unless one is aliased (directly or through others) into the other.
    """
    problems: list[str] = []
    truth = liveness(model, plan.schedule, plan.infos).tensors
    P = plan.placements
    for v, t in truth.items():
        p = P.get(v)
        if p is None:
            problems.append(f"'{v.name}' has no placement")
        elif (p.start, p.end, p.nbytes) != (t.start, t.end, t.nbytes):
            problems.append(f"'{v.name}' is live at steps {t.start}..{t.end} with {t.nbytes} bytes, "
                            f"the plan says {p.start}..{p.end} with {p.nbytes}")
    for v, p in P.items():
        if v not in truth:
            problems.append(f"'{v.name}' is placed but is not an activation")
        elif p.offset < 0 or p.offset + p.nbytes > plan.arena_size:
            problems.append(f"'{v.name}' at {p.offset}..{p.offset + p.nbytes} is outside the arena ({plan.arena_size})")
    parent: dict[ir.Value, Alias] = {}
    for a in plan.aliases:
        if a.value in parent:
            problems.append(f"'{a.value.name}' is aliased twice")
        parent[a.value] = a
        why = _bad_alias(a, P, truth, plan.infos)
        if why:
            problems.append(f"alias of '{a.value.name}' into '{a.into.name}' ({a.kind}): {why}")
    problems += _overlaps(P, parent)
    return problems


def _bad_alias(a: Alias, P: Mapping[ir.Value, Placement], truth: Mapping[ir.Value, Any],
               infos: Mapping[ir.Value, TensorInfo]) -> str:
    if a.value not in P or a.into not in P:
        return "both tensors must be activations"
    pv, pi = P[a.value], P[a.into]
    if pv.offset != pi.offset + a.offset:
        return f"placed at {pv.offset}, but the alias puts it at {pi.offset + a.offset}"
    if a.offset < 0 or a.offset + pv.nbytes > pi.nbytes:
        return "it does not fit inside"
    node = a.into.producer
    assert node is not None
    if a.kind == "inplace":
        ok = (node.op_type in IN_PLACE and a.value in node.inputs and pv.end == pi.start and a.offset == 0
              and pv.nbytes == pi.nbytes and infos[a.value].dtype == infos[a.into].dtype)
        return "" if ok else "only an elementwise op may write over a same-sized input that dies there"
    if a.kind == "split":
        split = a.value.producer
        ok = (split is not None and contiguous_split(split, infos) and split.inputs[0] is a.into
              and any(v is a.value and at == a.offset for v, at in zip(split.outputs, _offsets(split.outputs, infos))))
        return "" if ok else "it is not an output of a contiguous Split of that tensor at that offset"
    if a.kind == "concat":
        if not contiguous_concat(node, infos):
            return "the concat's inputs are not contiguous slices of its output"
        offsets = _offsets(node.inputs, infos)
        if any(v is a.value and at == a.offset for v, at in zip(node.inputs, offsets)):
            return ""
        prev = a.value.producer
        if (prev is not None and a.offset == 0 and contiguous_concat(prev, infos)
                and prev.inputs == node.inputs[:len(prev.inputs)]):
            return ""
        return "it is neither an input at that offset nor a concat of a prefix of the inputs"
    return f"unknown kind '{a.kind}'"


def _overlaps(P: Mapping[ir.Value, Placement], parent: Mapping[ir.Value, Alias]) -> list[str]:
    # Ancestry in the alias forest by DFS entry/exit times: u is inside v iff v's span holds u's.
    children: dict[ir.Value, list[ir.Value]] = defaultdict(list)
    for v, a in parent.items():
        children[a.into].append(v)
    enter: dict[ir.Value, int] = {}
    leave: dict[ir.Value, int] = {}
    clock = 0
    for top in [v for v in P if v not in parent]:
        stack = [(top, False)]
        while stack:
            v, done = stack.pop()
            if done:
                leave[v] = clock
                continue
            if v in enter:  # a cycle of alias records; reported below as overlaps
                continue
            enter[v] = clock
            clock += 1
            stack.append((v, True))
            stack.extend((c, False) for c in children[v])

    def related(u: ir.Value, v: ir.Value) -> bool:
        if u not in enter or v not in enter:
            return False
        return enter[v] <= enter[u] < leave[v] or enter[u] <= enter[v] < leave[u]

    problems = []
    active: list[Placement] = []
    for p in sorted(P.values(), key=lambda p: p.start):
        active = [q for q in active if q.end >= p.start]
        for q in active:
            if (p.nbytes and q.nbytes and p.offset < q.offset + q.nbytes and q.offset < p.offset + p.nbytes
                    and not related(p.value, q.value)):
                problems.append(f"'{p.value.name}' and '{q.value.name}' are live at the same time and overlap")
        active.append(p)
    return problems


# ------------------------------------------------------------------------------------------------
# output


def format_plan(plan: MemoryPlan) -> str:
    """A short table: arena per strategy against the naive size and the lower bounds."""
    mib = 1 << 20
    kinds = [a.kind for a in plan.aliases]
    lines = [f"schedule: {plan.order} order, {len(plan.schedule)} steps; {len(plan.placements)} activations; "
             f"aliases: {kinds.count('inplace')} in-place, {kinds.count('concat')} concat, {kinds.count('split')} split",
             f"naive (one buffer each): {plan.naive_size / mib:10.3f} MiB",
             f"lower bound, file order: {plan.file_order_lower_bound / mib:10.3f} MiB  (no aliasing)",
             f"lower bound, this plan:  {plan.lower_bound / mib:10.3f} MiB"]
    for name, size in plan.strategies.items():
        mark = "*" if name == plan.strategy else " "
        ratio = size / plan.lower_bound if plan.lower_bound else 1.0
        lines.append(f"{mark} {name:21} {size / mib:10.3f} MiB  ({ratio:.3f} x lower bound)")
    lines.append(f"outside the arena: inputs {plan.input_bytes / mib:.3f} MiB, outputs {plan.output_bytes / mib:.3f} "
                 f"MiB, weights and constants {plan.constant_bytes / mib:.3f} MiB")
    return "\n".join(lines)


def plot_plan(plan: MemoryPlan, path: str) -> None:
    """A memory timeline: one rectangle per activation (steps across, arena offset up)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import PolyCollection

    aliased = {a.value: a.kind for a in plan.aliases}
    colors = {"concat": "tab:orange", "inplace": "tab:green", "split": "tab:purple", None: "tab:blue"}
    mib = 1 << 20
    polys, fills = [], []
    for p in plan.placements.values():
        x0, x1, y0, y1 = p.start, p.end + 1, p.offset / mib, (p.offset + p.nbytes) / mib
        polys.append([(x0, y0), (x1, y0), (x1, y1), (x0, y1)])
        fills.append(colors[aliased.get(p.value)])
    fig, ax = plt.subplots(figsize=(12, 5))
    ax.add_collection(PolyCollection(polys, facecolors=fills, edgecolors="black", linewidths=0.2, alpha=0.8))
    ax.axhline(plan.arena_size / mib, color="black", linewidth=1, label=f"arena {plan.arena_size / mib:.2f} MiB")
    ax.axhline(plan.lower_bound / mib, color="red", linestyle="--", linewidth=1,
               label=f"lower bound {plan.lower_bound / mib:.2f} MiB")
    ax.set_xlim(0, max(len(plan.schedule), 1))
    ax.set_ylim(0, max(plan.arena_size / mib, 1e-6) * 1.05)
    ax.set_xlabel(f"step ({plan.order} order)")
    ax.set_ylabel("arena offset (MiB)")
    ax.set_title(f"{plan.strategy}: blue own buffer, green in-place, orange inside a concat, purple a split view")
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------
# the pass


@register
class PlanMemory(Pass):
    name = "plan-memory"
    description = "Plan activation memory: arena offsets by lifetime, in-place and concat aliases"
    kind = "analysis"

    @dataclass
    class Options:
        strategy: str = "best"  # the smallest arena of STRATEGIES, or one of them
        order: str = "file"
        alignment: int = 256
        inplace: bool = True
        concat: bool = True
        split: bool = True
        attach: bool = False  # store the plan's JSON in the model's metadata (optgraph.memory_plan)

        def __post_init__(self) -> None:  # bad values fail when the pipeline is parsed
            if self.strategy != "best" and self.strategy not in STRATEGIES:
                raise ValueError(f"plan-memory: unknown strategy '{self.strategy}' (best, {', '.join(STRATEGIES)})")
            if self.order not in ORDERS:
                raise ValueError(f"plan-memory: unknown order '{self.order}' ({', '.join(ORDERS)})")
            if self.alignment < 1:
                raise ValueError(f"plan-memory: alignment must be at least 1, got {self.alignment}")

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        o = self.options
        plan = plan_memory(model, ctx.get(TensorInfos), strategy=o.strategy, order=o.order, alignment=o.alignment,
                           inplace=o.inplace, concat=o.concat, split=o.split, dims=ctx.dims)
        ctx.results[self.name] = plan.summary()
        if o.attach:
            model.metadata_props[METADATA_KEY] = json.dumps(plan.to_json(), separators=(",", ":"))
        stats = {"arena_bytes": plan.arena_size, "lower_bound_bytes": plan.lower_bound,
                 "aliases": len(plan.aliases)}
        return PassResult(o.attach, stats)
