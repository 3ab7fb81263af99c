"""Rich progress bars that vanish when nobody is watching (CI, pipes)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def progress_wanted(console: Console) -> bool:
    """True when bars help: an interactive terminal and not CI."""
    return console.is_terminal and not os.environ.get("CI")


class _Handle:
    def __init__(self, progress: Progress | None, task: int | None) -> None:
        self._progress, self._task = progress, task

    def advance(self, amount: int = 1) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, amount)


@contextmanager
def make_progress(
    description: str, total: int | None, *, enabled: bool, console: Console
) -> Iterator[_Handle]:
    """Yield a handle whose ``advance`` moves a bar of ``total`` steps (a no-op when disabled).

    ``total=None`` draws a pulsing bar with the elapsed time, for work that cannot count its steps.
    """
    if not enabled:
        yield _Handle(None, None)
        return
    columns = (
        (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        if total is not None
        else (TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn())
    )
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(description, total=total)
        yield _Handle(progress, task)
