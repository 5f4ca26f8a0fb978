"""Many merges at once: one set-based statement per referencing key.

The pairs of a batch are written to a temporary mapping table (one per set
of referred columns), and every referencing key is re-pointed by one UPDATE
joined to it.  Conflicts are read set-based too: one SELECT per referencing
key with unique keys, covering clashes with rows already at a target and
clashes between several sources merged into one target; the few rows it
returns are ranked in Python, greedily by identity over every unique key at
once, as merging the rows one at a time would.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from sqlalchemy import (
    Column,
    Connection,
    MetaData,
    PrimaryKeyConstraint,
    Select,
    Table,
    func,
    select,
)
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.orm import Session

from . import _statements as sql
from ._compat import add_note, insert_parameter_order
from ._keys import AnyColumn, ReferencingKey, reference_graph
from ._merge import key_normaliser
from ._repoint import (
    Bind,
    OnConflict,
    OnSelfReference,
    check_bind,
    check_options,
    connection_of,
    current_read,
    execute,
    lock_rows,
    rowcount,
    savepoint,
)
from ._report import Conflict, KeyResult, MergeReport, clashing_rows
from ._sync import KeyMoves
from .exc import (
    MergeConflictError,
    MergeCycleError,
    ReferencesError,
    RowNotFoundError,
    SelfReferenceError,
)

Values = tuple[Any, ...]
T = TypeVar("T", bound=Hashable)

_table_names = itertools.count(1)


class Chains(Generic[T]):
    """Merge pairs with chains resolved: ``a -> b`` then ``b -> c`` leaves both at ``c``.

    Adding a pair is O(1) amortised; a cycle, a row merged into itself, or a
    source given two different targets raises :class:`ReferencesError` and
    leaves the chains unchanged.
    """

    def __init__(self, describe: Callable[[T], str] = repr) -> None:
        self.describe = describe
        #: source -> final target
        self.target_of: dict[T, T] = {}
        #: final target -> its sources: one source as itself (the usual case, no set)
        self._sources_of: dict[T, T | set[T]] = {}

    def add(self, source: T, target: T) -> bool:
        """Add ``source -> target``; False when that exact pair was already added."""
        if source == target:
            raise ReferencesError(f"cannot merge {self.describe(source)} into itself")
        target_of = self.target_of
        final = target_of.get(target, target)
        if final == source:
            describe = self.describe
            raise MergeCycleError(
                f"merging {describe(source)} into {describe(target)} would close a cycle "
                f"({describe(target)} is already merged into {describe(source)})"
            )
        previous = target_of.get(source)
        if previous is not None:
            if previous != final:
                raise ReferencesError(
                    f"{self.describe(source)} is already queued to be merged into "
                    f"{self.describe(previous)}"
                )
            return False
        target_of[source] = final
        sources_of = self._sources_of
        earlier = sources_of.pop(source, None)  # merged into this source before
        into = sources_of.get(final)
        if earlier is None:
            if into is None:
                sources_of[final] = source
            elif isinstance(into, set):
                into.add(source)
            else:
                sources_of[final] = {into, source}
            return True
        moved = earlier if isinstance(earlier, set) else {earlier}
        for other in moved:
            target_of[other] = final
        moved.add(source)
        if into is None:
            sources_of[final] = moved
        elif isinstance(into, set):
            into.update(moved)
        else:
            moved.add(into)
            sources_of[final] = moved
        return True


def resolve_chains(pairs: Iterable[tuple[T, T]], describe: Callable[[T], str] = repr) -> dict[T, T]:
    """``{source: final target}`` for ``pairs`` (see :class:`Chains`)."""
    chains: Chains[T] = Chains(describe)
    for source, target in pairs:
        chains.add(source, target)
    return chains.target_of


@dataclass(slots=True)
class BatchReport(MergeReport):
    """The result of a batch: per referencing key, totals over every merge in it."""

    #: the (source, final target) pairs applied, chains resolved
    pairs: list[tuple[Any, Any]] = field(default_factory=list)

    def __str__(self) -> str:
        verb = "would re-point" if self.dry_run else "re-pointed"
        lines = [f"batch of {len(self.pairs)} merge(s): {verb} {self.rowcount} row(s)"]
        lines += [f"  {r}" for r in self.keys if r.repointed or r.deleted or r.left]
        return "\n".join(lines)


class _TemporaryTables:
    """Temporary tables on one connection, dropped when the batch ends."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.created: list[Table] = []

    def create(
        self,
        prefix: str,
        columns: Sequence[tuple[str, AnyColumn]],
        rows: Sequence[Values],
        key: Sequence[str],
    ) -> Table:
        """A temporary table of ``columns`` (name, typed like), filled with ``rows`` (tuples)."""
        name = f"_sa_references_{prefix}_{next(_table_names)}"
        table = Table(
            name,
            MetaData(),
            *(Column(n, c.type, nullable=False, autoincrement=False) for n, c in columns),
            PrimaryKeyConstraint(*key),
            prefixes=["TEMPORARY"],
        )
        table.create(self.connection)
        self.created.append(table)
        if rows:
            _insert_rows(self.connection, table, rows)
        return table

    def mapping(self, columns: Sequence[AnyColumn], pairs: Mapping[Values, Values]) -> Any:
        """The pairs as rows ``(src_0.., tgt_0..)``: a temporary table or, on PostgreSQL
        with integer or string columns, ``unnest()`` of one array per column (no table)."""
        if self.connection.dialect.name == "postgresql" and sql.plain_values(columns):
            return sql.unnest_mapping(columns, pairs)
        names = [(f"src_{i}", c) for i, c in enumerate(columns)]
        names += [(f"tgt_{i}", c) for i, c in enumerate(columns)]
        rows = [s + t for s, t in pairs.items()]
        return self.create("map", names, rows, [f"src_{i}" for i in range(len(columns))])

    def identities(self, columns: Sequence[AnyColumn], rows: Iterable[Values]) -> Table:
        names = [(f"id_{i}", c) for i, c in enumerate(columns)]
        return self.create("keep", names, list(rows), [n for n, _ in names])

    def drop(self) -> None:
        temporary = "TEMPORARY " if self.connection.dialect.name == "mysql" else ""
        for table in self.created:
            name = self.connection.dialect.identifier_preparer.quote(table.name)
            self.connection.exec_driver_sql(f"DROP {temporary}TABLE IF EXISTS {name}")
        self.created.clear()

    def drop_after_failure(self) -> None:
        """MySQL keeps temporary tables through a rollback: drop them, best effort.

        Elsewhere the caller's ROLLBACK TO SAVEPOINT removes them (transactional DDL),
        and a statement now could fail in a transaction the error aborted.
        """
        if self.connection.dialect.name == "mysql":
            with contextlib.suppress(DBAPIError):
                self.drop()
        self.created.clear()


