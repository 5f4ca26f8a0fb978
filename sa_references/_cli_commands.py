"""The command line's commands as Python functions: typed arguments in, results out.

Each function opens the database (a URL, or ``-`` for ``$SA_REFERENCES_URL``),
reflects the table (with the tables of any schema that reference it), does its
work and returns a frozen dataclass; nothing is printed.  A merge asks
``confirm(plan)`` (when given) before changing anything.  Failures raise
:class:`~sa_references.command.CommandError` (one-line message and exit status), a
:class:`sa_references.exc.ReferencesError` or SQLAlchemy's errors.

They are public as :mod:`sa_references.command`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, Table

from ._cli_input import (
    CommandError,
    Declined,
    Values,
    database,
    key_values,
    read_pairs,
    reflect_table,
)
from ._dependents import row_dependents
from ._keys import ReferencingKey, referencing_keys
from ._merge import merge_many, merge_rows
from ._options import DEFAULT_OPTIONS, MergeOptions
from ._report import BatchReport, Conflict, KeyResult, total_cascades
from .exc import MergeConflictError

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_LIMIT",
    "DependentsResult",
    "KeySample",
    "KeysResult",
    "MergeOptions",
    "MergeResult",
    "PairsResult",
    "dependents",
    "keys",
    "merge",
    "merge_pairs",
]

DEFAULT_LIMIT = 5
DEFAULT_BATCH_SIZE = 1000

Pair = tuple[Values, Values]
R = TypeVar("R", "MergeResult", "PairsResult")


def _engine_options(options: MergeOptions) -> dict[str, Any]:
    """The library's keyword arguments for ``options`` (dry runs are asked separately)."""
    return {
        "on_conflict": options.on_conflict,
        "delete": options.delete,
        "on_self_reference": options.on_self_reference,
    }


def _check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be 1 or more: {batch_size}")


# ---------------------------------------------------------------- results


@dataclass(frozen=True)
class KeysResult:
    """``keys``: the foreign keys that reference ``table``."""

    table: Table
    keys: tuple[ReferencingKey, ...]


@dataclass(frozen=True)
class KeySample:
    """``dependents``, one referencing key: how many rows reference the row, the first ones."""

    key: ReferencingKey
    count: int
    rows: tuple[dict[str, Any], ...]


@dataclass(frozen=True)
class DependentsResult:
    table: Table
    key: Values
    samples: tuple[KeySample, ...]

    @property
    def count(self) -> int:
        return sum(s.count for s in self.samples)


@dataclass(frozen=True)
class _Totals:
    """What a merge did or plans to do, per referencing key."""

    table: Table
    options: MergeOptions
    #: a plan (a dry run), not a result
    dry_run: bool
    keys: tuple[KeyResult, ...]
    #: the merge's transaction was committed
    committed: bool = False

    @property
    def rowcount(self) -> int:
        return sum(r.repointed for r in self.keys)

    @property
    def deleted(self) -> int:
        return sum(r.deleted for r in self.keys)

    @property
    def left(self) -> int:
        return sum(r.left for r in self.keys)

    @property
    def cleared(self) -> int:
        return sum(r.cleared for r in self.keys)

    @property
    def conflicts(self) -> list[Conflict]:
        return [c for r in self.keys for c in r.conflicts]

    def refuse_conflicts(self) -> None:
        """Raise :class:`MergeConflictError` when this plan cannot run (conflicts under
        ``on_conflict="raise"``)."""
        if self.options.on_conflict == "raise" and self.conflicts:
            raise MergeConflictError(self.conflicts)

    def outcome(self) -> list[tuple[Any, ...]]:
        """Per key: counts, the clashing rows and the cleared ones (to compare a run with
        its plan)."""
        return [
            (
                r.key.name,
                r.repointed,
                r.deleted,
                r.left,
                frozenset(_rows(r.conflicts)),
                frozenset(r.cleared_rows),
            )
            for r in self.keys
        ]


@dataclass(frozen=True)
class MergeResult(_Totals):
    """``merge SOURCE TARGET``: the plan or the result."""

    source: Values = ()
    target: Values = ()


@dataclass(frozen=True)
class PairsResult(_Totals):
    """``merge --pairs``: totals over every batch, planned or applied."""

    #: the number of pairs read
    pairs: int = 0
    #: where the pairs came from (the CSV file's name)
    origin: str = ""
    #: merge_many calls made (0 in a plan)
    batches: int = 0
    #: the (source, final target) pairs, chains resolved, in the order they run
    resolved: tuple[Pair, ...] = field(default=(), repr=False)


