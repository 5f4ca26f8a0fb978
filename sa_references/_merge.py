"""The merge entry points: ``merge_into`` (ORM objects), ``merge_rows`` and ``merge_many``
(rows of any Table, reflected ones too).  Each describes its merge and hands it to the
one pipeline (:mod:`._pipeline`)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Connection, Table
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.orm import Mapper, Session, attributes

from . import _statements as sql
from ._backend import backend_of
from ._compat import add_note
from ._keys import AnyColumn, ReferencingKey, reference_graph
from ._locks import lock_objects, lock_rows, locked_row, refuse_missing
from ._objects import (
    describe,
    expire_holders,
    graph_of,
    referred_columns_to_read,
    referred_values,
    session_of,
    values_as_locked,
)
from ._options import (
    USE_SESSION_DEFAULT,
    MergeOptions,
    OnConflict,
    OnSelfReference,
    SessionDefault,
    SynchronizeMode,
    merge_options,
)
from ._pairs import (
    checked_pairs,
    fetch_row,
    key_normaliser,
    not_found_error,
    primary_key_values,
    referred_values_of_keys,
    resolve_chains,
)
from ._pipeline import Merge, ValuesOf, run
from ._report import BatchReport, MergeReport
from ._route import check_bind
from ._sync import synchronize
from .exc import ReferencesError

Values = tuple[Any, ...]


def merge_into(
    source: object,
    target: object,
    *,
    on_conflict: OnConflict = "raise",
    delete: bool = False,
    dry_run: bool = False,
    synchronize_session: SynchronizeMode | SessionDefault = USE_SESSION_DEFAULT,
    on_self_reference: OnSelfReference = "raise",
) -> MergeReport:
    """Re-point every foreign key that references ``source`` to ``target``.

    Unrelated to :meth:`Session.merge() <sqlalchemy.orm.Session.merge>`, which
    copies an object's state into a session: this rewrites the *references*
    to a duplicate row so they point at the row kept.

    Works through ``object_session(source)``: pending changes are flushed
    first, conflicts on unique keys of referencing tables are found before
    anything is written, then one UPDATE per referencing key runs inside a
    SAVEPOINT (all or nothing; on PostgreSQL the plain UPDATEs of keys of
    distinct tables are sent as one statement) and the objects already loaded
    are brought in step (see ``synchronize_session``).  In a
    ``ReferencesSession`` the merge is queued and applied, set-based, at the
    next flush.

    :param on_conflict: ``"raise"`` (:class:`MergeConflictError`, nothing
      changed), ``"delete"`` (delete the source's clashing rows) or
      ``"ignore"`` (leave them on the source).
    :param delete: delete ``source`` through the session afterwards, so ORM
      cascades and events run.
    :param dry_run: report what the merge would do, and keep nothing: its statements
      run inside a SAVEPOINT that is rolled back (conflicts are reported, not raised),
      so the counts are the merge's own; loaded objects are left as they are.
    :param synchronize_session: ``"evaluate"``, ``"fetch"``, ``"expire"`` or
      ``False``; by default (``USE_SESSION_DEFAULT``) the ``ReferencesSession``'s
      own ``synchronize_session``, or ``"evaluate"`` on a plain Session.
    :param on_self_reference: when the target references the source
      (``keeper.manager is dupe``): ``"raise"`` (default) or ``"null"`` to
      clear that reference first.

    E.g.::

        report = merge_into(dupe, keeper, on_conflict="delete", delete=True)
        print(report.rowcount)
    """
    mode = "evaluate" if synchronize_session is USE_SESSION_DEFAULT else synchronize_session
    options = merge_options(on_conflict, on_self_reference, mode, delete, dry_run)
    session = session_of(source, target)
    queue = getattr(session, "_sa_references_queue", None)
    if queue is not None:
        queued: MergeReport = queue(source, target, options, synchronize_session)
        return queued
    return merge_objects(session, source, target, options)


def merge_objects(
    session: Session, source: object, target: object, options: MergeOptions
) -> MergeReport:
    """:func:`merge_into` once the objects and options are checked: run now."""
    session.flush()
    for role, obj in (("source", source), ("target", target)):
        state = attributes.instance_state(obj)
        if not state.persistent:
            raise ReferencesError(f"{role} {describe(state)} is not persistent")
    source_state = attributes.instance_state(source)
    target_state = attributes.instance_state(target)
    source_mapper = source_state.mapper
    graph = graph_of(source_mapper)
    held_by_target = set(graph.keys_held_by(target_state.mapper))

    keys = graph.keys_for_mapper(source_mapper)
    changed: dict[AnyColumn, set[Any]] = {}

    def lock_and_read(connection: Connection) -> tuple[list[tuple[Any, Any]], ValuesOf]:
        objects = [source, target]
        read = lock_objects(connection, objects, referred_columns_to_read(keys))
        return [(source, target)], values_as_locked(objects, read, referred_values, changed)

    def holder_of(key: ReferencingKey, source_values: Values, _: Values) -> Values | None:
        if key in held_by_target and referred_values(target, key.columns) == source_values:
            return referred_values(target, key.identity)
        return None

    deleting = [source] if options.delete else []
    merge = Merge(
        keys,
        options,
        lock_and_read,
        mapper=source_mapper,
        tables=_tables_of(source_mapper),
        deletes=options.delete,
        holder_of=holder_of,
        names=lambda: (describe(source_state), describe(target_state)),
        synchronize=lambda backend, moves: synchronize(
            session,
            graph,
            [(source, target)],
            moves,
            options.synchronize_session,
            deleting,
            inexact_string_comparison=backend.inexact_string_comparison,
        ),
    )

    def delete_source(_: Connection) -> None:
        session.delete(source)
        session.flush()

    # only delete= flushes the ORM inside the SAVEPOINT (and a dry run, to be rolled back
    # with it): otherwise the SAVEPOINT is the connection's, with nothing of the ORM in it
    orm = options.delete or options.dry_run
    finish = delete_source if options.delete else None
    (results,) = run(session, [merge], orm=orm, session=session, finish=finish)
    if changed:
        expire_holders(session, graph, keys, changed)
    return MergeReport(source, target, dry_run=options.dry_run, keys=results)


def merge_rows(
    bind: Session | Connection,
    table: Table,
    source: Any,
    target: Any,
    *,
    on_conflict: OnConflict = "raise",
    delete: bool = False,
    dry_run: bool = False,
    on_self_reference: OnSelfReference = "raise",
) -> MergeReport:
    """:func:`merge_into` for rows of any :class:`~sqlalchemy.schema.Table`, by primary key.

    No mapped classes are needed: ``table`` may come from reflection.  The
    source and target keys are a scalar, a sequence (composite keys) or a
    mapping of column name to value.  Runs inside a SAVEPOINT on ``bind``;
    the caller commits.  Objects loaded in a Session are not synchronized.

    E.g.::

        metadata = MetaData()
        metadata.reflect(connection)
        with engine.begin() as connection:
            merge_rows(connection, metadata.tables["customer"], 17, 4)
    """
    options = merge_options(on_conflict, on_self_reference, "evaluate", delete, dry_run)
    check_bind(bind)
    if not isinstance(table, Table):
        raise ArgumentError(f"expected a Table; got {table!r}")
    source_key = primary_key_values(table, source)
    target_key = primary_key_values(table, target)
    _refuse_same_row(table, source_key, target_key)
    pk = list(table.primary_key.columns)
    report = MergeReport(source_key, target_key, dry_run=dry_run)
    found: dict[str, Any] = {}

    def lock_and_read(connection: Connection) -> tuple[list[tuple[Any, Any]], ValuesOf]:
        # each row by its own locking read, in key order: the latest committed row, also
        # under REPEATABLE READ (a plain SELECT would answer from the snapshot)
        for role, key in _in_key_order([("source", source_key), ("target", target_key)]):
            seen: set[Values] = set()
            row = locked_row(connection, table, key, seen)
            if row is None:  # a wrong key, or a row another transaction deleted meanwhile
                error = not_found_error(table, {key}, role)
                refuse_missing(connection, table, {key}, error, seen=seen)
            found[role] = row
        source_row, target_row = found["source"], found["target"]
        # the keys as the database matched them (it may have cast the values given)
        matched = tuple(source_row[c] for c in pk), tuple(target_row[c] for c in pk)
        _refuse_same_row(table, *matched)
        report.source, report.target = matched
        rows = {matched[0]: source_row, matched[1]: target_row}
        return [matched], lambda key, columns: tuple(rows[key][c] for c in columns)

    def holder_of(key: ReferencingKey, source_values: Values, _: Values) -> Values | None:
        target_row = found["target"]
        if key.table is table and tuple(target_row[c] for c in key.columns) == source_values:
            return tuple(target_row[c] for c in key.identity)
        return None

    def names() -> tuple[str, str]:
        return f"{table.fullname} {report.source!r}", f"{table.fullname} {report.target!r}"

    keys = reference_graph(table.metadata).keys_for_tables([table])
    merge = Merge(
        keys,
        options,
        lock_and_read,
        table=table,
        tables=[table],
        deletes=delete,
        holder_of=holder_of,
        names=names,
    )
    finish = _row_deleter(table, lambda: [report.source]) if delete else None
    (report.keys,) = run(bind, [merge], finish=finish)
    return report


def _in_key_order(keyed: list[tuple[str, Values]]) -> list[tuple[str, Values]]:
    """Rows are locked in primary key order, as every merge does (fewer deadlocks)."""
    try:
        return sorted(keyed, key=lambda item: item[1])
    except TypeError:  # values of mixed types: any fixed order will do
        return sorted(keyed, key=lambda item: repr(item[1]))


def _stored_keys(connection: Connection, table: Table, keys: set[Values]) -> dict[Values, Values]:
    """The stored primary key of each of ``keys`` that matches a row only under the
    collation, read (and locked) one at a time: the database does the matching."""
    stored = {}
    for key in sorted(keys, key=repr):
        row = fetch_row(connection, table, key, "key", lock=True, missing_ok=True)
        if row is not None:
            stored[key] = tuple(row[c] for c in table.primary_key.columns)
    return stored


def _tables_of(mapper: Mapper[Any]) -> list[Table]:
    """The tables a mapper's rows live in (its own and, joined, its ancestors')."""
    return [t for t in mapper.tables if isinstance(t, Table)]


def _refuse_same_row(table: Table, source: Values, target: Values) -> None:
    if source == target:
        raise ReferencesError(f"cannot merge row {source!r} of {table.fullname} into itself")


def _row_deleter(table: Table, keys: Any) -> Any:
    """A ``finish`` step deleting the rows keyed ``keys()`` (the sources) from ``table``."""
    pk: Sequence[AnyColumn] = list(table.primary_key.columns)

    def delete_rows(connection: Connection) -> None:
        for chunk in sql.chunks(list(keys())):
            try:
                connection.execute(table.delete().where(sql.identity_in(pk, chunk)))
            except DBAPIError as error:
                add_note(
                    error,
                    f"sa_references: failed while deleting the source row(s) of "
                    f"{table.fullname}, after re-pointing (rows still reference them: "
                    "conflicting rows left, or a key the merge does not follow)",
                )
                raise

    return delete_rows


def merge_many(
    bind: Session | Connection,
    table: Table,
    pairs: Iterable[tuple[Any, Any]],
    *,
    on_conflict: OnConflict = "raise",
    delete: bool = False,
    dry_run: bool = False,
    on_self_reference: OnSelfReference = "raise",
) -> BatchReport:
    """Merge many rows of ``table`` at once: one set-based statement per referencing key.

    ``pairs`` are ``(source key, target key)`` primary keys (scalars,
    sequences or mappings, as for :func:`merge_rows`).  Chains resolve
    (``a -> b`` and ``b -> c`` end with both at ``c``); a cycle raises
    :class:`MergeCycleError` before anything runs.  Atomic: the whole batch
    runs inside a SAVEPOINT.

    E.g.::

        with engine.begin() as connection:
            report = merge_many(connection, customers, [(17, 4), (18, 4), (4, 2)])
    """
    options = merge_options(on_conflict, on_self_reference, "evaluate", delete, dry_run)
    check_bind(bind)
    if not isinstance(table, Table):
        raise ArgumentError(f"expected a Table; got {table!r}")
    normalise = key_normaliser(table)
    normalised = [(normalise(s), normalise(t)) for s, t in checked_pairs(pairs)]
    target_of = resolve_chains(normalised, lambda k: f"{table.fullname} {k!r}")
    keys = reference_graph(table.metadata).keys_for_tables([table])
    report = BatchReport(pairs=list(target_of.items()), dry_run=dry_run)

    def lock_and_read(connection: Connection) -> tuple[list[tuple[Any, Any]], ValuesOf]:
        nonlocal target_of
        involved = {*target_of, *target_of.values()}
        seen: set[Values] = set()
        missing = lock_rows(connection, table, list(involved), seen=seen)
        if missing and backend_of(connection).inexact_string_comparison:
            # keys the database finds equal to a row's under its collation ('ada' for
            # 'ADA'), as merge_rows accepts them: the pairs as the rows are stored
            stored = _stored_keys(connection, table, missing)
            if stored:
                target_of = resolve_chains(
                    [(stored.get(s, s), stored.get(t, t)) for s, t in target_of.items()],
                    lambda k: f"{table.fullname} {k!r}",
                )
                report.pairs = list(target_of.items())
                involved = {*target_of, *target_of.values()}
                missing -= set(stored)
        if missing:  # wrong keys, or rows another transaction deleted meanwhile
            refuse_missing(connection, table, missing, not_found_error(table, missing), seen)
        values_of = referred_values_of_keys(connection, table, keys, involved, missing)
        return list(target_of.items()), values_of

    merge = Merge(keys, options, lock_and_read, table=table, tables=[table], deletes=delete)
    finish = _row_deleter(table, lambda: target_of) if delete and target_of else None
    (report.keys,) = run(bind, [merge], finish=finish)
    return report