def _insert_rows(connection: Connection, table: Table, rows: Sequence[Values]) -> None:
    """``INSERT`` ``rows`` (tuples in column order) with one ``executemany``.

    When no column's type processes bound values (integers, strings: the usual
    keys), the compiled statement goes to the driver as is, with the rows as they
    are: a Core ``executemany`` would build and process a dict per row, several
    times the cost of the insert itself on SQLite.
    """
    dialect = connection.dialect
    names = [c.key for c in table.columns]
    raw = sql.plain_values(table.columns) and all(
        c.type.dialect_impl(dialect).bind_processor(dialect) is None for c in table.columns
    )
    if not raw:
        connection.execute(table.insert(), [dict(zip(names, row)) for row in rows])
        return
    compiled = table.insert().compile(dialect=dialect)
    if dialect.positional:
        order = [names.index(n) for n in insert_parameter_order(compiled)]
        parameters: list[Any] = (
            list(rows)
            if order == list(range(len(names)))
            else [tuple(row[i] for i in order) for row in rows]
        )
    else:
        parameters = [dict(zip(names, row)) for row in rows]
    connection.exec_driver_sql(compiled.string, parameters)


def _describe_pairs(pairs: Mapping[Values, Values], limit: int = 5) -> str:
    shown = ", ".join(f"{s!r} -> {t!r}" for s, t in itertools.islice(pairs.items(), limit))
    more = f" and {len(pairs) - limit} more" if len(pairs) > limit else ""
    return f"{len(pairs)} pair(s): {shown}{more}"


@dataclass
class _KeyBatch:
    key: ReferencingKey
    pairs: dict[Values, Values]
    mapping: Table | None = None
    conflicts: list[Conflict] = field(default_factory=list)
    self_references: list[Values] = field(default_factory=list)

    @property
    def conflicting_rows(self) -> list[Values]:
        return clashing_rows(self.conflicts)


