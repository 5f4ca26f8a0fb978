"""The merge engine: per referencing key, plan (self-references, conflicts), check, apply.

One engine for one pair and for many.  How the pairs reach the database is the
only difference, and it is decided inside each stage by the key's
:class:`KeyPlan`: one pair travels as bound parameters (statements built once
per key and cached: the single-merge fast path), many as a mapping joined to
every statement (arrays or a temporary table: :mod:`._mapping`).

The stages, in order (:func:`run_keys`)::

    plan_keys -> check_plans -> apply_plans (or dry_run_plans)
                                  `-> apply_key: clear self-references, delete or
                                      keep clashing rows, re-point (fetching moved rows)

Call :func:`run_keys` inside a SAVEPOINT (:func:`._transaction.savepoint`), after
locking the merged rows: a failure anywhere is rolled back there.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from sqlalchemy import Connection, func, select
from sqlalchemy.engine import CursorResult
from sqlalchemy.exc import DBAPIError

from . import _statements as sql
from ._backend import Backend, backend_of
from ._compat import add_note
from ._keys import ReferencingKey
from ._mapping import TemporaryTables
from ._ondelete import consequences
from ._onupdate import refuse_unfollowed_updates
from ._report import Cascade, Conflict, KeyResult, clashing_rows
from ._sync import KeyMoves
from .exc import MergeConflictError, SelfReferenceError, SharedColumnError

Values = tuple[Any, ...]
#: for a single merge whose rows are known: the identity of the target's own row when it
#: references the source through a key (None when it does not)
HolderOf = Callable[[ReferencingKey, Values, Values], Values | None]
#: describes the source and the target of a single merge, for an error message only
Names = Callable[[], tuple[str, str]]


@dataclass
class KeyPlan:
    """What one referencing key's merge will do, read before anything is written."""

    key: ReferencingKey
    #: source referred values -> target referred values
    pairs: dict[Values, Values]
    #: for many pairs: the mapping every statement joins (see :mod:`._mapping`)
    mapping: Any = None
    conflicts: list[Conflict] = field(default_factory=list)
    #: identities of targets' own rows that reference their source through the key
    self_references: list[Values] = field(default_factory=list)
    #: for one pair, (source values, target values): bound parameters, no mapping
    pair: tuple[Values, Values] | None = None

    def __post_init__(self) -> None:
        if len(self.pairs) == 1:
            self.pair = next(iter(self.pairs.items()))

    @property
    def conflicting_rows(self) -> list[Values]:
        return clashing_rows(self.conflicts)

    def describe_pairs(self, limit: int = 5) -> str:
        shown = ", ".join(f"{s!r} -> {t!r}" for s, t in itertools.islice(self.pairs.items(), limit))
        more = f" and {len(self.pairs) - limit} more" if len(self.pairs) > limit else ""
        return f"{len(self.pairs)} pair(s): {shown}{more}"


# -- running statements ------------------------------------------------------------------


def execute(
    connection: Connection,
    statement: Any,
    key: ReferencingKey | Sequence[ReferencingKey],
    what: str,
    params: Any = None,
) -> Any:
    """Run one statement; a database error is annotated with the key(s) it failed on."""
    try:
        return connection.execute(statement, params)
    except DBAPIError as error:
        keys = [key] if isinstance(key, ReferencingKey) else key
        add_note(error, f"sa_references: failed while {what} {', '.join(k.name for k in keys)}")
        raise


def rowcount(connection: Connection, statement: Any, key: ReferencingKey, what: str) -> int:
    """Rows matched by an UPDATE or DELETE (MySQL dialects ask for found rows)."""
    result = cast("CursorResult[Any]", execute(connection, statement, key, what))
    return int(result.rowcount)


# -- the stages ---------------------------------------------------------------------------


