"""Reading ONNX protobuf into the IR and writing it back.

Loading keeps each NodeProto and TensorProto by reference: attributes and tensor data are decoded
only when a pass asks for them, and nodes nobody edited are written back as they came. Saving
streams the graph out piece by piece (no single SerializeToString of the whole model), switches
to external data past protobuf's 2 GB limit, and replaces the output file atomically.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import gc
import io
import os
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import onnx
from google.protobuf.message import DecodeError

from optgraph.ir.core import AT, Attr, Function, Graph, Model, Node, Shape, Value
from optgraph.ir.errors import InvalidModelError
from optgraph.ir.order import stable_toposort
from optgraph.ir.tensor import ExternalData, Tensor, check_external, open_external

_TWO_GB_MARGIN = 1_900_000_000  # past this many bytes of tensors the model must use external data


# ----------------------------------------------------------------------------------------------
# loading


def load(path: str | os.PathLike[str]) -> Model:
    """Load a model file; external data is checked now and read only when needed."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except IsADirectoryError:
        raise InvalidModelError(f"'{path}' is a directory, not an ONNX model file") from None
    except OSError as e:
        raise InvalidModelError(f"cannot read '{path}': {e.strerror}") from None
    return from_bytes(data, base_dir=os.path.dirname(os.path.abspath(path)), source=path)


def from_bytes(data: bytes, *, base_dir: str | None = None, source: str = "the input") -> Model:
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except DecodeError:
        raise InvalidModelError(f"{source} is not a valid ONNX model (protobuf parse failed: "
                                f"the file is corrupt, truncated or not ONNX)") from None
    if not proto.HasField("graph") or proto.ir_version <= 0:
        raise InvalidModelError(f"{source} is not a valid ONNX model (no graph or no IR version)")
    return from_proto(proto, base_dir=base_dir)


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cycle collector while building or writing large object graphs.

    A model is hundreds of thousands of small objects; collections triggered mid-build scan them
    all again and again. On the way out the new objects are moved straight to the oldest
    generation (freeze + unfreeze), so the first young-generation collection afterwards does not
    scan them all once more; they are still collected normally when unreachable.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.unfreeze()
        if enabled:
            gc.enable()


def from_proto(proto: onnx.ModelProto, *, base_dir: str | None = None) -> Model:
    """Build the IR from a ModelProto (which the IR keeps referring to: do not edit it after)."""
    with gc_paused():
        return _from_proto(proto, base_dir)


def _from_proto(proto: onnx.ModelProto, base_dir: str | None) -> Model:
    opsets: dict[str, int] = {}
    for op in proto.opset_import:
        opsets[op.domain] = op.version
    if "" not in opsets and "ai.onnx" not in opsets and any(n.domain in ("", "ai.onnx") for n in proto.graph.node):
        raise InvalidModelError("the model uses ONNX ops but imports no ONNX opset (is the file truncated?)")
    loader = _Loader(base_dir)
    graph = Graph(proto.graph.name)
    loader.graph(proto.graph, graph, None)
    model = Model(graph, opsets, ir_version=proto.ir_version)
    model.producer_name = proto.producer_name
    model.producer_version = proto.producer_version
    model.domain = proto.domain
    model.model_version = proto.model_version
    model.doc_string = proto.doc_string
    model.metadata_props = {p.key: p.value for p in proto.metadata_props}
    for fp in proto.functions:
        fn = loader.function(fp)
        model.functions[fn.key] = fn
    if proto.training_info or getattr(proto, "configuration", None):
        extra = onnx.ModelProto()
        extra.training_info.extend(proto.training_info)
        if getattr(proto, "configuration", None):
            extra.configuration.extend(proto.configuration)
        model.extra = extra
    return model


def _set_info(value: Value, vi: onnx.ValueInfoProto) -> None:
    """Attach a ValueInfoProto; it is decoded when the type is first read (see Value)."""
    value._vi = vi
    value._lazy = True


