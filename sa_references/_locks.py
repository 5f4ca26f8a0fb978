"""Locking the merged rows, in primary key order, until the transaction ends.

The locking SELECT is also how a merge reads the merged rows' referred values
that are not in their primary key (a unique ``code``): read as locked, they
are the latest committed values, never a loaded object's or a REPEATABLE READ
snapshot's older ones.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, cast

from sqlalchemy import Connection, Table
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import attributes

from . import _statements as sql
from ._backend import backend_of, is_serialization_failure
from ._keys import AnyColumn
from .exc import ConcurrentMergeError, RowNotFoundError

Values = tuple[Any, ...]


def lock_rows(
    connection: Connection,
    table: Any,
    identities: Sequence[Values],
    seen: set[Values] | None = None,
) -> set[Values] | None:
    """Lock the rows being merged, in primary key order, until the transaction ends.

    Concurrent merges of overlapping rows then queue behind each other instead
    of interleaving (and deadlock less: every merge locks in the same order),
    and a concurrent INSERT that references a source waits for the merge to
    commit.  Returns the identities no row has (any more): the caller refuses
    them.  SQLite locks the whole database and needs nothing here: None, no
    row was looked at.  ``seen`` receives the rows that existed when the lock
    started (:func:`read_locked`).
    """
    if not backend_of(connection).row_locks:
        return None
    wanted = set(identities)
    return wanted - set(read_locked(connection, table, list(wanted), seen=seen))


def read_locked(
    connection: Connection,
    table: Any,
    identities: Sequence[Values],
    columns: tuple[AnyColumn, ...] = (),
    *,
    lock: bool = True,
    seen: set[Values] | None = None,
) -> dict[Values, Values]:
    """The rows keyed ``identities`` that exist, locked where the backend locks rows
    (``lock=False``: a plain read): ``{identity: values of columns}``.

    ``seen`` (locking reads): receives the identities of the rows as the same statement
    saw them before the lock waited, where the backend can tell
    (:attr:`~._backend.Backend.seen_beside_locks`): one seen there but not locked was
    deleted (merged away) by another transaction meanwhile, not a wrong key.  Where the
    statement only counts what it saw (MySQL/MariaDB), the keys found missing are all
    taken as seen when the count covers them, none otherwise (a wrong key then wins).
    """
    backend = backend_of(connection)
    found: dict[Values, Values] = {}
    width = len(table.primary_key.columns)
    lock = lock and backend.row_locks
    shape = backend.seen_beside_locks if lock and seen is not None else None
    statements = sql.lock_rows(
        table, identities, shape=backend.lock_shape, columns=columns, lock=lock, seen=shape
    )
    counted = 0
    for statement, params in statements:
        with snapshot_outdated(connection, table, identities):
            rows = connection.execute(statement, params)
            if shape is None:
                for row in rows:
                    found[tuple(row[:width])] = tuple(row[width:])
                continue
            for row in rows:  # identity, flag, columns (see sql.lock_rows)
                identity, flag = tuple(row[:width]), row[width]
                if shape == "union" and flag != -1:
                    counted += flag  # the rows the plain SELECT saw before the lock
                elif flag:
                    found[identity] = tuple(row[width + 1 :])
                else:
                    cast("set[Values]", seen).add(identity)
    if seen is not None and shape is not None:
        seen.update(found)  # the locked rows were seen before the lock too
        missing = set(identities) - set(found)
        if shape == "union" and missing and counted - len(found) >= len(missing):
            seen.update(missing)  # every missing one was there before the lock waited
    return found


def _shown(identities: Sequence[Values] | set[Values]) -> str:
    return ", ".join(repr(i) for i in sorted(identities, key=repr)[:5])


@contextmanager
def snapshot_outdated(
    connection: Connection, table: Any, identities: Sequence[Values] | set[Values]
) -> Iterator[None]:
    """Around a locking read: the serialization failure of a row another transaction changed
    or deleted after this one's REPEATABLE READ snapshot (PostgreSQL cannot lock it) becomes
    :class:`ConcurrentMergeError`, chained from it.  The merge's SAVEPOINT then rolls back
    and the transaction goes on; a retry needs a new transaction (a new snapshot)."""
    try:
        yield
    except DBAPIError as error:
        if not is_serialization_failure(backend_of(connection), error):
            raise
        raise ConcurrentMergeError(
            f"cannot lock row(s) of {table.fullname} ({_shown(identities)}): changed or "
            "deleted by another transaction after this transaction's snapshot (REPEATABLE "
            "READ); roll the transaction back and retry",
            table=table.fullname,
            keys=sorted(identities, key=repr),
        ) from error


def locked_row(
    connection: Connection, table: Any, key: Values, seen: set[Values]
) -> dict[AnyColumn, Any] | None:
    """The row keyed ``key``, whole, by a locking read (a plain read where the backend
    locks no rows); None when there is none.  ``seen`` as for :func:`read_locked`."""
    pk = tuple(table.primary_key.columns)
    others = tuple(c for c in table.columns if not c.primary_key)
    found = read_locked(connection, table, [key], others, lock=True, seen=seen)
    if not found:
        return None
    ((identity, values),) = found.items()  # one row: the key is the primary key
    return {**dict(zip(pk, identity)), **dict(zip(others, values))}


def refuse_missing(
    connection: Connection,
    table: Any,
    missing: set[Values],
    not_found: RowNotFoundError,
    seen: set[Values] | None = None,
) -> None:
    """Raise for the rows keyed ``missing``, which a locking read found no row for.

    Rows that existed before were deleted (merged away) by another transaction
    meanwhile: :class:`ConcurrentMergeError`, retryable.  Known from ``seen``, the rows
    the lock statement itself saw before it waited (:func:`read_locked`), and where a
    plain read answers from an older snapshot than a locking one (InnoDB's REPEATABLE
    READ) from that snapshot.  Keys no row ever had, as far as this transaction can
    tell: ``not_found`` -- a wrong key is a mistake a retry would repeat, so it wins.
    """
    if not missing:
        return
    in_snapshot: set[Values] = set(seen or ()) & missing  # seen by the lock, then gone
    if backend_of(connection).snapshot_reads and not in_snapshot >= missing:
        in_snapshot |= set(read_locked(connection, table, list(missing), lock=False))
    if in_snapshot < missing:
        raise not_found
    why = "deleted or merged away by another transaction meanwhile; roll the transaction back"
    raise _gone(table, missing, f"{why} and retry")


def _gone(table: Any, missing: set[Values], why: str) -> ConcurrentMergeError:
    return ConcurrentMergeError(
        f"{len(missing)} row(s) of {table.fullname} no longer exist ({_shown(missing)}): {why}",
        table=table.fullname,
        keys=sorted(missing, key=repr),
    )


def lock_objects(
    connection: Connection, objects: Sequence[object], columns: Sequence[AnyColumn] = ()
) -> dict[int, dict[AnyColumn, Any]]:
    """:func:`lock_rows` for persistent objects, by identity; a row gone since it was
    loaded is refused (:class:`ConcurrentMergeError`, retryable).

    Returns, by ``id(obj)``, the values of those of ``columns`` that are in the
    object's base table, as locked (read without a lock where the backend locks
    no rows); nothing is read when there are none.
    """
    row_locks = backend_of(connection).row_locks
    if not row_locks and not columns:
        return {}  # the whole database is locked (SQLite), and there is nothing to read
    by_table: dict[Any, list[Values]] = {}
    wanted: dict[Any, tuple[AnyColumn, ...]] = {}
    for obj in objects:
        state = attributes.instance_state(obj)
        table = state.mapper.base_mapper.local_table
        if isinstance(table, Table) and state.key is not None:
            by_table.setdefault(table, []).append(tuple(state.key[1]))
            if table not in wanted:
                wanted[table] = tuple(c for c in columns if c.table is table)
    values: dict[tuple[Any, Values], Values] = {}
    for table in sorted(by_table, key=lambda t: t.fullname):
        if not row_locks and not wanted[table]:
            continue  # the whole database is locked, and there is nothing to read
        found = read_locked(connection, table, by_table[table], wanted[table])
        missing = set(by_table[table]) - set(found)
        if missing:
            raise _gone(table, missing, "deleted or merged away by another transaction")
        values.update({(table, identity): row for identity, row in found.items()})
    read: dict[int, dict[AnyColumn, Any]] = {}
    for obj in objects:
        state = attributes.instance_state(obj)
        table = state.mapper.base_mapper.local_table
        if state.key is not None and wanted.get(table):
            row = values[table, tuple(state.key[1])]
            read[id(obj)] = dict(zip(wanted[table], row))
    return read
