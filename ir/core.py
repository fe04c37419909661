"""The in-memory graph passes rewrite: values, nodes, graphs, functions and models.

Invariants every mutation keeps:
- a Value has at most one producer and knows its uses ``(node, input_index)``;
- a Graph's nodes form a doubly linked list in topological order; removing the node a loop is
  standing on is safe (iteration skips removed nodes and carries on);
- a Value's name is unique in its namespace (the main graph with its subgraphs, or one function
  body); fresh names are never reused, so a rewritten tensor can never take an old tensor's name;
- a node read from a file keeps its NodeProto and is written back as-is until something edits it.
"""

from __future__ import annotations

import functools
import operator
from types import MappingProxyType
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import onnx

from optgraph.ir.tensor import Tensor

Shape = tuple[int | str | None, ...]


class Value:
    """A tensor (or other ONNX value) flowing through the graph.

    ``dtype`` is the ONNX element type (0 = unknown); ``shape`` is None when even the rank is
    unknown, else a tuple of int, str (a dim_param) or None (an unknown dim). For a value read from
    a file both are decoded from its ValueInfoProto (or its initializer) on first use, and the
    entry is written back as it came until the value is edited.
    """

    __slots__ = ("_name", "_graph", "_producer", "_index", "_uses", "_const", "_n_graph_outputs",
                 "_is_graph_input", "_dtype", "_shape", "_type_proto", "_info", "_vi", "_lazy")

    def __init__(self, graph: Graph, name: str, dtype: int = 0, shape: Shape | None = None) -> None:
        self._name = name
        self._graph = graph
        self._producer: Node | None = None
        self._index = 0  # which output of the producer
        self._uses: dict[tuple[Node, int], None] = {}  # an ordered set: O(1) removal at any fan-out
        self._const: Tensor | None = None  # set for initializers
        self._n_graph_outputs = 0
        self._is_graph_input = False
        self._dtype = dtype
        self._shape = shape
        self._type_proto: onnx.TypeProto | None = None  # kept only for non-tensor types
        self._info: tuple[str, dict[str, str]] | None = None  # doc_string, metadata_props (rare)
        self._vi: onnx.ValueInfoProto | None = None  # the loaded entry while the value is unedited
        self._lazy = False  # type info still to be decoded from _vi or const

    # Where a value comes from is set by the graph that makes it (make_node, add_initializer, the
    # loader), never from outside: read-only, and attrgetters because passes read them constantly.
    graph = property(operator.attrgetter("_graph"), doc="The graph (namespace) this value belongs to.")
    producer = property(operator.attrgetter("_producer"), doc="The node computing this value, if any.")
    index = property(operator.attrgetter("_index"), doc="Which output of the producer this value is.")
    const = property(operator.attrgetter("_const"), doc="The tensor of an initializer, else None.")

    def _decode(self) -> None:
        self._lazy = False
        vi = self._vi
        if vi is not None:
            if vi.HasField("type"):
                tp = vi.type
                if tp.HasField("tensor_type"):
                    tt = tp.tensor_type
                    self._dtype = tt.elem_type
                    if tt.HasField("shape"):
                        self._shape = _dims(tt.shape.SerializeToString())
                elif tp.WhichOneof("value") is not None:
                    self._type_proto = tp
            if vi.doc_string or vi.metadata_props:
                self._info = (vi.doc_string, {p.key: p.value for p in vi.metadata_props})
        if not self._dtype and self._shape is None and self.const is not None:
            self._dtype, self._shape = self.const.dtype, self.const.shape

    def _detach(self) -> None:
        """Decode, then forget the loaded entry: this value is being edited."""
        if self._lazy:
            self._decode()
        self._vi = None

    @property
    def dtype(self) -> int:
        if self._lazy:
            self._decode()
        return self._dtype

    @dtype.setter
    def dtype(self, dtype: int) -> None:
        self._detach()
        self._dtype = dtype

    @property
    def shape(self) -> Shape | None:
        if self._lazy:
            self._decode()
        return self._shape

    @shape.setter
    def shape(self, shape: Shape | None) -> None:
        self._detach()
        self._shape = None if shape is None else tuple(shape)

    @property
    def type_proto(self) -> onnx.TypeProto | None:
        """The full type of a non-tensor value (sequence, map, optional); None for tensors."""
        if self._lazy:
            self._decode()
        return self._type_proto

    @type_proto.setter
    def type_proto(self, tp: onnx.TypeProto | None) -> None:
        self._detach()
        self._type_proto = tp

    @property
    def doc_string(self) -> str:
        if self._lazy:
            self._decode()
        return self._info[0] if self._info else ""

    @doc_string.setter
    def doc_string(self, text: str) -> None:
        props = self.metadata_props
        self._detach()
        self._info = (text, props) if text or props else None

    @property
    def metadata_props(self) -> Mapping[str, str]:
        """Metadata of this value (read-only); assign a new dict to change it."""
        if self._lazy:
            self._decode()
        return MappingProxyType(self._info[1] if self._info else {})

    @metadata_props.setter
    def metadata_props(self, props: Mapping[str, str]) -> None:
        text = self.doc_string
        self._detach()
        self._info = (text, dict(props)) if text or props else None

    @property
    def name(self) -> str:
        return self._name

    @name.setter
    def name(self, new: str) -> None:
        if new == self._name:
            return
        if new in self.graph._names:
            raise ValueError(f"name '{new}' is already used")
        self.graph._names.add(new)
        self._rename(new)

    def _rename(self, new: str) -> None:
        """Set the name (already reserved in the namespace) and mark users for re-encoding."""
        self._detach()
        if self._const is not None:
            inits = self._graph._initializers
            inits[new] = inits.pop(self._name)
        self._name = new
        if self.producer is not None:
            self.producer._touch()
        for node, _ in self._uses:
            node._touch()

    @property
    def uses(self) -> tuple[tuple[Node, int], ...]:
        """A snapshot of (consumer, input index) pairs; safe to hold while rewriting."""
        return tuple(self._uses)

    @property
    def num_uses(self) -> int:
        """len(uses), without building the snapshot (a value may have thousands of readers)."""
        return len(self._uses)

    @property
    def consumers(self) -> list[Node]:
        """Distinct consuming nodes, in use order."""
        seen: dict[int, Node] = {}
        for node, _ in self._uses:
            seen.setdefault(id(node), node)
        return list(seen.values())

    @property
    def is_graph_output(self) -> bool:
        return self._n_graph_outputs > 0

    @property
    def is_graph_input(self) -> bool:
        return self._is_graph_input

    @property
    def is_used(self) -> bool:
        return bool(self._uses) or self._n_graph_outputs > 0

    def _redirect_uses(self, new: Value) -> None:
        """Point every consumer of this value at ``new`` (``Graph.replace_value`` is the public API)."""
        if new is self:
            return
        uses, self._uses = self._uses, {}
        for node, i in uses:
            node._touch()
            node._inputs[i] = new
            new._uses[(node, i)] = None

    def __repr__(self) -> str:
        return f"Value({self._name!r})"


