"""The pairs a merge is fed: keys checked and normalised, chains resolved, referred values.

Every entry point turns what it was given (objects, primary keys) into
``(source, final target)`` pairs, then, per referencing key, into the referred
values the engine re-points: ``{source values: target values}``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from typing import Any, Generic, TypeVar, overload

from sqlalchemy import Connection, Select, Table, func, select
from sqlalchemy.exc import ArgumentError

from . import _statements as sql
from ._backend import backend_of
from ._keys import AnyColumn, ReferencingKey, python_type_of
from ._locks import snapshot_outdated
from ._route import Bind
from .exc import MergeCycleError, ReferencesError, RowNotFoundError

Values = tuple[Any, ...]
T = TypeVar("T", bound=Hashable)


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
        if all(p is not None and type(v) is p for p, v in zip(types, values)):
            return values
        return tuple(
            _checked_key_value(table, column, python_type, value)
            for column, python_type, value in zip(columns, types, values)
        )

    return normalise


def _checked_key_value(
    table: Table, column: AnyColumn, python_type: type | None, value: Any
) -> Any:
    """A key value as the column's Python type; refused when no row can have it, before a
    database casts it (1.5 read as 2).  Values of other numeric types that are equal
    (``numpy.int64(5)``, ``Decimal(5)`` for an integer key) are converted: a driver may
    pass them on as something the database never finds equal (SQLite: as text)."""
    if value is None:
        raise ArgumentError(f"no row of {table.fullname} has a NULL {column.name}")
    if python_type is None or isinstance(value, python_type):
        return value
    try:
        converted = python_type(value)
        fits = converted == value
    except (TypeError, ValueError, ArithmeticError):
        fits = False
    if not fits:
        raise ArgumentError(
            f"no row of {table.fullname} has {column.name} = {value!r} "
            f"(a {python_type.__name__} column)"
        )
    return converted


@overload
def fetch_row(
    bind: Bind, table: Table, key: Values, role: str, *, lock: bool = ...
) -> Mapping[AnyColumn, Any]: ...


@overload
def fetch_row(
    bind: Bind, table: Table, key: Values, role: str, *, lock: bool = ..., missing_ok: bool
) -> Mapping[AnyColumn, Any] | None: ...


def fetch_row(
    bind: Bind,
    table: Table,
    key: Values,
    role: str,
    *,
    lock: bool = False,
    missing_ok: bool = False,
) -> Mapping[AnyColumn, Any] | None:
    """The row keyed ``key``; ``lock``: by a locking read where the backend locks rows;
    ``missing_ok``: None when there is none (else RowNotFoundError)."""
    pk = list(table.primary_key.columns)
    statement = select(table).where(sql.matches(pk, key))
    if lock and isinstance(bind, Connection) and backend_of(bind).row_locks:
        with snapshot_outdated(bind, table, [key]):
            row = bind.execute(statement.with_for_update()).first()
    else:
        row = bind.execute(statement).first()
    if row is None and missing_ok:
        return None
    if row is None:
        raise not_found_error(table, {key}, role)
    return {column: row._mapping[column] for column in table.columns}


def checked_pairs(pairs: Iterable[Any]) -> list[tuple[Any, Any]]:
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


def referred_values_of_keys(
    connection: Connection,
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
            missing = _missing_keys(connection, table, identities)
        _refuse_missing(table, missing)
        return _key_reader(position)
    rows: dict[Values, dict[AnyColumn, Any]] = {}
    for row in _select_rows(connection, table, identities, wanted):
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


def _missing_keys(connection: Connection, table: Table, keys: set[Values]) -> set[Values]:
    """The keys no row has.  Single integer keys are counted first (each key matches one
    row at most): the rows are read, to name the missing keys, only when some are."""
    if sql.json_keys_fit(table):
        counted = sum(
            connection.execute(
                select(func.count()).select_from(query.subquery()), params
            ).scalar_one()
            for query, params in _row_queries(connection, table, keys, [])
        )
        if counted == len(keys):
            return set()
    found = {tuple(row) for row in _select_rows(connection, table, keys, [])}
    return {k for k in keys if k not in found}


def _select_rows(
    connection: Connection, table: Table, keys: set[Values], columns: Sequence[AnyColumn]
) -> Iterable[Any]:
    """The primary key and ``columns`` of the rows keyed ``keys`` (those that exist)."""
    return itertools.chain.from_iterable(
        connection.execute(query, params)
        for query, params in _row_queries(connection, table, keys, columns)
    )


def _row_queries(
    connection: Connection, table: Table, keys: set[Values], columns: Sequence[AnyColumn]
) -> list[tuple[Select[Any], dict[str, Any] | None]]:
    """The SELECTs of :func:`_select_rows`: one over a JSON array on SQLite 3.38+ (many
    integer keys), else one per chunk of keys.  Locking reads where the backend locks
    rows: the rows as locked (the latest committed values), not a REPEATABLE READ
    snapshot older than the locks."""
    pk = list(table.primary_key.columns)
    backend = backend_of(connection)
    if len(keys) > sql.IN_CHUNK and backend.json_key_lists and sql.json_keys_fit(table):
        return [sql.rows_by_json_keys(table, columns, keys)]
    queries: list[tuple[Select[Any], dict[str, Any] | None]] = []
    for chunk in sql.chunks(sorted(keys, key=repr)):
        query = select(*pk, *columns).where(sql.identity_in(pk, chunk))
        queries.append((query.with_for_update() if backend.row_locks else query, None))
    return queries


def not_found_error(table: Table, missing: set[Values], role: str = "") -> RowNotFoundError:
    """The error for keys of ``table`` without a row (``role``: of one source or target)."""
    keys = sorted(missing, key=repr)
    if role:
        message = f"{role} row {keys[0]!r} not found in {table.fullname}"
    else:
        shown = ", ".join(repr(k) for k in keys[:5])
        more = f" and {len(keys) - 5} more" if len(keys) > 5 else ""
        message = f"{len(keys)} key(s) not found in {table.fullname}: {shown}{more}"
    return RowNotFoundError(message, table=table.fullname, keys=keys, role=role)


def _refuse_missing(table: Table, missing: set[Values]) -> None:
    if missing:
        raise not_found_error(table, missing)


def pairs_by_key(
    connection: Connection,
    keys: Sequence[ReferencingKey],
    pairs: Iterable[tuple[T, T]],
    values_of: Callable[[T, tuple[AnyColumn, ...]], Values],
) -> dict[ReferencingKey, dict[Values, Values]]:
    """Per key, the referred values of every pair (source values -> target values).

    A source with a NULL referred value is referenced by nothing through those
    columns; one whose target has a NULL there cannot be re-pointed: refused
    when rows reference it.

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
                    refuse_references(connection, key, source_values, target_values)
                continue
            shared[source_values] = target_values
        by_key.update(dict.fromkeys(same, shared))
    return by_key


def refuse_references(
    connection: Connection, key: ReferencingKey, source: Values, target: Values
) -> None:
    """Raise if rows reference ``source`` through ``key``: the target lacks referred values.

    A current read (on InnoDB a locking one): rows another transaction committed since the
    REPEATABLE READ snapshot (re-pointed to the source by an ON UPDATE CASCADE, say) count."""
    statement = sql.count_references(key)
    if backend_of(connection).snapshot_reads:
        statement = statement.with_for_update(read=True)
    count = connection.execute(statement, sql.pair_parameters(source)).scalar_one()
    if count:
        raise ReferencesError(
            f"cannot re-point {count} row(s) of {key.name}: the target's "
            f"{', '.join(c.name for c in key.referred_columns)} is {target}"
        )
