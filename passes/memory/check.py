"""The plan checker: everything wrong with a plan for a model, found without trusting the planner.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from typing import Any

from optgraph import ir
from optgraph.ir.opset import IN_PLACE
from optgraph.passes.memory.aliases import contiguous_concat, contiguous_split, part_offsets
from optgraph.passes.memory.liveness import TensorInfo, liveness
from optgraph.passes.memory.model import Alias, MemoryPlan, Placement


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
              and any(v is a.value and at == a.offset
                      for v, at in zip(split.outputs, part_offsets(split.outputs, infos))))
        return "" if ok else "it is not an output of a contiguous Split of that tensor at that offset"
    if a.kind == "concat":
        if not contiguous_concat(node, infos):
            return "the concat's inputs are not contiguous slices of its output"
        offsets = part_offsets(node.inputs, infos)
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
