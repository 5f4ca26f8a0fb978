"""The ORM side of a merge: objects checked, described and read, without loading."""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Table
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import InstanceState, Mapper, Session, attributes
from sqlalchemy.orm.exc import UnmappedClassError, UnmappedColumnError

from ._compat import pending_deletions
from ._keys import AnyColumn, ReferenceGraph, ReferencingKey, reference_graph
from ._loaded import loaded_states
from .exc import ReferencesError

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
    return state.obj() in session.deleted  # pragma: no cover - no dict of pending deletions


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


def referred_columns_to_read(keys: Sequence[ReferencingKey]) -> tuple[AnyColumn, ...]:
    """The referred columns of ``keys`` outside their table's primary key: read from the
    locked rows (a primary key is the row's identity, known without reading)."""
    columns = (c for key in keys for c in key.referred_columns)
    return tuple(dict.fromkeys(c for c in columns if not c.primary_key))


def values_as_locked(
    objects: Sequence[object],
    read: dict[int, dict[AnyColumn, Any]],
    otherwise: Callable[[object, tuple[AnyColumn, ...]], Values],
    changed: dict[AnyColumn, set[Any]] | None = None,
) -> Callable[[object, tuple[AnyColumn, ...]], Values]:
    """How to read an object's referred values: from its row as locked (``read``, by
    ``id(obj)``) where it was read there, else with ``otherwise``.  Loaded attributes
    that differ from the locked row (changed by another transaction) are set to it,
    and their old values are added to ``changed`` (by column): loaded rows that still
    reference them are stale (:func:`expire_holders`)."""
    if not read:
        return otherwise  # nothing was read as locked (SQLite): every value is as loaded
    for obj in objects:
        row = read.get(id(obj))
        if row:
            _in_step_with(obj, row, changed if changed is not None else {})

    def values_of(obj: object, columns: tuple[AnyColumn, ...]) -> Values:
        row = read.get(id(obj))
        if row is not None and all(c in row for c in columns):
            return tuple(row[c] for c in columns)
        return otherwise(obj, columns)

    return values_of


def _in_step_with(
    obj: object, row: dict[AnyColumn, Any], changed: dict[AnyColumn, set[Any]]
) -> None:
    state = attributes.instance_state(obj)
    mapper = state.mapper
    for column, value in row.items():
        try:
            name = mapper.get_property_by_column(column).key
        except UnmappedColumnError:
            continue
        old = state.dict.get(name, value)
        if old != value and name not in state.committed_state:
            attributes.set_committed_value(obj, name, value)
            changed.setdefault(column, set()).add(old)


def expire_holders(
    session: Session,
    graph: ReferenceGraph,
    keys: Sequence[ReferencingKey],
    changed: dict[AnyColumn, set[Any]],
) -> None:
    """Expire the loaded rows whose key still holds a referred value another transaction
    changed (an ON UPDATE rule moved them in the database: CASCADE, SET NULL...)."""
    for key in keys:
        positions = [i for i, c in enumerate(key.referred_columns) if c in changed]
        if not positions:
            continue
        classes = [m.class_ for m in graph.mappers_by_table.get(key.table, ())]
        for state in loaded_states(session, classes):
            for position in positions:
                try:
                    name = state.mapper.get_property_by_column(key.columns[position]).key
                except UnmappedColumnError:
                    continue
                stale = changed[key.referred_columns[position]]
                if name in state.dict and state.dict[name] in stale:
                    session.expire(state.obj())
                    break
