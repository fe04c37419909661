"""Alias rules: which tensors may share storage with another (concat, split, in-place) and where inside it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from optgraph import ir
from optgraph.ir.opset import IN_PLACE, is_onnx
from optgraph.passes.memory.liveness import Liveness, TensorInfo
from optgraph.passes.memory.model import Alias


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


def part_offsets(parts: Sequence[ir.Value | None], infos: Mapping[ir.Value, TensorInfo]) -> list[int]:
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
        offsets = part_offsets(inputs, infos)
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
        for v, offset in zip(node.outputs, part_offsets(node.outputs, infos)):
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


def locate(v: ir.Value, parent: Mapping[ir.Value, Alias],
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