def run_batch(
    bind: Bind,
    key_pairs: Mapping[ReferencingKey, dict[Values, Values]],
    *,
    on_conflict: str,
    on_self_reference: str,
    dry_run: bool = False,
    fetch: bool = False,
) -> tuple[list[KeyResult], list[KeyMoves]]:
    """Apply every key's pairs set-based.

    Call it inside a SAVEPOINT (:func:`~._repoint.savepoint`): its temporary
    tables are dropped inside it on success, and the caller's rollback
    undoes everything on failure (they are dropped afterwards on MySQL, whose
    temporary tables outlive a rollback).  A dry run applies the batch too, so
    that its counts are the batch's: its SAVEPOINT must be one that rolls back
    (``savepoint(bind, rollback=True)``).
    """
    connection = connection_of(bind)
    tables = _TemporaryTables(connection)
    batches = [_KeyBatch(k, p) for k, p in key_pairs.items() if p]
    try:
        _create_mappings(tables, batches)
        _read_plan(bind, batches, on_self_reference)
        conflicts = [c for b in batches for c in b.conflicts]
        if conflicts and on_conflict == "raise" and not dry_run:
            raise MergeConflictError(conflicts)
        moves: list[KeyMoves] = []
        if dry_run:  # the batch itself, in the caller's SAVEPOINT, which rolls it back
            strategy = "ignore" if on_conflict == "raise" else on_conflict
            results, _ = _apply_all(bind, tables, batches, strategy, fetch=False)
            if on_conflict == "raise":
                for result in results:
                    result.left = 0
        else:
            results, moves = _apply_all(bind, tables, batches, on_conflict, fetch)
    except BaseException:
        tables.drop_after_failure()
        raise
    tables.drop()
    return results, moves


def _apply_all(
    bind: Bind,
    tables: _TemporaryTables,
    batches: Sequence[_KeyBatch],
    on_conflict: str,
    fetch: bool,
) -> tuple[list[KeyResult], list[KeyMoves]]:
    results, moves = [], []
    updated: set[Table] = set()
    for batch in batches:
        try:
            if batch.key.table in updated and batch.key.unique_keys:
                # an earlier key re-pointed rows of this table: clashes may be new
                batch.conflicts = _read_conflicts(bind, batch)
                if batch.conflicts and on_conflict == "raise":
                    raise MergeConflictError(batch.conflicts)
            result, moved = _apply(bind, tables, batch, on_conflict, fetch)
        except DBAPIError as error:
            add_note(
                error,
                f"sa_references: batch failed on {batch.key.name} for "
                + _describe_pairs(batch.pairs),
            )
            raise
        updated.add(batch.key.table)
        results.append(result)
        moves.append(moved)
    return results, moves


def _create_mappings(tables: _TemporaryTables, batches: Sequence[_KeyBatch]) -> None:
    """One mapping table per set of referred columns (keys that agree on the pairs share it)."""
    shared: dict[tuple[AnyColumn, ...], list[tuple[dict[Values, Values], Table]]] = {}
    for batch in batches:
        candidates = shared.setdefault(batch.key.referred_columns, [])
        for pairs, table in candidates:
            if pairs is batch.pairs or pairs == batch.pairs:
                batch.mapping = table
                break
        else:
            batch.mapping = tables.mapping(batch.key.referred_columns, batch.pairs)
            candidates.append((batch.pairs, batch.mapping))


def _read_plan(bind: Bind, batches: Sequence[_KeyBatch], on_self_reference: str) -> None:
    for batch in batches:
        key, mapping = batch.key, batch.mapping
        if key.is_self_referential:
            statement = sql.batch_self_references(key, mapping)
            rows = execute(bind, statement, key, "reading self-references of").all()
            width = len(key.identity)
            batch.self_references = [tuple(r[:width]) for r in rows]
            if rows and on_self_reference == "raise":
                sources = ", ".join(repr(tuple(r[width:])) for r in rows[:5])
                raise SelfReferenceError(
                    f"{len(rows)} target(s) reference their own source through {key.name} "
                    f"(sources {sources}); merging would make them reference themselves "
                    "(pass on_self_reference='null' to clear those references first)"
                )
        batch.conflicts = _read_conflicts(bind, batch)


def _read_conflicts(bind: Bind, batch: _KeyBatch) -> list[Conflict]:
    """One SELECT over every unique key of the table, ranked here (see :func:`rank_conflicts`)."""
    key = batch.key
    if not key.unique_keys:
        return []
    statement = current_read(bind, sql.batch_conflicts(key, batch.mapping))
    rows = execute(bind, statement, key, "reading conflicts of").all()
    return rank_conflicts(key, rows)


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


