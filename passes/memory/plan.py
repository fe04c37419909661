"""The plan-memory pass: plans the model's activation memory, reports its figures, optionally attaches
the plan's JSON to the model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from optgraph import ir
from optgraph.passes.base import Pass, PassContext, PassResult
from optgraph.passes.memory.liveness import TensorInfos
from optgraph.passes.memory.model import METADATA_KEY, ORDERS, STRATEGIES
from optgraph.passes.memory.planner import plan_memory
from optgraph.passes.registry import register


@register
class PlanMemory(Pass):
    name = "plan-memory"
    description = "Plan activation memory: arena offsets by lifetime, in-place and concat aliases"
    kind = "annotation"  # with attach, the plan is written into the model's metadata

    @dataclass
    class Options:
        strategy: str = "greedy-breadth"
        order: str = "file"
        alignment: int = 256
        inplace: bool = True
        concat: bool = True
        split: bool = True
        attach: bool = False  # store the plan's JSON in the model's metadata (optgraph.memory_plan)

        def __post_init__(self) -> None:  # bad values fail when the pipeline is parsed
            if self.strategy not in STRATEGIES:
                raise ValueError(f"plan-memory: unknown strategy '{self.strategy}' ({', '.join(STRATEGIES)})")
            if self.order not in ORDERS:
                raise ValueError(f"plan-memory: unknown order '{self.order}' ({', '.join(ORDERS)})")
            if self.alignment < 1:
                raise ValueError(f"plan-memory: alignment must be at least 1, got {self.alignment}")

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        o = self.options
        plan = plan_memory(model, ctx.get(TensorInfos), strategy=o.strategy, order=o.order, alignment=o.alignment,
                           inplace=o.inplace, concat=o.concat, split=o.split, dims=ctx.dims)
        if o.attach:
            model.metadata_props[METADATA_KEY] = json.dumps(plan.to_json(), separators=(",", ":"))
        stats = {"arena_bytes": plan.arena_size, "lower_bound_bytes": plan.lower_bound,
                 "aliases": len(plan.aliases)}
        return PassResult(o.attach, stats, plan.summary())
