"""Pattern rewrites: declare what to match, when to refuse, and what to build instead.

A rule has three parts:

- a **pattern**, a tree of ``op.<OpType>(...)`` nodes over ``Var`` operands, with attribute
  constraints and capture names (matching only reads the graph);
- a **check** that may refuse a structural match with a reason (``MatchResult.fail("why")``);
- a **rewrite** that builds the replacement through a ``Rewriter`` and returns the values that
  replace the match's outputs.

::

    class FoldDoubleNeg(Rule):
        name = "double-neg"
        pattern = op.Neg(op.Neg(Var("x")))

        def rewrite(self, m: Match, rw: Rewriter) -> ir.Value:
            return m.value("x")

The driver (``apply_rules``; passes subclass ``RewritePass``) does what every rule would
otherwise get subtly wrong: it refuses a match when a value it would remove is a graph output or
is used outside the match, rewires uses with ``Graph.replace_value`` (graph outputs keep their
names), removes the matched nodes and the constants only they used, and re-examines just the
nodes around each rewrite (a worklist seeded by op type, never a rescan of the graph).
"""

from __future__ import annotations

import functools
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from optgraph import ir
from optgraph.ir.opset import COMMUTATIVE, ONNX_DOMAINS
from optgraph.passes.base import Pass, PassContext, PassResult



# ----------------------------------------------------------------------------------------------
# patterns


@dataclass(frozen=True)
class Var:
    """An operand that matches any value, captured as ``name``.

    A name used twice in one pattern must bind the same value (``x * Sigmoid(x)``).
    ``const``: the value must be a constant (an initializer or Constant node, also behind Identity
    nodes; see ``ir.constant_tensor``). ``optional``: an omitted input matches too (captured as
    None). ``where``: a predicate on the value, e.g. ``lambda v: v.shape is not None``.
    """

    name: str
    const: bool = False
    optional: bool = False
    where: Callable[[ir.Value], bool] | None = None


@dataclass(frozen=True)
class OpPattern:
    """A node: its op type (or a tuple of alternatives), operands and constraints.

    ``attrs`` maps attribute names to a value or a predicate. A value is compared with the
    attribute, an absent attribute counting as that value, so write the ONNX default as the
    constraint (``{"group": 1}``); a predicate gets the attribute's value, None when absent.
    The node must not have more inputs than the pattern has operands (trailing optional inputs
    are matched with ``Var(..., optional=True)``). ``keep`` marks a node the rewrite only reads:
    it is neither removed nor required to be used only inside the match. Inner nodes match
    through their first output.
    """

    op_type: str | tuple[str, ...]
    inputs: tuple[Var | OpPattern, ...] = ()
    name: str | None = None
    attrs: Mapping[str, Any] = field(default_factory=dict)
    domain: str = ""
    commutative: bool | None = None  # None: swap the operands of ops in COMMUTATIVE
    keep: bool = False
    where: Callable[[ir.Node], bool] | None = None

    @functools.cached_property  # asked at every node the pattern is tried on
    def op_types(self) -> tuple[str, ...]:
        return (self.op_type,) if isinstance(self.op_type, str) else self.op_type


class _OpFactory:
    """``op.Conv(x, w, name="conv")`` builds ``OpPattern("Conv", (x, w), name="conv")``."""

    def __getattr__(self, op_type: str) -> Callable[..., OpPattern]:
        if op_type.startswith("_"):
            raise AttributeError(op_type)
        return lambda *inputs, **kw: OpPattern(op_type, tuple(inputs), **kw)

    def __call__(self, op_types: str | tuple[str, ...], *inputs: Var | OpPattern, **kw: Any) -> OpPattern:
        """For alternatives: ``op(("Relu", "Sigmoid"), x, name="act")``."""
        return OpPattern(op_types, tuple(inputs), **kw)


op = _OpFactory()