@functools.lru_cache(maxsize=4096)
def _dims(encoded: bytes) -> Shape:
    """A TensorShapeProto's dims. Most values of a model share a few shapes: each distinct one is
    decoded once (keyed by its bytes, which cost far less than walking the dims)."""
    shape = onnx.TensorShapeProto.FromString(encoded)
    return tuple(d.dim_value if which == "dim_value" else (d.dim_param if which == "dim_param" else None)
                 for d in shape.dim for which in (d.WhichOneof("value"),))


class Attr:
    """One node attribute: its ONNX type and a Python value (decoded from the proto on first use).

    Values are int, float, str, Tensor, Graph, onnx.TypeProto, onnx.SparseTensorProto or lists of
    those, as the type says. ``ref`` is set inside function bodies for attributes that refer to
    the caller's attribute.
    """

    __slots__ = ("name", "type", "_value", "_proto", "ref", "doc_string")

    def __init__(self, name: str, type: int, value: Any = None, *, ref: str = "", doc_string: str = "",
                 proto: onnx.AttributeProto | None = None) -> None:
        self.name = name
        self.type = type
        self._value = value
        self._proto = proto
        self.ref = ref
        self.doc_string = doc_string

    @property
    def value(self) -> Any:
        if self._proto is not None and self._value is None:
            self._value = _decode_attr(self._proto)
        return self._value

    def __repr__(self) -> str:
        return f"Attr({self.name!r}, {onnx.AttributeProto.AttributeType.Name(self.type)}, {self.value!r})"


