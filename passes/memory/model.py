"""The memory plan's data model (placements, alias records) and its JSON form (schema:
docs/memory-planning.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import onnx

from optgraph import ir
from optgraph.passes.memory.liveness import TensorInfo, tensor_infos


STRATEGIES = ("greedy-size", "greedy-breadth")
ORDERS = ("file", "memory")
METADATA_KEY = "optgraph.memory_plan"



class PlanError(ir.OptGraphError, ValueError):
    """A memory plan that does not fit the model (bad JSON, unknown tensors), or bad options (a
    ValueError too, so a pipeline spec reports it when it is parsed)."""


@dataclass(frozen=True)
class Alias:
    """``value`` lives at byte ``offset`` inside ``into``'s storage (kind "concat" or "inplace")."""

    value: ir.Value
    into: ir.Value
    offset: int
    kind: str


@dataclass(frozen=True)
class Placement:
    """Where an activation lives: arena bytes ``offset``..``offset+nbytes``, steps ``start``..``end``."""

    value: ir.Value
    offset: int
    nbytes: int
    start: int
    end: int


@dataclass
class MemoryPlan:
    """A schedule, an arena offset for every activation, and the aliases that let them share."""

    schedule: list[ir.Node]
    placements: dict[ir.Value, Placement]
    aliases: list[Alias]
    infos: Mapping[ir.Value, TensorInfo]
    arena_size: int
    naive_size: int
    lower_bound: int
    file_order_lower_bound: int
    strategy: str
    order: str  # where the schedule comes from: "file", or "memory" when that order has a lower peak
    alignment: int
    strategies: dict[str, int] = field(default_factory=dict)  # arena size each strategy reaches
    dims: dict[str, int] = field(default_factory=dict)
    input_bytes: int = 0
    output_bytes: int = 0
    constant_bytes: int = 0

    def summary(self) -> dict[str, Any]:
        """The figures without the per-tensor detail (what pipeline reports carry)."""
        return {
            "strategy": self.strategy, "order": self.order, "alignment": self.alignment,
            "arena_bytes": self.arena_size, "naive_bytes": self.naive_size, "lower_bound_bytes": self.lower_bound,
            "file_order_lower_bound_bytes": self.file_order_lower_bound, "strategies": dict(self.strategies),
            "tensors": len(self.placements), "aliases": len(self.aliases),
            "inplace_aliases": sum(a.kind == "inplace" for a in self.aliases),
            "concat_aliases": sum(a.kind == "concat" for a in self.aliases),
            "split_aliases": sum(a.kind == "split" for a in self.aliases),
            "input_bytes": self.input_bytes, "output_bytes": self.output_bytes,
            "constant_bytes": self.constant_bytes,
        }

    def to_json(self) -> dict[str, Any]:
        """The plan as JSON data (schema: docs/memory-planning.md)."""
        file_index = {id(n): i for i, n in enumerate(self.schedule[0].graph)} if self.schedule else {}
        data: dict[str, Any] = {"format": "optgraph-memory-plan", "version": 1, "dims": dict(self.dims)}
        data.update(self.summary())
        data["schedule"] = [{"node": n.name, "op": n.op_type, "index": file_index[id(n)]} for n in self.schedule]
        data["tensors"] = [
            {"name": p.value.name, "dtype": onnx.TensorProto.DataType.Name(self.infos[p.value].dtype),
             "shape": list(self.infos[p.value].shape), "bytes": p.nbytes, "offset": p.offset,
             "start": p.start, "end": p.end}
            for p in self.placements.values()]
        data["aliases"] = [{"tensor": a.value.name, "into": a.into.name, "offset": a.offset, "kind": a.kind}
                           for a in self.aliases]
        return data

    @classmethod
    def from_json(cls, model: ir.Model, data: Mapping[str, Any],
                  infos: Mapping[ir.Value, TensorInfo] | None = None) -> MemoryPlan:
        """Read a plan written by ``to_json`` back onto ``model`` (the same graph it was made for);
        sizes are worked out again with the plan's dims unless ``infos`` gives them."""
        if data.get("format") != "optgraph-memory-plan" or data.get("version") != 1:
            raise PlanError("not an optgraph memory plan (version 1)")
        if infos is None:
            infos = tensor_infos(model, data.get("dims"))
        nodes = list(model.graph)
        values = {v.name: v for n in nodes for v in n.outputs if v is not None}
        try:
            schedule = [nodes[s["index"]] for s in data["schedule"]]
            placements = {}
            for t in data["tensors"]:
                v = values[t["name"]]
                placements[v] = Placement(v, int(t["offset"]), int(t["bytes"]), int(t["start"]), int(t["end"]))
            aliases = [Alias(values[a["tensor"]], values[a["into"]], int(a["offset"]), a["kind"])
                       for a in data["aliases"]]
        except (KeyError, IndexError, TypeError) as e:
            raise PlanError(f"the plan does not match the model: missing or unknown {e}") from None
        return cls(schedule, placements, aliases, infos, int(data["arena_bytes"]), int(data["naive_bytes"]),
                   int(data["lower_bound_bytes"]), int(data["file_order_lower_bound_bytes"]), data["strategy"],
                   data["order"], int(data["alignment"]), dict(data.get("strategies", {})),
                   dict(data.get("dims", {})))
