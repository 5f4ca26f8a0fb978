"""Building the SQL statements of a merge: counts, conflict checks, updates, deletes."""

from __future__ import annotations

import functools
import json
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

from sqlalchemy import (
    ARRAY,
    ColumnElement,
    Delete,
    Select,
    Update,
    and_,
    any_,
    bindparam,
    case,
    delete,
    exists,
    false,
    func,
    literal,
    literal_column,
    null,
    or_,
    select,
    text,
    true,
    tuple_,
    union_all,
    update,
)
from sqlalchemy import column as sql_column

from ._backend import LockShape, SeenShape
from ._keys import AnyColumn, ReferencingKey, UniqueKey, python_type_of

Values = tuple[Any, ...]
T = TypeVar("T")

#: identities per IN list; well under every driver's bound-parameter limit
IN_CHUNK = 500


def matches(columns: Sequence[AnyColumn], values: Values) -> ColumnElement[bool]:
    """``col1 = :v1 AND col2 = :v2 ...`` with bound parameters."""
    return and_(*(c == bindparam(None, v, type_=c.type) for c, v in zip(columns, values)))


def _identity_in(columns: Sequence[AnyColumn], identities: Sequence[Values]) -> ColumnElement[bool]:
    if not identities:
        return false()
    # IN never matches a NULL: identities holding one (tables without a primary key) are
    # matched column by column
    with_null = [i for i in identities if None in i]
    plain = [i for i in identities if None not in i] if with_null else list(identities)
    matched: list[ColumnElement[bool]] = []
    if plain:
        if len(columns) == 1:
            matched.append(columns[0].in_([i[0] for i in plain]))
        else:
            matched.append(tuple_(*columns).in_(plain))
    for identity in with_null:
        matched.append(
            and_(*(c.is_(None) if v is None else c == v for c, v in zip(columns, identity)))
        )
    return matched[0] if len(matched) == 1 else or_(*matched)