AT = onnx.AttributeProto
_GRAPH_TYPES = (AT.GRAPH, AT.GRAPHS)


def _decode_attr(p: onnx.AttributeProto) -> Any:
    t = p.type
    if t == AT.INT:
        return p.i
    if t == AT.FLOAT:
        return p.f
    if t == AT.STRING:
        return p.s.decode("utf-8", "surrogateescape")
    if t == AT.INTS:
        return list(p.ints)
    if t == AT.FLOATS:
        return list(p.floats)
    if t == AT.STRINGS:
        return [s.decode("utf-8", "surrogateescape") for s in p.strings]
    if t == AT.TENSOR:
        return Tensor(p.t)
    if t == AT.TENSORS:
        return [Tensor(x) for x in p.tensors]
    if t == AT.SPARSE_TENSOR:
        return p.sparse_tensor
    if t == AT.SPARSE_TENSORS:
        return list(p.sparse_tensors)
    if t == AT.TYPE_PROTO:
        return p.tp
    if t == AT.TYPE_PROTOS:
        return list(p.type_protos)
    raise ValueError(f"attribute '{p.name}' has unsupported type {t}")  # GRAPH(S) decode in serde


def attr_type_of(value: Any) -> int:
    """The ONNX attribute type a Python value maps to (ints -> INT(S), floats -> FLOAT(S), ...)."""
    if isinstance(value, (bool, int, np.integer)):
        return AT.INT
    if isinstance(value, (float, np.floating)):
        return AT.FLOAT
    if isinstance(value, (str, bytes)):
        return AT.STRING
    if isinstance(value, Tensor):
        return AT.TENSOR
    if isinstance(value, np.ndarray):
        return AT.TENSOR
    if isinstance(value, Graph):
        return AT.GRAPH
    if isinstance(value, onnx.TypeProto):
        return AT.TYPE_PROTO
    if isinstance(value, (list, tuple)):
        if not value:
            raise ValueError("the type of an empty list attribute must be given explicitly")
        scalar = attr_type_of(value[0])
        plural = {AT.INT: AT.INTS, AT.FLOAT: AT.FLOATS, AT.STRING: AT.STRINGS, AT.TENSOR: AT.TENSORS,
                  AT.GRAPH: AT.GRAPHS, AT.TYPE_PROTO: AT.TYPE_PROTOS}
        if scalar == AT.INT and any(isinstance(v, (float, np.floating)) for v in value):
            scalar = AT.FLOAT
        return plural[scalar]
    raise TypeError(f"cannot store {type(value).__name__} as an attribute")


