"""Running one merge's statements: plan (values, self-references, conflicts), then apply.

Works on a :class:`~sqlalchemy.orm.Session` or a Core
:class:`~sqlalchemy.engine.Connection` alike, so ORM objects and reflected
tables share one implementation.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from sqlalchemy import Connection
from sqlalchemy.engine import CursorResult, Dialect, NestedTransaction
from sqlalchemy.exc import ArgumentError, DBAPIError, SQLAlchemyError
from sqlalchemy.orm import Mapper, Session, SessionTransaction

from . import _statements as sql
from ._compat import add_note, savepoint_name
from ._keys import AnyColumn, ReferencingKey
from ._report import Conflict, KeyResult, clashing_rows
from ._sync import SYNCHRONIZE_MODES, KeyMoves
from .exc import MergeConflictError, ReferencesError, SelfReferenceError

Values = tuple[Any, ...]
Bind = Session | Connection
RowValues = Callable[[Sequence[AnyColumn]], Values]
OnConflict = Literal["raise", "delete", "ignore"]
OnSelfReference = Literal["raise", "null"]
ON_CONFLICT = ("raise", "delete", "ignore")
ON_SELF_REFERENCE = ("raise", "null")


def check_options(
    on_conflict: object,
    synchronize_session: object = "evaluate",
    on_self_reference: object = "raise",
) -> None:
    if on_conflict not in ON_CONFLICT:
        raise ArgumentError(
            f"on_conflict must be one of {', '.join(map(repr, ON_CONFLICT))}; got {on_conflict!r}"
        )
    if synchronize_session is True or synchronize_session not in SYNCHRONIZE_MODES:
        raise ArgumentError(
            "synchronize_session must be 'evaluate', 'fetch', 'expire' or False; "
            f"got {synchronize_session!r}"
        )
    if on_self_reference not in ON_SELF_REFERENCE:
        raise ArgumentError(
            f"on_self_reference must be 'raise' or 'null'; got {on_self_reference!r}"
        )


def check_bind(bind: object) -> None:
    if not isinstance(bind, (Session, Connection)):
        raise ArgumentError(
            f"expected a Session or a Connection (use engine.begin() for an Engine); got {bind!r}"
        )


def connection_of(bind: Bind, mapper: Mapper[Any] | None = None) -> Connection:
    """The connection ``bind`` runs on; for a Session, the one it binds ``mapper`` to."""
    if isinstance(bind, Session):
        return bind.connection(bind_arguments={"mapper": mapper} if mapper is not None else None)
    return bind


def dialect_of(bind: Bind) -> Dialect:
    return connection_of(bind).dialect


@contextlib.contextmanager
def savepoint(
    bind: Bind, *, rollback: bool = False, mapper: Mapper[Any] | None = None, orm: bool = True
) -> Iterator[Connection]:
    """A SAVEPOINT that a later rollback of the enclosing transaction still undoes.

    pysqlite starts no transaction before a SAVEPOINT, so releasing it would
    commit; a real BEGIN is issued first when the driver has none open.

    ``rollback=True`` (a dry run) rolls it back even when the block succeeds:
    the block's writes are undone, and a failure to undo them raises.

    When the RELEASE SAVEPOINT itself fails, SQLAlchemy marks the savepoint
    inactive so that its rollback emits nothing: the ROLLBACK TO SAVEPOINT is
    then sent here, or the merge's writes would stay in the caller's
    transaction (left aborted, on PostgreSQL).

    ``mapper``: for a Session, the SAVEPOINT is opened on the connection the
    session binds ``mapper`` to (a session may bind classes to several engines).
    That connection is what the block gets (``with savepoint(...) as connection``).

    ``orm=False``: the block runs Core statements only (no ORM flush), so the
    SAVEPOINT is the connection's own rather than a Session's nested transaction;
    on MySQL/MariaDB it is then never released (:func:`_unreleased_savepoint`).
    """
    connection = connection_of(bind, mapper)
    if not orm and not rollback and connection.dialect.name == "mysql":
        with _unreleased_savepoint(connection):
            yield connection
        return
    if not orm:
        bind = connection
    if connection.dialect.name == "sqlite":
        driver_connection = connection.connection.driver_connection
        if getattr(driver_connection, "in_transaction", True) is False:
            connection.exec_driver_sql("BEGIN")
    nested = bind.begin_nested()
    opened: NestedTransaction | None = None
    try:
        # a Session sends its SAVEPOINT on first use: asking for its connection does
        current = connection_of(bind, mapper)
        opened = current.get_nested_transaction()
        yield current
    except BaseException:
        _undo(connection, nested, opened)
        raise
    if rollback:
        nested.rollback()
        return
    try:
        nested.commit()  # RELEASE SAVEPOINT: when it fails, the merge is rolled back too
    except BaseException:
        _undo(connection, nested, opened)
        raise


#: open unreleased savepoints per connection: the nesting level names the next one
_unreleased_depth: weakref.WeakKeyDictionary[Connection, int] = weakref.WeakKeyDictionary()


@contextlib.contextmanager
def _unreleased_savepoint(connection: Connection) -> Iterator[None]:
    """MySQL/MariaDB: a SAVEPOINT that is never released, one round trip fewer per merge.

    Setting a savepoint under a name already set replaces it there (PostgreSQL
    and SQLite would stack them), and COMMIT or ROLLBACK drops them all; so one
    name per nesting level is set again by every single merge.  A failing block
    is rolled back to it; when that fails too (a deadlock already rolled the
    whole transaction back), the block's error is the one that propagates.
    """
    depth = _unreleased_depth.get(connection, 0)
    name = f"sa_references_{depth}"
    # the driver's string: dialect.do_savepoint() compiles a clause, about 20 us more per merge
    connection.exec_driver_sql(f"SAVEPOINT {name}")
    _unreleased_depth[connection] = depth + 1
    try:
        yield
    except BaseException:
        with contextlib.suppress(DBAPIError):
            connection.dialect.do_rollback_to_savepoint(connection, name)
        raise
    finally:
        _unreleased_depth[connection] = depth


def _undo(
    connection: Connection,
    nested: NestedTransaction | SessionTransaction,
    opened: NestedTransaction | None,
) -> None:
    """Roll a failed block's SAVEPOINT back; a database error doing so is suppressed.

    When the database already rolled the whole transaction back (a MariaDB
    deadlock), ROLLBACK TO SAVEPOINT fails too: the first error is the one a
    caller can act on (retry), so it is the one that propagates.
    """
    # inactive yet still the connection's savepoint: only a failed RELEASE leaves it so
    release_failed = (
        opened is not None
        and not opened.is_active
        and connection.get_nested_transaction() is opened
    )
    with contextlib.suppress(DBAPIError):
        nested.rollback()  # after a failed RELEASE, this sends nothing
    alive = connection.in_transaction() and not connection.invalidated
    if release_failed and opened is not None and alive:
        # what NestedTransaction.rollback() would have sent, in the dialect's own form
        with contextlib.suppress(SQLAlchemyError):
            connection.dialect.do_rollback_to_savepoint(connection, savepoint_name(opened))


def execute(
    bind: Bind,
    statement: Any,
    key: ReferencingKey | Sequence[ReferencingKey],
    what: str,
    params: Any = None,
) -> Any:
    """Run one statement; a database error is annotated with the key(s) it failed on."""
    try:
        return bind.execute(statement, params)
    except DBAPIError as error:
        keys = [key] if isinstance(key, ReferencingKey) else key
        add_note(error, f"sa_references: failed while {what} {', '.join(k.name for k in keys)}")
        raise


def lock_rows(bind: Bind, table: Any, identities: Sequence[Values]) -> set[Values] | None:
    """Lock the rows being merged, in primary key order, until the transaction ends.

    Concurrent merges of overlapping rows then queue behind each other instead
    of interleaving (and deadlock less: every merge locks in the same order),
    and a concurrent INSERT that references a source waits for the merge to
    commit.  Returns the identities no row has (any more): the caller refuses
    them.  SQLite locks the whole database and needs nothing here: None, no
    row was looked at.
    """
    dialect = dialect_of(bind)
    if dialect.name == "sqlite":
        return None
    wanted = set(identities)
    found: set[Values] = set()
    for statement, params in sql.lock_rows(table, list(wanted), shape=_lock_shape(dialect)):
        found.update(tuple(row) for row in bind.execute(statement, params))
    return wanted - found


def _lock_shape(dialect: Dialect) -> sql.LockShape:
    if dialect.name == "postgresql":
        return "array"
    version = dialect.server_version_info or ()
    mariadb = getattr(dialect, "is_mariadb", False)
    if dialect.name == "mysql" and version >= ((10, 6) if mariadb else (8, 0, 4)):
        return "json"
    return "in"


def current_read(bind: Bind, statement: Any) -> Any:
    """On MySQL/MariaDB, a locking read: it sees the latest committed rows.

    InnoDB's REPEATABLE READ otherwise answers from the transaction's first
    snapshot, which can predate rows committed just before our locks were
    granted; the conflict check would miss them and the UPDATE would fail.
    """
    if dialect_of(bind).name == "mysql":
        return statement.with_for_update(read=True)
    return statement


def rowcount(bind: Bind, statement: Any) -> int:
    """Rows matched by an UPDATE or DELETE (MySQL dialects ask for found rows)."""
    result = cast("CursorResult[Any]", bind.execute(statement))
    return int(result.rowcount)


@dataclass
class KeyPlan:
    key: ReferencingKey
    source: Values
    target: Values
    conflicts: list[Conflict] = field(default_factory=list)
    #: identity of the target's own row when it references the source through this key
    target_refers_to_source: Values | None = None

    @property
    def conflicting_rows(self) -> list[Values]:
        return clashing_rows(self.conflicts)


def plan(
    bind: Bind,
    keys: Sequence[ReferencingKey],
    source: RowValues,
    target: RowValues,
    held_by_target: Callable[[ReferencingKey], bool],
) -> list[KeyPlan]:
    """Values, self-references and conflicts of every key, read before anything is written."""
    plans = []
    # keys referring to the same columns (most refer to the primary key) share their values
    known: dict[tuple[AnyColumn, ...], tuple[Values, Values, bool, bool]] = {}
    for key in keys:
        try:
            source_values, target_values, no_source, no_target = known[key.referred_columns]
        except KeyError:
            source_values = source(key.referred_columns)
            target_values = target(key.referred_columns)
            no_source = any(v is None for v in source_values)
            no_target = any(v is None for v in target_values) or source_values == target_values
            known[key.referred_columns] = (source_values, target_values, no_source, no_target)
        if no_source:
            continue  # nothing can reference a NULL
        if no_target:
            params = sql.pair_parameters(source_values)
            count = execute(bind, sql.count_references(key), key, "counting", params).scalar_one()
            if count:
                raise ReferencesError(
                    f"cannot re-point {count} row(s) of {key.name}: the target's "
                    f"{', '.join(c.name for c in key.referred_columns)} is {target_values}"
                )
            continue
        key_plan = KeyPlan(key, source_values, target_values)
        if held_by_target(key) and target(key.columns) == source_values:
            key_plan.target_refers_to_source = target(key.identity)
        key_plan.conflicts = read_conflicts(bind, key, source_values, target_values)
        plans.append(key_plan)
    return plans


def read_conflicts(
    bind: Bind, key: ReferencingKey, source: Values, target: Values
) -> list[Conflict]:
    """The source's rows that would clash, per unique key of the referencing table."""
    if not key.unique_keys:
        return []
    params = sql.pair_parameters(source, target)
    conflicts = []
    for unique in key.unique_keys:
        statement = current_read(bind, sql.conflicting_rows(key, unique))
        rows = execute(bind, statement, key, "reading conflicts of", params)
        found = tuple(tuple(r) for r in rows)
        if found:
            conflicts.append(Conflict(key, unique.name, found))
    return conflicts


