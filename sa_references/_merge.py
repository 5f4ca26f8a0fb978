"""``merge_into`` (ORM objects) and ``merge_rows`` (any Table, reflected ones too)."""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, Table, select
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import InstanceState, Mapper, Session, attributes
from sqlalchemy.orm.exc import UnmappedClassError, UnmappedColumnError

from . import _repoint as repoint
from . import _statements as sql
from ._compat import pending_deletions
from ._keys import AnyColumn, ReferenceGraph, python_type_of, reference_graph
from ._repoint import Bind, OnConflict, OnSelfReference, check_options
from ._report import MergeReport
from ._sync import SynchronizeMode, synchronize
from .exc import ConcurrentMergeError, ReferencesError, RowNotFoundError

Values = tuple[Any, ...]


def instance_state(obj: object, role: str) -> InstanceState[Any]:
    # what inspect(obj) does for instances, without trying the class-level inspectors
    # of DeclarativeBase first (several microseconds per call on SQLAlchemy 2.1)
    try:
        state = attributes.instance_state(obj)
    except (AttributeError, KeyError, UnmappedClassError):
        state = None
    if not isinstance(state, InstanceState):
        raise ArgumentError(f"{role} must be an instance of a mapped class; got {obj!r}")
    return state


def _state_name(state: InstanceState[Any]) -> str:
    for name in ("transient", "pending", "persistent", "deleted", "detached"):
        if getattr(state, name):
            return name
    return "unknown state"  # pragma: no cover


def describe(state: InstanceState[Any]) -> str:
    """``transient Customer``, ``Customer (17,)``: never loads, unlike ``repr(obj)`` may."""
    name = state.class_.__name__
    if state.identity is None:
        return f"{_state_name(state)} {name}"
    prefix = "" if state.persistent else f"{_state_name(state)} "
    return f"{prefix}{name} {state.identity!r}"


def session_of(source: object, target: object) -> Session:
    """The session both objects belong to; raises on any mismatch."""
    source_state = instance_state(source, "source")
    target_state = instance_state(target, "target")
    if source is target:
        raise ReferencesError(f"cannot merge {describe(source_state)} into itself")
    session, target_session = source_state.session, target_state.session
    if session is None or target_session is None:
        role, state = ("source", source_state) if session is None else ("target", target_state)
        raise ReferencesError(f"{role} {describe(state)} is not attached to a Session")
    if target_session is not session:
        raise ReferencesError(
            f"{describe(source_state)} and {describe(target_state)} belong to different sessions"
        )
    source_mapper, target_mapper = source_state.mapper, target_state.mapper
    if target_mapper is not source_mapper and not target_mapper.isa(source_mapper):
        raise ReferencesError(
            f"cannot merge a {source_mapper.class_.__name__} into a "
            f"{target_mapper.class_.__name__}: the target must be of the source's class"
        )
    for role, state in (("source", source_state), ("target", target_state)):
        if state.was_deleted or marked_for_deletion(session, state):
            raise ReferencesError(f"{role} {describe(state)} is deleted")
    return session


def marked_for_deletion(session: Session, state: InstanceState[Any]) -> bool:
    """``obj in session.deleted``, without building that set (one per call) anew."""
    pending = pending_deletions(session)
    if pending is not None:
        return state in pending
    return state.obj() in session.deleted  # pragma: no cover - no pending_deletions()


def referred_values(obj: object, columns: Sequence[AnyColumn]) -> Values:
    """The object's values for ``columns`` (loaded if expired)."""
    mapper = attributes.instance_state(obj).mapper
    values = []
    for column in columns:
        try:
            prop = mapper.get_property_by_column(column)
        except UnmappedColumnError:
            raise ReferencesError(
                f"{column} is referenced by a foreign key but not mapped on "
                f"{mapper.class_.__name__}"
            ) from None
        values.append(getattr(obj, prop.key))
    return tuple(values)


def identity_values_reader() -> Callable[[object, tuple[AnyColumn, ...]], Values]:
    """How to read many objects' values of referred columns: from the identity key when
    the columns are primary key columns (no refresh SELECT for expired objects), else
    from the object (:func:`referred_values`).  Where the values sit in the identity key
    is looked up once per class and columns."""
    positions_of: dict[tuple[Mapper[Any], tuple[AnyColumn, ...]], tuple[int, ...] | None] = {}

    def read(obj: object, columns: tuple[AnyColumn, ...]) -> Values:
        state = attributes.instance_state(obj)
        mapper = state.mapper
        try:
            positions = positions_of[mapper, columns]
        except KeyError:
            positions = positions_of[mapper, columns] = _identity_positions(mapper, columns)
        key = state.key
        if positions is None or key is None:
            return referred_values(obj, columns)
        identity = key[1]
        if len(positions) == 1:
            return (identity[positions[0]],)
        return tuple([identity[i] for i in positions])

    return read


