"""Building the SQL statements of a merge: counts, conflict checks, updates, deletes."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Delete,
    Select,
    Update,
    and_,
    bindparam,
    delete,
    exists,
    false,
    func,
    not_,
    or_,
    select,
    tuple_,
    update,
)

from ._keys import AnyColumn, ReferencingKey, UniqueKey

Values = tuple[Any, ...]

#: identities per IN list; well under every driver's bound-parameter limit
IN_CHUNK = 500


def matches(columns: Sequence[AnyColumn], values: Values) -> ColumnElement[bool]:
    """``col1 = :v1 AND col2 = :v2 ...`` with bound parameters."""
    return and_(*(c == bindparam(None, v, type_=c.type) for c, v in zip(columns, values)))


def _identity_in(columns: Sequence[AnyColumn], identities: Sequence[Values]) -> ColumnElement[bool]:
    if not identities:
        return false()
    if len(columns) == 1:
        return columns[0].in_([i[0] for i in identities])
    return tuple_(*columns).in_(list(identities))


def chunks(items: Sequence[Values], size: int = IN_CHUNK) -> Iterator[Sequence[Values]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def identity_in(columns: Sequence[AnyColumn], identities: Sequence[Values]) -> ColumnElement[bool]:
    """The rows whose identity columns are among ``identities`` (chunked OR of IN lists)."""
    if not identities:
        return false()
    return or_(*(_identity_in(columns, chunk) for chunk in chunks(identities)))


def count_references(key: ReferencingKey, source: Values) -> Select[Any]:
    return select(func.count()).select_from(key.table).where(matches(key.columns, source))


def conflicting_rows(
    key: ReferencingKey, unique: UniqueKey, source: Values, target: Values
) -> Select[Any]:
    """Identities of the source's rows that would clash on ``unique`` once re-pointed.

    A source row clashes when another row, not moving, already holds the
    values the source row would have after the update.  NULLs never clash.
    """
    table = key.table
    other = table.alias("other")
    new_value = dict(zip(key.columns, target))
    criteria: list[ColumnElement[bool]] = []
    for column in unique.columns:
        if column in new_value:
            criteria.append(
                other.c[column.key] == bindparam(None, new_value[column], type_=column.type)
            )
        else:
            criteria.append(other.c[column.key] == column)
    if not set(key.columns) <= set(unique.columns):
        criteria.append(
            or_(*(other.c[c.key].is_distinct_from(v) for c, v in zip(key.columns, source)))
        )
    return (
        select(*key.identity)
        .where(matches(key.columns, source), exists().where(*criteria))
        .order_by(*key.identity)
    )


def rows_of(key: ReferencingKey, source: Values) -> Select[Any]:
    """Identities of every row that references ``source`` through ``key``."""
    return select(*key.identity).where(matches(key.columns, source)).order_by(*key.identity)


def repoint(
    key: ReferencingKey, source: Values, target: Values, keep: Sequence[Values] = ()
) -> Update:
    """``UPDATE table SET fk = target WHERE fk = source`` (rows in ``keep`` excluded)."""
    criteria = matches(key.columns, source)
    if keep:
        criteria = and_(criteria, not_(identity_in(key.identity, keep)))
    return (
        update(key.table)
        .where(criteria)
        .values({c.key: bindparam(None, v, type_=c.type) for c, v in zip(key.columns, target)})
    )


def delete_rows(key: ReferencingKey, source: Values, rows: Sequence[Values]) -> Delete:
    return delete(key.table).where(matches(key.columns, source), identity_in(key.identity, rows))


def nullify(key: ReferencingKey, holder: Values, source: Values) -> Update:
    """Set ``key``'s columns to NULL on the ``holder`` row, if it references ``source``."""
    return (
        update(key.table)
        .where(matches(key.identity, holder), matches(key.columns, source))
        .values({c.key: None for c in key.columns})
    )