def run_keys(
    connection: Connection,
    key_pairs: Mapping[ReferencingKey, dict[Values, Values]],
    *,
    on_conflict: str,
    on_self_reference: str,
    dry_run: bool = False,
    fetch: bool = False,
    holder_of: HolderOf | None = None,
    names: Names | None = None,
) -> tuple[list[KeyResult], list[KeyMoves]]:
    """Plan, check and apply every key's pairs: the one sequence of the stages.

    A dry run applies too, so that its counts are the merge's own: its
    SAVEPOINT must be one that rolls back.  Temporary mapping tables are
    dropped inside the SAVEPOINT on success; on failure the caller's rollback
    removes them (and they are dropped here where they outlive it, on MySQL).
    """
    backend = backend_of(connection)
    tables = TemporaryTables(connection, backend)
    try:
        plans = plan_keys(connection, backend, tables, key_pairs, holder_of)
        check_plans(plans, on_conflict, on_self_reference, names, dry_run)
        moves: list[KeyMoves] = []
        if dry_run:
            results = dry_run_plans(connection, backend, tables, plans, on_conflict)
        else:
            results, moves = apply_plans(connection, backend, tables, plans, on_conflict, fetch)
    except BaseException:
        tables.drop_after_failure()
        raise
    tables.drop()
    return results, moves


def plan_keys(
    connection: Connection,
    backend: Backend,
    tables: TemporaryTables,
    key_pairs: Mapping[ReferencingKey, dict[Values, Values]],
    holder_of: HolderOf | None,
) -> list[KeyPlan]:
    """Per key with pairs: its mapping (shared by keys with equal pairs), the targets that
    reference their own source, and the conflicts, read before anything is written."""
    plans = [KeyPlan(key, pairs) for key, pairs in key_pairs.items() if pairs]
    for plan in plans:
        _refuse_shared_changes(connection, plan)
        refuse_unfollowed_updates(connection, plan.key, plan.pairs)
    _share_mappings(tables, plans)
    for plan in plans:
        plan.self_references = _read_self_references(connection, plan, holder_of)
        plan.conflicts = read_conflicts(connection, backend, plan)
    return plans


def _share_mappings(tables: TemporaryTables, plans: Sequence[KeyPlan]) -> None:
    """One mapping per set of referred columns and pairs, for the plans of many pairs."""
    shared: dict[tuple[Any, ...], list[tuple[dict[Values, Values], Any]]] = {}
    for plan in plans:
        if plan.pair is not None:
            continue
        candidates = shared.setdefault(plan.key.referred_columns, [])
        for pairs, mapping in candidates:
            if pairs is plan.pairs or pairs == plan.pairs:
                plan.mapping = mapping
                break
        else:
            plan.mapping = tables.mapping(plan.key.referred_columns, plan.pairs)
            candidates.append((plan.pairs, plan.mapping))


def _read_self_references(
    connection: Connection, plan: KeyPlan, holder_of: HolderOf | None
) -> list[Values]:
    key = plan.key
    if plan.pair is not None and holder_of is not None:
        holder = holder_of(key, *plan.pair)
        return [] if holder is None else [holder]
    if not key.is_self_referential:
        return []
    if plan.pair is not None:
        statement: Any = sql.self_references(key)
        params = sql.pair_parameters(*plan.pair)
        rows = execute(connection, statement, key, "reading self-references of", params).all()
        return [tuple(r) for r in rows]
    statement = sql.batch_self_references(key, plan.mapping)
    rows = execute(connection, statement, key, "reading self-references of").all()
    return [tuple(r[: len(key.identity)]) for r in rows]


def read_conflicts(connection: Connection, backend: Backend, plan: KeyPlan) -> list[Conflict]:
    """The rows that would clash once re-pointed, per unique key of the referencing table.

    One pair: one SELECT per unique key, for the source's rows that meet a row
    already holding their new values.  Many pairs: one SELECT over every
    unique key at once, ranked here (:func:`rank_conflicts`), which also finds
    two sources bringing the same values into one target.
    """
    key = plan.key
    if not key.unique_keys:
        return []
    if plan.pair is None:
        # on InnoDB, locking reads: a REPEATABLE READ snapshot, older than our locks, could
        # hide a clashing row the UPDATE would then meet (a raw duplicate key error)
        statement = sql.batch_conflicts(key, plan.mapping, backend.snapshot_reads)
        rows = execute(connection, statement, key, "reading conflicts of").all()
        return rank_conflicts(key, rows)
    params = sql.pair_parameters(*plan.pair)
    conflicts = []
    for unique in key.unique_keys:
        statement = sql.conflicting_rows(key, unique, backend.snapshot_reads)
        found = execute(connection, statement, key, "reading conflicts of", params)
        identities = tuple(tuple(r) for r in found)
        if identities:
            conflicts.append(Conflict(key, unique.name, identities))
    return conflicts