_positions: weakref.WeakKeyDictionary[Mapper[Any], dict[Any, tuple[int, ...] | None]] = (
    weakref.WeakKeyDictionary()
)


def _identity_positions(
    mapper: Mapper[Any], columns: tuple[AnyColumn, ...]
) -> tuple[int, ...] | None:
    by_columns = _positions.setdefault(mapper, {})
    if columns not in by_columns:
        by_columns[columns] = _find_identity_positions(mapper, columns)
    return by_columns[columns]


def _find_identity_positions(
    mapper: Mapper[Any], columns: tuple[AnyColumn, ...]
) -> tuple[int, ...] | None:
    try:
        primary = [mapper.get_property_by_column(c).key for c in mapper.primary_key]
        wanted = [mapper.get_property_by_column(c).key for c in columns]
    except UnmappedColumnError:
        return None
    if not set(wanted) <= set(primary):
        return None
    return tuple(primary.index(name) for name in wanted)


def graph_of(mapper: Mapper[Any]) -> ReferenceGraph:
    """The reference graph of the MetaData ``mapper``'s tables belong to."""
    for table in mapper.tables:
        if isinstance(table, Table):
            return reference_graph(table.metadata)
    raise ArgumentError(f"{mapper} maps no Table")


def merge_into(
    source: object,
    target: object,
    *,
    on_conflict: OnConflict = "raise",
    delete: bool = False,
    dry_run: bool = False,
    synchronize_session: SynchronizeMode | None = None,
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
    :param synchronize_session: ``"evaluate"`` (the default, or the
      ``ReferencesSession``'s own default), ``"fetch"``, ``"expire"`` or ``False``.
    :param on_self_reference: when the target references the source
      (``keeper.manager is dupe``): ``"raise"`` (default) or ``"null"`` to
      clear that reference first.

    E.g.::

        report = merge_into(dupe, keeper, on_conflict="delete", delete=True)
        print(report.rowcount)
    """
    mode = "evaluate" if synchronize_session is None else synchronize_session
    check_options(on_conflict, mode, on_self_reference)
    session = session_of(source, target)
    queue = getattr(session, "_sa_references_queue", None)
    if queue is not None and not dry_run:
        queued: MergeReport = queue(
            source,
            target,
            on_conflict=on_conflict,
            delete=delete,
            synchronize_session=synchronize_session,
            on_self_reference=on_self_reference,
        )
        return queued
    session.flush()
    for role, obj in (("source", source), ("target", target)):
        state = attributes.instance_state(obj)
        if not state.persistent:
            raise ReferencesError(f"{role} {describe(state)} is not persistent")
    source_state, target_state = (
        attributes.instance_state(source),
        attributes.instance_state(target),
    )
    source_mapper, target_mapper = source_state.mapper, target_state.mapper
    graph = graph_of(source_mapper)
    held_by_target = set(graph.keys_held_by(target_mapper))
    report = MergeReport(source, target, dry_run=dry_run)
    touched: list[object] = []
    removed: list[object] = []
    try:
        # reads too: a failed read leaves the session usable; a dry run is rolled back
        # Core statements on the session's connection for the source's class (the
        # savepoint's): the ORM's execute() adds nothing to them; only delete= flushes
        # the ORM inside, and needs the Session's own nested transaction
        orm = delete or dry_run
        with repoint.savepoint(session, rollback=dry_run, mapper=source_mapper, orm=orm) as bind:
            lock_objects(bind, [source, target])
            plans = repoint.plan(
                bind,
                graph.keys_for_mapper(source_mapper),
                lambda columns: referred_values(source, columns),
                lambda columns: referred_values(target, columns),
                held_by_target.__contains__,
            )
            repoint.check_plans(
                plans,
                on_conflict,
                on_self_reference,
                lambda: (describe(source_state), describe(target_state)),
                dry_run,
            )
            if dry_run:
                report.keys = repoint.dry_run(bind, plans, on_conflict)
                return report
            report.keys, all_moves = repoint.apply_all(bind, plans, on_conflict, mode == "fetch")
            deleting = [source] if delete else []
            synced = synchronize(session, graph, [(source, target)], all_moves, mode, deleting)
            touched, removed = synced.touched, synced.removed
            if delete:
                session.delete(source)
                session.flush()
    except BaseException:
        for obj in touched:
            if attributes.instance_state(obj).session is session:
                session.expire(obj)
        raise
    for obj in removed:
        if attributes.instance_state(obj).session is session:
            session.expunge(obj)
    return report


def lock_objects(bind: Bind, objects: Sequence[object]) -> None:
    """:func:`~._repoint.lock_rows` for persistent objects, by identity."""
    if repoint.dialect_of(bind).name == "sqlite":
        return  # the whole database is locked (see lock_rows)
    by_table: dict[Any, list[Values]] = {}
    for obj in objects:
        state = attributes.instance_state(obj)
        table = state.mapper.base_mapper.local_table
        if isinstance(table, Table) and state.key is not None:
            by_table.setdefault(table, []).append(tuple(state.key[1]))
    for table in sorted(by_table, key=lambda t: t.fullname):
        missing = repoint.lock_rows(bind, table, by_table[table])
        if missing:
            shown = ", ".join(repr(m) for m in sorted(missing, key=repr)[:5])
            raise ConcurrentMergeError(
                f"{len(missing)} row(s) of {table.fullname} no longer exist ({shown}): "
                "deleted or merged away by another transaction"
            )


def primary_key_values(table: Table, key: Any) -> Values:
    """Normalise a primary key given as a scalar, a sequence or a mapping."""
    return key_normaliser(table)(key)


def key_normaliser(table: Table) -> Callable[[Any], Values]:
    """:func:`primary_key_values` for ``table``, with the columns looked at once (many keys)."""
    columns = list(table.primary_key.columns)
    if not columns:
        raise ReferencesError(f"table {table.fullname} has no primary key")
    names = ", ".join(c.name for c in columns)
    types = [python_type_of(c) for c in columns]
    # the usual key: one column, given as a value of its exact Python type
    scalar_type = types[0] if len(columns) == 1 else None

    def normalise(key: Any) -> Values:
        if scalar_type is not None and type(key) is scalar_type:
            return (key,)
        if isinstance(key, Mapping):
            if len(key) != len(columns) or any(c.name not in key for c in columns):
                raise ArgumentError(f"{table.fullname} is keyed by ({names}); got {dict(key)!r}")
            values = tuple(key[c.name] for c in columns)
        else:
            values = tuple(key) if isinstance(key, (tuple, list)) else (key,)
        if len(values) != len(columns):
            raise ArgumentError(
                f"{table.fullname} is keyed by {len(columns)} column(s) "
                f"({names}); got {len(values)} value(s)"
            )
        for column, python_type, value in zip(columns, types, values):
            if python_type is None or type(value) is not python_type:
                _check_key_value(table, column, python_type, value)
        return values

    return normalise


def _check_key_value(table: Table, column: AnyColumn, python_type: type | None, value: Any) -> None:
    """Refuse a key value no row can have, before a database casts it (1.5 read as 2)."""
    if value is None:
        raise ArgumentError(f"no row of {table.fullname} has a NULL {column.name}")
    if python_type is None or isinstance(value, python_type):
        return
    try:
        fits = python_type(value) == value
    except (TypeError, ValueError, ArithmeticError):
        fits = False
    if not fits:
        raise ArgumentError(
            f"no row of {table.fullname} has {column.name} = {value!r} "
            f"(a {python_type.__name__} column)"
        )


def fetch_row(bind: Bind, table: Table, key: Values, role: str) -> Mapping[AnyColumn, Any]:
    pk = list(table.primary_key.columns)
    row = bind.execute(select(table).where(sql.matches(pk, key))).first()
    if row is None:
        raise RowNotFoundError(f"{role} row {key!r} not found in {table.fullname}")
    return {column: row._mapping[column] for column in table.columns}


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
    check_options(on_conflict, "evaluate", on_self_reference)
    repoint.check_bind(bind)
    if not isinstance(table, Table):
        raise ArgumentError(f"expected a Table; got {table!r}")
    source_key = primary_key_values(table, source)
    target_key = primary_key_values(table, target)
    if source_key == target_key:
        raise ReferencesError(f"cannot merge row {source_key!r} of {table.fullname} into itself")
    pk = list(table.primary_key.columns)
    graph = reference_graph(table.metadata)
    report = MergeReport(source_key, target_key, dry_run=dry_run)
    with repoint.savepoint(bind, rollback=dry_run, orm=False):
        repoint.lock_rows(bind, table, [source_key, target_key])
        source_row = fetch_row(bind, table, source_key, "source")
        target_row = fetch_row(bind, table, target_key, "target")
        # the keys as the database matched them (it may have cast the values given)
        source_key = tuple(source_row[c] for c in pk)
        target_key = tuple(target_row[c] for c in pk)
        if source_key == target_key:
            raise ReferencesError(
                f"cannot merge row {source_key!r} of {table.fullname} into itself"
            )
        report.source, report.target = source_key, target_key
        plans = repoint.plan(
            bind,
            graph.keys_for_tables([table]),
            lambda columns: tuple(source_row[c] for c in columns),
            lambda columns: tuple(target_row[c] for c in columns),
            lambda key: key.table is table,
        )
        names = (f"{table.fullname} {source_key!r}", f"{table.fullname} {target_key!r}")
        repoint.check_plans(plans, on_conflict, on_self_reference, lambda: names, dry_run)
        if dry_run:
            report.keys = repoint.dry_run(bind, plans, on_conflict)
            return report
        report.keys, _ = repoint.apply_all(bind, plans, on_conflict, fetch=False)
        if delete:
            bind.execute(table.delete().where(sql.matches(pk, source_key)))
    return report
