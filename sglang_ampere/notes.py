"""Diagnostics as values: what ``plan``, ``launch`` and ``doctor`` tell the user, before it is text.

A :class:`Note` has a level, a stable code and the sentence for the user. Code that decides
something reads the level and the code; only the printing turns a note into text (``str(note)``
is ``"warning: ..."``). Nothing parses a note back out of printed output.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

#: The levels, mildest first: ``note`` (for information), ``warning`` (it runs, but probably not
#: as the user wants), ``error`` (it will not run as asked).
LEVELS = ("note", "warning", "error")


@dataclass(frozen=True)
class Note:
    level: str          # one of LEVELS
    code: str           # stable identifier, e.g. "plan.kv-does-not-fit"; tests and callers match on it
    text: str           # one sentence for the user, without the level prefix

    def __post_init__(self):
        if self.level not in LEVELS:
            raise ValueError(f"note level {self.level!r} is not one of {', '.join(LEVELS)}")

    def __str__(self) -> str:
        return f"{self.level}: {self.text}"


def note(code: str, text: str) -> Note:
    return Note("note", code, text)


def warning(code: str, text: str) -> Note:
    return Note("warning", code, text)


def error(code: str, text: str) -> Note:
    return Note("error", code, text)


def worst(notes: Iterable[Note]) -> str | None:
    """The most severe level among ``notes`` (None for no notes)."""
    levels = [n.level for n in notes]
    return max(levels, key=LEVELS.index) if levels else None
