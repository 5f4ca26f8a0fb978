"""Exceptions raised by sa_references."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.exc import InvalidRequestError


class ReferencesError(InvalidRequestError):
    """A merge or a dependents lookup cannot be carried out.

    Subclasses :class:`sqlalchemy.exc.InvalidRequestError`, so code that
    already handles SQLAlchemy's request errors handles these too.
    """


class MergeConflictError(ReferencesError):
    """Re-pointing would violate a unique constraint of a referencing table.

    Raised by ``merge_into(..., on_conflict="raise")`` before anything is
    written.  :attr:`conflicts` lists each clash: the table, the constraint
    and the identities of the source's rows that clash.
    """

    def __init__(self, conflicts: Sequence[Any]) -> None:
        self.conflicts = tuple(conflicts)
        parts = [
            f"{len(c.rows)} row(s) of {c.table} clash on {c.constraint}" for c in self.conflicts
        ]
        super().__init__(
            "merge would violate a unique key: "
            + "; ".join(parts)
            + " (use on_conflict='delete' or 'ignore')"
        )