def _fill_type(value: Value, vi: onnx.ValueInfoProto) -> None:
    """Give an input/output whose own entry has no type the type a value_info entry records."""
    own = value._vi
    if own is None or own.HasField("type") or not vi.HasField("type"):
        return
    merged = onnx.ValueInfoProto()
    merged.CopyFrom(own)
    merged.type.CopyFrom(vi.type)
    _set_info(value, merged)


class _Unsorted(Exception):
    """The file's node order is not topological: load again in dependency order."""


_CONTROL_FLOW = frozenset({"If", "Loop", "Scan", "SequenceMap"})


def _has_subgraph(np_: onnx.NodeProto) -> bool:
    return any(a.type in (AT.GRAPH, AT.GRAPHS) for a in np_.attribute)


def _free_names_of(np_: onnx.NodeProto) -> set[str]:
    """Names the node's subgraphs read from enclosing scopes."""
    free: set[str] = set()
    for a in np_.attribute:
        for sub in ([a.g] if a.type == AT.GRAPH else list(a.graphs) if a.type == AT.GRAPHS else []):
            free |= _free_names(sub)
    return free


def _free_names(gp: onnx.GraphProto) -> set[str]:
    """Names a subgraph reads from enclosing scopes."""
    defined = {v.name for v in gp.input} | {t.name for t in gp.initializer}
    free: set[str] = set()
    for n in gp.node:
        free.update(x for x in n.input if x and x not in defined)
        free.update(x for x in _free_names_of(n) if x not in defined)
        defined.update(n.output)
    free.update(o.name for o in gp.output if o.name not in defined)
    return free


