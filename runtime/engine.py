"""The engine report: what TensorRT built from a model, layer by layer.

Two sources give the same report:
- the builder's log at ``ProfilingVerbosity.DETAILED`` (a VERBOSE logger), which prints one record
  per engine layer after TensorRT's own fusions and the memory totals; it needs no GPU, so it is
  what this module reads after ``optgraph build`` on any machine;
- the engine inspector's JSON (``IEngineInspector.get_engine_information(LayerInformationFormat.JSON)``,
  TensorRT 10 and 11), on a machine where the engine can be deserialized.

The accounting maps every ONNX node of the model to the engine layers whose metadata names it
(``[ONNX Layer: node]``); a node no layer names is reported as folded (a constant or shape
computation TensorRT evaluates at build time), eliminated (a reshape or no-op TensorRT removes,
or an elementwise op with a constant operand whose readers all sit in layers: TensorRT merges
such a scale or shift into the layer that reads it without naming it, as attention's q and k
scaling into the GEMM; or a duplicate of a named node, which TensorRT computes once) or
unaccounted.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import onnx

SYNC_TYPES = frozenset({"signal", "wait"})  # stream synchronisation records, not layers
STANDALONE = "kgen"  # a generated standalone kernel: a copy, reformat or unfused elementwise op
_REFORMAT_TYPES = frozenset({"reformat", "Reformat", "shuffle", "copy"})

# "Format/Datatype" of TensorRT's inspector JSON spells types in words; the build log as Float/Half/...
_DTYPE_WORDS = (("BF16", "BFloat16"), ("FP16", "Half"), ("Half", "Half"), ("FP8", "FP8"), ("Int8", "Int8"),
                ("INT8", "Int8"), ("FP32", "Float"), ("Float", "Float"), ("Int32", "Int32"), ("INT32", "Int32"),
                ("Int64", "Int64"), ("INT64", "Int64"), ("Bool", "Bool"), ("BOOL", "Bool"), ("UInt8", "UInt8"))
_LAYER_RE = re.compile(
    r"Name: (?P<name>.*?), LayerType: (?P<type>[^,]*), Inputs: \[(?P<inputs>.*?)\], Constants: \[.*?\], "
    r"Outputs: \[(?P<outputs>.*?)\], TacticName: (?P<tactic>.*?), StreamId: (?P<stream>-?\d+), Metadata: (?P<meta>.*)$")
_TENSOR_RE = re.compile(r"\{ Name: (?P<name>[^,]*), Dimensions: \[(?P<dims>[^\]]*)\].*?Datatype: (?P<dtype>\w+), "
                        r"Format: (?P<format>[^}]*?)\s*\}")
_META_RE = re.compile(r"\[ONNX Layer: ([^\]]*)\]")
_MEMORY_RE = re.compile(r"(Total Activation Memory|Total Weights Memory|Max Scratch Memory):\s*(\d+)")

# ONNX ops TensorRT removes outright when they only move metadata (no layer names them); a Pad
# no layer names is one whose computed pads TensorRT found to be zero (Swin's window padding at
# 224x224) or merged into the convolution after it.
_ELIMINABLE = frozenset({"Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Dropout", "Cast", "Transpose",
                         "Expand", "Concat", "Split", "Slice", "Pad"})
# Elementwise ops that TensorRT merges into the layer reading them when one operand is constant.
_MERGEABLE = frozenset({"Mul", "Add", "Sub", "Div"})
# ONNX ops whose outputs TensorRT knows at build time when their inputs are.
_SHAPE_SOURCES = frozenset({"Shape", "Size"})


@dataclass(frozen=True)
class Tensor:
    name: str
    dims: tuple[int, ...]
    dtype: str  # Float, Half, BFloat16, Int8, FP8, Int32, ...
    format: str


@dataclass(frozen=True)
class Layer:
    name: str
    type: str
    onnx_nodes: tuple[str, ...]
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    stream: int
    tactic: str = ""

    @property
    def dtype(self) -> str:
        """The layer's precision: its first output's type (its first input's when it has none)."""
        for t in (*self.outputs, *self.inputs):
            return t.dtype
        return ""


@dataclass
class Accounting:
    """Where each ONNX node of the model went."""

    in_layers: int = 0
    folded: list[str] = field(default_factory=list)  # constant or shape computations
    eliminated: list[str] = field(default_factory=list)  # reshapes and no-ops no layer names
    unaccounted: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.in_layers + len(self.folded) + len(self.eliminated) + len(self.unaccounted)

    @property
    def accounted_share(self) -> float:
        return 1.0 if not self.total else 1.0 - len(self.unaccounted) / self.total


@dataclass
class EngineReport:
    """An engine, layer by layer, with totals, precision and the accounting of ONNX nodes."""

    layers: list[Layer]
    activation_bytes: int | None = None
    weights_bytes: int | None = None
    scratch_bytes: int | None = None
    build_seconds: float | None = None
    flavor: str = ""
    accounting: Accounting | None = None
    flags: list[str] = field(default_factory=list)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def standalone_kernels(self) -> int:
        return sum(1 for layer in self.layers if layer.type == STANDALONE)

    @property
    def reformats(self) -> int:
        return sum(1 for layer in self.layers if _is_reformat(layer))

    def precision(self) -> dict[str, dict[str, int]]:
        """Layers and tensors per data type."""
        tensors = {t.name: t.dtype for layer in self.layers for t in (*layer.inputs, *layer.outputs)}
        return {"layers": dict(sorted(Counter(layer.dtype or "none" for layer in self.layers).items())),
                "tensors": dict(sorted(Counter(tensors.values()).items()))}

    def totals(self) -> dict[str, Any]:
        return {"layers": self.num_layers, "standalone_kernels": self.standalone_kernels,
                "reformats": self.reformats, "activation_bytes": self.activation_bytes,
                "weights_bytes": self.weights_bytes, "scratch_bytes": self.scratch_bytes,
                "build_seconds": self.build_seconds, "streams": len({layer.stream for layer in self.layers})}

    def to_json(self) -> dict[str, Any]:
        acc = self.accounting
        return {
            "flavor": self.flavor, "totals": self.totals(), "precision": self.precision(), "flags": self.flags,
            "accounting": None if acc is None else {
                "onnx_nodes": acc.total, "in_layers": acc.in_layers, "folded": acc.folded,
                "eliminated": acc.eliminated, "unaccounted": acc.unaccounted, "accounted_share": acc.accounted_share},
            "layers": [dataclasses.asdict(layer) for layer in self.layers],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EngineReport:
        layers = [Layer(name=d["name"], type=d["type"], onnx_nodes=tuple(d["onnx_nodes"]),
                        inputs=tuple(Tensor(t["name"], tuple(t["dims"]), t["dtype"], t["format"]) for t in d["inputs"]),
                        outputs=tuple(Tensor(t["name"], tuple(t["dims"]), t["dtype"], t["format"]) for t in d["outputs"]),
                        stream=d["stream"], tactic=d.get("tactic", "")) for d in data["layers"]]
        t, acc = data["totals"], data.get("accounting")
        return cls(layers, t["activation_bytes"], t["weights_bytes"], t["scratch_bytes"], t["build_seconds"],
                   data.get("flavor", ""), None if acc is None else Accounting(
                       acc["in_layers"], list(acc["folded"]), list(acc["eliminated"]), list(acc["unaccounted"])),
                   list(data.get("flags", [])))

    def summary(self) -> str:
        """A few readable lines for the terminal."""
        t = self.totals()
        mb = lambda b: "?" if b is None else f"{b / 2**20:.1f} MiB"  # noqa: E731
        prec = ", ".join(f"{k} {v}" for k, v in self.precision()["layers"].items())
        lines = [f"engine: {t['layers']} layers ({t['standalone_kernels']} standalone kernels, "
                 f"{t['reformats']} reformats), activation {mb(self.activation_bytes)}, "
                 f"weights {mb(self.weights_bytes)}", f"precision: {prec or 'none'}"]
        if self.accounting is not None:
            a = self.accounting
            lines.append(f"onnx nodes: {a.total} ({a.in_layers} in layers, {len(a.folded)} folded, "
                         f"{len(a.eliminated)} eliminated, {len(a.unaccounted)} unaccounted)")
        lines += [f"flag: {f}" for f in self.flags]
        return "\n".join(lines)


def _is_reformat(layer: Layer) -> bool:
    if layer.type in _REFORMAT_TYPES:
        return True
    # A standalone kernel that only moves data: same dims in and out, a different format or type.
    return (layer.type == STANDALONE and len(layer.inputs) == 1 and len(layer.outputs) == 1 and not layer.onnx_nodes
            and layer.inputs[0].dims == layer.outputs[0].dims)


def _onnx_nodes(meta: str) -> tuple[str, ...]:
    """The top-level ONNX nodes a layer absorbed. A node of an inlined model-local function is
    written "<body node> | <call node> (<function>)": it counts as its call node."""
    out: dict[str, None] = {}
    for entry in _META_RE.findall(meta):
        name = entry.rsplit(" | ", 1)[-1].strip()
        if " | " in entry and name.endswith(")") and " (" in name:
            name = name[:name.rindex(" (")]
        out[name] = None
    return tuple(out)


def _tensors(text: str) -> tuple[Tensor, ...]:
    return tuple(Tensor(m["name"].strip(), tuple(int(d) for d in m["dims"].split(",") if d.strip()),
                        m["dtype"], m["format"].strip()) for m in _TENSOR_RE.finditer(text))


def parse_build_log(lines: Iterable[str]) -> EngineReport:
    """The report from a DETAILED build log (messages may hold several lines; a level prefix is fine)."""
    layers: list[Layer] = []
    memory: dict[str, int] = {}
    for message in lines:
        for line in message.splitlines():
            start = line.find("Name: ")
            m = _LAYER_RE.search(line, start) if start >= 0 and "LayerType: " in line else None
            if m is not None:
                if m["type"] in SYNC_TYPES:
                    continue
                layers.append(Layer(m["name"], m["type"], _onnx_nodes(m["meta"]),
                                    _tensors(m["inputs"]), _tensors(m["outputs"]), int(m["stream"]),
                                    m["tactic"].strip()))
                continue
            for key, value in _MEMORY_RE.findall(line):
                memory[key] = int(value)
    return EngineReport(layers, memory.get("Total Activation Memory"), memory.get("Total Weights Memory"),
                        memory.get("Max Scratch Memory"))


def _json_dtype(entry: Mapping[str, Any]) -> tuple[str, str]:
    """(dtype, format) of an inspector tensor: TensorRT 11 writes "Datatype" and "Format"; TensorRT
    10 writes both in one "Format/Datatype" phrase ("Row major linear FP32")."""
    if "Datatype" in entry:
        return str(entry["Datatype"]), str(entry.get("Format", ""))
    phrase = str(entry.get("Format/Datatype", ""))
    for word, dtype in _DTYPE_WORDS:
        if re.search(rf"\b{word}\b", phrase):
            return dtype, phrase
    return "", phrase


def parse_inspector_json(text: str | Mapping[str, Any]) -> EngineReport:
    """The report from the engine inspector's JSON (``get_engine_information``)."""
    data = json.loads(text) if isinstance(text, str) else text
    layers = []
    for d in data.get("Layers", []):
        if isinstance(d, str):  # LAYER_NAMES_ONLY verbosity: nothing to report but names
            raise ValueError("the inspector JSON holds layer names only: build with ProfilingVerbosity.DETAILED")
        if d.get("LayerType") in SYNC_TYPES:
            continue
        def tensors(items: Iterable[Mapping[str, Any]]) -> tuple[Tensor, ...]:
            return tuple(Tensor(str(t.get("Name", "")), tuple(int(x) for x in t.get("Dimensions", [])),
                                *_json_dtype(t)) for t in items)
        meta = d.get("Metadata", "")
        layers.append(Layer(str(d.get("Name", "")), str(d.get("LayerType", "")),
                            _onnx_nodes(meta if isinstance(meta, str) else ""),
                            tensors(d.get("Inputs", [])), tensors(d.get("Outputs", [])),
                            int(d.get("StreamId", 0)), str(d.get("TacticName", ""))))
    return EngineReport(layers)


def account(report: EngineReport, model: onnx.ModelProto) -> Accounting:
    """Map the model's main-graph nodes to engine layers (see the module docstring)."""
    named = {n for layer in report.layers for n in layer.onnx_nodes}
    static = {t.name for t in model.graph.initializer}
    readers: dict[str, list[str]] = {}
    for node in model.graph.node:
        for i in node.input:
            readers.setdefault(i, []).append(node.name)
    keys = _value_numbers(model)
    computed_once = {keys[k] for k, node in enumerate(model.graph.node) if node.name in named}
    acc = Accounting()
    for k, node in enumerate(model.graph.node):
        label = node.name or f"{node.op_type}#{k}"
        outputs_static = node.op_type == "Constant" or node.op_type in _SHAPE_SOURCES or (
            all(i in static for i in node.input if i) and any(node.input))
        if outputs_static:
            static.update(node.output)
        if node.name in named:
            acc.in_layers += 1
        elif outputs_static:
            acc.folded.append(label)
        elif keys[k] in computed_once or (node.domain in ("", "ai.onnx") and (node.op_type in _ELIMINABLE or (
                node.op_type in _MERGEABLE and any(i in static for i in node.input)
                and all(r in named for o in node.output for r in readers.get(o, [None]))))):
            acc.eliminated.append(label)
        else:
            acc.unaccounted.append(label)
    return acc


def _value_numbers(model: onnx.ModelProto) -> list[str]:
    """One digest per main-graph node of what it computes (op, attributes, and what its inputs
    compute; constants by value): equal digests are duplicates, which TensorRT computes once and
    names after one of them."""
    value = {t.name: _constant(t) for t in model.graph.initializer}  # constants by value, not by name
    keys = []
    for node in model.graph.node:
        if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].type == onnx.AttributeProto.TENSOR:
            key = _constant(node.attribute[0].t)
        else:
            attrs = sorted((a.name, a.SerializeToString(deterministic=True)) for a in node.attribute)
            key = _digest(node.domain.encode(), node.op_type.encode(), *(b for name, data in attrs for b in (name.encode(), data)),
                          *(value.get(i, i).encode() for i in node.input))
        keys.append(key)
        for j, o in enumerate(node.output):
            value[o] = f"{key}:{j}" if node.op_type != "Constant" else key
    return keys


def _constant(t: onnx.TensorProto) -> str:
    return _digest(b"const", str((t.data_type, tuple(t.dims))).encode(), onnx.numpy_helper.to_array(t).tobytes())


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()


def flags(report: EngineReport, model: onnx.ModelProto) -> list[str]:
    """What a deployment engineer should look at: Q/DQ left as kernels, float layers in a
    reduced-precision model, reformats between the layers of a residual block, parallel streams."""
    ops = {n.name: n.op_type for n in model.graph.node}
    out = []
    qdq = [layer.name for layer in report.layers
           if layer.type == STANDALONE and any(ops.get(n) in ("QuantizeLinear", "DequantizeLinear") for n in layer.onnx_nodes)]
    if qdq:
        out.append(f"{len(qdq)} Q/DQ left as standalone kernels (e.g. {qdq[0]})")
    reduced = any(n.op_type in ("QuantizeLinear", "DequantizeLinear") or (
        n.op_type == "Cast" and any(a.name == "to" and a.i in (10, 16) for a in n.attribute)) for n in model.graph.node)
    if reduced:
        floats = [layer.name for layer in report.layers
                  if layer.dtype == "Float" and layer.type != STANDALONE and layer.onnx_nodes]
        if floats:
            out.append(f"{len(floats)} layers run in Float in a reduced-precision model (e.g. {floats[0]})")
    adds = {n.name for n in model.graph.node if n.op_type == "Add"}
    fused_add = [i for i, layer in enumerate(report.layers) if adds & set(layer.onnx_nodes)]
    residual_reformats = sum(1 for i in fused_add if i > 0 and _is_reformat(report.layers[i - 1]))
    if residual_reformats:
        out.append(f"{residual_reformats} reformat layers feed residual Adds")
    streams = report.totals()["streams"]
    if streams > 1:
        out.append(f"{streams} streams: branches running in parallel cannot share activation memory "
                   "(--aux-streams 0 builds one stream)")
    return out


def compare(a: EngineReport, b: EngineReport) -> dict[str, Any]:
    """Two engines side by side, and the ONNX nodes whose fusion differs (by layer-mates)."""
    def groups(r: EngineReport) -> dict[str, frozenset[str]]:
        return {n: frozenset(layer.onnx_nodes) for layer in r.layers for n in layer.onnx_nodes}
    ga, gb = groups(a), groups(b)
    differ = sorted(n for n in ga.keys() & gb.keys() if ga[n] != gb[n])
    return {"a": {**a.totals(), "precision": a.precision()["layers"]},
            "b": {**b.totals(), "precision": b.precision()["layers"]},
            "fused_differently": differ, "only_in_a": sorted(ga.keys() - gb.keys()),
            "only_in_b": sorted(gb.keys() - ga.keys())}
