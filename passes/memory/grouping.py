"""A tensor and everything aliased into it form a group, placed as a unit; its byte ranges are reserved
only while a tensor covering them is live.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass

from optgraph import ir
from optgraph.passes.memory.aliases import locate
from optgraph.passes.memory.liveness import Liveness
from optgraph.passes.memory.model import Alias


@dataclass
class Group:
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


def group_tensors(live: Liveness, parent: Mapping[ir.Value, Alias]
            ) -> tuple[list[Group], dict[ir.Value, tuple[ir.Value, int]]]:
    """The groups to place, and each activation's group root and offset inside it."""
    memo: dict[ir.Value, tuple[ir.Value, int]] = {}
    members: dict[ir.Value, list[tuple[int, int, int, int]]] = defaultdict(list)
    for v, t in live.tensors.items():
        root, at = locate(v, parent, memo)
        members[root].append((at, at + t.nbytes, t.start, t.end))
    order = {v: i for i, v in enumerate(live.tensors)}
    groups = [Group(root, live.tensors[root].nbytes, _segments(ms), order[root]) for root, ms in members.items()]
    groups.sort(key=lambda g: g.index)
    return groups, {v: locate(v, parent, memo) for v in live.tensors}
