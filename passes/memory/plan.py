"""The plan-memory pass: plans the model's activation memory, reports its figures, optionally attaches
the plan's JSON to the model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from optgraph import ir
from optgraph.passes.base import Pass, PassContext, PassResult
from optgraph.passes.memory.liveness import TensorInfos
from optgraph.passes.memory.model import METADATA_KEY
from optgraph.passes.memory.options import PlanOptions
from optgraph.passes.memory.planner import plan_memory
from optgraph.passes.registry import register


@register
class PlanMemory(Pass):
    name = "plan-memory"
    description = "Plan activation memory: arena offsets by lifetime, in-place and concat aliases"
    kind = "annotation"  # with attach, the plan is written into the model's metadata

    @dataclass
    class Options(PlanOptions):
        attach: bool = False  # store the plan's JSON in the model's metadata (optgraph.memory_plan)

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        o = self.options
        plan = plan_memory(model, ctx.get(TensorInfos), o, dims=ctx.dims)
        rw = ir.Rewriter(model.graph)
        if o.attach:
            rw.set_model_metadata(model, METADATA_KEY, json.dumps(plan.to_json(), separators=(",", ":")))
        stats = {"arena_bytes": plan.arena_size, "lower_bound_bytes": plan.lower_bound,
                 "aliases": len(plan.aliases)}
        return PassResult(rw.changed, stats, plan.summary())