@dataclass(frozen=True)
class MatchResult:
    """A verdict: truthy when the match may be rewritten, else ``reason`` says why not."""

    ok: bool
    reason: str = ""
    OK: ClassVar[MatchResult]

    def __bool__(self) -> bool:
        return self.ok

    @classmethod
    def fail(cls, reason: str) -> MatchResult:
        return cls(False, reason)


MatchResult.OK = MatchResult(True)


@dataclass
class Match:
    """A structural match: the nodes it covers and what the pattern captured.

    ``nodes`` lists producers before consumers. ``outputs`` are the values the rewrite's results
    replace (by default the root's first output); every other output of a non-kept node must be
    unused outside the match. New nodes go before ``anchor`` (by default the root, which comes
    after every value the match reads).
    """

    root: ir.Node
    nodes: list[ir.Node]
    captures: dict[str, ir.Value | ir.Node | None] = field(default_factory=dict)
    outputs: list[ir.Value] = field(default_factory=list)
    kept: list[ir.Node] = field(default_factory=list)
    anchor: ir.Node | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # what a custom ``match`` hands its rewrite
    _arrays: dict[str, np.ndarray] = field(default_factory=dict, repr=False)  # decoded constants

    def __post_init__(self) -> None:
        if not self.outputs:
            self.outputs = [self.root.output]
        if self.anchor is None:
            self.anchor = self.root

    def node(self, name: str) -> ir.Node:
        n = self.captures[name]
        assert isinstance(n, ir.Node), f"capture '{name}' is not a node"
        return n

    def value(self, name: str) -> ir.Value:
        v = self.captures[name]
        assert isinstance(v, ir.Value), f"capture '{name}' is not a value"
        return v

    def optional(self, name: str) -> ir.Value | None:
        v = self.captures.get(name)
        assert v is None or isinstance(v, ir.Value), f"capture '{name}' is not a value"
        return v

    def array(self, name: str) -> np.ndarray:
        """The constant data of a capture matched with ``Var(name, const=True)``."""
        a = self._arrays.get(name)
        if a is None:  # checks and rewrites ask for the same constants several times
            a = ir.constant_array(self.value(name))
            assert a is not None, f"capture '{name}' is not a constant"
            self._arrays[name] = a
        return a

    def array_or_none(self, name: str) -> np.ndarray | None:
        """Like ``array`` for an optional capture: None when the input is omitted."""
        return ir.constant_array(self.optional(name))


def single_consumer(v: ir.Value) -> ir.Node | None:
    """The one node that uses ``v`` (once), when ``v`` is not also a graph output."""
    return v.uses[0][0] if v.num_uses == 1 and not v.is_graph_output else None


def describe(node: ir.Node) -> str:
    return f"{node.op_type} '{node.name}'" if node.name else node.op_type


_At = tuple[ir.Node, int] | None  # where the matcher stands: (consumer, input index), None at the root


def _where(at: _At) -> str:
    """Failure messages are only formatted when a match fails (matching is the hot loop)."""
    return "root" if at is None else f"{describe(at[0])} input {at[1]}"