def rank_conflicts(key: ReferencingKey, rows: Iterable[Sequence[Any]]) -> list[Conflict]:
    """The rows of :func:`._statements.batch_conflicts` that cannot move, per unique key.

    Greedy in identity order, as merging one row at a time would: a row moves
    unless a row not moving holds its new values on some unique key, or an
    earlier row that moves already took them; a refused row takes nothing, so
    the rows it would have blocked on another unique key may still move.  A
    refused row is listed under every unique key it clashes on.
    """
    width, sources, uniques = len(key.identity), len(key.columns), key.unique_keys
    stride = 2 + width  # per unique key: clash, filled, the group's first identity
    taken: list[set[Values]] = [set() for _ in uniques]
    refused: list[list[tuple[Values, Values]]] = [[] for _ in uniques]
    for row in rows:
        identity = tuple(row[:width])
        source = tuple(row[width : width + sources])
        per_unique = [
            (row[at], row[at + 1], tuple(row[at + 2 : at + stride]))
            for at in range(width + sources, width + sources + stride * len(uniques), stride)
        ]
        clashes = [
            n
            for n, (clash, filled, group) in enumerate(per_unique)
            if clash or (filled and group in taken[n])
        ]
        for n in clashes:
            refused[n].append((identity, source))
        if not clashes:
            for n, (_, filled, group) in enumerate(per_unique):
                if filled:
                    taken[n].add(group)
    return [
        Conflict(key, unique.name, tuple(i for i, _ in found), tuple(s for _, s in found))
        for unique, found in zip(uniques, refused)
        if found
    ]


def check_plans(
    plans: Sequence[KeyPlan],
    on_conflict: str,
    on_self_reference: str,
    names: Names | None,
    dry_run: bool = False,
) -> None:
    """Refuse, before anything is written, what ``on_conflict``/``on_self_reference`` forbid.

    A dry run reports conflicts instead of raising them (a self-reference it refuses:
    the real run would).  ``names()`` describes a single merge's source and target.
    """
    if on_self_reference == "raise":
        for plan in plans:
            if plan.self_references:
                raise _self_reference_error(plan, names)
    conflicts = [c for p in plans for c in p.conflicts]
    if conflicts and on_conflict == "raise" and not dry_run:
        raise MergeConflictError(conflicts)


def _refuse_shared_changes(connection: Connection, plan: KeyPlan) -> None:
    """A column the key shares with another key (or the primary key) must keep its value
    on every row re-pointed: refused, before anything is written, when rows would change."""
    key = plan.key
    positions = [position for position, _ in key.shared]
    if not positions:
        return
    changing = [s for s, t in plan.pairs.items() if any(s[p] != t[p] for p in positions)]
    if not changing:
        return
    statement = select(func.count()).select_from(key.table)
    statement = statement.where(sql.identity_in(key.columns, changing))
    if not execute(connection, statement, key, "counting").scalar_one():
        return  # nothing references those sources: nothing would change
    source = changing[0]
    target = plan.pairs[source]
    position, others = next((p, o) for p, o in key.shared if source[p] != target[p])
    column = key.columns[position].name
    raise SharedColumnError(
        f"re-pointing {key.name} from {source!r} to {target!r} would change "
        f"{key.table.fullname}.{column}, which {others} also holds: those rows would "
        f"silently reference something else (merge only rows whose "
        f"{key.referred_columns[position].name} is the same)"
    )


def _self_reference_error(plan: KeyPlan, names: Names | None) -> SelfReferenceError:
    key = plan.key
    rows = plan.self_references
    if plan.pair is not None and names is not None:
        source, target = names()
        return SelfReferenceError(
            f"{target} references {source} through {key.name}; merging would make it "
            "reference itself",
            key=key.name,
            rows=rows,
            purpose="to clear that reference first",
        )
    shown = ", ".join(repr(s) for s in itertools.islice(plan.pairs, 5))
    return SelfReferenceError(
        f"{len(rows)} target(s) reference their own source through "
        f"{key.name} (sources {shown}); merging would make them reference themselves",
        key=key.name,
        rows=rows,
        purpose="to clear those references first",
    )


