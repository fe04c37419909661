"""Arena offsets for groups: best fit against the groups live at the same steps, in the order a
strategy picks (largest first, or busiest steps first).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from optgraph.passes.memory.grouping import Group


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


def align(x: int, alignment: int) -> int:
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
        at = align(cur, alignment)
        if at <= lo and (best is None or lo - at < best[0]):
            best = (lo - at, at)
        cur = hi
    return best[1] if best is not None else align(cur, alignment)


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


def place(groups: Sequence[Group], n_steps: int, strategy: str, alignment: int,
          profile: np.ndarray) -> tuple[list[int], int]:
    """Base offsets for ``groups`` (in their order) and the arena size, by ``strategy``."""
    if strategy == "greedy-size":
        order = sorted(range(len(groups)), key=lambda i: (-groups[i].size, _span(groups[i])[0], groups[i].index))
    else:  # greedy-breadth (PlanOptions checks the name)
        table = _range_max(profile) if len(profile) else []
        peaks = [_peak(table, *_span(g)) if g.segments else 0 for g in groups]
        order = sorted(range(len(groups)), key=lambda i: (-peaks[i], _span(groups[i])[0], -groups[i].size,
                                                          groups[i].index))
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


def _span(g: Group) -> tuple[int, int]:
    if not g.segments:
        return (0, 0)
    return min(s[2] for s in g.segments), max(s[3] for s in g.segments)