class Node:
    """An operator application. Inputs may be None (an omitted optional input)."""

    __slots__ = ("_op_type", "_domain", "_name", "_inputs", "_outputs", "_attrs", "_proto", "graph",
                 "_prev", "_next", "_overload", "_doc_string", "_metadata_props", "_has_graphs")

    def __init__(self, op_type: str, domain: str = "", name: str = "") -> None:
        self._op_type = op_type
        self._domain = domain
        self._name = name
        self._inputs: list[Value | None] = []
        self._outputs: list[Value | None] = []
        self._attrs: dict[str, Attr] | None = {}
        self._proto: onnx.NodeProto | None = None  # the loaded proto while the node is unedited
        self.graph: Graph | None = None
        self._prev: Node | None = None
        self._next: Node | None = None
        self._overload = ""
        self._doc_string = ""
        self._metadata_props: dict[str, str] = {}
        # Whether an attribute holds a graph: every pass walks all graphs, so subgraphs() is asked
        # of every node many times; this makes the common answer (none) one attribute read.
        self._has_graphs = False

    # Plain fields are properties so an edit drops the cached proto. The getters are attrgetters
    # (no Python frame): passes read op_type and domain millions of times on a large model.
    op_type = property(operator.attrgetter("_op_type"), lambda self, v: self._set("_op_type", v))
    domain = property(operator.attrgetter("_domain"), lambda self, v: self._set("_domain", v))
    overload = property(operator.attrgetter("_overload"), lambda self, v: self._set("_overload", v))
    name = property(operator.attrgetter("_name"), lambda self, v: self._set("_name", v))
    doc_string = property(operator.attrgetter("_doc_string"), lambda self, v: self._set("_doc_string", v))

    def _set(self, field: str, value: str) -> None:
        self._touch()
        setattr(self, field, value)

    def _touch(self) -> None:
        """Mark the node edited: it will be re-encoded on save."""
        if self._proto is not None:
            self._attr_dict()  # decode attributes while the proto is still here
            self._proto = None

    @property
    def metadata_props(self) -> Mapping[str, str]:
        """Metadata of this node (read-only: edit with set_metadata, so the node is re-encoded)."""
        return MappingProxyType(self._metadata_props)

    @metadata_props.setter
    def metadata_props(self, props: Mapping[str, str]) -> None:
        self._touch()
        self._metadata_props = dict(props)

    def set_metadata(self, key: str, value: str | None) -> None:
        """Set one metadata entry (None removes it)."""
        self._touch()
        if value is None:
            self._metadata_props.pop(key, None)
        else:
            self._metadata_props[key] = value

    @property
    def inputs(self) -> tuple[Value | None, ...]:
        return tuple(self._inputs)

    @property
    def outputs(self) -> tuple[Value | None, ...]:
        return tuple(self._outputs)

    @property
    def output(self) -> Value:
        """The first output (most ops have exactly one)."""
        out = self._outputs[0]
        assert out is not None
        return out

    def set_input(self, i: int, value: Value | None) -> None:
        old = self._inputs[i]
        if old is value:
            return
        self._touch()
        if old is not None:
            del old._uses[(self, i)]
        self._inputs[i] = value
        if value is not None:
            value._uses[(self, i)] = None

    def set_inputs(self, values: Sequence[Value | None]) -> None:
        for i in range(len(self._inputs)):
            self.set_input(i, None)
        self._touch()
        self._inputs = [None] * len(values)
        for i, v in enumerate(values):
            self.set_input(i, v)

    def replace_input(self, old: Value, new: Value | None) -> None:
        for i, v in enumerate(self._inputs):
            if v is old:
                self.set_input(i, new)

    def omit_output(self, i: int) -> None:
        """Omit output ``i`` (it must be unused), as for an optional output nobody reads.

        Trailing omitted outputs are dropped, as ONNX writes them.
        """
        value = self._outputs[i]
        if value is not None and value.is_used:
            raise ValueError(f"cannot omit output '{value.name}' of {self!r}: it is still used")
        self._touch()
        self._outputs[i] = None
        while self._outputs and self._outputs[-1] is None:
            self._outputs.pop()

    # --- attributes -------------------------------------------------------------------------
    @property
    def attrs(self) -> Mapping[str, Attr]:
        """All attributes by name, read-only: edit with set_attr/del_attr so the node is re-encoded."""
        return MappingProxyType(self._attr_dict())

    def _attr_dict(self) -> dict[str, Attr]:
        if self._attrs is None:
            assert self._proto is not None
            self._attrs = {p.name: Attr(p.name, p.type, ref=p.ref_attr_name, doc_string=p.doc_string,
                                        proto=p) for p in self._proto.attribute}
        return self._attrs

    def attr(self, name: str, default: Any = None) -> Any:
        """The value of attribute ``name``, or ``default`` when the node does not set it."""
        a = self._attr_dict().get(name)
        return default if a is None else a.value

    def set_attr(self, name: str, value: Any, type: int | None = None) -> None:
        self._touch()
        if isinstance(value, np.ndarray):
            value = Tensor(array=value)
        if isinstance(value, Graph):
            value.parent = self
        attr = Attr(name, attr_type_of(value) if type is None else type, value)
        attrs = self._attr_dict()
        old = attrs.get(name)
        attrs[name] = attr
        if attr.type in _GRAPH_TYPES or (old is not None and old.type in _GRAPH_TYPES):
            self._update_has_graphs()

    def del_attr(self, name: str) -> None:
        self._touch()
        old = self._attr_dict().pop(name, None)
        if old is not None and old.type in _GRAPH_TYPES:
            self._update_has_graphs()

    def copy_attrs(self, other: Node) -> None:
        """Give this node all of ``other``'s attributes (not subgraphs: a graph has one parent).

        The Attr objects are shared: attributes are replaced, never edited in place, and one read
        from a file is written back from its proto without being decoded.
        """
        if other.subgraphs():
            raise ValueError(f"cannot copy the attributes of {other!r}: it holds subgraphs")
        self._touch()
        self._attr_dict().update(other._attr_dict())

    def _update_has_graphs(self) -> None:
        self._has_graphs = any(a.type in _GRAPH_TYPES for a in self._attr_dict().values())

    def subgraphs(self) -> list[Graph]:
        """Graphs held in attributes (If branches, Loop/Scan bodies)."""
        if not self._has_graphs:  # the loader decodes subgraph attributes and sets the flag
            return []
        out: list[Graph] = []
        for a in self._attr_dict().values():
            if a.type == AT.GRAPH:
                out.append(a.value)
            elif a.type == AT.GRAPHS:
                out.extend(a.value)
        return out

    def __repr__(self) -> str:
        return f"Node({self._op_type!r}, name={self._name!r})"


