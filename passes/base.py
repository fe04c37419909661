"""The pass contract.

A pass is a class with a name, a one-line description, a kind and typed options; ``run`` edits
the model in place and returns a PassResult saying whether anything changed and what it did::

    @register
    class RemoveIdentity(Pass):
        name = "remove-identity"
        description = "Drop Identity nodes whose output is not a graph output"

        def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
            stats = Counter()
            ...
            return PassResult(bool(stats), stats)

Analyses (shape inference, liveness, ...) are computed on demand through ``ctx.get`` and cached
until a pass that changed the model says it did not preserve them. They are keyed by class: a
pass lists the analysis classes it keeps valid in ``preserves``, an analysis the ones it reads in
``requires`` (dropping one drops everything that requires it).
"""

from __future__ import annotations

import dataclasses
import typing
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

from optgraph import ir

T = TypeVar("T")


@dataclass
class PassResult:
    """What a pass did: ``changed`` (the model is different) drives fixed points and cache
    invalidation; ``stats`` is reported per pass (e.g. {"bn_folded": 3}); ``data`` is what an
    analysis or a traced pass reports (JSON-able), found in the pipeline report under the pass's
    name."""

    changed: bool
    stats: Mapping[str, int] = field(default_factory=dict)
    data: Mapping[str, Any] = field(default_factory=dict)


class Analysis(Generic[T]):
    """A cached computation over the model. ``requires``: the analyses ``compute`` reads (they
    are computed first, and dropping one of them from the cache drops this one too)."""

    name: ClassVar[str]
    requires: ClassVar[frozenset[type[Analysis[Any]]]] = frozenset()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        check_analyses(cls.requires, f"{cls.__qualname__}.requires")

    def compute(self, model: ir.Model, ctx: PassContext) -> T:
        raise NotImplementedError


def check_analyses(analyses: Any, where: str) -> None:
    """Raise TypeError unless ``analyses`` is a frozenset of Analysis classes (a string such as
    "shapes" would silently match nothing)."""
    if not isinstance(analyses, frozenset) or not all(isinstance(a, type) and issubclass(a, Analysis)
                                                      for a in analyses):
        raise TypeError(f"{where} must be a frozenset of Analysis classes, got {analyses!r}")


def with_requirements(analyses: frozenset[type[Analysis[Any]]]) -> frozenset[type[Analysis[Any]]]:
    """``analyses`` and everything they require, transitively."""
    out: set[type[Analysis[Any]]] = set()
    todo = list(analyses)
    while todo:
        a = todo.pop()
        if a not in out:
            out.add(a)
            todo.extend(a.requires)
    return frozenset(out)


class PassContext:
    """What passes share during one pipeline run: the analysis cache and user settings.

    ``dims`` maps symbolic dimension names to sizes for analyses that need concrete shapes.
    """

    def __init__(self, *, dims: Mapping[str, int] | None = None) -> None:
        self.dims: dict[str, int] = dict(dims or {})
        self.ranges: dict[str, float] = {}  # max |value| per tensor name, from calibration data
        self._cache: dict[type[Analysis[Any]], Any] = {}

    def get(self, analysis: type[Analysis[T]]) -> T:
        """The analysis result for the current model, computed once (after what it requires) and cached."""
        if analysis not in self._cache:
            for required in sorted(analysis.requires, key=lambda a: a.__qualname__):
                self.get(required)
            self._cache[analysis] = analysis().compute(self._model, self)
        return self._cache[analysis]

    def bind(self, model: ir.Model) -> None:
        """Point the context at ``model`` (drops every cached analysis)."""
        self._model = model
        self._cache.clear()

    def invalidate(self, preserved: frozenset[type[Analysis[Any]]] = frozenset()) -> None:
        """Forget cached analyses except ``preserved`` (after a pass changed the model); one whose
        requirements are not all preserved goes too."""
        for key in [k for k in self._cache if not with_requirements(frozenset({k})) <= preserved]:
            del self._cache[key]


# What a layer fusion needs to see its weights (the ``requires`` of the fusion passes): constant
# subexpressions (Constant nodes, Transpose/Cast/Reshape of initializers) folded into
# initializers. Only constant inputs are folded: shape computations are not the fusions' business.
WEIGHTS_VISIBLE = ("fold-constants{shapes=false}",)


class Pass:
    """Base class for rewrite and analysis passes.

    Class attributes:
      name, description: how users refer to it and what ``optgraph list`` shows.
      kind: "rewrite" edits the model's structure; "annotation" only writes facts into it (types,
        metadata) that change no result, so its changes never keep a fixed point going;
        "analysis" only computes, and reports through ``PassResult.data``.
      preserves: the Analysis classes a change by this pass leaves valid (with what they require).
      requires: pipeline items (``name`` or ``name{key=value}``) that must have run before this
        pass: the manager runs each one once per pipeline run, before the first pass that needs
        it, unless an earlier step already covered it (see ``covers``); the report marks them.
        Analyses need no entry: they are computed on first use through ``ctx.get``.
      Options: a dataclass of typed options, settable as ``name{key=value}`` in a pipeline.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    kind: ClassVar[str] = "rewrite"
    preserves: ClassVar[frozenset[type[Analysis[Any]]]] = frozenset()
    requires: ClassVar[tuple[str, ...]] = ()

    @dataclass
    class Options:
        pass

    def __init__(self, **options: Any) -> None:
        self.options = _make_options(type(self).Options, options, type(self).name)

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        raise NotImplementedError

    def covers(self, required: Pass) -> bool:
        """Whether having run this pass satisfies the prerequisite ``required``."""
        return type(self) is type(required) and self.options == required.options

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.options})"


def _make_options(cls: type, given: Mapping[str, Any], pass_name: str) -> Any:
    """Build ``cls(**given)``, converting pipeline strings to the declared field types."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    values = {}
    for key, raw in given.items():
        if key not in fields:
            valid = ", ".join(sorted(fields)) or "none"
            raise ValueError(f"pass '{pass_name}' has no option '{key}' (options: {valid})")
        values[key] = _convert(raw, hints[key], f"{pass_name}{{{key}}}")
    return cls(**values)


def _convert(raw: Any, hint: Any, where: str) -> Any:
    if not isinstance(raw, str):
        return raw
    if hint is bool:
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{where}: expected true or false, got '{raw}'")
    if hint in (int, float):
        try:
            return hint(raw)
        except ValueError:
            raise ValueError(f"{where}: expected a number, got '{raw}'") from None
    origin = typing.get_origin(hint)
    if origin in (tuple, list, frozenset):
        (inner, *_) = typing.get_args(hint) or (str,)
        return origin(_convert(x, inner, where) for x in raw.split(";") if x)
    return raw


def counter() -> Counter[str]:
    """A stats counter for PassResult (named so passes read naturally)."""
    return Counter()