class _Loader:
    def __init__(self, base_dir: str | None) -> None:
        self.base_dir = base_dir

    def tensor(self, tp: onnx.TensorProto) -> Tensor:
        if tp.data_location == onnx.TensorProto.EXTERNAL:
            return Tensor(tp, external=check_external(tp, self.base_dir))
        return Tensor(tp)

    def graph(self, gp: onnx.GraphProto, graph: Graph, outer: Callable[[str], Value | None] | None,
              input_names: Iterable[str] | None = None) -> None:
        """Fill ``graph`` from ``gp``; ``outer`` resolves names of enclosing scopes."""
        graph.doc_string = gp.doc_string
        if getattr(gp, "metadata_props", None):
            graph.metadata_props = {p.key: p.value for p in gp.metadata_props}
        names = graph._names
        scope: dict[str, Value] = {}
        where = f"graph '{gp.name}'" if gp.name else "the graph"

        def define(name: str) -> Value:
            if not name:
                raise InvalidModelError(f"{where} defines a value with an empty name")
            if name in scope or (outer is not None and outer(name) is not None):
                raise InvalidModelError(f"{where}: the name '{name}' is defined twice")
            v = Value(graph, name)
            names.add(name)
            scope[name] = v
            return v

        for name in input_names if input_names is not None else ():
            graph.add_input(define(name))
        for vi in gp.input:
            v = define(vi.name)
            _set_info(v, vi)
            graph.add_input(v)
        for tp in gp.initializer:
            v = scope.get(tp.name)
            if v is None or v.const is not None:
                v = define(tp.name)  # raises on a duplicate initializer
            v._const = self.tensor(tp)
            v._lazy = True  # the type comes from the input's entry or else from the tensor
            graph._initializers[tp.name] = v
        if gp.sparse_initializer:
            raise InvalidModelError(f"{where} has sparse initializers, which optgraph does not support")
        if gp.quantization_annotation:
            graph.extra = onnx.GraphProto()
            graph.extra.quantization_annotation.extend(gp.quantization_annotation)

        def lookup(name: str) -> Value | None:
            v = scope.get(name)
            if v is None and outer is not None:
                return outer(name)
            return v

        protos = list(gp.node)
        try:
            self._nodes(protos, range(len(protos)), graph, scope, scope.get if outer is None else lookup, outer,
                        strict=False)
        except _Unsorted:
            for node in list(graph):  # undo the optimistic pass, then load in dependency order
                for v in node._outputs:
                    if v is not None:
                        del scope[v.name]
                        v._uses.clear()
                node.set_inputs([])
                node._outputs = []
                graph.remove(node)
            order = self._order(protos, scope, where)
            self._nodes(protos, order, graph, scope, lookup, outer, strict=True)

        outputs = []
        for vi in gp.output:
            v = lookup(vi.name)
            if v is None:
                raise InvalidModelError(f"{where}: output '{vi.name}' is never defined")
            if v.graph is graph or v.graph is None:
                _set_info(v, vi)
            outputs.append(v)
        graph.set_outputs(outputs)
        for vi in gp.value_info:
            v = scope.get(vi.name)
            if v is None:
                continue
            if not v.is_graph_input and not v.is_graph_output:
                _set_info(v, vi)
            else:
                _fill_type(v, vi)  # an input/output's own entry wins; value_info only fills a missing type

    def _nodes(self, protos: list[onnx.NodeProto], order: Iterable[int], graph: Graph, scope: dict[str, Value],
               lookup: Callable[[str], Value | None], outer: Callable[[str], Value | None] | None,
               *, strict: bool) -> None:
        """Create the nodes in ``order``; raise _Unsorted at a forward reference unless ``strict``.

        This loop is the load time of a large model, so it is written flat.
        """
        names_add = graph._names.add
        for i in order:
            np_ = protos[i]
            node = Node(np_.op_type, np_.domain, np_.name)
            node._attrs = None
            node._proto = np_
            ins: list[Value | None] = []
            k = 0
            for name in np_.input:
                if name:
                    v = lookup(name)
                    if v is None:
                        if not strict and any(name in p.output for p in protos[i + 1:]):
                            raise _Unsorted
                        raise InvalidModelError(f"node '{np_.name or np_.op_type}' reads '{name}', which nothing defines")
                    v._uses[(node, k)] = None
                    ins.append(v)
                else:
                    ins.append(None)
                k += 1
            node._inputs = ins
            outs: list[Value | None] = []
            k = 0
            for name in np_.output:
                if name:
                    if name in scope or (outer is not None and outer(name) is not None):
                        raise InvalidModelError(f"'{name}' is defined twice (again by node '{np_.name or np_.op_type}')")
                    v = Value(graph, name)
                    v._producer = node
                    v._index = k
                    scope[name] = v
                    names_add(name)
                    outs.append(v)
                else:
                    outs.append(None)
                k += 1
            node._outputs = outs
            if np_.doc_string:
                node._doc_string = np_.doc_string
            if np_.metadata_props:
                node._metadata_props = {p.key: p.value for p in np_.metadata_props}
            if np_.overload:
                node._overload = np_.overload
            if (np_.domain or np_.op_type in _CONTROL_FLOW) and _has_subgraph(np_):
                if not strict and any(lookup(n) is None for n in _free_names_of(np_)):
                    raise _Unsorted
                self._subgraph_attrs(node, lookup, graph._names)
            graph.append(node)

    def _order(self, protos: list[onnx.NodeProto], scope: dict[str, Value], where: str) -> list[int]:
        """Node indices in dependency order (the file's order where it is free)."""
        producer: dict[str, int] = {}
        for i, np_ in enumerate(protos):
            for name in np_.output:
                if name in producer:
                    raise InvalidModelError(f"{where}: '{name}' is produced by two nodes "
                                            f"('{protos[producer[name]].name}' and '{np_.name}')")
                if name:
                    producer[name] = i
        edges = [(producer[name], i) for i, np_ in enumerate(protos)
                 for name in [*np_.input, *_free_names_of(np_)] if name in producer]
        return stable_toposort(len(protos), edges, [p.name or p.op_type for p in protos])

    def _subgraph_attrs(self, node: Node, lookup: Callable[[str], Value | None], names: set[str]) -> None:
        assert node._proto is not None

        def sub(gp: onnx.GraphProto) -> Graph:
            g = Graph(gp.name, names=names, parent=node)
            self.graph(gp, g, lookup)
            return g

        attrs: dict[str, Attr] = {}
        for p in node._proto.attribute:
            if p.type == AT.GRAPH:
                attrs[p.name] = Attr(p.name, p.type, sub(p.g), doc_string=p.doc_string)
            elif p.type == AT.GRAPHS:
                attrs[p.name] = Attr(p.name, p.type, [sub(g) for g in p.graphs], doc_string=p.doc_string)
            else:
                attrs[p.name] = Attr(p.name, p.type, ref=p.ref_attr_name, doc_string=p.doc_string, proto=p)
        node._attrs = attrs
        node._has_graphs = True
        node._proto = None  # subgraphs may change: always re-encode this node

    def function(self, fp: onnx.FunctionProto) -> Function:
        graph = Graph(fp.name)
        vis = {vi.name: vi for vi in getattr(fp, "value_info", [])}
        shell = onnx.GraphProto(name=fp.name, node=fp.node)
        shell.output.extend(onnx.ValueInfoProto(name=o) for o in fp.output)
        shell.value_info.extend(vis.values())
        self.graph(shell, graph, None, input_names=fp.input)
        for v in [*graph.inputs, *graph.outputs]:  # drop the shell's untyped output entries
            v._vi = vis.get(v.name)
            v._lazy = v._vi is not None
        fn = Function(fp.domain, fp.name, graph, overload=getattr(fp, "overload", ""),
                      attributes=fp.attribute, opset_imports={o.domain: o.version for o in fp.opset_import})
        fn.attribute_defaults = list(fp.attribute_proto)
        fn.doc_string = fp.doc_string
        fn.metadata_props = {p.key: p.value for p in getattr(fp, "metadata_props", [])}
        return fn