class Graph:
    """A list of nodes in topological order, with its inputs, outputs and initializers."""

    def __init__(self, name: str = "", *, names: set[str] | None = None, parent: Node | None = None) -> None:
        self.name = name
        self.doc_string = ""
        self.metadata_props: dict[str, str] = {}
        self._names: set[str] = set() if names is None else names  # shared by a namespace
        self.parent = parent  # the node holding this graph as an attribute, if any
        self._inputs: list[Value] = []
        self._outputs: list[Value] = []
        self._initializers: dict[str, Value] = {}
        self._initializers_view = MappingProxyType(self._initializers)
        self.extra: onnx.GraphProto | None = None  # quantization annotations, kept opaque
        self._head: Node | None = None
        self._tail: Node | None = None
        self._len = 0
        self._counter = 0

    # --- nodes ------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Node]:
        node = self._head
        while node is not None:
            nxt = node._next
            if node.graph is self:
                yield node
            node = nxt
            while node is not None and node.graph is not self:  # skip nodes removed meanwhile
                node = node._next

    def __reversed__(self) -> Iterator[Node]:
        node = self._tail
        while node is not None:
            prv = node._prev
            if node.graph is self:
                yield node
            node = prv
            while node is not None and node.graph is not self:
                node = node._prev

    def __len__(self) -> int:
        return self._len

    def nodes_with_subgraphs(self) -> list[Node]:
        """The nodes holding graphs, in order: what a walk over nested graphs visits (a flag check
        per node in one flat loop: every pass walks the graphs, and a model has few such nodes)."""
        found = []
        node = self._head
        while node is not None:
            if node._has_graphs and node.graph is self:
                found.append(node)
            node = node._next
        return found

    def all_nodes(self) -> Iterator[Node]:
        """Every node, including those inside subgraphs (a node before its subgraphs' nodes)."""
        for node in self:
            yield node
            for g in node.subgraphs():
                yield from g.all_nodes()

    def _link(self, node: Node, before: Node | None) -> None:
        if node.graph is not None:
            raise ValueError(f"{node!r} already belongs to a graph")
        node.graph = self
        if before is None:
            node._prev, node._next = self._tail, None
            if self._tail is None:
                self._head = node
            else:
                self._tail._next = node
            self._tail = node
        else:
            if before.graph is not self:
                raise ValueError(f"{before!r} is not in this graph")
            node._prev, node._next = before._prev, before
            if before._prev is None:
                self._head = node
            else:
                before._prev._next = node
            before._prev = node
        self._len += 1

    def insert_before(self, anchor: Node, node: Node) -> None:
        self._link(node, anchor)

    def insert_after(self, anchor: Node, node: Node) -> None:
        self._link(node, anchor._next if anchor._next is not None and anchor._next.graph is self else None)

    def append(self, node: Node) -> None:
        self._link(node, None)

    def remove(self, node: Node) -> None:
        """Unlink a node whose outputs are unused; its inputs' use lists forget it."""
        if node.graph is not self:
            raise ValueError(f"{node!r} is not in this graph")
        for out in node._outputs:
            if out is not None and out.is_used:
                raise ValueError(f"cannot remove {node!r}: its output '{out.name}' is still used")
        for i, v in enumerate(node._inputs):  # set_input(i, None) without its per-call checks
            if v is not None:
                node._touch()
                del v._uses[(node, i)]
                node._inputs[i] = None
        for g in node.subgraphs():  # outer values the subgraphs read lose those uses too
            for inner in list(g.all_nodes()):
                for i in range(len(inner._inputs)):
                    inner.set_input(i, None)
        if node._prev is None:
            self._head = node._next
        else:
            node._prev._next = node._next
        if node._next is None:
            self._tail = node._prev
        else:
            node._next._prev = node._prev
        node.graph = None  # _next stays so a loop standing on this node can continue
        self._len -= 1

    def make_node(self, op_type: str, inputs: Sequence[Value | None], attrs: dict[str, Any] | None = None,
                  *, outputs: int | Sequence[str] = 1, domain: str = "", name: str | None = None,
                  before: Node | None = None) -> Node:
        """Create a node with fresh output names and insert it (at the end, or before ``before``).

        Output names are fresh; pass ``outputs`` as names only when they are known to be new.
        """
        node = Node(op_type, domain, self.fresh_name(name or op_type))
        node._inputs = list(inputs)
        for i, v in enumerate(node._inputs):
            if v is not None:
                v._uses[(node, i)] = None
        if isinstance(outputs, int):
            names = [self.fresh_name(node._name if outputs == 1 else f"{node._name}_out{k}") for k in range(outputs)]
        else:
            names = list(outputs)
            taken = [n for n in names if n in self._names]
            if taken:
                raise ValueError(f"output names {taken} are already used")
        for k, out_name in enumerate(names):
            v = self._new_value(out_name)
            v._producer, v._index = node, k
            node._outputs.append(v)
        for key, val in (attrs or {}).items():
            node.set_attr(key, val)
        self._link(node, before)
        return node

    # --- values -----------------------------------------------------------------------------
    def fresh_name(self, base: str) -> str:
        """A name never used before in this namespace, derived from ``base``."""
        names = self._names
        if base and base not in names:
            names.add(base)
            return base
        base = base or "v"
        while True:
            self._counter += 1
            cand = f"{base}__{self._counter}"
            if cand not in names:
                names.add(cand)
                return cand

    @property
    def initializers(self) -> Mapping[str, Value]:
        """Initializers by name (read-only: add_initializer, remove_initializer)."""
        return self._initializers_view

    def _new_value(self, name: str) -> Value:
        self._names.add(name)
        return Value(self, name)

    def add_initializer(self, data: np.ndarray | Tensor, name: str = "const") -> Value:
        """A new initializer under a fresh name (rewritten constants never reuse a name)."""
        v = self._new_value(self.fresh_name(name))
        v._const = data if isinstance(data, Tensor) else Tensor(array=np.asarray(data))
        v._dtype, v._shape = v._const.dtype, v._const.shape  # a new value: nothing to detach
        self._initializers[v.name] = v
        return v

    def remove_initializer(self, value: Value) -> None:
        if value.is_used:
            raise ValueError(f"initializer '{value.name}' is still used")
        del self._initializers[value.name]
        if value._is_graph_input:
            self._inputs.remove(value)
            value._is_graph_input = False

    @property
    def inputs(self) -> tuple[Value, ...]:
        return tuple(self._inputs)

    @property
    def outputs(self) -> tuple[Value, ...]:
        return tuple(self._outputs)

    def add_input(self, value: Value) -> None:
        self._inputs.append(value)
        value._is_graph_input = True

    def set_outputs(self, values: Sequence[Value]) -> None:
        for v in self._outputs:
            v._n_graph_outputs -= 1
        self._outputs = list(values)
        for v in self._outputs:
            v._n_graph_outputs += 1

    def set_output(self, i: int, value: Value) -> None:
        self._outputs[i]._n_graph_outputs -= 1
        self._outputs[i] = value
        value._n_graph_outputs += 1

    def replace_value(self, old: Value, new: Value) -> None:
        """Replace ``old`` by ``new`` everywhere, keeping graph outputs' names and types pinned.

        When ``old`` is a graph output, ``new`` takes over its name if ``new`` is a plain
        intermediate of this graph; otherwise an Identity keeps the output name alive.
        """
        old._redirect_uses(new)
        if new.producer is not None and new.type_proto is None:
            # new computes what old did: keep what was known of its type so analyses stay valid
            new.dtype = new.dtype or old.dtype
            new.shape = old.shape if new.shape is None else new.shape
        if not old.is_graph_output:
            return
        keep = new if self.can_take_name(new) else self.make_node("Identity", [new], name=old.name + "_identity").output
        out_name = old.name
        old._rename(self.fresh_name(out_name + "_replaced"))
        keep._rename(out_name)
        keep.dtype = old.dtype or keep.dtype
        keep.shape = old.shape if old.shape is not None else keep.shape
        keep.doc_string = old.doc_string or keep.doc_string
        for i, o in enumerate(self._outputs):
            if o is old:
                self.set_output(i, keep)

    def can_take_name(self, value: Value) -> bool:
        """Whether ``value`` can take over a graph output's name (``replace_value`` then needs no
        Identity): a node output of this very graph that is not already an input or output."""
        return (value.producer is not None and value.producer.graph is self and not value.is_graph_output
                and not value.is_graph_input and value.const is None)

    def reorder(self, order: list[Node]) -> None:
        """Relink this graph's nodes in ``order`` (a permutation of them; ``ir.order.sort`` passes
        a topological one)."""
        self._head = self._tail = None
        for node in order:
            node._prev = node._next = None
        for node in order:
            node.graph = None
            self._len -= 1
            self._link(node, None)

    def __repr__(self) -> str:
        return f"Graph({self.name!r}, {self._len} nodes)"


