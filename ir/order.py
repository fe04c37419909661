"""Topological ordering of a graph's nodes (networkx does the sorting and finds cycles)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import networkx as nx

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
    """Order items 0..n-1 so every edge (a, b) has a before b, keeping index order where free.

    Raises InvalidModelError naming the nodes of one cycle when there is no such order.
    """
    dg = nx.DiGraph()
    dg.add_nodes_from(range(n))
    dg.add_edges_from(edges)
    try:
        return list(nx.lexicographical_topological_sort(dg))
    except nx.NetworkXUnfeasible:
        cycle = nx.find_cycle(dg)
        names = " -> ".join(label[a] for a, _ in cycle) + " -> " + label[cycle[0][0]]
        raise InvalidModelError(f"the graph has a cycle: {names}") from None


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
