"""Progress of long stages: rich bars on a terminal, periodic plain lines everywhere else.

A person at a terminal gets rich's live bars, which vanish when done. A log file, a pipe or CI gets one
line every ``MWGA_PROGRESS_INTERVAL`` seconds (default 30) while a stage runs, e.g.::

    training model: 120/500 (24%), 35 s elapsed, about 1 min 51 s left

so that a multi-minute run shows it is alive. Stages shorter than the interval print nothing.
``MWGA_PROGRESS_INTERVAL=0`` prints a line at every step (tests use it); ``off`` prints none.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from mwga_core.api.errors import ConfigValueError

if TYPE_CHECKING:  # rich.progress is imported when bars are drawn: `mwga --help` never pays for it
    from rich.console import Console
    from rich.progress import Progress

INTERVAL_ENV = "MWGA_PROGRESS_INTERVAL"
DEFAULT_INTERVAL_S = 30.0
#: the heartbeat thread never wakes more often than this, however small the interval
_MIN_HEARTBEAT_S = 1.0


def progress_wanted(console: Console) -> bool:
    """True when live bars help: an interactive terminal and not CI (otherwise: periodic lines)."""
    return console.is_terminal and not os.environ.get("CI")


def line_interval() -> float | None:
    """Seconds between progress lines from ``MWGA_PROGRESS_INTERVAL``; None when it is ``off``."""
    raw = os.environ.get(INTERVAL_ENV, "").strip()
    if not raw:
        return DEFAULT_INTERVAL_S
    if raw.lower() in {"off", "none", "never"}:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        seconds = float("nan")
    if not seconds >= 0 or seconds == float("inf"):  # also refuses nan
        raise ConfigValueError(INTERVAL_ENV, raw, "a number of seconds >= 0, or off")
    return seconds


def format_seconds(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``1 h 02 min``: short and readable in a log."""
    whole = int(round(seconds))
    if whole < 60:
        return f"{whole} s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class _Handle:
    """What ``with ctx.progress(...) as bar`` yields: ``bar.advance(n)`` reports n more steps done."""

    def advance(self, amount: int = 1) -> None:
        """Report ``amount`` more steps done (a no-op here)."""


class _BarHandle(_Handle):
    def __init__(self, progress: Progress, task: int) -> None:
        self._progress, self._task = progress, task

    def advance(self, amount: int = 1) -> None:
        self._progress.advance(self._task, amount)


class _LineHandle(_Handle):
    """Prints a status line when ``interval`` seconds passed since the last one.

    Lines come from ``advance`` and from a heartbeat thread, so a stage that cannot count its steps
    (``total=None``) or whose single step is long still shows it is alive.
    """

    def __init__(self, description: str, total: int | None, interval: float, console: Console) -> None:
        self._description, self._total, self._interval, self._console = description, total, interval, console
        self._done = 0
        self._start = self._last = time.monotonic()
        self._lines = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._heartbeat, name=f"progress: {description}", daemon=True)
        self._thread.start()

    def advance(self, amount: int = 1) -> None:
        with self._lock:
            self._done += amount
            self._maybe_print()

    def close(self, *, completed: bool) -> None:
        """Stop the heartbeat; after any line, a completed stage ends with a line saying so (a failed
        one is reported by its error instead)."""
        self._stop.set()
        self._thread.join()
        with self._lock:
            if self._lines and completed:
                self._print(finished=True)

    def _heartbeat(self) -> None:
        while not self._stop.wait(max(self._interval, _MIN_HEARTBEAT_S)):
            with self._lock:
                self._maybe_print()

    def _maybe_print(self) -> None:
        if time.monotonic() - self._last >= self._interval:
            self._print(finished=False)

    def _print(self, *, finished: bool) -> None:
        now = time.monotonic()
        elapsed = now - self._start
        parts = [f"{self._description}:"]
        if self._total is not None:
            share = f" ({100 * self._done / self._total:.0f}%)" if self._total else ""
            parts.append(f"{self._done}/{self._total}{share},")
        if finished:
            parts.append(f"done in {format_seconds(elapsed)}")
        else:
            parts.append(f"{format_seconds(elapsed)} elapsed")
            if self._total and 0 < self._done < self._total:
                left = elapsed * (self._total - self._done) / self._done
                parts[-1] += f", about {format_seconds(left)} left"
        # soft_wrap: one line per report, however narrow the (non-terminal) console thinks it is
        self._console.print(" ".join(parts), highlight=False, markup=False, soft_wrap=True)
        self._last = now
        self._lines += 1


@contextmanager
def make_progress(
    description: str, total: int | None, *, enabled: bool, console: Console
) -> Iterator[_Handle]:
    """Yield a handle whose ``advance`` moves the progress of ``total`` steps.

    Args:
        description: what runs, e.g. ``training model``; starts every line.
        total: the number of steps, or None for work that cannot count them (a pulsing bar with the
            elapsed time, or lines with the elapsed time only).
        enabled: draw rich's live bars (an interactive terminal). When False, periodic lines are printed
            to ``console`` instead (see the module docstring).
        console: where bars or lines go (stderr in the command-line tools).
    """
    if not enabled:
        interval = line_interval()
        if interval is None:
            yield _Handle()
            return
        handle = _LineHandle(description, total, interval, console)
        try:
            yield handle
        except BaseException:
            handle.close(completed=False)
            raise
        handle.close(completed=True)
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        if total is not None
        else (TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn())
    )
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(description, total=total)
        yield _BarHandle(progress, task)