class Function:
    """A model-local function: a body graph plus the attribute names it takes."""

    def __init__(self, domain: str, name: str, graph: Graph, *, overload: str = "",
                 attributes: Iterable[str] = (), opset_imports: dict[str, int] | None = None) -> None:
        self.domain = domain
        self.name = name
        self.overload = overload
        self.graph = graph
        self.attributes = list(attributes)
        self.attribute_defaults: list[onnx.AttributeProto] = []
        self.opset_imports: dict[str, int] = dict(opset_imports or {})
        self.doc_string = ""
        self.metadata_props: dict[str, str] = {}

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.domain, self.name, self.overload)

    def __repr__(self) -> str:
        return f"Function({self.domain!r}, {self.name!r}, {len(self.graph)} nodes)"


class Model:
    """A whole model: the main graph, opset imports, functions and metadata."""

    def __init__(self, graph: Graph, opset_imports: dict[str, int], *, ir_version: int = 10) -> None:
        self.graph = graph
        self.opset_imports = dict(opset_imports)
        self.ir_version = ir_version
        self.producer_name = ""
        self.producer_version = ""
        self.domain = ""
        self.model_version = 0
        self.doc_string = ""
        self.metadata_props: dict[str, str] = {}
        self.functions: dict[tuple[str, str, str], Function] = {}
        self.extra: onnx.ModelProto | None = None  # training_info and other fields kept opaque

    def opset(self, domain: str = "") -> int:
        """The imported version of ``domain`` ("" and "ai.onnx" are the same), 0 if not imported."""
        if domain in ("", "ai.onnx"):
            return self.opset_imports.get("", self.opset_imports.get("ai.onnx", 0))
        return self.opset_imports.get(domain, 0)

    def all_graphs(self, functions: bool = True) -> Iterator[Graph]:
        """The main graph, function bodies (unless ``functions`` is False), and every subgraph
        nested in them."""
        yield from walk_graphs(self.graph)
        if functions:
            for f in self.functions.values():
                yield from walk_graphs(f.graph)

    def __repr__(self) -> str:
        return f"Model(opset={self.opset_imports}, {len(self.graph)} nodes)"


def walk_graphs(root: Graph) -> Iterator[Graph]:
    """``root`` and every subgraph nested in it: the one graph walker."""
    stack = [root]
    while stack:
        g = stack.pop()
        yield g
        for node in g.nodes_with_subgraphs():
            stack.extend(reversed(node.subgraphs()))