def dry_run_plans(
    connection: Connection,
    backend: Backend,
    tables: TemporaryTables,
    plans: Sequence[KeyPlan],
    on_conflict: str,
) -> list[KeyResult]:
    """What :func:`apply_plans` would do: it runs, inside a SAVEPOINT that rolls back.

    Counting each key on the state before the merge would miss what an earlier
    key of the same table does to rows a later key also matches (deletes them
    as conflicts, moves them): the merge's own statements count exactly, and
    are rolled back.  With ``on_conflict="raise"`` clashing rows are reported
    as conflicts, neither moved nor counted as left.
    """
    strategy = "ignore" if on_conflict == "raise" else on_conflict
    results, _ = apply_plans(connection, backend, tables, plans, strategy, fetch=False)
    if on_conflict == "raise":
        for result in results:
            result.left = 0
    return results


def apply_plans(
    connection: Connection,
    backend: Backend,
    tables: TemporaryTables,
    plans: Sequence[KeyPlan],
    on_conflict: str,
    fetch: bool,
) -> tuple[list[KeyResult], list[KeyMoves]]:
    """Apply every key's plan, in order.

    When an earlier key already re-pointed rows of the same table, a unique
    key spanning both foreign keys may clash anew: those keys' conflicts are
    read again just before their UPDATE.

    Where the backend combines UPDATEs, consecutive single-pair keys of
    distinct tables that only need their plain UPDATE (nothing to clear,
    delete or leave, nothing to fetch, no ``onupdate`` column) run as one statement
    (:func:`apply_together`); a key of a table already in the pending run, or
    one whose conflicts are read again, starts after it.
    """
    results: list[KeyResult] = []
    moves: list[KeyMoves] = []
    updated: set[Any] = set()
    together = backend.combined_updates and not fetch and len(plans) > 1
    run: list[KeyPlan] = []  # plain single-pair keys of distinct tables, not sent yet
    run_tables: set[Any] = set()

    def send_run() -> None:
        nonlocal run, run_tables
        if len(run) == 1:
            _append(apply_key(connection, tables, run[0], on_conflict, fetch=False))
        elif run:
            for done in zip(*apply_together(connection, run)):
                _append(done)
        updated.update(run_tables)
        run, run_tables = [], set()

    def _append(done: tuple[KeyResult, KeyMoves]) -> None:
        results.append(done[0])
        moves.append(done[1])

    for plan in plans:
        key = plan.key
        if key.table in run_tables or (run and key.unique_keys and key.table in updated):
            send_run()
        if key.table in updated and key.unique_keys:
            # an earlier key re-pointed rows of this table: clashes may be new
            plan.conflicts = read_conflicts(connection, backend, plan)
            if plan.conflicts and on_conflict == "raise":
                raise MergeConflictError(plan.conflicts)
        plain = plan.pair is not None and not plan.self_references and not plan.conflicts
        if together and plain and not _sets_on_update(key):
            run.append(plan)
            run_tables.add(key.table)
            continue
        send_run()
        _append(apply_key(connection, tables, plan, on_conflict, fetch))
        updated.add(key.table)
    send_run()
    return results, moves


def _sets_on_update(key: ReferencingKey) -> bool:
    """Whether an UPDATE of ``key.table`` gives a column an ``onupdate`` value of
    SQLAlchemy's (a Python value or SQL expression): a statement of data-modifying CTEs
    (:func:`apply_together`) would leave it out, so such keys run their own UPDATE."""
    return any(column.onupdate is not None for column in key.table.columns)


def apply_together(
    connection: Connection, plans: Sequence[KeyPlan]
) -> tuple[list[KeyResult], list[KeyMoves]]:
    """:func:`apply_key` for single-pair keys of distinct tables with nothing but their
    UPDATE to run: one statement (data-modifying CTEs) re-points them all, counting each."""
    keys = [p.key for p in plans]
    statement, names = sql.repoint_together(keys)
    params: dict[str, Any] = {}
    for (sources, targets), plan in zip(names, plans):
        source, target = cast("tuple[Values, Values]", plan.pair)
        params.update(zip(sources, source))
        params.update(zip(targets, target))
    counts = execute(connection, statement, keys, "re-pointing", params).one()
    results = [KeyResult(p.key, repointed=int(n)) for p, n in zip(plans, counts)]
    moves = [KeyMoves(p.key, dict(p.pairs)) for p in plans]
    return results, moves