# ----------------------------------------------------------------------------------------------
# saving


@functools.lru_cache(maxsize=4096)
def _tensor_type(dtype: int, shape: Shape | None) -> onnx.TypeProto:
    """The TypeProto of a tensor (copied, never edited: values of a model share a few types)."""
    tp = onnx.TypeProto()
    tt = tp.tensor_type
    tt.elem_type = dtype
    if shape is not None:
        tt.shape.SetInParent()
        for d in shape:
            dim = tt.shape.dim.add()
            if isinstance(d, str):
                dim.dim_param = d
            elif d is not None:
                dim.dim_value = int(d)  # numpy ints hash as ints: both must give the same entry
    return tp


def _value_info(v: Value) -> onnx.ValueInfoProto:
    """The value's entry: the loaded one while the value is unedited, else a new one."""
    if v._vi is not None:
        return v._vi
    vi = onnx.ValueInfoProto(name=v.name)
    if v.type_proto is not None:
        vi.type.CopyFrom(v.type_proto)
    elif v.dtype or v.shape is not None:
        vi.type.CopyFrom(_tensor_type(v.dtype, v.shape))
    if v.doc_string:
        vi.doc_string = v.doc_string
    for k, val in v.metadata_props.items():
        vi.metadata_props.add(key=k, value=val)
    return vi


def _typed(v: Value) -> bool:
    """Whether a value_info entry is worth writing for ``v`` (checked without decoding)."""
    return v._vi is not None or bool(v.dtype) or v.shape is not None or v.type_proto is not None


def _encode_attr(a: Attr, p: onnx.AttributeProto) -> None:
    if a._proto is not None:
        p.CopyFrom(a._proto)
        return
    p.name, p.type = a.name, a.type
    if a.ref:
        p.ref_attr_name = a.ref
    if a.doc_string:
        p.doc_string = a.doc_string
    v, t = a._value, a.type
    if a.ref and v is None:
        return
    if t == AT.INT:
        p.i = int(v)
    elif t == AT.FLOAT:
        p.f = float(v)
    elif t == AT.STRING:
        p.s = v if isinstance(v, bytes) else v.encode("utf-8", "surrogateescape")
    elif t == AT.INTS:
        p.ints.extend(int(x) for x in v)
    elif t == AT.FLOATS:
        p.floats.extend(float(x) for x in v)
    elif t == AT.STRINGS:
        p.strings.extend(x if isinstance(x, bytes) else x.encode("utf-8", "surrogateescape") for x in v)
    elif t == AT.TENSOR:
        p.t.CopyFrom(v.to_proto())
    elif t == AT.TENSORS:
        p.tensors.extend(x.to_proto() for x in v)
    elif t == AT.GRAPH:
        _graph_proto(v, p.g)
    elif t == AT.GRAPHS:
        for g in v:
            _graph_proto(g, p.graphs.add())
    elif t == AT.SPARSE_TENSOR:
        p.sparse_tensor.CopyFrom(v)
    elif t == AT.SPARSE_TENSORS:
        p.sparse_tensors.extend(v)
    elif t == AT.TYPE_PROTO:
        p.tp.CopyFrom(v)
    elif t == AT.TYPE_PROTOS:
        p.type_protos.extend(v)
    else:
        raise ValueError(f"cannot encode attribute '{a.name}' of type {t}")


