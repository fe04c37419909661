"""Where passes are found by name: built-ins, groups, and third-party plugins.

Built-in passes register with ``@register``. A plugin package lists modules or Pass classes in
the ``optgraph.passes`` entry-point group; they are loaded on first use, and one that fails to
import warns and is skipped so the rest still work; what it registered before failing is dropped.
"""

from __future__ import annotations

import importlib.metadata
import warnings
from dataclasses import dataclass

from optgraph.passes.base import Pass, check_analyses, with_requirements

ENTRY_POINT_GROUP = "optgraph.passes"
KINDS = ("rewrite", "annotation", "analysis")

_PASSES: dict[str, type[Pass]] = {}
_GROUPS: dict[str, Group] = {}
_plugins_loaded = False


@dataclass(frozen=True)
class Group:
    """A named list of passes. ``fixed_point`` groups repeat until nothing changes."""

    name: str
    description: str
    members: tuple[str, ...]
    fixed_point: bool = False
    max_iterations: int = 8


def register(cls: type[Pass]) -> type[Pass]:
    """Class decorator: make a pass available by its ``name``."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name or not getattr(cls, "description", None):
        raise TypeError(f"{cls.__qualname__} must define 'name' and 'description'")
    if cls.kind not in KINDS:
        raise TypeError(f"{cls.__qualname__}.kind must be one of {', '.join(map(repr, KINDS))}")
    check_analyses(cls.preserves, f"{cls.__qualname__}.preserves")
    if with_requirements(cls.preserves) != cls.preserves:
        missing = sorted(a.__qualname__ for a in with_requirements(cls.preserves) - cls.preserves)
        raise TypeError(f"{cls.__qualname__}.preserves keeps analyses without what they require: add {', '.join(missing)}")
    existing = _PASSES.get(name)
    if existing is not None and existing is not cls:
        raise ValueError(f"pass name '{name}' is taken by {existing.__module__}.{existing.__qualname__}")
    if name in _GROUPS:
        raise ValueError(f"pass name '{name}' is already a group name")
    _PASSES[name] = cls
    return cls


def register_group(name: str, members: list[str] | tuple[str, ...], description: str, *,
                   fixed_point: bool = False, max_iterations: int = 8) -> Group:
    """Define (or redefine) a group; members are pass names (with options: ``name{k=v}``) or groups."""
    if name in _PASSES:
        raise ValueError(f"group name '{name}' is already a pass name")
    group = Group(name, description, tuple(members), fixed_point, max_iterations)
    _GROUPS[name] = group
    return group


def load_plugins() -> list[str]:
    """Import every ``optgraph.passes`` entry point once; return the names that failed."""
    global _plugins_loaded
    if _plugins_loaded:
        return []
    _plugins_loaded = True
    failed = []
    for ep in sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        passes_before, groups_before = dict(_PASSES), dict(_GROUPS)
        try:
            obj = ep.load()
            if isinstance(obj, type) and issubclass(obj, Pass) and obj.name not in _PASSES:
                register(obj)
        except Exception as e:  # a broken plugin must not take the tool down, nor half-register
            _PASSES.clear()
            _PASSES.update(passes_before)
            _GROUPS.clear()
            _GROUPS.update(groups_before)
            failed.append(ep.name)
            warnings.warn(f"plugin '{ep.name}' ({ep.value}) failed to load: "
                          f"{type(e).__name__}: {e}", RuntimeWarning, stacklevel=2)
    return failed


def passes() -> dict[str, type[Pass]]:
    """All registered passes by name (plugins included), sorted by name."""
    load_plugins()
    return dict(sorted(_PASSES.items()))


def groups() -> dict[str, Group]:
    load_plugins()
    return dict(sorted(_GROUPS.items()))


def get(name: str) -> type[Pass]:
    load_plugins()
    try:
        return _PASSES[name]
    except KeyError:
        raise KeyError(_unknown(name)) from None


def _unknown(name: str) -> str:
    return (f"unknown pass or group '{name}'; valid names: "
            + ", ".join(sorted([*_PASSES, *_GROUPS, "none"])))
