"""``merge_into``: re-point every reference from one row to another."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy import inspect
from sqlalchemy.exc import ArgumentError, DBAPIError, NoInspectionAvailable
from sqlalchemy.orm import InstanceState, Mapper, Session, object_session
from sqlalchemy.orm.exc import UnmappedColumnError

from . import _statements as sql
from ._errors import MergeConflictError, ReferencesError
from ._keys import AnyColumn, ReferenceGraph, ReferencingKey, reference_graph
from ._report import Conflict, KeyResult, MergeReport
from ._sync import SYNCHRONIZE_MODES, KeyMoves, SynchronizeMode, synchronize

Values = tuple[Any, ...]
OnConflict = Literal["raise", "delete", "ignore"]
OnSelfReference = Literal["raise", "null"]
ON_CONFLICT = ("raise", "delete", "ignore")
ON_SELF_REFERENCE = ("raise", "null")


def check_options(
    on_conflict: object, synchronize_session: object, on_self_reference: object = "raise"
) -> None:
    if on_conflict not in ON_CONFLICT:
        raise ArgumentError(
            f"on_conflict must be one of {', '.join(map(repr, ON_CONFLICT))}; got {on_conflict!r}"
        )
    if synchronize_session not in SYNCHRONIZE_MODES or synchronize_session is True:
        raise ArgumentError(
            "synchronize_session must be 'evaluate', 'fetch', 'expire' or False; "
            f"got {synchronize_session!r}"
        )
    if on_self_reference not in ON_SELF_REFERENCE:
        raise ArgumentError(
            f"on_self_reference must be 'raise' or 'null'; got {on_self_reference!r}"
        )


def instance_state(obj: object, role: str) -> InstanceState[Any]:
    try:
        state: InstanceState[Any] = inspect(obj)
    except NoInspectionAvailable:
        state = None  # type: ignore[assignment]
    if not isinstance(state, InstanceState):
        raise ArgumentError(f"{role} must be an instance of a mapped class; got {obj!r}")
    return state


def session_of(source: object, target: object) -> Session:
    """The session both objects belong to; raises on any mismatch."""
    source_state = instance_state(source, "source")
    target_state = instance_state(target, "target")
    if source is target:
        raise ReferencesError(f"cannot merge {source!r} into itself")
    session = object_session(source)
    if session is None:
        raise ReferencesError(f"source {source!r} is not attached to a Session ({_state_name(source_state)})")
    if object_session(target) is None:
        raise ReferencesError(f"target {target!r} is not attached to a Session ({_state_name(target_state)})")
    if object_session(target) is not session:
        raise ReferencesError(f"{source!r} and {target!r} belong to different sessions")
    if not target_state.mapper.isa(source_state.mapper):
        raise ReferencesError(
            f"cannot merge a {source_state.mapper.class_.__name__} into a "
            f"{target_state.mapper.class_.__name__}: the target must be of the source's class"
        )
    for role, state in (("source", source_state), ("target", target_state)):
        if state.deleted or state.was_deleted or state.obj() in session.deleted:
            raise ReferencesError(f"{role} {state.obj()!r} is deleted")
    return session


def _state_name(state: InstanceState[Any]) -> str:
    for name in ("transient", "pending", "persistent", "deleted", "detached"):
        if getattr(state, name):
            return name
    return "unknown state"


def check_persistent(source: object, target: object) -> None:
    for role, obj in (("source", source), ("target", target)):
        state = inspect(obj)
        if not state.persistent:
            raise ReferencesError(f"{role} {obj!r} is not persistent ({_state_name(state)})")


def referred_values(obj: object, columns: Sequence[AnyColumn]) -> Values:
    """The object's values for ``columns`` (loaded if expired)."""
    mapper = inspect(obj).mapper
    values = []
    for column in columns:
        try:
            prop = mapper.get_property_by_column(column)
        except UnmappedColumnError:
            raise ReferencesError(
                f"{column} is referenced by a foreign key but not mapped on {mapper.class_.__name__}"
            ) from None
        values.append(getattr(obj, prop.key))
    return tuple(values)


def graph_of(mapper: Mapper[Any]) -> ReferenceGraph:
    return reference_graph(mapper.local_table.metadata)


