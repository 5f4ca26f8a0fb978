"""The one place where a merge's stages are sequenced.

Every entry point (``merge_into``, ``merge_rows``, ``merge_many`` and a
``ReferencesSession``'s flush) describes its merges as :class:`Merge` values
and hands them to :func:`run`::

    route -> savepoint -> lock and read -> pairs by key -> plan -> check -> apply
          -> synchronize -> finish (delete the sources) -> results

What differs between the entry points is only what they feed in: how rows are
locked and their referred values read (objects, rows, keys), whether loaded
objects are synchronized, and how sources are deleted.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, Table
from sqlalchemy.orm import Mapper, Session
from sqlalchemy.orm.attributes import instance_state

from ._backend import Backend, backend_of
from ._catalog import check_references
from ._engine import HolderOf, Names, run_keys
from ._keys import AnyColumn, ReferencingKey, reference_graph
from ._options import MergeOptions
from ._pairs import pairs_by_key
from ._report import KeyResult
from ._route import Bind
from ._sync import KeyMoves, SyncResult
from ._transaction import savepoint

Values = tuple[Any, ...]
ValuesOf = Callable[[Any, tuple[AnyColumn, ...]], Values]
#: locks the merged rows and reads them: the (source, final target) pairs, as the
#: database knows them, and how to read a merged row's referred values
LockAndRead = Callable[[Connection], tuple[Sequence[tuple[Any, Any]], ValuesOf]]


@dataclass
class Merge:
    """One group of merges sharing their options and referencing keys."""

    keys: Sequence[ReferencingKey]
    options: MergeOptions
    lock_and_read: LockAndRead
    #: what the merged rows are bound as: the routing of every statement
    mapper: Mapper[Any] | None = None
    table: Table | None = None
    #: for a single merge whose rows are known: the target's own row referencing the source
    holder_of: HolderOf | None = None
    names: Names | None = None
    #: the merged rows' tables, and whether sources are deleted afterwards: the database
    #: must then hold no foreign key to them that the merge does not follow
    tables: Sequence[Table] = ()
    deletes: bool = False
    #: brings loaded objects in step with the keys' moves (the ORM entry points)
    synchronize: Callable[[Backend, list[KeyMoves]], SyncResult] | None = None


def run(
    bind: Bind,
    merges: Sequence[Merge],
    *,
    orm: bool = False,
    session: Session | None = None,
    finish: Callable[[Connection], None] | None = None,
) -> list[list[KeyResult]]:
    """Run ``merges`` in one SAVEPOINT, on the connection the first one routes to.

    ``orm``: the block flushes the Session (its own nested transaction is the
    SAVEPOINT); otherwise the SAVEPOINT is the connection's.  ``finish`` runs
    last, inside the SAVEPOINT (deleting the sources), except in a dry run,
    whose SAVEPOINT always rolls back.  When anything fails, the objects
    already synchronized in ``session`` are expired, as the database is rolled
    back under them; objects of rows the merge removed are expunged after.
    """
    first = merges[0]
    dry_run = first.options.dry_run
    touched: list[object] = []
    removed: list[object] = []
    results: list[list[KeyResult]] = []
    try:
        with savepoint(
            bind, rollback=dry_run, mapper=first.mapper, table=first.table, orm=orm
        ) as connection:
            for merge in merges:
                if merge.deletes:
                    refuse_unfollowed_references(connection, merge.tables)
                pairs, values_of = merge.lock_and_read(connection)
                key_pairs = pairs_by_key(connection, merge.keys, pairs, values_of)
                options = merge.options
                keys, moves = run_keys(
                    connection,
                    key_pairs,
                    on_conflict=options.on_conflict,
                    on_self_reference=options.on_self_reference,
                    dry_run=dry_run,
                    fetch=options.fetch,
                    holder_of=merge.holder_of,
                    names=merge.names,
                )
                results.append(keys)
                if not dry_run and merge.synchronize is not None:
                    synced = merge.synchronize(backend_of(connection), moves)
                    touched += synced.touched
                    removed += synced.removed
            if finish is not None and not dry_run:
                finish(connection)
    except BaseException:
        if session is not None:
            _expire(session, touched)
        raise
    if session is not None:
        for obj in removed:
            if instance_state(obj).session is session:
                session.expunge(obj)
    return results


#: per reference graph (rebuilt when its MetaData changes) and merged tables, the engines
#: whose catalog was found to hold no foreign key to them that the graph lacks
_checked: weakref.WeakKeyDictionary[Any, dict[frozenset[Table], weakref.WeakSet[Engine]]] = (
    weakref.WeakKeyDictionary()
)


def refuse_unfollowed_references(connection: Connection, tables: Sequence[Table]) -> None:
    """Before deleting sources: a foreign key to them that the merge does not follow would
    lose its rows (ON DELETE CASCADE takes them along, NO ACTION fails, unenforced keys
    orphan them), so the live catalog is checked (UnfollowedReferenceError).  Once per
    engine, MetaData and tables: a schema changed by another process since is not seen."""
    if not tables:
        return
    graph = reference_graph(tables[0].metadata)
    engines = _checked.setdefault(graph, {}).setdefault(frozenset(tables), weakref.WeakSet())
    if connection.engine in engines:
        return
    for table in tables:
        check_references(connection, table)
    engines.add(connection.engine)


def _expire(session: Session, objects: Sequence[object]) -> None:
    for obj in objects:
        if instance_state(obj).session is session:
            session.expire(obj)
