"""Pipelines: parsing ``--passes`` specs and running passes with timing, stats and checks.

Spec grammar: a comma list of items; an item is a pass or group name, optionally with options in
braces: ``fold-constants{size_limit=1000000},dce``. ``none`` is the empty pipeline. A group marked
fixed-point becomes a loop that repeats its members until none changes anything (or its cap is
hit, which the report records as non-convergence).

Prerequisites: a pass may name, in ``requires``, passes that must have run before it (shape
inference, folding of constant weights); the manager runs each once per pipeline run, just before
the first pass that needs it, and not at all when an earlier step already covered it. Their
records carry ``required_by``, so the report shows what ran and why.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from optgraph import ir
from optgraph.ir.opset import is_onnx
from optgraph.ir.serde import gc_paused
from optgraph.ir.verify import verify
from optgraph.passes import registry
from optgraph.passes.base import Pass, PassContext


class PipelineError(ir.OptGraphError):
    """A --passes spec that names unknown passes or bad options."""


class PassFailure(Exception):
    """A pass crashed (a bug, not bad input): the message names the pass; the original
    exception is the ``__cause__``."""

    def __init__(self, pass_name: str, error: BaseException) -> None:
        super().__init__(f"pass '{pass_name}' failed: {type(error).__name__}: {error}")
        self.pass_name = pass_name


@dataclass
class FixedPoint:
    """Repeat ``steps`` until an iteration changes nothing, at most ``max_iterations`` times."""

    name: str
    steps: list[Pass | FixedPoint]
    max_iterations: int


Step = Pass | FixedPoint


def parse_pipeline(spec: str) -> list[Step]:
    """Turn a spec like ``fuse,dce`` into pass instances; errors list the valid names."""
    spec = spec.strip()
    if spec in ("", "none"):
        return []
    steps: list[Step] = []
    for item in _split(spec):
        name, options = _parse_item(item)
        steps.extend(_expand(name, options, ()))
    return steps


def _split(spec: str) -> list[str]:
    items, depth, cur = [], 0, ""
    for ch in spec:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth < 0:
                raise PipelineError(f"unbalanced '}}' in pass spec '{spec}'")
        if ch == "," and depth == 0:
            items.append(cur.strip())
            cur = ""
        else:
            cur += ch
    if depth:
        raise PipelineError(f"unbalanced '{{' in pass spec '{spec}'")
    items.append(cur.strip())
    if any(not i for i in items):
        raise PipelineError(f"empty item in pass spec '{spec}'")
    return items


def _parse_item(item: str) -> tuple[str, dict[str, str]]:
    if "{" not in item:
        return item, {}
    if not item.endswith("}"):
        raise PipelineError(f"options must close the item: '{item}'")
    name, body = item[:-1].split("{", 1)
    options = {}
    for kv in filter(None, (x.strip() for x in body.split(","))):
        if "=" not in kv:
            raise PipelineError(f"option '{kv}' of '{name}' must be key=value")
        k, v = kv.split("=", 1)
        options[k.strip()] = v.strip()
    return name.strip(), options


def _expand(name: str, options: dict[str, str], seen: tuple[str, ...]) -> list[Step]:
    groups = registry.groups()
    if name in groups:
        if options:
            raise PipelineError(f"'{name}' is a group; options go on its passes")
        if name in seen:
            raise PipelineError(f"group '{name}' includes itself")
        group = groups[name]
        inner = [s for m in group.members for s in _expand(*_parse_item(m), (*seen, name))]
        return [FixedPoint(name, inner, group.max_iterations)] if group.fixed_point else inner
    try:
        cls = registry.get(name)
    except KeyError as e:
        raise PipelineError(e.args[0]) from None
    try:
        step = cls(**options)
    except (TypeError, ValueError) as e:
        raise PipelineError(str(e)) from None
    prerequisites(cls)  # a bad ``requires`` fails here, before anything runs
    return [step]


@dataclass
class PassRecord:
    name: str
    seconds: float
    changed: bool
    stats: dict[str, int]
    nodes_before: int
    nodes_after: int
    group: str | None = None
    iteration: int | None = None
    required_by: str | None = None  # set when the manager ran this pass as a prerequisite


@dataclass
class Report:
    """What a pipeline run did; ``to_dict`` is the JSON written by ``--report``."""

    passes: list[PassRecord] = field(default_factory=list)
    converged: dict[str, bool] = field(default_factory=dict)
    iterations: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    nodes_before: int = 0
    nodes_after: int = 0
    ops_before: dict[str, int] = field(default_factory=dict)
    ops_after: dict[str, int] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)

    def totals(self) -> dict[str, int]:
        """Stats summed over all passes, e.g. {"bn_folded": 12}."""
        total: Counter[str] = Counter()
        for r in self.passes:
            total.update(r.stats)
        return dict(sorted(total.items()))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["totals"] = self.totals()
        return d


def op_histogram(model: ir.Model) -> dict[str, int]:
    """Node counts per op type over every graph (domain-qualified for non-ONNX domains)."""
    counts: Counter[str] = Counter()
    for g in model.all_graphs():
        for n in g:
            counts[f"{n.domain}:{n.op_type}" if not is_onnx(n) else n.op_type] += 1
    return dict(sorted(counts.items()))


def node_count(model: ir.Model) -> int:
    """Nodes over every graph (subgraphs and functions too), as the report counts them."""
    return sum(len(g) for g in model.all_graphs())


class PassManager:
    """Runs a pipeline over a model.

    ``verify_each`` runs the IR verifier after every pass that changed something (the error names
    the pass). ``after_each(model, record)`` is called after every pass, e.g. to run the oracle
    and find the first pass that changed results. When a pass raises, ``failed`` is that pass
    (a crash comes out as a PassFailure naming it; an OptGraphError, a clean refusal, unchanged).
    """

    def __init__(self, steps: list[Step], *, verify_each: bool = False,
                 after_each: Callable[[ir.Model, PassRecord], None] | None = None,
                 ctx: PassContext | None = None) -> None:
        self.steps = steps
        self.verify_each = verify_each
        self.after_each = after_each
        self.ctx = ctx or PassContext()
        self.failed: Pass | None = None

    def run(self, model: ir.Model) -> Report:
        self._ran: list[Pass] = []  # every pass run so far, prerequisites included
        report = Report(ops_before=op_histogram(model))
        report.nodes_before = sum(report.ops_before.values())
        self.ctx.bind(model)
        start = time.perf_counter()
        with gc_paused():  # passes allocate a lot; collections would rescan the whole model each time
            self._run_steps(self.steps, model, report, None, None)
        report.seconds = time.perf_counter() - start
        report.ops_after = op_histogram(model)
        report.nodes_after = sum(report.ops_after.values())
        return report

    def _run_steps(self, steps: list[Step], model: ir.Model, report: Report, group: str | None,
                   iteration: int | None) -> bool:
        changed = False
        for step in steps:
            if isinstance(step, FixedPoint):
                changed |= self._fixed_point(step, model, report)
            else:
                changed |= self._run_pass(step, model, report, group, iteration)
        return changed

    def _fixed_point(self, fp: FixedPoint, model: ir.Model, report: Report) -> bool:
        """Repeat the members until each has run once more, on the model as it now is, without
        changing it: the members after the last change in an iteration are not run again in the
        next (they already saw this very model), so the quiet iteration is usually a partial one."""
        changed = False
        quiet = 0  # members run in a row, across iterations, that changed nothing
        for i in range(1, fp.max_iterations + 1):
            report.iterations[fp.name] = i
            for step in fp.steps:
                if quiet >= len(fp.steps):
                    break
                if self._run_steps([step], model, report, fp.name, i):
                    changed, quiet = True, 0
                else:
                    quiet += 1
            if quiet >= len(fp.steps):
                report.converged[fp.name] = True
                return changed
        report.converged[fp.name] = False
        return changed

    def _run_pass(self, p: Pass, model: ir.Model, report: Report, group: str | None,
                  iteration: int | None, required_by: str | None = None) -> bool:
        changed = False
        for req in prerequisites(type(p)):
            if not any(done.covers(req) for done in self._ran):
                changed |= self._run_pass(req, model, report, group, iteration, type(p).name)
        self._ran.append(p)
        before = node_count(model)
        t0 = time.perf_counter()
        try:
            result = p.run(model, self.ctx)
        except Exception as e:
            self.failed = p
            if isinstance(e, ir.OptGraphError):
                raise
            raise PassFailure(type(p).name, e) from e
        seconds = time.perf_counter() - t0
        record = PassRecord(type(p).name, seconds, result.changed, dict(sorted(result.stats.items())),
                            before, node_count(model), group, iteration, required_by)
        report.passes.append(record)
        if result.data:
            report.results[record.name] = dict(result.data)
        if result.changed:
            self.ctx.invalidate(type(p).preserves)
            if self.verify_each:
                try:
                    verify(model)
                except ir.VerificationError as e:
                    raise ir.VerificationError(f"after pass '{record.name}': {e}") from None
        if self.after_each is not None:
            self.after_each(model, record)
        return changed or (result.changed and type(p).kind != "annotation")


_PREREQUISITES: dict[type[Pass], list[Pass]] = {}
_RESOLVING: list[str] = []  # the chain of ``requires`` being parsed (finds cycles)


def prerequisites(cls: type[Pass]) -> list[Pass]:
    """The passes ``cls.requires`` names, in order (parsed and checked once per class)."""
    if cls.name in _RESOLVING:
        raise PipelineError(f"passes require each other: {' -> '.join((*_RESOLVING, cls.name))}")
    if cls not in _PREREQUISITES:
        _RESOLVING.append(cls.name)
        try:
            steps = [s for spec in cls.requires for s in parse_pipeline(spec)]
        finally:
            _RESOLVING.pop()
        if any(isinstance(s, FixedPoint) for s in steps):
            raise PipelineError(f"pass '{cls.name}' requires a fixed-point group")
        _PREREQUISITES[cls] = steps  # type: ignore[assignment]
    return _PREREQUISITES[cls]


def run_passes(model: ir.Model, spec: str, **kwargs: Any) -> Report:
    """Parse ``spec`` and run it on ``model`` (in place): the one-call API."""
    return PassManager(parse_pipeline(spec), **kwargs).run(model)
