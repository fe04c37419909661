"""Dead-code elimination: drop nodes whose outputs reach no graph output, unused initializers,
unused optional outputs and model-local functions nothing calls.

Graph inputs are never removed (that would change the model's signature), even when unused.
Nodes of domains optgraph does not know are kept: they may have effects it cannot see.
"""

from __future__ import annotations

import functools

import onnx

from optgraph import ir
from optgraph.ir import opset as ops
from optgraph.passes.base import Pass, PassContext, PassResult, counter
from optgraph.passes.registry import register
from optgraph.passes.shapes import ShapeInference

# Ops whose optional outputs switch the computation itself (BatchNormalization before opset 14
# computes in training mode exactly when its statistics outputs are present).
_OUTPUTS_MATTER = frozenset({"BatchNormalization"})


@functools.cache
def _optional_outputs(domain: str, op_type: str, opset: int) -> frozenset[int]:
    """Indices of the outputs the op's schema marks optional (none for unknown ops)."""
    try:
        schema = onnx.defs.get_schema(op_type, opset, domain)
    except onnx.defs.SchemaError:
        return frozenset()
    optional = onnx.defs.OpSchema.FormalParameterOption.Optional
    return frozenset(i for i, p in enumerate(schema.outputs) if p.option == optional)


def _drop_unused_optional_outputs(rw: ir.Rewriter, node: ir.Node, opset: int) -> int:
    """Omit optional outputs nothing reads; returns how many were dropped."""
    if not ops.is_onnx(node) or node.op_type in _OUTPUTS_MATTER or len(node.outputs) < 2:
        return 0
    optional = _optional_outputs(node.domain, node.op_type, opset)
    dead = [i for i, v in enumerate(node.outputs) if i in optional and v is not None and not v.is_used]
    if not dead:
        return 0
    for i in reversed(dead):
        rw.omit_output(node, i)
    return len(dead)


def called_functions(model: ir.Model) -> set[tuple[str, str, str]]:
    """Keys of the model-local functions reachable from the main graph (through other functions too)."""
    called: set[tuple[str, str, str]] = set()
    stack = [model.graph]
    while stack:
        for node in stack.pop().all_nodes():
            key = (node.domain, node.op_type, node.overload)
            if key in model.functions and key not in called:
                called.add(key)
                stack.append(model.functions[key].graph)
    return called


@register
class DeadCodeElimination(Pass):
    name = "remove-dead"
    description = ("Remove nodes whose outputs reach no graph output, unused initializers, unused optional "
                   "outputs and uncalled model-local functions")
    preserves = frozenset({ShapeInference})

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        stats = counter()
        root = ir.Rewriter(model.graph)
        # inner graphs first: they use outer values
        for graph, opset in reversed(list(ops.graphs_with_opset(model))):
            rw = root.on(graph)
            for node in reversed(graph):  # consumers before producers: chains die in one sweep
                if not any(v is not None and v.is_used for v in node.outputs) and ops.removable(node, model):
                    rw.remove(node)
                    stats["nodes_removed"] += 1
                elif dropped := _drop_unused_optional_outputs(rw, node, opset):
                    stats["optional_outputs_removed"] += dropped
            for value in list(graph.initializers.values()):
                if not value.is_used and not value.is_graph_input:
                    rw.remove_initializer(value)
                    stats["initializers_removed"] += 1
        called = called_functions(model)
        for key in [k for k in model.functions if k not in called]:
            root.remove_function(model, key)
            stats["functions_removed"] += 1
        return PassResult(root.changed, stats)
