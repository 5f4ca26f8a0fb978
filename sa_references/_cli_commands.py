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

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, Table

from ._cli_input import (
    CommandError,
    Declined,
    Values,
    database,
    key_text,
    key_values,
    read_pairs,
    reflect_table,
)
from ._dependents import row_dependents
from ._keys import ReferencingKey, referencing_keys
from ._merge import merge_many, merge_rows
from ._options import DEFAULT_OPTIONS, MergeOptions
from ._pairs import Chains
from ._report import Conflict, KeyResult, total_cascades
from .exc import (
    ConcurrentMergeError,
    MergeConflictError,
    ReferencesError,
    RowNotFoundError,
    SelfReferenceError,
)

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
    #: in a plan: the self-reference the merge would refuse (the plan then counts the
    #: references as if ``on_self_reference="null"`` had been given)
    refused: SelfReferenceError | None = field(default=None, compare=False, repr=False)

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

    @property
    def refusal(self) -> ReferencesError | None:
        """In a plan: the error the merge itself would raise (a self-reference under
        ``on_self_reference="raise"``, conflicts under ``on_conflict="raise"``), or None."""
        if self.refused is not None:
            return self.refused
        if self.options.on_conflict == "raise" and self.conflicts:
            return MergeConflictError(self.conflicts)
        return None

    def refuse(self) -> None:
        """Raise :attr:`refusal`, when this plan cannot run."""
        if self.refusal is not None:
            raise self.refusal

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
    #: per key read from a CSV file: its role (source or target) and first line
    lines: Mapping[Values, tuple[str, int]] = field(default_factory=dict, repr=False)


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
    """The merge of one pair, or its plan: a plan the merge would refuse for a
    self-reference is made as if the reference were cleared, and says so (``refused``)."""
    engine_options = _engine_options(options)
    refused = None
    try:
        report = merge_rows(connection, table, pair[0], pair[1], dry_run=dry_run, **engine_options)
    except SelfReferenceError as error:
        if not dry_run:
            raise
        refused, engine_options["on_self_reference"] = error, "null"
        report = merge_rows(connection, table, pair[0], pair[1], dry_run=True, **engine_options)
    return MergeResult(
        table,
        options,
        dry_run,
        tuple(report.keys),
        source=pair[0],
        target=pair[1],
        refused=refused,
    )


def _ask(confirm: Callable[[R], bool] | None, plan: R) -> None:
    if confirm is not None and not confirm(plan):
        raise Declined("merge not confirmed; nothing changed")
    plan.refuse()


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
    progress: Callable[[str, int, int], None] | None = None,
) -> PairsResult:
    """Merge every (source, target) pair (a CSV file with a header ``source,target``, or
    key pairs), chains resolved, ``batch_size`` pairs per ``merge_many`` call, all in one
    transaction.

    The plan (``options.dry_run``, or what ``confirm`` is shown) is the batched run
    itself, rehearsed in a transaction that is rolled back: the rows it lists as
    deleted or left are the ones the run deletes or leaves.  Without ``confirm`` the
    pairs run once, unplanned: a conflict under ``on_conflict="raise"`` in any batch
    rolls the whole run back.  ``progress(phase, done, total)`` is called after each
    batch, with ``phase`` ``"planned"`` while rehearsing and ``"merged"`` while running.
    A key without a row is reported with the CSV file's line.
    """
    _check_batch_size(batch_size)
    with database(url) as engine:
        with engine.connect() as connection:
            read = _read(connection, table, schema, pairs, options)
        try:
            plan = None
            if options.dry_run or confirm is not None:
                with engine.connect() as connection:
                    plan = _rehearse(connection, read, batch_size, progress)
                    connection.rollback()
                if options.dry_run:
                    return plan
                _ask(confirm, plan)
            with engine.begin() as connection:
                result = _apply(connection, read, batch_size, progress)
                _check_as_planned(plan, result)
        except RowNotFoundError as error:
            _name_the_line(error, read)
            raise
    return replace(result, committed=True)


def _origin(pairs: Path | Iterable[tuple[Any, Any]]) -> str:
    return str(pairs) if isinstance(pairs, Path) else "pairs"


def _read(
    connection: Connection,
    table: str,
    schema: str | None,
    pairs: Path | Iterable[tuple[Any, Any]],
    options: MergeOptions,
) -> PairsResult:
    """The pairs, read and resolved (chains followed, cycles refused); nothing runs."""
    reflected = reflect_table(connection, table, schema, check=True)
    lines: dict[Values, tuple[str, int]] = {}
    pair_lines: list[int] = []
    if isinstance(pairs, Path):
        keyed = read_pairs(pairs, reflected, lines, pair_lines)
    else:
        keyed = [(key_values(reflected, s), key_values(reflected, t)) for s, t in pairs]
    chains: Chains[Values] = Chains(lambda key: f"{reflected.fullname} {key_text(key)}")
    for number, (source, target) in enumerate(keyed):
        try:
            chains.add(source, target)
        except ReferencesError as error:  # a cycle, a source given two targets
            if not pair_lines:
                raise
            raise CommandError(f"{pairs} line {pair_lines[number]}: {error}") from None
    target_of = chains.target_of
    return PairsResult(
        reflected,
        options,
        True,
        (),
        pairs=len(keyed),
        origin=_origin(pairs),
        resolved=tuple(target_of.items()),
        lines=lines,
    )