def apply_all(
    bind: Bind, plans: Sequence[KeyPlan], on_conflict: str, fetch: bool
) -> tuple[list[KeyResult], list[KeyMoves]]:
    """Apply every key's plan, in order.

    When an earlier key already re-pointed rows of the same table, a unique
    key spanning both foreign keys may clash anew: those keys' conflicts are
    read again just before their UPDATE.

    On PostgreSQL, consecutive keys of distinct tables that only need their
    plain UPDATE (nothing to clear, delete or leave, nothing to fetch) run as
    one statement (:func:`apply_together`); a key of a table already in the
    pending run, or one whose conflicts are read again, starts after it.
    """
    results: list[KeyResult] = []
    moves: list[KeyMoves] = []
    updated: set[Any] = set()
    together = not fetch and len(plans) > 1 and dialect_of(bind).name == "postgresql"
    run: list[KeyPlan] = []  # plain keys of distinct tables, not sent yet
    run_tables: set[Any] = set()
    for key_plan in plans:
        key = key_plan.key
        if key.table in run_tables or (run and key.unique_keys and key.table in updated):
            _apply_run(bind, run, on_conflict, results, moves)
            updated |= run_tables
            run, run_tables = [], set()
        if key.table in updated and key.unique_keys:
            key_plan.conflicts = read_conflicts(bind, key, key_plan.source, key_plan.target)
            if key_plan.conflicts and on_conflict == "raise":
                raise MergeConflictError(key_plan.conflicts)
        if together and key_plan.target_refers_to_source is None and not key_plan.conflicts:
            run.append(key_plan)
            run_tables.add(key.table)
            continue
        if run:
            _apply_run(bind, run, on_conflict, results, moves)
            updated |= run_tables
            run, run_tables = [], set()
        result, moved = apply(bind, key_plan, on_conflict, fetch)
        updated.add(key.table)
        results.append(result)
        moves.append(moved)
    if run:
        _apply_run(bind, run, on_conflict, results, moves)
    return results, moves


