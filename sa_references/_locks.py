"""Locking the merged rows, in primary key order, until the transaction ends."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, Table
from sqlalchemy.orm import attributes

from . import _statements as sql
from ._backend import backend_of
from .exc import ConcurrentMergeError

Values = tuple[Any, ...]


def lock_rows(
    connection: Connection, table: Any, identities: Sequence[Values]
) -> set[Values] | None:
    """Lock the rows being merged, in primary key order, until the transaction ends.

    Concurrent merges of overlapping rows then queue behind each other instead
    of interleaving (and deadlock less: every merge locks in the same order),
    and a concurrent INSERT that references a source waits for the merge to
    commit.  Returns the identities no row has (any more): the caller refuses
    them.  SQLite locks the whole database and needs nothing here: None, no
    row was looked at.
    """
    backend = backend_of(connection)
    if not backend.row_locks:
        return None
    wanted = set(identities)
    found: set[Values] = set()
    for statement, params in sql.lock_rows(table, list(wanted), shape=backend.lock_shape):
        found.update(tuple(row) for row in connection.execute(statement, params))
    return wanted - found


def lock_objects(connection: Connection, objects: Sequence[object]) -> None:
    """:func:`lock_rows` for persistent objects, by identity."""
    if not backend_of(connection).row_locks:
        return  # the whole database is locked (see lock_rows)
    by_table: dict[Any, list[Values]] = {}
    for obj in objects:
        state = attributes.instance_state(obj)
        table = state.mapper.base_mapper.local_table
        if isinstance(table, Table) and state.key is not None:
            by_table.setdefault(table, []).append(tuple(state.key[1]))
    for table in sorted(by_table, key=lambda t: t.fullname):
        missing = lock_rows(connection, table, by_table[table])
        if missing:
            shown = ", ".join(repr(m) for m in sorted(missing, key=repr)[:5])
            raise ConcurrentMergeError(
                f"{len(missing)} row(s) of {table.fullname} no longer exist ({shown}): "
                "deleted or merged away by another transaction"
            )