def _encode_nodes(graph: Graph, out: Any) -> None:
    """Add the graph's nodes to a repeated NodeProto field, reusing unedited protos."""
    out.extend([node._proto if node._proto is not None else node_proto(node) for node in graph])


def node_proto(node: Node) -> onnx.NodeProto:
    p = onnx.NodeProto()
    p.op_type = node._op_type
    if node._domain:
        p.domain = node._domain
    if node._name:
        p.name = node._name
    if node._overload:
        p.overload = node._overload
    if node._doc_string:
        p.doc_string = node._doc_string
    p.input.extend([v.name if v is not None else "" for v in node._inputs])
    p.output.extend([v.name if v is not None else "" for v in node._outputs])
    for a in node.attrs.values():
        _encode_attr(a, p.attribute.add())
    for k, val in node.metadata_props.items():
        p.metadata_props.add(key=k, value=val)
    return p


def _graph_proto(graph: Graph, gp: onnx.GraphProto, *, initializers: bool | Callable[[Value], bool] = True) -> None:
    gp.name = graph.name
    if graph.doc_string:
        gp.doc_string = graph.doc_string
    for k, val in graph.metadata_props.items():
        gp.metadata_props.add(key=k, value=val)
    gp.input.extend([_value_info(v) for v in graph.inputs])
    _encode_nodes(graph, gp.node)
    if initializers:
        keep = initializers if callable(initializers) else None
        gp.initializer.extend([v.const.to_proto(v.name) for v in graph.initializers.values()  # type: ignore[union-attr]
                               if keep is None or keep(v)])
    pinned = {id(v) for v in graph.inputs} | {id(v) for v in graph.outputs}
    gp.value_info.extend([_value_info(v) for node in graph for v in node._outputs
                          if v is not None and id(v) not in pinned and _typed(v)])
    gp.output.extend([_value_info(v) for v in graph.outputs])
    if graph.extra is not None:
        gp.quantization_annotation.extend(graph.extra.quantization_annotation)


def _set_fields(**fields: Any) -> dict[str, Any]:
    """The non-empty fields: these protos are proto2, so setting "" or 0 would add bytes the input lacked."""
    return {k: v for k, v in fields.items() if v}


def function_proto(fn: Function) -> onnx.FunctionProto:
    fp = onnx.FunctionProto(**_set_fields(name=fn.name, domain=fn.domain, doc_string=fn.doc_string))
    if fn.overload:
        fp.overload = fn.overload
    fp.input.extend(v.name for v in fn.graph.inputs)
    fp.output.extend(v.name for v in fn.graph.outputs)
    fp.attribute.extend(fn.attributes)
    fp.attribute_proto.extend(fn.attribute_defaults)
    _encode_nodes(fn.graph, fp.node)
    for dom, ver in fn.opset_imports.items():
        fp.opset_import.add(domain=dom, version=ver)
    fp.value_info.extend([_value_info(v) for v in [*fn.graph.inputs, *(o for n in fn.graph for o in n.outputs if o)]
                          if _typed(v)])
    for k, val in fn.metadata_props.items():
        fp.metadata_props.add(key=k, value=val)
    return fp