@contextlib.contextmanager
def savepoint(session: Session) -> Iterator[None]:
    """A SAVEPOINT that a later ``session.rollback()`` can still undo.

    pysqlite starts no transaction before a SAVEPOINT, so releasing it would
    commit; a real BEGIN is issued first when the driver has none open.
    """
    connection = session.connection()
    if connection.dialect.name == "sqlite":
        driver_connection = connection.connection.driver_connection
        if getattr(driver_connection, "in_transaction", True) is False:
            connection.exec_driver_sql("BEGIN")
    with session.begin_nested():
        yield


@dataclass
class KeyPlan:
    key: ReferencingKey
    source: Values
    target: Values
    conflicts: list[Conflict] = field(default_factory=list)
    #: the target's own row references the source through this key
    target_refers_to_source: Values | None = None

    @property
    def conflicting_rows(self) -> list[Values]:
        seen: dict[Values, None] = {}
        for conflict in self.conflicts:
            seen.update(dict.fromkeys(conflict.rows))
        return list(seen)


def plan_merge(session: Session, graph: ReferenceGraph, source: object, target: object) -> list[KeyPlan]:
    """Values, self-references and conflicts of every key, read before anything is written."""
    plans = []
    target_mapper = inspect(target).mapper
    held_by_target = set(graph.keys_held_by(target_mapper))
    for key in graph.keys_for_mapper(inspect(source).mapper):
        source_values = referred_values(source, key.referred_columns)
        target_values = referred_values(target, key.referred_columns)
        if any(v is None for v in source_values):
            continue  # nothing can reference a NULL
        plan = KeyPlan(key, source_values, target_values)
        if any(v is None for v in target_values) or source_values == target_values:
            count = session.execute(sql.count_references(key, source_values)).scalar_one()
            if count:
                raise ReferencesError(
                    f"cannot re-point {count} row(s) of {key.name}: the target's "
                    f"{', '.join(c.name for c in key.referred_columns)} is {target_values}"
                )
            continue
        if key in held_by_target and referred_values(target, key.columns) == source_values:
            plan.target_refers_to_source = referred_values(target, key.identity)
        for unique in key.unique_keys:
            rows = session.execute(
                sql.conflicting_rows(key, unique, source_values, target_values)
            ).all()
            if rows:
                plan.conflicts.append(Conflict(key, unique.name, tuple(tuple(r) for r in rows)))
        plans.append(plan)
    return plans


def _check_self_reference(plans: Sequence[KeyPlan], source: object, target: object, mode: str) -> None:
    if mode == "null":
        return
    for plan in plans:
        if plan.target_refers_to_source is not None:
            raise ReferencesError(
                f"{target!r} references {source!r} through {plan.key.name}; merging would "
                "make it reference itself (pass on_self_reference='null' to clear that reference)"
            )


def _dry_run(session: Session, plans: Sequence[KeyPlan], on_conflict: str) -> list[KeyResult]:
    results = []
    for plan in plans:
        count = session.execute(sql.count_references(plan.key, plan.source)).scalar_one()
        clashing = len(plan.conflicting_rows) if on_conflict != "raise" else 0
        self_ref = 1 if plan.target_refers_to_source is not None else 0
        results.append(
            KeyResult(
                plan.key,
                repointed=count - clashing - self_ref,
                deleted=clashing if on_conflict == "delete" else 0,
                left=clashing if on_conflict == "ignore" else 0,
                conflicts=list(plan.conflicts),
            )
        )
    return results


def _execute(session: Session, statement: Any, key: ReferencingKey, what: str) -> Any:
    try:
        return session.execute(statement)
    except DBAPIError as error:
        error.add_note(f"sa_references: failed while {what} {key.name}")
        raise


def _apply(
    session: Session, plan: KeyPlan, on_conflict: str, fetch: bool
) -> tuple[KeyResult, KeyMoves]:
    key = plan.key
    result = KeyResult(key, conflicts=list(plan.conflicts))
    moves = KeyMoves(key, {plan.source: plan.target})
    if plan.target_refers_to_source is not None:
        _execute(session, sql.nullify(key, plan.target_refers_to_source, plan.source), key, "clearing the target's self-reference in")
        moves.kept.add(plan.target_refers_to_source)
    clashing = plan.conflicting_rows
    if clashing and on_conflict == "delete":
        result.deleted = _execute(session, sql.delete_rows(key, plan.source, clashing), key, "deleting conflicting rows of").rowcount
        moves.deleted.update(clashing)
    keep = clashing if on_conflict == "ignore" else []
    if on_conflict == "ignore":
        result.left = len(clashing)
        moves.kept.update(clashing)
    statement = sql.repoint(key, plan.source, plan.target, keep)
    if fetch:
        moves.moved = {}
        if session.connection().dialect.update_returning:
            rows = _execute(session, statement.returning(*key.identity), key, "re-pointing").all()
        else:
            select = sql.rows_of(key, plan.source)
            rows = [r for r in _execute(session, select, key, "reading").all() if tuple(r) not in moves.kept]
            _execute(session, statement, key, "re-pointing")
        moves.moved = {tuple(r): plan.target for r in rows}
        result.repointed = len(rows)
    else:
        result.repointed = _execute(session, statement, key, "re-pointing").rowcount
    return result, moves