class _Matcher:
    """Matches one pattern tree at one root; the bindings are undone on backtracking."""

    def __init__(self, root: ir.Node) -> None:
        self.graph = root.graph
        self.captures: dict[str, ir.Value | ir.Node | None] = {}
        self.nodes: list[ir.Node] = []
        self.kept: list[ir.Node] = []

    def _bind(self, name: str, obj: ir.Value | ir.Node | None, at: _At) -> str | None:
        if name in self.captures and self.captures[name] is not obj:
            return f"{_where(at)}: '{name}' is bound to a different value"
        self.captures[name] = obj
        return None

    def node(self, p: OpPattern, node: ir.Node, at: _At) -> str | None:
        domains = (p.domain,) if p.domain else ONNX_DOMAINS
        if node.op_type not in p.op_types or node.domain not in domains:
            return f"{_where(at)}: {describe(node)} is not {'/'.join(p.op_types)}"
        for key, want in p.attrs.items():
            got = node.attr(key) if callable(want) else node.attr(key, want)
            if not (want(got) if callable(want) else _same_attr(got, want)):
                wanted = "" if callable(want) else f", not {want!r}"
                return f"{_where(at)}: {describe(node)} has {key}={got!r}{wanted}"
        if p.where is not None and not p.where(node):
            return f"{_where(at)}: {describe(node)} fails the pattern's condition"
        inputs = node.inputs
        if len(inputs) > len(p.inputs):
            return f"{_where(at)}: {describe(node)} has {len(inputs)} inputs, the pattern {len(p.inputs)}"
        if p.name and (err := self._bind(p.name, node, at)):
            return err
        swap = p.commutative if p.commutative is not None else node.op_type in COMMUTATIVE
        orders = (p.inputs, p.inputs[::-1]) if swap and len(p.inputs) == 2 else (p.inputs,)
        first_error = None
        for operands in orders:
            saved = (dict(self.captures), len(self.nodes), len(self.kept))
            error = None
            for i, operand in enumerate(operands):
                error = self.operand(operand, inputs[i] if i < len(inputs) else None, (node, i))
                if error:
                    break
            if error is None:
                if node not in self.nodes:  # nodes compare by identity
                    (self.kept if p.keep else self.nodes).append(node)
                return None
            self.captures = saved[0]
            del self.nodes[saved[1]:], self.kept[saved[2]:]
            first_error = first_error or error
        return first_error

    def operand(self, p: Var | OpPattern, value: ir.Value | None, at: _At) -> str | None:
        if isinstance(p, Var):
            if value is None:
                return self._bind(p.name, None, at) if p.optional else f"{_where(at)}: is omitted"
            if p.const and ir.constant_tensor(value) is None:
                return f"{_where(at)}: '{value.name}' is not a constant"
            if p.where is not None and not p.where(value):
                return f"{_where(at)}: '{value.name}' fails the condition on '{p.name}'"
            return self._bind(p.name, value, at)
        if value is None:
            return f"{_where(at)}: is omitted"
        producer = value.producer
        if producer is None or producer.graph is not self.graph:
            return f"{_where(at)}: '{value.name}' is not computed by a node of this graph"
        if value.index != 0:
            return f"{_where(at)}: '{value.name}' is output {value.index} of {describe(producer)}"
        return self.node(p, producer, at)


def _same_attr(got: Any, want: Any) -> bool:
    if isinstance(want, (list, tuple)):
        return isinstance(got, (list, tuple)) and list(got) == list(want)
    return bool(got == want)


def match_pattern(pattern: OpPattern, root: ir.Node) -> Match | MatchResult:
    """Match ``pattern`` with its root at ``root``; a failure says which constraint failed where."""
    m = _Matcher(root)
    error = m.node(pattern, root, None)
    if error:
        return MatchResult.fail(error)
    return Match(root, m.nodes, m.captures, kept=m.kept)


# ----------------------------------------------------------------------------------------------
# rules and the rewriter


class Rule:
    """One rewrite. Set ``name`` and ``pattern`` (or override ``match``), optionally ``check``.

    ``benefit``: at one node, rules with a higher benefit are tried first. ``labels`` let users
    select rules of a pass: ``fuse-conv-bn{disable=gemm}``.
    """

    name: ClassVar[str]
    pattern: ClassVar[OpPattern | None] = None
    labels: ClassVar[tuple[str, ...]] = ()
    benefit: ClassVar[int] = 1

    @property
    def root_ops(self) -> tuple[str, ...]:
        """The op types a match can be rooted at (the worklist is seeded with these nodes)."""
        assert self.pattern is not None, f"rule '{self.name}' needs a pattern or its own root_ops and match"
        return self.pattern.op_types

    @property
    def root_domain(self) -> str:
        """The domain of those op types ("" is the default ONNX domain)."""
        return self.pattern.domain if self.pattern is not None else ""

    def match(self, node: ir.Node, env: Env) -> Match | MatchResult:
        assert self.pattern is not None
        return match_pattern(self.pattern, node)

    def check(self, m: Match) -> MatchResult:
        return MatchResult.OK

    def rewrite(self, m: Match, rw: Rewriter) -> ir.Value | Sequence[ir.Value]:
        raise NotImplementedError