def _model_shell(model: Model) -> onnx.ModelProto:
    """Every ModelProto field except the main graph."""
    mp = onnx.ModelProto(**_set_fields(ir_version=model.ir_version, producer_name=model.producer_name,
                                       producer_version=model.producer_version, domain=model.domain,
                                       model_version=model.model_version, doc_string=model.doc_string))
    for dom, ver in model.opset_imports.items():
        mp.opset_import.add(domain=dom, version=ver)
    for k, val in model.metadata_props.items():
        mp.metadata_props.add(key=k, value=val)
    mp.functions.extend(function_proto(f) for f in model.functions.values())
    if model.extra is not None:
        mp.MergeFrom(model.extra)
    return mp


def to_proto(model: Model, *, initializers: Callable[[Value], bool] | None = None) -> onnx.ModelProto:
    """The whole model as one ModelProto (tensors embedded as they are held); ``initializers``,
    when given, picks the main graph's initializers to write (the others are left out)."""
    mp = _model_shell(model)
    _graph_proto(model.graph, mp.graph, initializers=initializers or True)
    return mp


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_MODEL_GRAPH_FIELD = onnx.ModelProto.DESCRIPTOR.fields_by_name["graph"].number
_BATCH_BYTES = 256 << 20  # initializers are serialized in batches of about this size


def _initializer_batches(protos: Iterable[onnx.TensorProto]) -> Iterator[bytes]:
    """Encoded ``GraphProto.initializer`` fields, a batch at a time.

    Repeated fields concatenate on the wire, so a GraphProto holding only some initializers
    serializes to bytes that can be appended to the rest of the graph's encoding.
    """
    batch = onnx.GraphProto()
    size = 0
    for tp in protos:
        batch.initializer.append(tp)
        size += tp.ByteSize()
        if size >= _BATCH_BYTES:
            yield batch.SerializeToString()
            batch, size = onnx.GraphProto(), 0
    if size or len(batch.initializer):
        yield batch.SerializeToString()


def save(model: Model, path: str | os.PathLike[str], *, external_data: bool | None = None,
         size_threshold: int = 1024) -> None:
    """Write the model to ``path`` atomically (no partial file is ever left behind).

    ``external_data=None`` keeps tensors external when the model had external data or would pass
    protobuf's 2 GB limit; the data goes to ``<file name>.data`` beside the model.
    """
    with gc_paused():
        _save(model, os.fspath(path), external_data, size_threshold)


def _save(model: Model, path: str, external_data: bool | None, size_threshold: int) -> None:
    tensors = list(model.graph.initializers.values())
    if external_data is None:
        external_data = any(v.const.is_external for v in tensors) or \
            sum(v.const.encoded_size for v in tensors) > _TWO_GB_MARGIN  # type: ignore[union-attr]
    folder = os.path.dirname(os.path.abspath(path))
    location = os.path.basename(path) + ".data"
    temps: list[str] = []
    try:
        data_tmp = None
        if external_data:
            data_tmp = _temp(os.path.join(folder, location), temps)
        shell = _model_shell(model)
        gp = onnx.GraphProto()
        _graph_proto(model.graph, gp, initializers=False)
        with open(data_tmp, "wb", buffering=0) if data_tmp else _nullfile() as data_file:
            def tensor_protos() -> Iterator[onnx.TensorProto]:
                for v in tensors:
                    t = v.const
                    assert t is not None
                    if data_file is not None and t.nbytes >= size_threshold and t.dtype != onnx.TensorProto.STRING:
                        yield _externalize(t, v.name, data_file, location)
                    else:
                        yield t.to_proto(v.name)
            chunks = [gp.SerializeToString(), *_initializer_batches(tensor_protos())]
        model_tmp = _temp(path, temps)
        with open(model_tmp, "wb") as f:
            f.write(shell.SerializeToString())
            f.write(_varint((_MODEL_GRAPH_FIELD << 3) | 2) + _varint(sum(map(len, chunks))))
            for c in chunks:
                f.write(c)
        if data_tmp:
            os.replace(data_tmp, os.path.join(folder, location))
        os.replace(model_tmp, path)
        temps.clear()
    finally:
        for t in temps:
            if os.path.exists(t):
                os.unlink(t)


