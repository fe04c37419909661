"""A node order that keeps few bytes live (``order=memory``).
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from collections.abc import Mapping

from optgraph import ir
from optgraph.ir.order import outer_inputs
from optgraph.passes.memory.liveness import TensorInfo, is_activation


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
