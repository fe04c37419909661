"""Memory planning: tensor sizes and lifetimes, aliases, arena placement, the plan's checks and
output, and the plan-memory pass."""