def _apply_run(
    bind: Bind,
    run: Sequence[KeyPlan],
    on_conflict: str,
    results: list[KeyResult],
    moves: list[KeyMoves],
) -> None:
    if len(run) == 1:
        result, moved = apply(bind, run[0], on_conflict, fetch=False)
        results.append(result)
        moves.append(moved)
        return
    for result, moved in zip(*apply_together(bind, run)):
        results.append(result)
        moves.append(moved)


def apply_together(bind: Bind, plans: Sequence[KeyPlan]) -> tuple[list[KeyResult], list[KeyMoves]]:
    """:func:`apply` for keys of distinct tables with nothing but their UPDATE to run:
    one statement (PostgreSQL's data-modifying CTEs) re-points them all and counts each."""
    keys = [p.key for p in plans]
    statement, names = sql.repoint_together(keys)
    params: dict[str, Any] = {}
    for (sources, targets), key_plan in zip(names, plans):
        params.update(zip(sources, key_plan.source))
        params.update(zip(targets, key_plan.target))
    counts = execute(bind, statement, keys, "re-pointing", params).one()
    results = [KeyResult(p.key, repointed=int(n)) for p, n in zip(plans, counts)]
    moves = [KeyMoves(p.key, {p.source: p.target}) for p in plans]
    return results, moves


