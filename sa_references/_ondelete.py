"""What the database's ON DELETE rules do when a merge deletes rows, found before it does.

Deleting a clashing row (``on_conflict="delete"``) makes the database apply the
rule of every foreign key that references it: CASCADE deletes the rows
referencing it (and, recursively, theirs), SET NULL / SET DEFAULT clears them,
NO ACTION / RESTRICT refuses.  :func:`consequences` finds all of it set-based
(one statement per referencing key and level, the deleted rows described by a
subquery rather than listed), refuses what the database would refuse
(:class:`DeleteRestrictedError`), and reports the rest.  Where foreign keys are
not enforced (SQLite without ``PRAGMA foreign_keys=ON``) no rule runs: rows that
would be left referencing a deleted row are refused the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, Connection, Table, func, select, tuple_

from . import _statements as sql
from ._backend import foreign_keys_enforced
from ._keys import AnyColumn, ReferencingKey, reference_graph
from .exc import DeleteRestrictedError, Remedy

Values = tuple[Any, ...]

#: how deep CASCADE is followed (a self-referential CASCADE would go on for ever)
MAX_DEPTH = 16
#: rows of one table whose identities are read (so loaded objects can follow them)
IDENTITIES_READ = 10_000


@dataclass
class Effect:
    """Rows of one table that an ON DELETE rule deletes or clears."""

    key: ReferencingKey
    #: "delete", "set null" or "set default"
    action: str
    count: int
    #: identities of those rows (None: too many to read; loaded objects are expired)
    identities: list[Values] | None = field(default=None, repr=False)

    @property
    def table(self) -> str:
        return self.key.table.fullname


def consequences(
    connection: Connection, table: Table, identity: Sequence[AnyColumn], rows: Sequence[Values]
) -> list[Effect]:
    """What deleting ``rows`` (by ``identity``) of ``table`` makes the rules do, recursively;
    :class:`DeleteRestrictedError` when a rule (or unenforced keys) would refuse it."""
    where = sql.identity_in(list(identity), list(rows))
    effects: list[Effect] = []
    _follow(connection, table, where, effects, depth=0)
    return effects


def _follow(
    connection: Connection,
    table: Table,
    where: ColumnElement[bool],
    effects: list[Effect],
    depth: int,
) -> None:
    if depth >= MAX_DEPTH:
        return
    for key in reference_graph(table.metadata).keys_for_tables([table]):
        referring = _referring(key, table, where)
        count = connection.execute(
            select(func.count()).select_from(key.table).where(referring)
        ).scalar_one()
        if not count:
            continue
        action = _action(connection, key)
        if action == "refuse":
            raise DeleteRestrictedError(
                f"deleting {_describe(table, depth)} is refused by the database: "
                f"{count} row(s) of {key.name} reference them (ON DELETE "
                f"{key.constraint.ondelete or 'NO ACTION'}); delete or re-point them first, "
                "or keep the clashing rows on the source",
                remedy=Remedy("on_conflict", ("ignore",)),
            )
        identities = None
        if count <= IDENTITIES_READ:
            found = connection.execute(select(*key.identity).where(referring))
            identities = [tuple(r) for r in found]
        effects.append(Effect(key, action, count, identities))
        if action == "delete":
            _follow(connection, key.table, referring, effects, depth + 1)


def _referring(key: ReferencingKey, table: Table, where: ColumnElement[bool]) -> Any:
    """The rows of ``key.table`` that reference a row of ``table`` matching ``where``."""
    referred = select(*key.referred_columns).where(where)
    if len(key.columns) == 1:
        return key.columns[0].in_(referred.scalar_subquery())
    return tuple_(*key.columns).in_(referred)


def _action(connection: Connection, key: ReferencingKey) -> str:
    rule = (key.constraint.ondelete or "NO ACTION").upper()
    if not foreign_keys_enforced(connection):
        return "refuse"  # no rule runs: the rows would reference a row that is gone
    if rule == "CASCADE":
        return "delete"
    if rule in ("SET NULL", "SET DEFAULT"):
        return rule.lower()
    return "refuse"


def _describe(table: Table, depth: int) -> str:
    return f"rows of {table.fullname}" + (" (deleted by a cascade)" if depth else "")
