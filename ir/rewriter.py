"""The one way passes change a graph: every edit goes through a Rewriter, which records it.

A pass makes one ``Rewriter(graph)`` (``rw.on(other_graph)`` for a subgraph or a function body,
sharing the record), edits through it, and reports ``PassResult(rw.changed, stats)``: whether the
pass changed anything is what it did, not what it says. Listeners (``rw.listen(fn)``) hear every
edit as it happens; the pattern driver uses them to know which nodes to look at again.

The methods are the Graph and Node edits with the same meaning (``Graph.replace_value`` keeps
graph outputs' names, ``Node.set_attr`` re-encodes the node, ...); building a brand-new graph
(a function body) is construction, not an edit, and uses Graph directly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from optgraph.ir.core import Function, Graph, Model, Node, Value
from optgraph.ir.opset import removable
from optgraph.ir.tensor import Tensor

Listener = Callable[[str, Any], None]
"""Called with the kind of edit ("create", "replace", "remove", "input", "op_type", "attr", "metadata",
"type", "output", "order", "function", "opset") and what it concerns."""


class _Record:
    __slots__ = ("edits", "listeners")

    def __init__(self) -> None:
        self.edits = 0
        self.listeners: list[Listener] = []


class Rewriter:
    """Edits of ``graph``, recorded."""

    def __init__(self, graph: Graph, *, _record: _Record | None = None) -> None:
        self.graph = graph
        self._record = _record or _Record()

    def on(self, graph: Graph) -> Rewriter:
        """A rewriter for another graph (a subgraph, a function body) sharing this one's record."""
        return self if graph is self.graph else Rewriter(graph, _record=self._record)

    @property
    def changed(self) -> bool:
        """Whether any edit was made through this rewriter or one made by ``on``."""
        return self._record.edits > 0

    def listen(self, listener: Listener) -> None:
        self._record.listeners.append(listener)

    def _did(self, kind: str, obj: Any) -> None:
        self._record.edits += 1
        for listener in self._record.listeners:
            listener(kind, obj)

    # --- nodes and constants ----------------------------------------------------------------
    def make_node(self, op_type: str, inputs: Sequence[Value | None], attrs: dict[str, Any] | None = None,
                  *, outputs: int | Sequence[str] = 1, domain: str = "", name: str | None = None,
                  before: Node | None = None) -> Node:
        """``Graph.make_node``: a node with fresh output names, inserted at the end or before ``before``."""
        node = self.graph.make_node(op_type, inputs, attrs, outputs=outputs, domain=domain, name=name, before=before)
        self._did("create", node)
        return node

    def add_initializer(self, data: np.ndarray | Tensor, name: str = "const") -> Value:
        """A new initializer under a fresh name (never an edit of an existing tensor)."""
        value = self.graph.add_initializer(data, name)
        self._did("create", value)
        return value

    def remove(self, node: Node) -> None:
        """Unlink a node whose outputs are unused."""
        self.graph.remove(node)
        self._did("remove", node)

    def remove_initializer(self, value: Value) -> None:
        self.graph.remove_initializer(value)
        self._did("remove", value)

    def drop_dead(self, model: Model, values: Sequence[Value | None]) -> None:
        """Remove the constants and pure nodes that only fed ``values``' former readers, now unused."""
        stack = list(values)
        while stack:
            v = stack.pop()
            if v is None or v.is_used or v.is_graph_input:
                continue
            if v.const is not None:
                if v.graph.initializers.get(v.name) is v:
                    self.on(v.graph).remove_initializer(v)
                continue
            node = v.producer
            if node is None or node.graph is None or not removable(node, model):
                continue
            if any(o is not None and o.is_used for o in node.outputs) or node.subgraphs():
                continue
            stack.extend(node.inputs)
            self.on(node.graph).remove(node)

    # --- values -----------------------------------------------------------------------------
    def replace(self, old: Value, new: Value) -> None:
        """``Graph.replace_value``: every use of ``old`` reads ``new``; a graph output keeps its name."""
        self.graph.replace_value(old, new)
        self._did("replace", new)

    def is_free(self, old: Value, new: Value) -> bool:
        """Whether ``replace(old, new)`` needs no Identity to keep a graph output's name."""
        return not old.is_graph_output or self.graph.can_take_name(new)

    def replace_if_free(self, old: Value, new: Value) -> bool:
        """``replace`` unless that needs an Identity to keep a graph output's name; whether it replaced."""
        if not self.is_free(old, new):
            return False
        self.replace(old, new)
        return True

    def set_type(self, value: Value, dtype: int | None = None, shape: Any = ...) -> None:
        """Change what is known of ``value``'s type (a precision change, a new value's type)."""
        if dtype is not None:
            value.dtype = dtype
        if shape is not ...:
            value.shape = shape
        self._did("type", value)

    def reorder(self, order: list[Node]) -> None:
        """Relink the graph's nodes in ``order`` (a topological permutation of them)."""
        self.graph.reorder(order)
        self._did("order", self.graph)

    # --- node fields ------------------------------------------------------------------------
    def set_input(self, node: Node, i: int, value: Value | None) -> None:
        if node.inputs[i] is not value:
            node.set_input(i, value)
            self._did("input", node)

    def replace_input(self, node: Node, old: Value, new: Value | None) -> None:
        """Every input of ``node`` that reads ``old`` reads ``new``."""
        for i, v in enumerate(node.inputs):
            if v is old:
                self.set_input(node, i, new)

    def omit_output(self, node: Node, i: int) -> None:
        node.omit_output(i)
        self._did("output", node)

    def set_op_type(self, node: Node, op_type: str) -> None:
        """Call another operator or function of the same domain with the same operands."""
        node.op_type = op_type
        self._did("op_type", node)

    def set_attr(self, node: Node, name: str, value: Any, type: int | None = None) -> None:
        node.set_attr(name, value, type)
        self._did("attr", node)

    def del_attr(self, node: Node, name: str) -> None:
        node.del_attr(name)
        self._did("attr", node)

    def set_metadata(self, node: Node, key: str, value: str | None) -> None:
        node.set_metadata(key, value)
        self._did("metadata", node)

    def set_doc_string(self, node: Node, text: str) -> None:
        node.doc_string = text
        self._did("metadata", node)

    def set_model_metadata(self, model: Model, key: str, value: str) -> None:
        model.metadata_props[key] = value
        self._did("metadata", model)

    # --- functions and opsets -----------------------------------------------------------------
    def add_function(self, model: Model, fn: Function) -> None:
        """Add a model-local function, importing its domain (version 1) and IR version 8 if needed."""
        model.functions[fn.key] = fn
        model.opset_imports.setdefault(fn.domain, 1)
        model.ir_version = max(model.ir_version, 8)  # model-local functions came with IR version 8
        self._did("function", fn)

    def remove_function(self, model: Model, key: tuple[str, str, str]) -> None:
        del model.functions[key]
        self._did("function", key)

    def drop_opset(self, model: Model, domain: str) -> None:
        """Stop importing ``domain`` (no node or function may still use it)."""
        if model.opset_imports.pop(domain, None) is not None:
            self._did("opset", domain)
