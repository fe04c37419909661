"""Topological ordering of a graph's nodes (stable: the current order is kept where it is free)."""

from __future__ import annotations

import heapq
from typing import TYPE_CHECKING

from optgraph.ir.errors import InvalidModelError

if TYPE_CHECKING:
    from optgraph.ir.core import Graph, Node


def outer_inputs(node: Node) -> list:
    """Values a node's subgraphs read from enclosing scopes (implicit inputs of the node)."""
    found: dict[int, object] = {}
    stack = [(g, g) for g in node.subgraphs()]  # (graph, the subgraph of ``node`` it is nested in)
    while stack:
        g, root = stack.pop()
        read = [v for inner in g for v in inner.inputs]
        read.extend(g.outputs)  # a branch may return an outer value without any node reading it
        for v in read:
            if v is not None and not _defined_within(v.graph, root):
                found.setdefault(id(v), v)
        stack.extend((sub, root) for inner in g for sub in inner.subgraphs())
    return list(found.values())


def _defined_within(defining: Graph, g: Graph) -> bool:
    """True when ``defining`` is ``g`` or nested inside it."""
    while True:
        if defining is g:
            return True
        parent = defining.parent
        if parent is None or parent.graph is None:
            return False
        defining = parent.graph


def stable_toposort(n: int, edges: list[tuple[int, int]], label: list[str]) -> list[int]:
    """Order items 0..n-1 so every edge (a, b) has a before b, keeping index order where free
    (the smallest ready index first: Kahn's algorithm with a heap).

    Raises InvalidModelError naming the nodes of one cycle when there is no such order.
    """
    succ: list[list[int]] = [[] for _ in range(n)]
    indegree = [0] * n
    for a, b in edges:
        succ[a].append(b)
        indegree[b] += 1
    ready = [i for i in range(n) if not indegree[i]]  # ascending: already a heap
    order: list[int] = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for j in succ[i]:
            indegree[j] -= 1
            if not indegree[j]:
                heapq.heappush(ready, j)
    if len(order) == n:
        return order
    cycle = _a_cycle(n, edges, indegree)
    names = " -> ".join(label[i] for i in cycle) + " -> " + label[cycle[0]]
    raise InvalidModelError(f"the graph has a cycle: {names}")


def _a_cycle(n: int, edges: list[tuple[int, int]], indegree: list[int]) -> list[int]:
    """One cycle among the items Kahn's algorithm left (each has a predecessor that is left too)."""
    pred: list[int | None] = [None] * n
    for a, b in edges:
        if indegree[a] and indegree[b]:
            pred[b] = a
    i = next(k for k in range(n) if indegree[k])
    seen: dict[int, int] = {}
    path: list[int] = []
    while i not in seen:
        seen[i] = len(path)
        path.append(i)
        p = pred[i]
        assert p is not None
        i = p
    return path[seen[i]:][::-1]  # walked backwards along the edges: reverse into edge order


def topological_order(graph: Graph) -> list[Node]:
    """The graph's nodes in a topological order that keeps the current order where it can."""
    nodes = list(graph)
    index = {id(n): i for i, n in enumerate(nodes)}
    edges = []
    for i, node in enumerate(nodes):
        for v in [*node.inputs, *outer_inputs(node)]:
            if v is not None and v.producer is not None and id(v.producer) in index:
                edges.append((index[id(v.producer)], i))
    order = stable_toposort(len(nodes), edges, [n.name or n.op_type for n in nodes])
    return [nodes[i] for i in order]


def sort(graph: Graph) -> None:
    """Re-establish topological order (stable: keeps the current order where it can)."""
    graph.reorder(topological_order(graph))
