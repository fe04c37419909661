"""Dead-code elimination: drop nodes whose outputs reach no graph output, and unused initializers.

Graph inputs are never removed (that would change the model's signature). Nodes of domains
optgraph does not know are kept: they may have effects it cannot see.
"""

from __future__ import annotations

from optgraph import ir
from optgraph.passes.base import Pass, PassContext, PassResult, counter
from optgraph.passes.registry import register

KNOWN_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "ai.onnx.preview.training"})


def removable(node: ir.Node, model: ir.Model) -> bool:
    """A node DCE may delete: a pure op of a known domain or a call of a model-local function."""
    if node.domain in KNOWN_DOMAINS:
        return True
    return (node.domain, node.op_type, node.overload) in model.functions


@register
class DeadCodeElimination(Pass):
    name = "remove-dead"
    description = "Remove nodes whose outputs reach no graph output, and unused initializers"

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        stats = counter()
        for graph in reversed(list(model.all_graphs())):  # inner graphs first: they use outer values
            for node in reversed(graph):  # consumers before producers: chains die in one sweep
                if not any(v is not None and v.is_used for v in node.outputs) and removable(node, model):
                    graph.remove(node)
                    stats["nodes_removed"] += 1
            for value in list(graph.initializers.values()):
                if not value.is_used and not value.is_graph_input:
                    graph.remove_initializer(value)
                    stats["initializers_removed"] += 1
        return PassResult(bool(stats), stats)
