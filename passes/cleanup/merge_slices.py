"""merge-slices: a Slice of a Slice on other axes becomes one Slice over both sets of axes.

PyTorch exports ``x[:, 0::2, 1::2]`` (Swin's patch merging, YOLO's space-to-depth) as one Slice
per axis. Slicing different axes commutes, and the outer Slice's bounds on its axes mean the same
on the inner Slice's input (the inner one left those axes alone), so
``Slice(Slice(x, s1, e1, a1, t1), s2, e2, a2, t2) = Slice(x, s1+s2, e1+e2, a1+a2, t1+t2)``.
TensorRT's parser turns each Slice into a dozen shape layers; PatchMerging's six become four.

Merged only on proof: every bound, axis and step is a constant (opset 10+ input form), the two
axis sets are disjoint once negative axes are resolved (which needs the input's rank), and no
axis repeats inside either Slice. The inner Slice stays for its other readers (it dies when all
of them were merged).
"""

from __future__ import annotations

import numpy as np

from optgraph import ir
from optgraph.passes.pattern import Match, MatchResult, RewritePass, Rewriter, Rule, Var, op
from optgraph.passes.registry import register


def _slice(x: object, name: str, keep: bool = False) -> object:
    return op.Slice(x, Var(f"{name}_starts", const=True), Var(f"{name}_ends", const=True),
                    Var(f"{name}_axes", const=True, optional=True), Var(f"{name}_steps", const=True, optional=True),
                    name=name, keep=keep)


def _params(m: Match, name: str, rank: int | None) -> tuple[list[int], list[int], list[int], list[int]] | None:
    """(starts, ends, axes with negatives resolved, steps) of a matched Slice; None if an axis is
    negative and the rank unknown."""
    starts = [int(v) for v in m.array(f"{name}_starts").reshape(-1)]
    ends = [int(v) for v in m.array(f"{name}_ends").reshape(-1)]
    axes_arr, steps_arr = m.array_or_none(f"{name}_axes"), m.array_or_none(f"{name}_steps")
    axes = list(range(len(starts))) if axes_arr is None else [int(v) for v in axes_arr.reshape(-1)]
    steps = [1] * len(starts) if steps_arr is None else [int(v) for v in steps_arr.reshape(-1)]
    if any(a < 0 for a in axes):
        if rank is None:
            return None
        axes = [a + rank if a < 0 else a for a in axes]
    return starts, ends, axes, steps


class SliceOfSlice(Rule):
    name = "slice-of-slice"
    labels = ("slice",)
    pattern = _slice(_slice(Var("x"), "inner", keep=True), "outer")

    def check(self, m: Match) -> MatchResult:
        shape = m.value("x").shape
        rank = None if shape is None else len(shape)
        inner, outer = _params(m, "inner", rank), _params(m, "outer", rank)
        if inner is None or outer is None:
            return MatchResult.fail("a negative axis and the input's rank is unknown")
        for starts, ends, axes, steps in (inner, outer):
            if not len(starts) == len(ends) == len(axes) == len(steps) or len(set(axes)) != len(axes):
                return MatchResult.fail("a Slice's parameters disagree in length or repeat an axis")
        if set(inner[2]) & set(outer[2]):
            return MatchResult.fail(f"both Slices cut axis {sorted(set(inner[2]) & set(outer[2]))}")
        return MatchResult.OK

    def rewrite(self, m: Match, rw: Rewriter) -> ir.Value:
        rank = None if m.value("x").shape is None else len(m.value("x").shape)  # type: ignore[arg-type]
        inner, outer = _params(m, "inner", rank), _params(m, "outer", rank)
        assert inner is not None and outer is not None  # check() made sure
        merged = [rw.const(np.array(a + b, dtype=np.int64), name) for a, b, name in
                  zip(inner, outer, ("starts", "ends", "axes", "steps"))]
        return rw.like(m.node("outer"), [m.value("x"), *merged])


@register
class MergeSlices(RewritePass):
    name = "merge-slices"
    description = "Merge a Slice of a Slice on other axes into one Slice"
    requires = ("fold-constants",)  # starts and ends are often shape computations until folded
    rules = (SliceOfSlice(),)