def _name_the_line(error: RowNotFoundError, read: PairsResult) -> None:
    """Keys without a row, named by the CSV lines that gave them (the first one each)."""
    if isinstance(error, ConcurrentMergeError):
        return
    found = sorted(
        (read.lines[key][1], read.lines[key][0], key) for key in error.keys if key in read.lines
    )
    if not found:
        return
    table = read.table.fullname
    if len(error.keys) == 1:
        line, role, key = found[0]
        raise CommandError(
            f"{read.origin} line {line}: {role} row {key_text(key)} not found in {table}"
        ) from None
    shown = ", ".join(f"line {line} {role} {key_text(key)}" for line, role, key in found[:5])
    more = f" and {len(error.keys) - 5} more" if len(error.keys) > 5 else ""
    raise CommandError(
        f"{read.origin}: {len(error.keys)} keys not found in {table}: {shown}{more}"
    ) from None


def _batches(pairs: Sequence[Pair], size: int) -> list[Sequence[Pair]]:
    return [pairs[start : start + size] for start in range(0, len(pairs), size)]


def _rehearse(
    connection: Connection,
    read: PairsResult,
    batch_size: int,
    progress: Callable[[str, int, int], None] | None,
) -> PairsResult:
    """The plan: each batch as the run will apply it, on what the batches before it did.

    Run on the caller's transaction, which the caller rolls back.  A batch the run
    would refuse (conflicts under ``on_conflict="raise"``, a self-reference under
    ``on_self_reference="raise"``) is planned (dry run, self-references counted as
    cleared) and then applied leaving its clashing rows and clearing those references,
    so that later batches are planned on the rows they would meet.
    """
    table, options = read.table, read.options
    engine_options = _engine_options(options)
    lenient = {**engine_options, "on_self_reference": "null"}
    totals: list[KeyResult] = []
    refused: SelfReferenceError | None = None
    done = 0
    for batch in _batches(read.resolved, batch_size):
        try:
            report = merge_many(connection, table, batch, **engine_options)
        except (MergeConflictError, SelfReferenceError) as error:
            if isinstance(error, SelfReferenceError):
                refused = refused or error
            report = merge_many(connection, table, batch, dry_run=True, **lenient)
            # carried forward as the rows would be: clashes under "raise" left on their
            # sources (which then cannot be deleted), self-references cleared
            carry = dict(lenient)
            clashes = isinstance(error, MergeConflictError) or bool(report.conflicts)
            if clashes and options.on_conflict == "raise":
                carry.update(on_conflict="ignore", delete=False)
            merge_many(connection, table, batch, **carry)
        totals = add_key_results(totals, report.keys)
        done += len(batch)
        if progress is not None:
            progress("planned", done, len(read.resolved))
    return replace(read, keys=tuple(totals), refused=refused)


def _apply(
    connection: Connection,
    read: PairsResult,
    batch_size: int,
    progress: Callable[[str, int, int], None] | None,
) -> PairsResult:
    totals: list[KeyResult] = []
    done = batches = 0
    pairs = read.resolved
    for batch in _batches(pairs, batch_size):
        report = merge_many(connection, read.table, batch, **_engine_options(read.options))
        totals = add_key_results(totals, report.keys)
        done, batches = done + len(batch), batches + 1
        if progress is not None:
            progress("merged", done, len(pairs))
    return replace(read, dry_run=False, keys=tuple(totals), batches=batches, resolved=())


def add_key_results(totals: list[KeyResult], results: Sequence[KeyResult]) -> list[KeyResult]:
    """Per referencing key, the sums of two lists of results, in the keys' fixed order."""
    by_key = {r.key: r for r in totals}
    for result in results:
        total = by_key.setdefault(result.key, KeyResult(result.key))
        total.repointed += result.repointed
        total.deleted += result.deleted
        total.left += result.left
        total.conflicts = merge_conflicts([*total.conflicts, *result.conflicts])
        total.cleared_rows += result.cleared_rows
        total.cascaded = list(total_cascades([*total.cascaded, *result.cascaded]))
    return sorted(by_key.values(), key=lambda r: r.key.sort_key)


def merge_conflicts(conflicts: Sequence[Conflict]) -> list[Conflict]:
    """One conflict per unique key of a referencing key, the batches' rows concatenated."""
    merged: dict[tuple[ReferencingKey, str], Conflict] = {}
    for conflict in conflicts:
        slot = (conflict.key, conflict.constraint)
        seen = merged.get(slot)
        if seen is None:
            merged[slot] = conflict
        else:
            merged[slot] = replace(
                seen, rows=seen.rows + conflict.rows, sources=seen.sources + conflict.sources
            )
    return list(merged.values())