class RuleEditError(RuntimeError):
    """A rule's ``rewrite`` edited the graph instead of building its replacement."""


class Rewriter(ir.Rewriter):
    """What a rule's ``rewrite`` builds its replacement with: new nodes before the match's anchor,
    fresh constants, model-local functions. A rule only builds: the driver replaces the match's
    outputs and removes what died, through this same rewriter once the rule has returned; any
    other edit during ``rewrite`` raises RuleEditError."""

    def __init__(self, model: ir.Model, graph: ir.Graph, anchor: ir.Node, *, parent: ir.Rewriter | None = None,
                 rule: str = "") -> None:
        super().__init__(graph, _record=parent._record if parent is not None else None)
        self.model = model
        self.anchor = anchor
        self.created: list[ir.Node] = []
        self._building = rule

    @property
    def opset(self) -> int:
        """The model's default-domain opset: a rule builds the ops of that version."""
        return self.model.opset()

    def _did(self, kind: str, obj: Any) -> None:
        if self._building and kind not in ("create", "function"):
            raise RuleEditError(f"rule '{self._building}' made a '{kind}' edit in its rewrite: a rule builds "
                                "new nodes and returns the values that replace the match's outputs")
        if kind == "create" and isinstance(obj, ir.Node):
            self.created.append(obj)
        super()._did(kind, obj)

    def op(self, op_type: str, inputs: Sequence[ir.Value | None], attrs: Mapping[str, Any] | None = None, *,
           outputs: int = 1, domain: str = "", name: str | None = None,
           before: ir.Node | None = None) -> ir.Value | tuple[ir.Value, ...]:
        """A new node (output names fresh); returns its output, or outputs when ``outputs > 1``."""
        node = self.make_node(op_type, inputs, dict(attrs or {}), outputs=outputs, domain=domain, name=name,
                              before=before or self.anchor)
        outs = tuple(v for v in node.outputs if v is not None)
        return outs[0] if outputs == 1 else outs

    def like(self, node: ir.Node, inputs: Sequence[ir.Value | None], attrs: Mapping[str, Any] | None = None, *,
             before: ir.Node | None = None) -> ir.Value:
        """A copy of ``node`` (op, domain, attributes, name, doc) reading ``inputs``; ``attrs`` override."""
        if node.subgraphs():
            raise ValueError(f"cannot copy {describe(node)}: it holds subgraphs")
        new = self.make_node(node.op_type, inputs, outputs=len(node.outputs), domain=node.domain,
                             before=before or self.anchor)
        new.copy_attrs(node)  # filling in a node just made: construction, not an edit
        for key, value in (attrs or {}).items():
            new.set_attr(key, value)
        new.name, new.doc_string, new.metadata_props = node.name, node.doc_string, dict(node.metadata_props)
        return new.output

    def const(self, array: np.ndarray, name: str = "const") -> ir.Value:
        """A new initializer under a fresh name (never an edit of an existing tensor)."""
        return self.add_initializer(np.asarray(array), name)


# ----------------------------------------------------------------------------------------------
# the driver


@dataclass
class Env:
    """What a rule's ``match`` may consult besides the node: the model, node order, and a memo.

    ``memo`` is scratch space that lives for one run over one graph: custom matchers that look at
    a node's neighbours keep what they learned there, so a node with many siblings is not
    re-examined once per sibling (which would make the pass quadratic in the fan-out).
    """

    model: ir.Model
    graph: ir.Graph
    _position: dict[int, float] = field(default_factory=dict)
    memo: dict[Any, Any] = field(default_factory=dict)

    def position(self, node: ir.Node) -> float:
        """The node's place in the graph order when the driver started (new nodes: their anchor's)."""
        return self._position[id(node)]

    def once(self, fn: Callable[[Any], Any], obj: ir.Node | ir.Value) -> Any:
        """``fn(obj)``, computed once per object in this run (for facts rewrites do not change)."""
        key = (fn, id(obj))
        hit = self.memo.get(key)
        if hit is None or hit[0] is not obj:  # the stored object keeps its id from being reused
            hit = self.memo[key] = (obj, fn(obj))
        return hit[1]