def apply_key(
    connection: Connection,
    tables: TemporaryTables,
    plan: KeyPlan,
    on_conflict: str,
    fetch: bool,
) -> tuple[KeyResult, KeyMoves]:
    """Run one key's statements: clear self-references, delete clashes, re-point."""
    try:
        return _apply_key(connection, tables, plan, on_conflict, fetch)
    except DBAPIError as error:
        if plan.pair is None:
            add_note(
                error,
                f"sa_references: batch failed on {plan.key.name} for {plan.describe_pairs()}",
            )
        raise


def _apply_key(
    connection: Connection,
    tables: TemporaryTables,
    plan: KeyPlan,
    on_conflict: str,
    fetch: bool,
) -> tuple[KeyResult, KeyMoves]:
    key = plan.key
    result = KeyResult(key, conflicts=list(plan.conflicts))
    moves = KeyMoves(key, dict(plan.pairs))
    for statement in sql.nullify_identities(key, plan.self_references):
        execute(connection, statement, key, "clearing the target's reference to the source in")
    moves.nulled.update(plan.self_references)
    result.cleared_rows = tuple(plan.self_references)
    clashing = plan.conflicting_rows
    if clashing and on_conflict == "delete":
        # what the database's ON DELETE rules will do, read (or refused) before it does
        effects = consequences(connection, key.table, key.identity, clashing)
        result.cascaded = [Cascade(e.table, e.action, e.count) for e in effects]
        moves.cascaded = effects
        result.deleted = sum(
            rowcount(connection, statement, key, "deleting conflicting rows of")
            for statement in sql.delete_identities(key, clashing)
        )
        moves.deleted.update(clashing)
    keep = clashing if on_conflict == "ignore" else []
    result.left = len(keep)
    moves.kept.update(keep)
    if plan.pair is not None:
        result.repointed, moved = _repoint_pair(connection, plan, keep, fetch)
    else:
        result.repointed, moved = _repoint_mapped(connection, tables, plan, keep, fetch)
    if moved is not None:
        moves.moved = moved
    return result, moves


def _repoint_pair(
    connection: Connection, plan: KeyPlan, keep: Sequence[Values], fetch: bool
) -> tuple[int, dict[Values, Values] | None]:
    """One pair's UPDATE, by bound parameters: the rows it re-pointed and, with ``fetch``,
    the moved rows by identity (as they were before the UPDATE) and their new values.

    The count is the UPDATE's own (its rowcount, or its RETURNING rows): rows alike in
    every identity column (a table without primary key) are one identity, several rows."""
    key = plan.key
    source, target = cast("tuple[Values, Values]", plan.pair)
    update = sql.repoint(key, keep)
    params = sql.pair_parameters(source, target)
    if not fetch:
        return int(execute(connection, update, key, "re-pointing", params).rowcount), None
    backend = backend_of(connection)
    if backend.update_returning and not key.identity_overlaps_columns:
        returned = execute(connection, update.returning(*key.identity), key, "re-pointing", params)
        rows = returned.all()
        return len(rows), {tuple(r): target for r in rows}
    selected = execute(connection, sql.rows_of(key), key, "reading", params).all()
    skip = set(keep) | set(plan.self_references)
    moved = {tuple(r): target for r in selected if tuple(r) not in skip}
    count = execute(connection, update, key, "re-pointing", params).rowcount
    return int(count), moved


def _repoint_mapped(
    connection: Connection,
    tables: TemporaryTables,
    plan: KeyPlan,
    keep: Sequence[Values],
    fetch: bool,
) -> tuple[int, dict[Values, Values] | None]:
    """Many pairs' UPDATE, joined to their mapping; rows to keep listed in a table.  The
    count is the UPDATE's own, as in :func:`_repoint_pair`."""
    key = plan.key
    kept = tables.identities(key.identity, dict.fromkeys(keep)) if keep else None
    update = sql.batch_repoint(key, plan.mapping, kept)
    if not fetch:
        return rowcount(connection, update, key, "re-pointing"), None
    width = len(key.identity)
    backend = backend_of(connection)
    if backend.update_returning_multifrom and not key.identity_overlaps_columns:
        returning = update.returning(*key.identity, *key.columns)
        rows = execute(connection, returning, key, "re-pointing").all()
        count = len(rows)
    else:
        skip = set(keep)
        selected = execute(connection, sql.batch_rows(key, plan.mapping), key, "reading").all()
        rows = [r for r in selected if tuple(r[:width]) not in skip]
        count = rowcount(connection, update, key, "re-pointing")
    return count, {tuple(r[:width]): tuple(r[width:]) for r in rows}
