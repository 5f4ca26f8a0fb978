"""Every use of SQLAlchemy internals, each behind one small function."""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import NestedTransaction


def savepoint_name(transaction: NestedTransaction) -> str:
    """The SAVEPOINT name of a Connection's nested transaction (SQLAlchemy 2.0, 2.1)."""
    name: str = transaction._savepoint
    return name


def add_note(error: BaseException, note: str) -> None:
    """``error.add_note(note)``, also on Python 3.10 (which has no add_note): there the
    note is kept in ``__notes__`` as 3.11 does, for code that reads it."""
    add = getattr(error, "add_note", None)
    if add is not None:
        add(note)
        return
    notes = getattr(error, "__notes__", None)
    if not isinstance(notes, list):
        notes = []
        error.__notes__ = notes
    notes.append(note)


def positional_names(compiled: Any) -> tuple[str, ...]:
    """The parameter names of a compiled positional statement, in order (2.0, 2.1)."""
    return tuple(compiled.positiontup or ())
