"""Memory planning: every activation gets an offset in one arena (docs/memory-planning.md).

Modules by concern: liveness (sizes and lifetimes), model (the plan and its JSON), aliases (which
tensors may share storage), grouping, placement, order (a low-memory schedule), planner
(``plan_memory``), options (``PlanOptions``), check (``check_plan``), output (text and plot), plan (the plan-memory pass).
"""

from optgraph.passes.memory.aliases import contiguous_concat
from optgraph.passes.memory.check import check_plan
from optgraph.passes.memory.model import METADATA_KEY, ORDERS, STRATEGIES, Alias, MemoryPlan, Placement, PlanError
from optgraph.passes.memory.options import PlanOptions
from optgraph.passes.memory.order import memory_order
from optgraph.passes.memory.output import format_plan, plot_plan
from optgraph.passes.memory.plan import PlanMemory
from optgraph.passes.memory.planner import plan_memory

__all__ = [
    "METADATA_KEY", "ORDERS", "STRATEGIES", "Alias", "MemoryPlan", "PlanError", "PlanMemory", "PlanOptions", "Placement",
    "check_plan", "contiguous_concat", "format_plan", "memory_order", "plan_memory", "plot_plan",
]
