"""What the database's ON UPDATE rules do when a merge rewrites a referred column.

Re-pointing ``orders.customer_id`` also rewrites a column that another foreign key
may refer to: ``order_line(order_id, customer_id) -> orders(id, customer_id)``.  The
lines follow their order only when that key says ON UPDATE CASCADE and the database
enforces it; under NO ACTION / RESTRICT the database refuses the UPDATE with a raw
error, under SET NULL / SET DEFAULT it silently detaches the lines, and where keys are
not enforced (SQLite without ``PRAGMA foreign_keys=ON``) the lines are left pointing at
an order that no longer exists.  :func:`refuse_unfollowed_updates` finds those rows
before anything is written and refuses the merge (:class:`~.exc.SharedColumnError`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import Connection, func, select, tuple_

from . import _statements as sql
from ._backend import foreign_keys_enforced
from ._keys import ReferencingKey, reference_graph
from .exc import SharedColumnError

Values = tuple[Any, ...]


def dependent_keys(key: ReferencingKey) -> tuple[tuple[ReferencingKey, tuple[int, ...]], ...]:
    """The foreign keys that refer to a column ``key`` rewrites, each with the positions
    in ``key.columns`` of the columns it refers to (cached with the key)."""
    try:
        found: tuple[tuple[ReferencingKey, tuple[int, ...]], ...] = key.cache["dependent_keys"]
        return found
    except KeyError:
        pass
    graph = reference_graph(key.table.metadata)
    dependents = []
    for other in graph.keys_for_tables([key.table]):
        referred = set(other.referred_columns)
        positions = tuple(i for i, c in enumerate(key.columns) if c in referred)
        if positions:
            dependents.append((other, positions))
    found = key.cache["dependent_keys"] = tuple(dependents)
    return found


def refuse_unfollowed_updates(
    connection: Connection, key: ReferencingKey, pairs: Mapping[Values, Values]
) -> None:
    """:class:`~.exc.SharedColumnError` when re-pointing ``key`` would rewrite a value that
    rows of another key refer to, and the database would not carry them along."""
    for dependent, positions in dependent_keys(key):
        changing = [s for s, t in pairs.items() if any(s[p] != t[p] for p in positions)]
        if not changing or _follows(connection, dependent):
            continue
        rewritten = select(*dependent.referred_columns).where(
            sql.identity_in(list(key.columns), changing)
        )
        if len(dependent.columns) == 1:
            referring: Any = dependent.columns[0].in_(rewritten.scalar_subquery())
        else:
            referring = tuple_(*dependent.columns).in_(rewritten)
        statement = select(func.count()).select_from(dependent.table).where(referring)
        count = connection.execute(statement).scalar_one()
        if count:
            rule = dependent.constraint.onupdate or "NO ACTION"
            why = (
                f"ON UPDATE {rule.upper()}"
                if foreign_keys_enforced(connection)
                else "foreign keys not enforced"
            )
            raise SharedColumnError(
                f"re-pointing {key.name} rewrites "
                f"{', '.join(key.columns[p].name for p in positions)} of {key.table.fullname} "
                f"rows that {count} row(s) of {dependent.name} refer to ({why}): they would "
                "be refused, cleared or left dangling (declare the key ON UPDATE CASCADE, "
                "or re-point those rows first)"
            )


def _follows(connection: Connection, dependent: ReferencingKey) -> bool:
    rule = (dependent.constraint.onupdate or "NO ACTION").upper()
    return rule == "CASCADE" and foreign_keys_enforced(connection)
