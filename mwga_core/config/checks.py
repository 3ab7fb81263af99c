"""Range checks of config fields, declared once in the field's metadata and applied by one function.

A config dataclass states what each field accepts next to its default::

    @dataclass
    class GaussianProjectorConfig(ProjectorConfig):
        dim: int = field(default=128, metadata=at_least(1))

and :func:`check_fields` (called by the component base classes' ``__init__``) raises
:class:`~mwga_core.api.errors.ConfigValueError` for the first field whose value it refuses, with the
same message a hand-written check gave (``dim=0 is not allowed: expected an integer >= 1.``). The
metadata is invisible to OmegaConf and Hydra: the composed config, and every key derived from it, does
not change. Checks that relate several fields (``sparsity <= dim``) stay in the component.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mwga_core.api.errors import ConfigValueError

#: the metadata key under which a field's check is stored
CHECK = "mwga_check"


@dataclass(frozen=True)
class FieldCheck:
    """What one field accepts: ``test(value, integer)`` and the phrase an error shows.

    ``integer`` says whether the field is declared ``int``; ``allowed`` may hold ``{number}``, which
    becomes "an integer" or "a number" accordingly. ``refused`` is a value the check refuses (None when
    no such value is known), so tests can show that the check is applied.
    """

    test: Callable[[Any, bool], bool]
    allowed: str
    refused: Any = None

    def describe(self, integer: bool) -> str:
        return self.allowed.replace("{number}", "an integer" if integer else "a number")


def _is_number(value: Any, integer: bool) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, int) if integer else isinstance(value, int | float)


def _with_note(text: str, note: str) -> str:
    return f"{text} ({note})" if note else text


def at_least(bound: float, *, finite: bool = False, note: str = "") -> dict[str, FieldCheck]:
    """The field must be a number (an integer for ``int`` fields) ``>= bound``; ``finite`` refuses inf."""

    def test(value: Any, integer: bool) -> bool:
        return _is_number(value, integer) and value >= bound and (not finite or math.isfinite(value))

    prefix = "a finite number" if finite else "{number}"
    return {CHECK: FieldCheck(test, _with_note(f"{prefix} >= {bound:g}", note), refused=bound - 1)}


def above(bound: float, *, note: str = "") -> dict[str, FieldCheck]:
    """The field must be a finite number ``> bound``."""

    def test(value: Any, integer: bool) -> bool:
        return _is_number(value, integer) and math.isfinite(value) and value > bound

    return {CHECK: FieldCheck(test, _with_note(f"{{number}} > {bound:g}", note), refused=bound)}


def one_of(*choices: Any) -> dict[str, FieldCheck]:
    """The field must equal one of ``choices``."""
    refused = "-".join(map(str, choices)) + "-none-of-these"
    return {CHECK: FieldCheck(lambda value, _: value in choices, f"one of {list(choices)}", refused)}


def satisfies(test: Callable[[Any], bool], allowed: str) -> dict[str, FieldCheck]:
    """Any other one-field rule: ``test(value)`` must hold; ``allowed`` is the phrase an error shows."""

    def guarded(value: Any, _: bool) -> bool:
        try:
            return bool(test(value))
        except (TypeError, ValueError):  # a value of the wrong shape is refused, not a crash
            return False

    return {CHECK: FieldCheck(guarded, allowed)}


@functools.cache
def declared_checks(schema: type) -> tuple[tuple[str, FieldCheck, bool], ...]:
    """(field name, check, declared int) for every field of ``schema`` with a check."""
    hints = typing.get_type_hints(schema)
    return tuple(
        (f.name, f.metadata[CHECK], hints.get(f.name) is int)
        for f in dataclasses.fields(schema)
        if CHECK in f.metadata
    )


def check_fields(config: Any) -> None:
    """Raise ConfigValueError for the first field of the dataclass ``config`` its check refuses."""
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        return
    for name, check, integer in declared_checks(type(config)):
        value = getattr(config, name)
        if not check.test(value, integer):
            shown = list(value) if isinstance(value, list | tuple) else value
            raise ConfigValueError(name, shown, check.describe(integer))
