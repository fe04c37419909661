"""The IR verifier: single assignment, definition before use, consistent use lists.

The pass manager runs it after every pass when asked (``--verify-each``), so a pass that corrupts the
graph is caught at the pass that did it, not three passes later.
"""

from __future__ import annotations

from optgraph.ir.core import Graph, Model, Value
from optgraph.ir.errors import VerificationError
from optgraph.ir.order import outer_inputs


def verify(model: Model) -> None:
    """Raise VerificationError describing the first broken invariant found."""
    _verify_graph(model.graph, set(), set())
    for fn in model.functions.values():
        _verify_graph(fn.graph, set(), set())


def _verify_graph(graph: Graph, outer_defined: set[int], seen_names: set[str]) -> None:
    where = f"graph '{graph.name}'"
    defined = set(outer_defined)

    def define(v: Value) -> None:
        if v.name in seen_names:
            raise VerificationError(f"{where}: name '{v.name}' is defined twice")
        seen_names.add(v.name)
        defined.add(id(v))

    for v in graph.inputs:
        define(v)
    for name, v in graph.initializers.items():
        if name != v.name:
            raise VerificationError(f"{where}: initializer key '{name}' differs from its value's name '{v.name}'")
        if not v.is_graph_input:
            define(v)
    count = 0
    for node in graph:
        count += 1
        if node.graph is not graph:
            raise VerificationError(f"{where}: {node!r} is linked into the graph but does not belong to it")
        for i, v in enumerate(node.inputs):
            if v is None:
                continue
            if id(v) not in defined:
                raise VerificationError(f"{where}: {node!r} reads '{v.name}' before it is defined")
            if (node, i) not in v._uses:
                raise VerificationError(f"{where}: '{v.name}' does not record its use by {node!r}")
        for v in outer_inputs(node):
            if id(v) not in defined:
                raise VerificationError(f"{where}: a subgraph of {node!r} reads '{v.name}' before it is defined")
        for k, v in enumerate(node.outputs):
            if v is None:
                continue
            if v.producer is not node or v.index != k:
                raise VerificationError(f"{where}: output {k} of {node!r} does not point back to its producer")
            define(v)
        for sub in node.subgraphs():  # sibling subgraphs may reuse each other's names
            _verify_graph(sub, defined, set(seen_names))
    if count != len(graph):
        raise VerificationError(f"{where}: node count {len(graph)} but {count} nodes linked")
    for v in graph.outputs:
        if id(v) not in defined:
            raise VerificationError(f"{where}: output '{v.name}' is not defined")
    for value in _all_values(graph):
        for node, i in value._uses:
            if node.graph is None or i >= len(node.inputs) or node.inputs[i] is not value:
                raise VerificationError(f"{where}: '{value.name}' lists a stale use by {node!r}")


def _all_values(graph: Graph) -> list[Value]:
    values = [*graph.inputs, *graph.initializers.values()]
    for node in graph:
        values.extend(v for v in node.outputs if v is not None)
    return values