def _apply(
    bind: Bind, tables: _TemporaryTables, batch: _KeyBatch, on_conflict: str, fetch: bool
) -> tuple[KeyResult, KeyMoves]:
    key, mapping = batch.key, batch.mapping
    result = KeyResult(key, conflicts=list(batch.conflicts))
    moves = KeyMoves(key, dict(batch.pairs))
    for statement in sql.nullify_identities(key, batch.self_references):
        bind.execute(statement)
    moves.nulled.update(batch.self_references)
    kept: list[Values] = []
    clashing = batch.conflicting_rows
    if clashing and on_conflict == "delete":
        result.deleted = sum(rowcount(bind, d) for d in sql.delete_identities(key, clashing))
        moves.deleted.update(clashing)
    if on_conflict == "ignore":
        kept += clashing
        result.left = len(clashing)
    moves.kept.update(kept)
    keep = tables.identities(key.identity, dict.fromkeys(kept)) if kept else None
    update = sql.batch_repoint(key, mapping, keep)
    if not fetch:
        result.repointed = rowcount(bind, update)
        return result, moves
    width = len(key.identity)
    dialect = connection_of(bind).dialect
    if dialect.update_returning_multifrom:
        rows = bind.execute(update.returning(*key.identity, *key.columns)).all()
    else:
        rows = [
            r
            for r in bind.execute(sql.batch_rows(key, mapping)).all()
            if tuple(r[:width]) not in moves.kept
        ]
        bind.execute(update)
    moves.moved = {tuple(r[:width]): tuple(r[width:]) for r in rows}
    result.repointed = len(rows)
    return result, moves


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
    :class:`ReferencesError` before anything runs.  Atomic: the whole batch
    runs inside a SAVEPOINT.

    E.g.::

        with engine.begin() as connection:
            report = merge_many(connection, customers, [(17, 4), (18, 4), (4, 2)])
    """
    check_options(on_conflict, "evaluate", on_self_reference)
    check_bind(bind)
    if not isinstance(table, Table):
        raise ArgumentError(f"expected a Table; got {table!r}")
    normalise = key_normaliser(table)
    normalised = [(normalise(s), normalise(t)) for s, t in _pairs_of(pairs)]
    target_of = resolve_chains(normalised, lambda k: f"{table.fullname} {k!r}")
    keys = reference_graph(table.metadata).keys_for_tables([table])
    report = BatchReport(None, None, dry_run=dry_run, pairs=list(target_of.items()))
    with savepoint(bind, rollback=dry_run):
        involved = {*target_of, *target_of.values()}
        missing = lock_rows(bind, table, list(involved))
        values_of = _referred_values(bind, table, keys, involved, missing)
        key_pairs = pairs_by_key(bind, keys, target_of.items(), values_of)
        report.keys, _ = run_batch(
            bind,
            key_pairs,
            on_conflict=on_conflict,
            on_self_reference=on_self_reference,
            dry_run=dry_run,
        )
        if delete and not dry_run and target_of:
            pk = list(table.primary_key.columns)
            for chunk in sql.chunks(list(target_of)):
                bind.execute(table.delete().where(sql.identity_in(pk, chunk)))
    return report


def _pairs_of(pairs: Iterable[Any]) -> list[tuple[Any, Any]]:
    """``pairs`` as a list of 2-tuples, or :class:`ArgumentError`."""
    if isinstance(pairs, (str, bytes, Mapping)) or not isinstance(pairs, Iterable):
        raise ArgumentError(f"pairs must be an iterable of (source, target) keys; got {pairs!r}")
    checked = []
    for pair in pairs:
        if type(pair) is not tuple or len(pair) != 2:  # the usual case, checked cheaply
            if isinstance(pair, (str, bytes, Mapping)) or not isinstance(pair, Sequence):
                raise ArgumentError(f"each pair must be a (source, target) sequence; got {pair!r}")
            if len(pair) != 2:
                raise ArgumentError(f"each pair must hold 2 keys (source, target); got {pair!r}")
        checked.append((pair[0], pair[1]))
    return checked


def _referred_values(
    bind: Bind,
    table: Table,
    keys: Sequence[ReferencingKey],
    identities: set[Values],
    missing: set[Values] | None,
) -> Callable[[Values, tuple[AnyColumn, ...]], Values]:
    """How to read a merged row's referred values; raises for rows that do not exist.

    ``missing``: the rows the locks did not find (None: no lock looked, on
    SQLite).  When every key refers to primary key columns, the values come
    from the keys themselves, and rows are only read where no lock looked
    (their keys only).
    """
    pk = list(table.primary_key.columns)
    position = {c: i for i, c in enumerate(pk)}
    wanted = list(dict.fromkeys(c for k in keys for c in k.referred_columns if c not in position))
    if not wanted:
        if missing is None:
            missing = _missing_keys(bind, table, identities)
        _refuse_missing(table, missing)
        return _key_reader(position)
    rows: dict[Values, dict[AnyColumn, Any]] = {}
    for row in _select_rows(bind, table, identities, wanted):
        rows[tuple(row[: len(pk)])] = dict(zip(wanted, row[len(pk) :]))
    _refuse_missing(table, {k for k in identities if k not in rows})
    return lambda k, columns: tuple(
        k[position[c]] if c in position else rows[k][c] for c in columns
    )


def _key_reader(
    position: Mapping[AnyColumn, int],
) -> Callable[[Values, tuple[AnyColumn, ...]], Values]:
    """Referred values taken from the keys themselves (every column is a key column)."""
    positions_of: dict[tuple[AnyColumn, ...], tuple[int, ...]] = {}

    def read(key: Values, columns: tuple[AnyColumn, ...]) -> Values:
        try:
            at = positions_of[columns]
        except KeyError:
            at = positions_of[columns] = tuple(position[c] for c in columns)
        if len(at) == 1:
            return (key[at[0]],)
        return tuple([key[i] for i in at])

    return read


def _missing_keys(bind: Bind, table: Table, keys: set[Values]) -> set[Values]:
    """The keys no row has.  Single integer keys are counted first (each key matches one
    row at most): the rows are read, to name the missing keys, only when some are."""
    if sql.json_keys_fit(table):
        counted = sum(
            bind.execute(select(func.count()).select_from(query.subquery()), params).scalar_one()
            for query, params in _row_queries(bind, table, keys, [])
        )
        if counted == len(keys):
            return set()
    found = {tuple(row) for row in _select_rows(bind, table, keys, [])}
    return {k for k in keys if k not in found}


def _select_rows(
    bind: Bind, table: Table, keys: set[Values], columns: Sequence[AnyColumn]
) -> Iterable[Any]:
    """The primary key and ``columns`` of the rows keyed ``keys`` (those that exist)."""
    return itertools.chain.from_iterable(
        bind.execute(query, params) for query, params in _row_queries(bind, table, keys, columns)
    )


def _row_queries(
    bind: Bind, table: Table, keys: set[Values], columns: Sequence[AnyColumn]
) -> list[tuple[Select[Any], dict[str, Any] | None]]:
    """The SELECTs of :func:`_select_rows`: one over a JSON array on SQLite 3.38+ (many
    integer keys), else one per chunk of keys."""
    pk = list(table.primary_key.columns)
    dialect = connection_of(bind).dialect
    if (
        len(keys) > sql.IN_CHUNK
        and dialect.name == "sqlite"
        and (dialect.server_version_info or ()) >= (3, 38)  # JSON functions built in
        and sql.json_keys_fit(table)
    ):
        return [sql.rows_by_json_keys(table, columns, keys)]
    return [
        (select(*pk, *columns).where(sql.identity_in(pk, chunk)), None)
        for chunk in sql.chunks(sorted(keys, key=repr))
    ]


def _refuse_missing(table: Table, missing: set[Values]) -> None:
    if missing:
        shown = ", ".join(repr(k) for k in sorted(missing, key=repr)[:5])
        raise RowNotFoundError(f"{len(missing)} key(s) not found in {table.fullname}: {shown}")


def pairs_by_key(
    bind: Bind,
    keys: Sequence[ReferencingKey],
    pairs: Iterable[tuple[T, T]],
    values_of: Callable[[T, tuple[AnyColumn, ...]], Values],
) -> dict[ReferencingKey, dict[Values, Values]]:
    """Per key, the referred values of every pair (source values -> target values).

    Keys that refer to the same columns share one dict, read once, and so one
    mapping table.
    """
    pairs = list(pairs)
    grouped: dict[tuple[AnyColumn, ...], list[ReferencingKey]] = {}
    for key in keys:
        grouped.setdefault(key.referred_columns, []).append(key)
    by_key: dict[ReferencingKey, dict[Values, Values]] = {}
    for columns, same in grouped.items():
        shared: dict[Values, Values] = {}
        for source, target in pairs:
            source_values, target_values = values_of(source, columns), values_of(target, columns)
            if None in source_values or source_values == target_values:
                continue  # nothing can reference the source through these columns
            if None in target_values:
                for key in same:
                    refuse_references(bind, key, source_values, target_values)
                continue
            shared[source_values] = target_values
        by_key.update(dict.fromkeys(same, shared))
    return by_key


def refuse_references(bind: Bind, key: ReferencingKey, source: Values, target: Values) -> None:
    """Raise if rows reference ``source`` through ``key``: the target lacks referred values."""
    count = bind.execute(sql.count_references(key), sql.pair_parameters(source)).scalar_one()
    if count:
        raise ReferencesError(
            f"cannot re-point {count} row(s) of {key.name}: the target's "
            f"{', '.join(c.name for c in key.referred_columns)} is {target}"
        )