class _nullfile:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _temp(final: str, temps: list[str]) -> str:
    """A temporary file beside ``final`` with the mode ``final`` will have: an existing file's mode,
    else what ``open()`` gives under the current umask (mkstemp alone makes it owner-only)."""
    folder, name = os.path.split(os.path.abspath(final))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
    temps.append(tmp)
    try:
        if os.path.exists(final):
            mode = stat.S_IMODE(os.stat(final).st_mode)
        else:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        os.fchmod(fd, mode)
    finally:
        os.close(fd)
    return tmp


def write_atomic(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` so that it appears complete or not at all (engines, caches, reports)."""
    temps: list[str] = []
    try:
        tmp = _temp(path, temps)
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
        temps.clear()
    finally:
        for t in temps:
            if os.path.exists(t):
                os.unlink(t)


def _externalize(tensor: Tensor, name: str, data_file: io.FileIO, location: str) -> onnx.TensorProto:
    """A TensorProto header for ``tensor`` whose bytes are appended to ``data_file`` (4 KiB aligned).

    External data a pass left alone is copied from file to file by the kernel and never read into
    memory; an array is written in chunks without an encoded copy.
    """
    header = tensor._proto
    offset = data_file.tell()
    pad = (-offset) % 4096
    if pad:
        _write_all(data_file, b"\0" * pad)
        offset += pad
    if tensor._external is not None:
        _copy_range(tensor._external, data_file)
        length = tensor._external.length
    else:
        length = sum(_write_all(data_file, c) for c in tensor.chunks())
    out = onnx.TensorProto(name=name, data_type=tensor.dtype, dims=tensor.shape,
                           data_location=onnx.TensorProto.EXTERNAL)
    if header is not None:
        if header.doc_string:
            out.doc_string = header.doc_string
        out.metadata_props.extend(header.metadata_props)
    for k, val in (("location", location), ("offset", str(offset)), ("length", str(length))):
        out.external_data.add(key=k, value=val)
    return out


def _write_all(f: io.FileIO, data: bytes | memoryview) -> int:
    view = memoryview(data)
    done = 0
    while done < len(view):
        done += f.write(view[done:]) or 0
    return done


def _copy_range(ext: ExternalData, dst: io.FileIO) -> None:
    """Append the external byte range to ``dst``: copy_file_range, else sendfile, else read + write."""
    src = open_external(ext)
    try:
        done = 0
        for copy in (_kernel_copy_file_range, _kernel_sendfile, _user_copy):
            try:
                while done < ext.length:
                    n = copy(src, dst.fileno(), ext.offset + done, ext.length - done)
                    if n == 0:
                        raise InvalidModelError(f"external data file '{ext.location}' is shorter than the model says")
                    done += n
                break
            except OSError as e:
                if e.errno not in _NO_KERNEL_COPY:
                    raise
        dst.seek(0, os.SEEK_END)
    finally:
        os.close(src)


# What a kernel copy raises where it is not supported (other file systems, older kernels, seccomp).
_NO_KERNEL_COPY = frozenset({errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EPERM,
                             errno.EBADF, errno.ENOTSUP})


def _kernel_copy_file_range(src: int, dst: int, offset: int, count: int) -> int:
    if not hasattr(os, "copy_file_range"):
        raise OSError(errno.ENOSYS, "copy_file_range")
    return os.copy_file_range(src, dst, min(count, _COPY_STEP), offset)


def _kernel_sendfile(src: int, dst: int, offset: int, count: int) -> int:
    if not hasattr(os, "sendfile"):
        raise OSError(errno.ENOSYS, "sendfile")
    return os.sendfile(dst, src, offset, min(count, _COPY_STEP))


def _user_copy(src: int, dst: int, offset: int, count: int) -> int:
    piece = os.pread(src, min(count, _USER_STEP), offset)
    view, done = memoryview(piece), 0
    while done < len(view):
        done += os.write(dst, view[done:])
    return len(piece)


_COPY_STEP = 1 << 30  # bytes per system call (sendfile and copy_file_range take at most about 2 GB)
_USER_STEP = 16 << 20  # bytes held at a time when the copy goes through memory
