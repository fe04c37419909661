"""Bridges to other graph libraries: onnx-graphsurgeon for editing, networkx for analyses.

The graphsurgeon bridge goes through ONNX protos (gs.import_onnx / gs.export_onnx): one
well-tested path instead of a second converter to keep in sync with both libraries.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import networkx as nx
import onnx

from optgraph.ir.core import Graph, Model
from optgraph.ir.order import outer_inputs
from optgraph.ir.serde import from_proto, to_proto

if TYPE_CHECKING:
    import onnx_graphsurgeon as gs


def to_graphsurgeon(model: Model) -> gs.Graph:
    """The model as an onnx-graphsurgeon Graph (which keeps its IR version, opsets and functions)."""
    import onnx_graphsurgeon as gs  # optional dependency

    return gs.import_onnx(to_proto(model))


def from_graphsurgeon(graph: gs.Graph, *, do_type_check: bool = True) -> Model:
    """An IR model from an onnx-graphsurgeon Graph.

    A graph built from scratch has no IR version; it gets the lowest one its opsets allow (not
    onnx's newest, which runtimes often refuse). ``do_type_check`` is graphsurgeon's check that
    graph inputs and outputs have dtypes.
    """
    import onnx_graphsurgeon as gs  # optional dependency

    proto = gs.export_onnx(graph, do_type_check=do_type_check)
    if graph.ir_version is None:
        proto.ir_version = onnx.helper.find_min_ir_version_for(proto.opset_import)
    return from_proto(proto)


def to_networkx(graph: Graph, *, with_values: bool = False) -> nx.MultiDiGraph:
    """A read-only dependence view of ``graph`` for networkx analyses (dominators, orderings).

    Nodes are the graph's ``Node`` objects, in graph order. An edge ``producer -> consumer`` has
    the ``Value`` passed as its key and ``value`` attribute; a value read twice by one node is one
    edge. Values a node's subgraphs read from this graph are edges with ``implicit=True``, so a
    topological order of the view is a valid order for the graph. With ``with_values``, graph
    inputs and initializers are nodes too (the ``Value`` objects), with edges to their readers.
    The view is a snapshot: it does not follow later edits.
    """
    view = nx.MultiDiGraph()
    if with_values:
        view.add_nodes_from([*graph.inputs, *graph.initializers.values()])
    view.add_nodes_from(graph)
    for node in graph:
        reads = [(v, False) for v in node.inputs if v is not None]
        reads.extend((v, True) for v in outer_inputs(node))
        for v, implicit in reads:
            source = v.producer if v.producer is not None and v.producer.graph is graph else v
            if source in view and not view.has_edge(source, node, key=v):  # values of enclosing graphs are not
                view.add_edge(source, node, key=v, value=v, implicit=implicit)
    return view