def safety(m: Match) -> MatchResult:
    """Refuse when a value the rewrite would remove is a graph output or used outside the match."""
    removed = {id(n) for n in m.nodes}
    replaced = {id(v) for v in m.outputs}
    for node in m.nodes:
        for v in node.outputs:
            if v is None or id(v) in replaced:
                continue
            if v.is_graph_output:
                return MatchResult.fail(f"'{v.name}' would be removed but is a graph output")
            for user, _ in v.uses:
                if id(user) not in removed:
                    return MatchResult.fail(f"'{v.name}' would be removed but {describe(user)} also uses it")
    return MatchResult.OK


def apply_rules(model: ir.Model, rules: Sequence[Rule], *, max_rewrites: int = 0,
                trace: list[str] | None = None, rewriter: ir.Rewriter | None = None) -> Counter[str]:
    """Apply ``rules`` until none matches; returns rewrite counts per rule name.

    ``max_rewrites`` caps the rewrites per graph (0: four per node, plus 100); hitting it sets
    ``not_converged``. With a ``trace`` list, every refused candidate adds one line saying which
    rule, where, and which constraint failed. Edits are recorded in ``rewriter`` when given.
    """
    rewriter = rewriter or ir.Rewriter(model.graph)
    stats: Counter[str] = Counter()
    by_op: dict[tuple[str, str], list[Rule]] = {}
    for rule in sorted(rules, key=lambda r: -r.benefit):
        domains = ONNX_DOMAINS if rule.root_domain in ONNX_DOMAINS else (rule.root_domain,)
        for op_type in rule.root_ops:
            for domain in domains:  # both spellings of the default domain: lookups need no normalizing
                by_op.setdefault((domain, op_type), []).append(rule)
    if by_op:
        for graph in list(model.all_graphs(functions=False)):  # function bodies are left as they are
            _run_worklist(model, rewriter.on(graph), by_op, max_rewrites or 4 * len(graph) + 100, stats, trace)
    return stats


def _run_worklist(model: ir.Model, root: ir.Rewriter, by_op: dict[tuple[str, str], list[Rule]], cap: int,
                  stats: Counter[str], trace: list[str] | None) -> None:
    graph = root.graph
    env = Env(model, graph)
    queue: deque[ir.Node] = deque()
    queued: set[int] = set()
    for i, node in enumerate(graph):
        env._position[id(node)] = float(i)
        if (node.domain, node.op_type) in by_op:
            queue.append(node)
            queued.add(id(node))
    rewrites = 0

    def push(node: ir.Node | None) -> None:
        if node is not None and node.graph is graph and id(node) not in queued and (node.domain, node.op_type) in by_op:
            queue.append(node)
            queued.add(id(node))

    while queue:
        node = queue.popleft()
        queued.discard(id(node))
        if node.graph is not graph:
            continue  # removed by an earlier rewrite
        for rule in by_op[node.domain, node.op_type]:
            m = rule.match(node, env)
            verdict = m if isinstance(m, MatchResult) else (safety(m) and rule.check(m))
            if not verdict:
                if trace is not None:
                    trace.append(f"{rule.name} at {describe(node)}: {verdict.reason}")
                continue
            assert isinstance(m, Match)
            if rewrites >= cap:
                stats["not_converged"] = 1
                return
            rewrites += 1
            stats[rule.name] += 1
            for touched in _apply(model, root, rule, m, env):
                push(touched)
            break