def check_plans(
    plans: Sequence[KeyPlan],
    on_conflict: str,
    on_self_reference: str,
    names: Callable[[], tuple[str, str]],
    dry_run: bool = False,
) -> None:
    """Refuse, before anything is written, what ``on_conflict``/``on_self_reference`` forbid.

    A dry run reports conflicts instead of raising them.  ``names()`` describes the source
    and the target, for an error only.
    """
    if on_self_reference == "raise":
        for key_plan in plans:
            if key_plan.target_refers_to_source is not None:
                source, target = names()
                raise SelfReferenceError(
                    f"{target} references {source} through {key_plan.key.name}; merging "
                    "would make it reference itself (pass on_self_reference='null' to clear "
                    "that reference first)"
                )
    conflicts = [c for p in plans for c in p.conflicts]
    if conflicts and on_conflict == "raise" and not dry_run:
        raise MergeConflictError(conflicts)


def dry_run(bind: Bind, plans: Sequence[KeyPlan], on_conflict: str) -> list[KeyResult]:
    """What :func:`apply_all` would do: it runs, inside ``savepoint(bind, rollback=True)``.

    Counting each key on the state before the merge would miss what an earlier
    key of the same table does to rows a later key also matches (deletes them
    as conflicts, moves them): the merge's own statements count exactly, and
    are rolled back.  With ``on_conflict="raise"`` clashing rows are reported
    as conflicts, neither moved nor counted as left.
    """
    strategy = "ignore" if on_conflict == "raise" else on_conflict
    results, _ = apply_all(bind, plans, strategy, fetch=False)
    if on_conflict == "raise":
        for result in results:
            result.left = 0
    return results


def apply(
    bind: Bind, key_plan: KeyPlan, on_conflict: str, fetch: bool
) -> tuple[KeyResult, KeyMoves]:
    """Run one key's statements: clear a self-reference, delete clashes, re-point."""
    key = key_plan.key
    result = KeyResult(key, conflicts=list(key_plan.conflicts))
    moves = KeyMoves(key, {key_plan.source: key_plan.target})
    if key_plan.target_refers_to_source is not None:
        statement = sql.nullify(key, key_plan.target_refers_to_source, key_plan.source)
        execute(bind, statement, key, "clearing the target's reference to the source in")
        moves.nulled.add(key_plan.target_refers_to_source)
    clashing = key_plan.conflicting_rows
    if clashing and on_conflict == "delete":
        deletion = sql.delete_rows(key, key_plan.source, clashing)
        result.deleted = execute(bind, deletion, key, "deleting conflicting rows of").rowcount
        moves.deleted.update(clashing)
    keep = clashing if on_conflict == "ignore" else []
    result.left = len(keep)
    moves.kept.update(keep)
    update = sql.repoint(key, keep)
    params = sql.pair_parameters(key_plan.source, key_plan.target)
    if not fetch:
        result.repointed = execute(bind, update, key, "re-pointing", params).rowcount
        return result, moves
    if dialect_of(bind).update_returning:
        returning = update.returning(*key.identity)
        rows = execute(bind, returning, key, "re-pointing", params).all()
    else:
        selected = execute(bind, sql.rows_of(key), key, "reading", params).all()
        rows = [r for r in selected if tuple(r) not in moves.kept | moves.nulled]
        execute(bind, update, key, "re-pointing", params)
    moves.moved = {tuple(r): key_plan.target for r in rows}
    result.repointed = len(rows)
    return result, moves
