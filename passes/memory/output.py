"""A plan for people: a text table and a memory timeline plot.
"""

from __future__ import annotations

from optgraph.passes.memory.model import MemoryPlan


def format_plan(plan: MemoryPlan) -> str:
    """A short table: arena per strategy against the naive size and the lower bounds."""
    mib = 1 << 20
    kinds = [a.kind for a in plan.aliases]
    lines = [f"schedule: {plan.order} order, {len(plan.schedule)} steps; {len(plan.placements)} activations; "
             f"aliases: {kinds.count('inplace')} in-place, {kinds.count('concat')} concat, {kinds.count('split')} split",
             f"naive (one buffer each): {plan.naive_size / mib:10.3f} MiB",
             f"lower bound, file order: {plan.file_order_lower_bound / mib:10.3f} MiB  (no aliasing)",
             f"lower bound, this plan:  {plan.lower_bound / mib:10.3f} MiB"]
    for name, size in plan.strategies.items():
        mark = "*" if name == plan.strategy else " "
        ratio = size / plan.lower_bound if plan.lower_bound else 1.0
        lines.append(f"{mark} {name:21} {size / mib:10.3f} MiB  ({ratio:.3f} x lower bound)")
    lines.append(f"outside the arena: inputs {plan.input_bytes / mib:.3f} MiB, outputs {plan.output_bytes / mib:.3f} "
                 f"MiB, weights and constants {plan.constant_bytes / mib:.3f} MiB")
    return "\n".join(lines)


def plot_plan(plan: MemoryPlan, path: str) -> None:
    """A memory timeline: one rectangle per activation (steps across, arena offset up)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import PolyCollection

    aliased = {a.value: a.kind for a in plan.aliases}
    colors = {"concat": "tab:orange", "inplace": "tab:green", "split": "tab:purple", None: "tab:blue"}
    mib = 1 << 20
    polys, fills = [], []
    for p in plan.placements.values():
        x0, x1, y0, y1 = p.start, p.end + 1, p.offset / mib, (p.offset + p.nbytes) / mib
        polys.append([(x0, y0), (x1, y0), (x1, y1), (x0, y1)])
        fills.append(colors[aliased.get(p.value)])
    fig, ax = plt.subplots(figsize=(12, 5))
    ax.add_collection(PolyCollection(polys, facecolors=fills, edgecolors="black", linewidths=0.2, alpha=0.8))
    ax.axhline(plan.arena_size / mib, color="black", linewidth=1, label=f"arena {plan.arena_size / mib:.2f} MiB")
    ax.axhline(plan.lower_bound / mib, color="red", linestyle="--", linewidth=1,
               label=f"lower bound {plan.lower_bound / mib:.2f} MiB")
    ax.set_xlim(0, max(len(plan.schedule), 1))
    ax.set_ylim(0, max(plan.arena_size / mib, 1e-6) * 1.05)
    ax.set_xlabel(f"step ({plan.order} order)")
    ax.set_ylabel("arena offset (MiB)")
    ax.set_title(f"{plan.strategy}: blue own buffer, green in-place, orange inside a concat, purple a split view")
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