def chunks(items: Sequence[Values], size: int = IN_CHUNK) -> Iterator[Sequence[Values]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def identity_in(columns: Sequence[AnyColumn], identities: Sequence[Values]) -> ColumnElement[bool]:
    """The rows whose identity columns are among ``identities`` (chunked OR of IN lists)."""
    if not identities:
        return false()
    return or_(*(_identity_in(columns, chunk) for chunk in chunks(identities)))


def pair_parameters(source: Values, target: Values = ()) -> dict[str, Any]:
    """Values for the ``src_<i>``/``tgt_<i>`` parameters of the cached statements below."""
    params = {f"src_{i}": v for i, v in enumerate(source)}
    params.update({f"tgt_{i}": v for i, v in enumerate(target)})
    return params


def _named(columns: Sequence[AnyColumn], prefix: str) -> list[Any]:
    return [bindparam(f"{prefix}_{i}", type_=c.type) for i, c in enumerate(columns)]


def _from_source(key: ReferencingKey) -> ColumnElement[bool]:
    return and_(*(c == p for c, p in zip(key.columns, _named(key.columns, "src"))))


# The statements of a single merge are built once per key and cached (with
# named parameters), so SQLAlchemy's compiled cache serves every later merge.


def cached(build: Callable[..., T]) -> Callable[..., T]:
    """Build a statement once per key (and arguments), stored on the key itself.

    The cache then lives exactly as long as the key's MetaData, where an
    ``lru_cache`` would keep old MetaData alive.
    """

    @functools.wraps(build)
    def get(key: ReferencingKey, *args: Any) -> T:
        slot = (build.__name__, *args)
        try:
            found: T = key.cache[slot]
        except KeyError:
            found = key.cache[slot] = build(key, *args)
        return found

    return get


@cached
def count_references(key: ReferencingKey) -> Select[Any]:
    """``SELECT count(*)`` of the rows referencing ``:src_<i>`` through ``key``."""
    return select(func.count()).select_from(key.table).where(_from_source(key))


def _same(unique: UniqueKey, value: ColumnElement[Any], other: Any) -> ColumnElement[bool]:
    """Whether two values clash on ``unique``: NULLs never do, unless NULLS NOT DISTINCT."""
    return value.is_not_distinct_from(other) if unique.nulls_not_distinct else value == other


def _filled(unique: UniqueKey, rest: Sequence[AnyColumn]) -> list[ColumnElement[bool]]:
    """The conditions for a row to take its values on ``unique`` (none can be NULL)."""
    return [] if unique.nulls_not_distinct else [c.is_not(None) for c in rest]


def current(statement: Select[Any], locking: bool) -> Select[Any]:
    """``statement`` as a locking read (``FOR SHARE`` / ``LOCK IN SHARE MODE``) when
    ``locking``: on InnoDB a plain read, a subquery's too, answers from the REPEATABLE READ
    snapshot, a locking one sees the latest committed rows (as the UPDATE will)."""
    return statement.with_for_update(read=True) if locking else statement


def _exists(criteria: Sequence[ColumnElement[bool]], locking: bool) -> Any:
    """``EXISTS (SELECT * ... WHERE criteria)``, a locking read when ``locking``."""
    if not locking:
        return exists().where(*criteria)
    return current(select(literal_column("*")).where(*criteria), locking).exists()


@cached
def conflicting_rows(key: ReferencingKey, unique: UniqueKey, locking: bool = False) -> Select[Any]:
    """Identities of the source's rows that would clash on ``unique`` once re-pointed.

    A source row clashes when another row, not moving, already holds the
    values the source row would have after the update.  NULLs never clash.
    ``locking``: every read of the statement, the subquery's included, is a locking read
    (see :func:`current`).
    """
    table = key.table
    other = table.alias("other")
    new_value = dict(zip(key.columns, _named(key.columns, "tgt")))
    criteria: list[ColumnElement[bool]] = [
        _same(unique, other.c[column.key], new_value.get(column, column))
        for column in unique.columns
    ]
    if not set(key.columns) <= set(unique.columns):
        sources = _named(key.columns, "src")
        criteria.append(
            or_(*(other.c[c.key].is_distinct_from(p) for c, p in zip(key.columns, sources)))
        )
    clashing = _exists(criteria, locking)
    statement = select(*key.identity).where(_from_source(key), clashing).order_by(*key.identity)
    return current(statement, locking)


@cached
def rows_of(key: ReferencingKey) -> Select[Any]:
    """Identities of every row that references ``:src_<i>`` through ``key``."""
    return select(*key.identity).where(_from_source(key)).order_by(*key.identity)


@cached
def self_references(key: ReferencingKey) -> Select[Any]:
    """Identity of the target's own row when it references ``:src_<i>`` through ``key``
    (a self-referential key: the target's row is a row of the referencing table)."""
    own = [c == p for c, p in zip(key.referred_columns, _named(key.columns, "tgt"))]
    return select(*key.identity).where(_from_source(key), *own)


@cached
def _repoint(key: ReferencingKey) -> Update:
    targets = _named(key.columns, "tgt")
    return (
        update(key.table)
        .where(_from_source(key))
        .values(dict(zip((c.key for c in key.columns), targets)))
    )


def repoint(key: ReferencingKey, keep: Sequence[Values] = ()) -> Update:
    """``UPDATE table SET fk = :tgt WHERE fk = :src`` (rows in ``keep`` excluded)."""
    statement = _repoint(key)
    if keep:
        # IS NOT TRUE, not NOT: a row with a NULL in its identity (a table without primary
        # key) compares NULL to the kept identities, and NOT NULL would keep it too
        statement = statement.where(identity_in(key.identity, keep).is_not(true()))
    return statement


#: per key of a :func:`repoint_together` statement: the names of its source parameters and
#: of its target parameters
ParameterNames = tuple[tuple[tuple[str, ...], tuple[str, ...]], ...]


@cached
def _repoint_together(
    key: ReferencingKey, others: tuple[ReferencingKey, ...]
) -> tuple[Select[Any], ParameterNames]:
    ctes, names = [], []
    for n, each in enumerate((key, *others)):
        sources = [f"k{n}_src_{i}" for i in range(len(each.columns))]
        targets = [f"k{n}_tgt_{i}" for i in range(len(each.columns))]
        names.append((tuple(sources), tuple(targets)))
        pairs = list(zip(each.columns, sources, targets))
        moved = (
            update(each.table)
            .where(*(c == bindparam(source, type_=c.type) for c, source, _ in pairs))
            .values({c.key: bindparam(target, type_=c.type) for c, _, target in pairs})
            .returning(each.columns[0])
            .cte(f"sa_references_u{n}")
        )
        ctes.append(select(func.count()).select_from(moved).scalar_subquery())
    return select(*ctes), tuple(names)


def repoint_together(keys: Sequence[ReferencingKey]) -> tuple[Select[Any], ParameterNames]:
    """PostgreSQL: :func:`repoint` for several keys of distinct tables, as one statement.

    ``WITH u0 AS (UPDATE t0 SET fk = :k0_tgt_0 WHERE fk = :k0_src_0 RETURNING fk), u1 AS
    (...) SELECT (SELECT count(*) FROM u0), (SELECT count(*) FROM u1) ...``: one row, the
    rows each key re-pointed.  Each key has parameters of its own (``k<n>_src_<i>``,
    ``k<n>_tgt_<i>``, named in the second item returned): keys may refer to different
    columns (an ``id``, a unique ``code``), whose values differ.

    The UPDATEs of one statement share one snapshot and none sees another's rows: a table
    must not appear twice (PostgreSQL leaves a row updated twice undefined).
    """
    first, *others = keys
    return _repoint_together(first, tuple(others))


def delete_rows(key: ReferencingKey, source: Values, rows: Sequence[Values]) -> Delete:
    return delete(key.table).where(matches(key.columns, source), identity_in(key.identity, rows))


def nullify(key: ReferencingKey, holder: Values, source: Values) -> Update:
    """Set ``key``'s columns to NULL on the ``holder`` row, if it references ``source``."""
    return (
        update(key.table)
        .where(matches(key.identity, holder), matches(key.columns, source))
        .values({c.key: None for c in key.columns})
    )


# -- set-based statements for a batch: joined to a mapping table --------------
#
# A mapping table has columns ``src_<i>`` and ``tgt_<i>`` for each referred
# column of a key.  Each statement names the mapping table once, so MySQL's
# "can't reopen a temporary table" never applies; the UPDATE is rendered by
# each dialect as UPDATE ... FROM (PostgreSQL, SQLite) or a multi-table UPDATE
# (MySQL/MariaDB), which reads new values from the mapping, never from
# already-assigned columns.


def plain_values(columns: Iterable[AnyColumn]) -> bool:
    """Whether values of ``columns`` are integers or strings: they travel as they are
    (PostgreSQL arrays, rows handed to the driver)."""
    return all(python_type_of(c) in (int, str) for c in columns)


def unnest_mapping(columns: Sequence[AnyColumn], pairs: Mapping[Values, Values]) -> Any:
    """PostgreSQL: ``unnest(:src_0, .., :tgt_0, ..) AS map(src_0, .., tgt_0, ..)``.

    One array parameter per column, whatever the number of pairs: no table to
    create, fill and drop, and no bound-parameter limit.
    """
    arrays, names = [], []
    for side, index in (("src", 0), ("tgt", 1)):
        for i, column in enumerate(columns):
            values = [p[index][i] for p in pairs.items()]
            arrays.append(bindparam(f"map_{side}_{i}", values, type_=ARRAY(column.type)))
            names.append(sql_column(f"{side}_{i}", column.type))
    return func.unnest(*arrays).table_valued(*names).render_derived(name="sa_references_map")


def _joined(key: ReferencingKey, mapping: Any) -> ColumnElement[bool]:
    return and_(*(c == mapping.c[f"src_{i}"] for i, c in enumerate(key.columns)))


def batch_rows(key: ReferencingKey, mapping: Any) -> Select[Any]:
    """Identity and new values of every row a batch re-points (for fetch mode)."""
    targets = [mapping.c[f"tgt_{i}"] for i in range(len(key.columns))]
    return select(*key.identity, *targets).where(_joined(key, mapping))


def batch_self_references(key: ReferencingKey, mapping: Any) -> Select[Any]:
    """Targets whose own row references their source (a self-referential key)."""
    own = [mapping.c[f"tgt_{i}"] == c for i, c in enumerate(key.referred_columns)]
    sources = [mapping.c[f"src_{i}"] for i in range(len(key.columns))]
    return select(*key.identity, *sources).where(_joined(key, mapping), *own)


def batch_conflicts(key: ReferencingKey, mapping: Any, locking: bool = False) -> Select[Any]:
    """The rows a batch may be unable to re-point, with what ranking them takes.

    A moving row cannot move when a row that is not moving already holds its
    new values on a unique key, or when an earlier moving row (by identity)
    that does move ends with the same values.  Which earlier rows move depends
    on every unique key at once (a row refused on one key holds no values on
    the others), so the ranking itself is left to
    :func:`._batch.rank_conflicts`; this SELECT returns only the rows it
    needs, by identity: those that clash with a row not moving, or share
    their new values on a unique key with another moving row.  NULLs never
    clash.

    Columns: the identity, the sources (``src_<i>``), then per unique key of
    ``key`` in order: ``clash_<n>`` (1 when a row not moving holds the new
    values), ``filled_<n>`` (1 when none of them is NULL) and ``first_<n>_<j>``
    per identity column: the identity of the first moving row (by identity)
    that would end with the same values, by the database's own comparison --
    so the same for every row of a group, and different between groups.  The
    window functions of a unique key share one window (one sort).

    The mapping table is named once (MySQL's "can't reopen" rule); the target's
    own row of a self-referential key is left out: it is cleared, not moved.
    ``locking``: every read of the statement, its subqueries' included, is a locking read
    (see :func:`current`).
    """
    table = key.table
    new_value = {c: mapping.c[f"tgt_{i}"] for i, c in enumerate(key.columns)}
    moving: list[ColumnElement[bool]] = [_joined(key, mapping)]
    if key.is_self_referential:
        moving.append(
            or_(
                *(
                    column.is_distinct_from(mapping.c[f"tgt_{i}"])
                    for i, column in enumerate(key.referred_columns)
                )
            )
        )
    columns: list[Any] = [
        *key.identity,
        *(mapping.c[f"src_{i}"].label(f"src_{i}") for i in range(len(key.columns))),
    ]
    candidate: list[ColumnElement[bool]] = []
    for n, unique in enumerate(key.unique_keys):
        other = table.alias(f"other_{n}")
        rest = [c for c in unique.columns if c not in new_value]
        existing = [_same(unique, other.c[c.key], new_value.get(c, c)) for c in unique.columns]
        if not set(key.columns) <= set(unique.columns):
            existing.append(
                or_(
                    *(
                        other.c[c.key].is_distinct_from(mapping.c[f"src_{i}"])
                        for i, c in enumerate(key.columns)
                    )
                )
            )
        ends_as = [new_value[c] for c in unique.columns if c in new_value] + rest
        window: dict[str, Any] = {
            "partition_by": ends_as,
            "order_by": list(key.identity),
            "rows": (None, None),
        }
        columns += [
            case((_exists(existing, locking), 1), else_=0).label(f"clash_{n}"),
            case((and_(true(), *_filled(unique, rest)), 1), else_=0).label(f"filled_{n}"),
            func.count().over(**window).label(f"size_{n}"),
            *(
                func.first_value(c).over(**window).label(f"first_{n}_{j}")
                for j, c in enumerate(key.identity)
            ),
        ]
    ranked = current(select(*columns).where(*moving), locking).subquery("ranked")
    for n in range(len(key.unique_keys)):
        clash, filled, size = (ranked.c[f"{name}_{n}"] for name in ("clash", "filled", "size"))
        candidate.append(or_(clash == 1, and_(filled == 1, size > 1)))
    identity = [ranked.c[c.key] for c in key.identity]
    flags = [
        ranked.c[name]
        for n in range(len(key.unique_keys))
        for name in (
            f"clash_{n}",
            f"filled_{n}",
            *(f"first_{n}_{j}" for j in range(len(key.identity))),
        )
    ]
    statement = (
        select(*identity, *(ranked.c[f"src_{i}"] for i in range(len(key.columns))), *flags)
        .where(or_(false(), *candidate))
        .order_by(*identity)
    )
    return current(statement, locking)


def batch_repoint(key: ReferencingKey, mapping: Any, keep: Any = None) -> Update:
    """One UPDATE for every pair of the batch; rows listed in ``keep`` stay."""
    statement = (
        update(key.table)
        .where(_joined(key, mapping))
        .values({c.key: mapping.c[f"tgt_{i}"] for i, c in enumerate(key.columns)})
    )
    if keep is not None:
        statement = statement.where(
            ~exists().where(
                *(keep.c[f"id_{i}"].is_not_distinct_from(c) for i, c in enumerate(key.identity))
            )
        )
    return statement


def delete_identities(key: ReferencingKey, rows: Sequence[Values]) -> Iterator[Delete]:
    for chunk in chunks(rows):
        yield delete(key.table).where(_identity_in(key.identity, chunk))


def nullify_identities(key: ReferencingKey, rows: Sequence[Values]) -> Iterator[Update]:
    for chunk in chunks(rows):
        yield (
            update(key.table)
            .where(_identity_in(key.identity, chunk))
            .values({c.key: None for c in key.columns})
        )


#: primary keys per locking SELECT
LOCK_CHUNK = 1000


#: the locking SELECT of a table, built once: {(arrays, primary key columns): statement}
_locks: weakref.WeakKeyDictionary[Any, dict[Any, Select[Any]]] = weakref.WeakKeyDictionary()


def _lock_statement(
    table: Any,
    pk: tuple[AnyColumn, ...],
    shape: LockShape,
    columns: tuple[AnyColumn, ...] = (),
    lock: bool = True,
) -> Select[Any]:
    """The statement :func:`lock_rows` runs, with one parameter ``lock_ids``."""
    by_shape = _locks.setdefault(table, {})
    try:
        return by_shape[shape, pk, columns, lock]
    except KeyError:
        pass
    statement = select(*pk, *columns).where(_lock_match(pk, shape)).order_by(*pk)
    if lock:
        statement = statement.with_for_update()
    by_shape[shape, pk, columns, lock] = statement
    return statement


def _lock_match(pk: tuple[AnyColumn, ...], shape: LockShape) -> ColumnElement[bool]:
    """The WHERE clause of a lock: the rows keyed by the parameter ``lock_ids``."""
    if shape == "array":
        (column,) = pk
        values = bindparam("lock_ids", type_=ARRAY(column.type))
        return column == any_(values)
    if shape == "json":
        (column,) = pk
        listed = text("JSON_TABLE(:lock_ids, '$[*]' COLUMNS (v BIGINT PATH '$')) AS lock_ids")
        return column.in_(select(literal_column("lock_ids.v")).select_from(listed))
    wanted: Any = bindparam("lock_ids", expanding=True)
    return pk[0].in_(wanted) if len(pk) == 1 else tuple_(*pk).in_(wanted)


def _seen_and_lock_statement(
    table: Any,
    pk: tuple[AnyColumn, ...],
    shape: LockShape,
    columns: tuple[AnyColumn, ...],
    seen: SeenShape,
) -> Any:
    """:func:`_lock_statement` that also reads the rows as they were when it started: rows
    of ``pk``, a flag, then ``columns`` as locked.  ``"cte"``: one row per row seen, the
    flag false for a row gone while the lock waited (PostgreSQL: both CTEs share the
    statement's snapshot, and FOR UPDATE re-checks the latest row).  ``"union"``: the
    plain SELECT runs first (MySQL/MariaDB) and counts the rows it sees (one row, NULL
    keys, the count as its flag), then the locked rows, flagged -1."""
    by_shape = _locks.setdefault(table, {})
    slot = (shape, pk, columns, seen)
    if slot in by_shape:
        return by_shape[slot]
    statement: Any
    if seen == "cte":
        before = _lock_statement(table, pk, shape, (), lock=False).cte("sa_references_seen")
        locking = _lock_statement(table, pk, shape, columns, lock=True)
        locked = locking.cte("sa_references_locked")
        names = [c.name for c in pk]
        on = and_(*(before.c[n] == locked.c[n] for n in names))
        statement = (
            select(
                *(before.c[n] for n in names),
                locked.c[names[0]].is_not(None).label("sa_references_locked"),
                *(locked.c[c.name] for c in columns),
            )
            .select_from(before.outerjoin(locked, on))
            .order_by(*(before.c[n] for n in names))
        )
    else:
        # the plain SELECT counts the rows (a row per key would double what travels)
        matched = _lock_match(pk, shape)
        flag = "sa_references_locked"
        first = select(
            *(null().label(c.name) for c in pk),
            func.count().label(flag),
            *(null().label(c.name) for c in columns),
        )
        first = first.select_from(table).where(matched)
        last = select(*pk, literal(-1).label(flag), *columns).where(matched)
        statement = union_all(first, last.order_by(*pk).with_for_update())
    by_shape[slot] = statement
    return statement


def json_keys_fit(table: Any) -> bool:
    """Whether ``table``'s keys can travel as one JSON array of integers (MySQL JSON_TABLE)."""
    pk = list(table.primary_key.columns)
    return (
        len(pk) == 1
        and python_type_of(pk[0]) is int
        and not getattr(pk[0].type, "unsigned", False)  # BIGINT would not hold them all
    )


def rows_by_json_keys(
    table: Any, columns: Sequence[AnyColumn], keys: Iterable[Values]
) -> tuple[Select[Any], dict[str, Any]]:
    """SQLite: the primary key and ``columns`` of the rows keyed ``keys`` (one integer
    column, see :func:`json_keys_fit`), the keys passed as one JSON array: one statement
    where IN lists would take one per few hundred keys."""
    (pk,) = table.primary_key.columns
    listed: Select[Any] = select(literal_column("value")).select_from(text("json_each(:json_keys)"))
    statement = select(pk, *columns).where(pk.in_(listed))
    return statement, {"json_keys": json.dumps(sorted(int(v) for (v,) in keys))}


def lock_rows(
    table: Any,
    identities: Sequence[Values],
    *,
    shape: LockShape = "in",
    columns: tuple[AnyColumn, ...] = (),
    lock: bool = True,
    seen: SeenShape | None = None,
) -> Iterator[tuple[Any, dict[str, Any]]]:
    """``SELECT pk ... ORDER BY pk FOR UPDATE`` over ``identities``, in primary key order
    (``seen``: with the rows as they were before the lock waited, flagged; see
    :func:`_seen_and_lock_statement`).

    Yields each statement with its parameters (the statements are built once per table).
    A single-column key can travel as one parameter, one statement whatever the number
    of rows, instead of chunks of ``IN``: ``shape="array"`` (PostgreSQL,
    ``= ANY(:array)``) or, for integers, ``shape="json"`` (MariaDB 10.6+, MySQL 8.0.4+:
    ``IN (SELECT .. FROM JSON_TABLE(:json, ..))``, when more than one IN list would be
    needed: for a few keys, IN is quicker).  The rows' ``columns`` follow their primary
    key (read as locked: the latest committed values); ``lock=False`` only reads them.
    """
    pk = tuple(table.primary_key.columns)
    try:
        ordered = sorted(set(identities))
    except TypeError:  # values of mixed types: any fixed total order will do
        ordered = sorted(set(identities), key=repr)

    def built(shape: LockShape) -> Any:
        if seen is not None and lock:
            return _seen_and_lock_statement(table, pk, shape, columns, seen)
        return _lock_statement(table, pk, shape, columns, lock)

    if shape == "array" and len(pk) == 1:
        yield built("array"), {"lock_ids": [v for (v,) in ordered]}
        return
    if shape == "json" and len(ordered) > LOCK_CHUNK and json_keys_fit(table):
        values = json.dumps([int(v) for (v,) in ordered])
        yield built("json"), {"lock_ids": values}
        return
    statement = built("in")
    for chunk in chunks(ordered, LOCK_CHUNK):
        values_in = [v for (v,) in chunk] if len(pk) == 1 else list(chunk)
        yield statement, {"lock_ids": values_in}
