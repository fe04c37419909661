"""Progress on a terminal for long work (the equivalence check, calibration, engine builds,
memory planning, benchmarks), drawn with rich on stderr.

Nothing is drawn when stderr is not a terminal (pipes, CI logs, tests) or after ``set_quiet``
(``-q``). Every display is transient: it disappears when the work ends, so what remains on the
terminal is the same as in a log. Nested work (a check inside a pipeline step) adds a line to
the display already shown, since a terminal holds one live display at a time.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

T = TypeVar("T")

_quiet = False
_live: Any = None  # the rich Progress on screen, shared by nested tasks
_depth = 0


def set_quiet(quiet: bool) -> None:
    """``-q``: draw nothing for the rest of the process."""
    global _quiet
    _quiet = quiet


def enabled() -> bool:
    return not _quiet and sys.stderr.isatty()


@contextmanager
def _task(description: str, total: int | None) -> Iterator[Callable[..., None]]:
    """A line on the shared display; yields ``update(advance=1, description=...)``."""
    global _live, _depth
    if not enabled():
        yield lambda **_: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    if _live is None:
        steps = TextColumn("{task.completed:.0f}/{task.total:.0f}")
        _live = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), _Steps(steps),
                         TimeElapsedColumn(), console=Console(file=sys.stderr), transient=True)
        _live.start()
    _depth += 1
    live = _live
    task = live.add_task(description, total=total)
    try:
        yield lambda **kw: live.update(task, **kw)
    finally:
        live.remove_task(task)
        _depth -= 1
        if _depth == 0:
            live.stop()
            _live = None


def _Steps(column: Any) -> Any:  # noqa: N802 - a column class built on first use (rich loads lazily)
    from rich.progress import ProgressColumn
    from rich.text import Text

    class Steps(ProgressColumn):
        """``3/10`` for work with a known number of steps, nothing for a spinner."""

        def render(self, task: Any) -> Any:
            return Text("") if task.total is None else column.render(task)

    return Steps()


@contextmanager
def steps(description: str, total: int | None) -> Iterator[Callable[[], None]]:
    """A bar of ``total`` steps; yields the function that advances it by one. Unlike ``track``,
    the display ends as soon as the block does, even when it exits by an exception."""
    with _task(description, total) as update:
        yield lambda: update(advance=1)


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """``items``, one step of the display per item (``total`` from ``len`` when it has one)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with steps(description, total) as step:
        for item in items:
            yield item
            step()


@contextmanager
def status(description: str) -> Iterator[Callable[[str], None]]:
    """A spinner with the elapsed time for work without steps (an engine build); yields a
    function that changes the description."""
    with _task(description, None) as update:
        yield lambda text: update(description=text)