def merge_into(
    source: object,
    target: object,
    *,
    on_conflict: OnConflict = "raise",
    delete: bool = False,
    dry_run: bool = False,
    synchronize_session: SynchronizeMode = "evaluate",
    on_self_reference: OnSelfReference = "raise",
) -> MergeReport:
    """Re-point every foreign key that references ``source`` to ``target``.

    Unrelated to :meth:`Session.merge() <sqlalchemy.orm.Session.merge>`, which
    copies an object's state into a session: this rewrites the *references*
    to a duplicate row so they point at the row kept.

    Works through ``object_session(source)``: pending changes are flushed
    first, conflicts on unique keys of referencing tables are found before
    anything is written, then one UPDATE per referencing key runs inside a
    SAVEPOINT (all or nothing) and the objects already loaded are brought in
    step (see ``synchronize_session``).

    :param on_conflict: ``"raise"`` (:class:`MergeConflictError`, nothing
      changed), ``"delete"`` (delete the source's clashing rows) or
      ``"ignore"`` (leave them on the source).
    :param delete: delete ``source`` through the session afterwards, so ORM
      cascades and events run.
    :param dry_run: count only; nothing is written.
    :param synchronize_session: ``"evaluate"`` (default), ``"fetch"``,
      ``"expire"`` or ``False``.
    :param on_self_reference: when the target references the source
      (``keeper.manager is dupe``): ``"raise"`` (default) or ``"null"`` to
      clear that reference first.

    E.g.::

        report = merge_into(dupe, keeper, on_conflict="delete", delete=True)
        print(report.rowcount)
    """
    check_options(on_conflict, synchronize_session, on_self_reference)
    session = session_of(source, target)
    queue = getattr(session, "_sa_references_queue", None)
    if queue is not None and not dry_run:
        report: MergeReport = queue(
            source, target, on_conflict=on_conflict, delete=delete,
            synchronize_session=synchronize_session, on_self_reference=on_self_reference,
        )
        return report
    session.flush()
    check_persistent(source, target)
    graph = graph_of(inspect(source).mapper)
    plans = plan_merge(session, graph, source, target)
    _check_self_reference(plans, source, target, on_self_reference)
    report = MergeReport(source, target, dry_run=dry_run)
    if dry_run:
        report.keys = _dry_run(session, plans, on_conflict)
        return report
    conflicts = [c for p in plans for c in p.conflicts]
    if conflicts and on_conflict == "raise":
        raise MergeConflictError(conflicts)
    touched: list[object] = []
    removed: list[object] = []
    try:
        with savepoint(session):
            all_moves = []
            for plan in plans:
                result, moves = _apply(session, plan, on_conflict, synchronize_session == "fetch")
                report.keys.append(result)
                all_moves.append(moves)
            synced = synchronize(session, graph, [(source, target)], all_moves, synchronize_session)
            touched, removed = synced.touched, synced.removed
            _expire_self_references(session, plans, target)
            if delete:
                session.delete(source)
                session.flush()
    except BaseException:
        for obj in touched:
            if inspect(obj).session is session:
                session.expire(obj)
        raise
    for obj in removed:
        if inspect(obj).session is session:
            session.expunge(obj)
    return report


def _expire_self_references(session: Session, plans: Sequence[KeyPlan], target: object) -> None:
    mapper = inspect(target).mapper
    for plan in plans:
        if plan.target_refers_to_source is None:
            continue
        attrs = [mapper.get_property_by_column(c).key for c in plan.key.columns]
        attrs += [
            r.key for r in mapper.relationships
            if set(r.local_columns) & set(plan.key.columns) and r.secondary is None
        ]
        session.expire(target, attrs)