def _rows(conflicts: Iterable[Conflict]) -> list[Values]:
    return [row for conflict in conflicts for row in conflict.rows]


# ---------------------------------------------------------------- keys, dependents


def keys(url: str, table: str, *, schema: str | None = None) -> KeysResult:
    """The foreign keys of any schema that reference TABLE."""
    with database(url) as engine, engine.connect() as connection:
        reflected = reflect_table(connection, table, schema)
    return KeysResult(reflected, tuple(referencing_keys(reflected)))


def dependents(
    url: str, table: str, key: Any, *, schema: str | None = None, limit: int = DEFAULT_LIMIT
) -> DependentsResult:
    """Per referencing key, how many rows reference the row KEY and the first ``limit``."""
    if limit < 0:
        raise ValueError(f"limit must be 0 or more: {limit}")
    with database(url) as engine, engine.connect() as connection:
        reflected = reflect_table(connection, table, schema)
        values = key_values(reflected, key)
        found = row_dependents(connection, reflected, values)
        samples = []
        for referencing_key, rows in found.by_key().items():
            count = rows.count()
            sampled: tuple[dict[str, Any], ...] = ()
            if count and limit:
                result = connection.execute(rows.select().limit(limit))
                sampled = tuple(dict(row._mapping) for row in result)
            samples.append(KeySample(referencing_key, count, sampled))
    return DependentsResult(reflected, values, tuple(samples))


# ---------------------------------------------------------------- merge


def merge(
    url: str,
    table: str,
    source: Any,
    target: Any,
    options: MergeOptions = DEFAULT_OPTIONS,
    *,
    schema: str | None = None,
    confirm: Callable[[MergeResult], bool] | None = None,
) -> MergeResult:
    """Re-point every reference to the row SOURCE to the row TARGET, in one transaction.

    Keys are strings as on the command line (``"TEA,M"``) or values.  With
    ``options.dry_run`` the plan is returned and nothing changes.  With
    ``confirm``, the plan is passed to it first: False raises
    :class:`~sa_references.command.Declined`; the merge then runs only if it does what the
    plan showed (else :class:`~sa_references.command.CommandError`, nothing changed).
    """
    with database(url) as engine:
        with engine.connect() as connection:
            reflected = reflect_table(connection, table, schema, check=True)
            pair = (key_values(reflected, source), key_values(reflected, target))
            plan = None
            if options.dry_run or confirm is not None:
                plan = _merge_one(connection, reflected, pair, options, dry_run=True)
        if plan is not None:
            if options.dry_run:
                return plan
            _ask(confirm, plan)
        with engine.begin() as connection:
            result = _merge_one(connection, reflected, pair, options, dry_run=False)
            _check_as_planned(plan, result)
    return replace(result, committed=True)


def _merge_one(
    connection: Connection, table: Table, pair: Pair, options: MergeOptions, dry_run: bool
) -> MergeResult:
    report = merge_rows(
        connection, table, pair[0], pair[1], dry_run=dry_run, **_engine_options(options)
    )
    return MergeResult(table, options, dry_run, tuple(report.keys), source=pair[0], target=pair[1])


def _ask(confirm: Callable[[R], bool] | None, plan: R) -> None:
    if confirm is not None and not confirm(plan):
        raise Declined("merge not confirmed; nothing changed")
    plan.refuse_conflicts()


def _check_as_planned(plan: _Totals | None, result: _Totals) -> None:
    """What runs is what was shown: refuse (and roll back) a run that differs from its plan."""
    if plan is None or plan.outcome() == result.outcome():
        return
    changed = [
        name
        for (name, *planned), (_, *done) in zip(plan.outcome(), result.outcome())
        if planned != done
    ]
    raise CommandError(
        "the database changed after the plan was shown "
        f"({', '.join(changed) or 'other keys'} differ); nothing changed: run the merge again"
    )


# ---------------------------------------------------------------- merge --pairs


