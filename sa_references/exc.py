"""Exceptions raised by sa_references.

Every error of the library is a :class:`ReferencesError`, itself a
:class:`sqlalchemy.exc.InvalidRequestError`, so code that already handles
SQLAlchemy's request errors handles these too.  Mistakes in the arguments of
a call (a wrong option, a key of the wrong arity or type, a Table where an
object was expected) are :class:`sqlalchemy.exc.ArgumentError`, as in
SQLAlchemy itself.  Errors of the database (a deadlock, a constraint no check
could predict) propagate as the driver's :class:`sqlalchemy.exc.DBAPIError`,
with a note naming the referencing key they failed on.

The hierarchy::

    sqlalchemy.exc.InvalidRequestError
    └── ReferencesError                  the merge or lookup cannot be carried out
        ├── MergeConflictError           unique-key clashes (on_conflict="raise")
        ├── SelfReferenceError           the target would reference itself
        ├── RowNotFoundError             a source, target or key has no row
        │   └── ConcurrentMergeError     ... because another transaction merged it away or
        │                                deleted it: retryable (roll back, try again)
        ├── MergeCycleError              queued merges would close a cycle
        ├── UnsafeMergeError             the merge would lose or silently change a reference
        │   ├── SharedColumnError        a re-pointed column is also part of another key,
        │   │                            or referred to without ON UPDATE CASCADE
        │   ├── UnfollowedReferenceError the database holds a foreign key the merge
        │   │                            does not follow
        │   └── DeleteRestrictedError    ON DELETE NO ACTION / RESTRICT would refuse a
        │                                deletion the merge makes
        └── SessionStateError            a ReferencesSession must be rolled back first

Nothing is changed when one of these is raised: a merge that fails midway is
rolled back to its SAVEPOINT and the session stays usable (except after
:class:`SessionStateError`, which asks for ``session.rollback()``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import InvalidRequestError

if TYPE_CHECKING:
    from ._report import Conflict

__all__ = [
    "ConcurrentMergeError",
    "DeleteRestrictedError",
    "MergeConflictError",
    "MergeCycleError",
    "ReferencesError",
    "Remedy",
    "RowNotFoundError",
    "SelfReferenceError",
    "SessionStateError",
    "SharedColumnError",
    "UnfollowedReferenceError",
    "UnsafeMergeError",
]


Values = tuple[Any, ...]


@dataclass(frozen=True)
class Remedy:
    """An option that lets a refused merge go ahead: its keyword and the values that do
    (``Remedy("on_conflict", ("delete", "ignore"))``).  The command line names it as its
    flag (``--on-conflict delete or ignore``)."""

    option: str
    values: tuple[str, ...]
    #: what passing it does, e.g. "to clear that reference first"
    purpose: str = ""

    def advice(self, option: str, values: Sequence[str]) -> str:
        purpose = f" {self.purpose}" if self.purpose else ""
        return f"(pass {option}{' or '.join(values)}{purpose})"


class ReferencesError(InvalidRequestError):
    """A merge or a dependents lookup cannot be carried out."""

    #: the option that would let the merge go ahead, when one would
    remedy: Remedy | None = None

    def __init__(self, reason: str, *, remedy: Remedy | None = None) -> None:
        #: the message without the remedy's advice
        self.reason = reason
        if remedy is not None:
            self.remedy = remedy
        if self.remedy is not None:
            values = [f"'{value}'" for value in self.remedy.values]
            reason = f"{reason} {self.remedy.advice(f'{self.remedy.option}=', values)}"
        super().__init__(reason)

    def __reduce__(self) -> tuple[Any, ...]:
        # copied and pickled as they are (frameworks re-raise and pickle errors): the
        # constructors take keyword arguments that ``args`` alone does not hold
        return _rebuilt, (type(self), self.args, self.__dict__)


def _rebuilt(cls: type[ReferencesError], args: tuple[Any, ...], state: dict[str, Any]) -> Any:
    error = cls.__new__(cls)
    error.args = args
    error.__dict__.update(state)
    return error


class MergeConflictError(ReferencesError):
    """Re-pointing would violate a unique key of a referencing table.

    Raised with ``on_conflict="raise"`` (the default) before anything is
    written.  :attr:`conflicts` lists each clash: the referencing key, the
    unique key and the identities of the source's rows that clash.
    """

    conflicts: tuple[Conflict, ...]
    remedy = Remedy("on_conflict", ("delete", "ignore"))

    def __init__(self, conflicts: Sequence[Conflict]) -> None:
        self.conflicts = tuple(conflicts)
        rows: dict[tuple[str, str], int] = {}  # per table and unique key, batches summed
        for conflict in self.conflicts:
            slot = (conflict.table, conflict.constraint)
            rows[slot] = rows.get(slot, 0) + len(conflict.rows)
        parts = [f"{n} row(s) of {table} clash on {name}" for (table, name), n in rows.items()]
        super().__init__("merge would violate a unique key: " + "; ".join(parts))


class SelfReferenceError(ReferencesError):
    """The target references the source: merging would make it reference itself.

    Pass ``on_self_reference="null"`` to clear that reference first.
    """

    def __init__(self, reason: str, *, key: str, rows: Sequence[Values], purpose: str = "") -> None:
        #: the referencing key's name
        self.key = key
        #: identities of the targets' rows that reference their source through it
        self.rows = tuple(rows)
        remedy = Remedy("on_self_reference", ("null",), purpose)
        super().__init__(reason, remedy=remedy)


class RowNotFoundError(ReferencesError):
    """A source, target or key given has no row in the database."""

    def __init__(
        self,
        reason: str,
        *,
        table: str = "",
        keys: Sequence[Values] = (),
        role: str = "",
    ) -> None:
        #: the table's full name
        self.table = table
        #: the primary key values that have no row
        self.keys = tuple(keys)
        #: ``"source"`` or ``"target"`` when the key was given as one
        self.role = role
        super().__init__(reason)


class ConcurrentMergeError(RowNotFoundError):
    """Rows being merged were merged away or deleted by another transaction.

    Raised when this transaction had seen the row (a loaded object, or a row of its
    REPEATABLE READ snapshot) and the merge's lock finds it gone, or on PostgreSQL
    cannot lock it (a serialization failure, chained as ``__cause__``); a key that
    never had a row is a plain :class:`RowNotFoundError` (see the docs' "Rows gone
    meanwhile").  Retryable: roll the transaction back and run it again (the merge
    will then see the rows as they are now).
    """


class MergeCycleError(ReferencesError):
    """Queued merges would close a cycle (``a -> b`` and ``b -> a``)."""


class UnsafeMergeError(ReferencesError):
    """The merge would lose, duplicate or silently change a reference: refused."""


class SharedColumnError(UnsafeMergeError):
    """A column the merge would rewrite also belongs to another foreign key or the
    primary key of the same row, and the values differ (multi-tenant keys:
    ``orders(tenant_id, customer_id)`` and ``orders(tenant_id, product_id)``); or
    rows of another table refer to it through a foreign key the database would not
    carry along (``order_line(order_id, customer_id) -> orders(id, customer_id)``
    without an enforced ON UPDATE CASCADE)."""


class UnfollowedReferenceError(UnsafeMergeError):
    """The database holds a foreign key to the merged table that the MetaData
    lacks, so the merge would not re-point it (and deleting the source would
    cascade to, or orphan, its rows)."""


class DeleteRestrictedError(UnsafeMergeError):
    """A row the merge deletes is still referenced under ON DELETE NO ACTION or
    RESTRICT: the database would refuse the deletion."""


class SessionStateError(ReferencesError):
    """A ReferencesSession's queued merges failed to apply; roll back before going on
    (as after a failed flush)."""
