"""How to plan: one options dataclass for the plan-memory pass, ``plan_memory`` and the
``optgraph plan`` command (whose arguments are generated from these fields)."""

from __future__ import annotations

from dataclasses import dataclass, field

from optgraph.passes.memory.model import ORDERS, STRATEGIES, PlanError


@dataclass
class PlanOptions:
    """Checked when made, so a bad value fails before any planning (a pipeline spec at parse time)."""

    strategy: str = field(default="best", metadata={
        "choices": ("best", *STRATEGIES), "help": "best (default): the smallest arena of the strategies"})
    order: str = field(default="file", metadata={
        "choices": ORDERS, "help": "memory: a schedule with a lower peak when there is one"})
    alignment: int = field(default=256, metadata={"help": "byte alignment of each buffer (default 256)"})
    inplace: bool = field(default=True, metadata={"help": "in-place aliases"})
    concat: bool = field(default=True, metadata={"help": "concat aliases"})
    split: bool = field(default=True, metadata={"help": "split aliases"})

    def __post_init__(self) -> None:
        if self.strategy != "best" and self.strategy not in STRATEGIES:
            raise PlanError(f"unknown strategy '{self.strategy}' (strategies: best, {', '.join(STRATEGIES)})")
        if self.order not in ORDERS:
            raise PlanError(f"unknown order '{self.order}' (orders: {', '.join(ORDERS)})")
        if self.alignment < 1:
            raise PlanError(f"alignment must be at least 1, got {self.alignment}")
