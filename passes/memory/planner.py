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

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from optgraph import ir
from optgraph.passes.memory.aliases import concat_aliases, inplace_aliases, split_aliases
from optgraph.passes.memory.grouping import Group, group_tensors
from optgraph.passes.memory.liveness import Liveness, TensorInfo, live_profile, liveness
from optgraph.passes.memory.model import STRATEGIES, Alias, MemoryPlan, Placement
from optgraph.passes.memory.options import PlanOptions
from optgraph.passes.memory.order import memory_order
from optgraph.passes.memory.placement import align, place


@dataclass
class _Layout:
    live: Liveness
    parent: dict[ir.Value, Alias]
    groups: list[Group]
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
    groups, where = group_tensors(live, parent)
    profile = live_profile(len(schedule), [(hi - lo, s, e) for g in groups for lo, hi, s, e in g.segments])
    return _Layout(live, parent, groups, where, profile)


def plan_memory(model: ir.Model, infos: Mapping[ir.Value, TensorInfo], options: PlanOptions | None = None, *,
                dims: Mapping[str, int] | None = None, **overrides: Any) -> MemoryPlan:
    """Plan the main graph's activations into one arena. ``overrides`` are PlanOptions fields
    (``plan_memory(model, infos, order="memory")``).

    ``order="memory"`` runs the nodes in ``memory_order`` when that lowers the lower bound, and
    in file order otherwise, so it never does worse than the file.
    """
    o = dataclasses.replace(options or PlanOptions(), **overrides)  # checked by PlanOptions
    strategy, order, alignment, inplace, concat, split = (o.strategy, o.order, o.alignment, o.inplace, o.concat,
                                                          o.split)
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
        naive_size=sum(align(t.nbytes, alignment) for t in live.tensors.values()),
        lower_bound=layout.lower_bound, file_order_lower_bound=file_layout.live.lower_bound, strategy=strategy,
        order=used, alignment=alignment, strategies=arenas, dims=dict(dims or {}),
        input_bytes=live.input_bytes, output_bytes=live.output_bytes, constant_bytes=live.constant_bytes)