def _apply(model: ir.Model, root: ir.Rewriter, rule: Rule, m: Match, env: Env) -> list[ir.Node | None]:
    """Run the rewrite, rewire, remove what died; return the nodes worth looking at again."""
    assert m.anchor is not None
    graph = root.graph
    rw = Rewriter(model, graph, m.anchor, parent=root, rule=rule.name)
    before = [(n.inputs, tuple(n.attrs.values())) for n in m.nodes]
    result = rule.rewrite(m, rw)
    for node, (inputs, attrs) in zip(m.nodes, before):  # edits that went around the rewriter
        if node.graph is not graph or node.inputs != inputs or tuple(node.attrs.values()) != attrs:
            raise RuleEditError(f"rule '{rule.name}' changed the matched {describe(node)} in its rewrite: a rule "
                                "builds new nodes and returns the values that replace the match's outputs")
    rw._building = ""  # the rule has built; the driver edits from here
    new_values = [result] if isinstance(result, ir.Value) else list(result)
    if len(new_values) != len(m.outputs):
        raise ValueError(f"rule '{rule.name}' returned {len(new_values)} values for {len(m.outputs)} outputs")
    anchor_pos = env._position.get(id(m.anchor), 0.0) - 0.5
    for node in rw.created:
        env._position[id(node)] = anchor_pos
    for old, new in zip(m.outputs, new_values):
        if new is not old:
            rw.replace(old, new)  # which also passes on what was known of old's type
    touched: list[ir.Node | None] = list(rw.created)
    for v in new_values:
        touched.extend(v.consumers)
        touched.append(v.producer)
    inputs: list[ir.Value | None] = []
    for node in reversed(m.nodes):
        if node.graph is graph and not any(v is not None and v.is_used for v in node.outputs):
            inputs.extend(node.inputs)
            rw.remove(node)
    rw.drop_dead(model, inputs)
    for v in inputs:  # a value that lost uses: its producer, and a reader it now has to itself
        if v is not None:
            touched.append(v.producer)
            if v.num_uses == 1:
                touched.extend(v.consumers)
    return touched


# ----------------------------------------------------------------------------------------------
# the pass adapter


class RewritePass(Pass):
    """A pass made of rules: set ``rules`` (or override ``make_rules`` when rules take options).

    Options every rewrite pass has: ``enable``/``disable`` (rule names or labels, separated by
    ``;`` in a pipeline spec), ``trace`` (near-misses go to the report under
    ``results["trace"][pass name]``) and ``max_rewrites``.
    """

    rules: ClassVar[tuple[Rule, ...]] = ()

    @dataclass
    class Options:
        enable: tuple[str, ...] = ()
        disable: tuple[str, ...] = ()
        trace: bool = False
        max_rewrites: int = 0

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        known = {key for r in self.make_rules() for key in (r.name, *r.labels)}
        unknown = sorted((set(self.options.enable) | set(self.options.disable)) - known)
        if unknown:
            raise ValueError(f"pass '{self.name}' has no rule or label {', '.join(map(repr, unknown))} "
                             f"(known: {', '.join(sorted(known))})")

    def make_rules(self) -> Sequence[Rule]:
        return self.rules

    def selected_rules(self) -> list[Rule]:
        enable, disable = set(self.options.enable), set(self.options.disable)
        return [r for r in self.make_rules()
                if (not enable or enable & {r.name, *r.labels}) and not disable & {r.name, *r.labels}]

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        trace: list[str] | None = [] if self.options.trace else None
        rw = ir.Rewriter(model.graph)
        stats = apply_rules(model, self.selected_rules(), max_rewrites=self.options.max_rewrites, trace=trace,
                            rewriter=rw)
        return PassResult(rw.changed, dict(sorted(stats.items())), {"trace": trace} if trace is not None else {})


__all__ = [
    "COMMUTATIVE", "Env", "Match", "MatchResult", "OpPattern", "RewritePass", "Rewriter", "Rule", "Var",
    "RuleEditError", "apply_rules", "describe", "match_pattern", "op", "safety",
]