def merge_pairs(
    url: str,
    table: str,
    pairs: Path | Iterable[tuple[Any, Any]],
    options: MergeOptions = DEFAULT_OPTIONS,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    schema: str | None = None,
    confirm: Callable[[PairsResult], bool] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> PairsResult:
    """Merge every (source, target) pair (a CSV file with a header ``source,target``, or
    key pairs), chains resolved, ``batch_size`` pairs per ``merge_many`` call, all in one
    transaction.

    The plan (``options.dry_run``, or what ``confirm`` is shown) is the batched run
    itself, rehearsed in a transaction that is rolled back: the rows it lists as
    deleted or left are the ones the run deletes or leaves.  ``progress(done, total)``
    is called after each batch of the run.
    """
    _check_batch_size(batch_size)
    with database(url) as engine:
        plan = None
        if options.dry_run or confirm is not None:
            with engine.connect() as connection:
                whole = _read(connection, table, schema, pairs, options)
                plan = _rehearse(connection, whole, batch_size)
                connection.rollback()
            if options.dry_run:
                return plan
            _ask(confirm, plan)
        with engine.begin() as connection:
            read = plan
            if read is None:  # not shown: the pairs as read, refused on conflicts in one batch
                read = _read(connection, table, schema, pairs, options)
                read.refuse_conflicts()
            result = _apply(connection, read.table, read.resolved, options, batch_size, progress)
            _check_as_planned(plan, result)
    return replace(result, pairs=read.pairs, origin=read.origin, committed=True)


def _origin(pairs: Path | Iterable[tuple[Any, Any]]) -> str:
    return str(pairs) if isinstance(pairs, Path) else "pairs"


def _read(
    connection: Connection,
    table: str,
    schema: str | None,
    pairs: Path | Iterable[tuple[Any, Any]],
    options: MergeOptions,
) -> PairsResult:
    """Read the pairs and dry-run them all at once: chains resolved, cycles refused; the
    result holds the resolved pairs (and, under ``raise``, the conflicts of running
    them in one batch)."""
    reflected = reflect_table(connection, table, schema, check=True)
    if isinstance(pairs, Path):
        keyed = read_pairs(pairs, reflected)
    else:
        keyed = [(key_values(reflected, s), key_values(reflected, t)) for s, t in pairs]
    whole: BatchReport = merge_many(
        connection, reflected, keyed, dry_run=True, **_engine_options(options)
    )
    return PairsResult(
        reflected,
        options,
        True,
        tuple(whole.keys),
        pairs=len(keyed),
        origin=_origin(pairs),
        resolved=tuple(whole.pairs),
    )


def _batches(pairs: Sequence[Pair], size: int) -> list[Sequence[Pair]]:
    return [pairs[start : start + size] for start in range(0, len(pairs), size)]


def _rehearse(connection: Connection, read: PairsResult, batch_size: int) -> PairsResult:
    """The plan: each batch as the run will apply it, on what the batches before it did.

    Run on the caller's transaction, which the caller rolls back.  Under
    ``on_conflict="raise"`` a batch with conflicts is planned (dry run) and then
    applied leaving its clashing rows, so that later batches are planned on
    the rows they would meet.
    """
    table, options = read.table, read.options
    totals: list[KeyResult] = []
    for batch in _batches(read.resolved, batch_size):
        try:
            report = merge_many(connection, table, batch, **_engine_options(options))
        except MergeConflictError:
            report = merge_many(connection, table, batch, dry_run=True, **_engine_options(options))
            merge_many(
                connection,
                table,
                batch,
                on_conflict="ignore",
                on_self_reference=options.on_self_reference,
            )
        totals = add_key_results(totals, report.keys)
    return replace(read, keys=tuple(totals))


def _apply(
    connection: Connection,
    table: Table,
    pairs: Sequence[Pair],
    options: MergeOptions,
    batch_size: int,
    progress: Callable[[int, int], None] | None,
) -> PairsResult:
    totals: list[KeyResult] = []
    done = batches = 0
    for batch in _batches(pairs, batch_size):
        report = merge_many(connection, table, batch, **_engine_options(options))
        totals = add_key_results(totals, report.keys)
        done, batches = done + len(batch), batches + 1
        if progress is not None:
            progress(done, len(pairs))
    return PairsResult(
        table, options, False, tuple(totals), pairs=len(pairs), batches=batches, resolved=()
    )


def add_key_results(totals: list[KeyResult], results: Sequence[KeyResult]) -> list[KeyResult]:
    """Per referencing key, the sums of two lists of results, in the keys' fixed order."""
    by_key = {r.key: r for r in totals}
    for result in results:
        total = by_key.setdefault(result.key, KeyResult(result.key))
        total.repointed += result.repointed
        total.deleted += result.deleted
        total.left += result.left
        total.conflicts += result.conflicts
        total.cleared_rows += result.cleared_rows
        total.cascaded = list(total_cascades([*total.cascaded, *result.cascaded]))
    return sorted(by_key.values(), key=lambda r: r.key.sort_key)
