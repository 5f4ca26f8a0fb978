"""A batch's pairs in the database: ``unnest()`` of arrays, or temporary tables."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import Column, Connection, MetaData, PrimaryKeyConstraint, Table
from sqlalchemy.exc import DBAPIError

from . import _statements as sql
from ._backend import Backend
from ._compat import insert_parameter_order
from ._keys import AnyColumn

Values = tuple[Any, ...]

_table_names = itertools.count(1)


class TemporaryTables:
    """Temporary tables on one connection, dropped when the batch ends."""

    def __init__(self, connection: Connection, backend: Backend) -> None:
        self.connection = connection
        self.backend = backend
        self.created: list[Table] = []

    def create(
        self,
        prefix: str,
        columns: Sequence[tuple[str, AnyColumn]],
        rows: Sequence[Values],
        key: Sequence[str] | None,
    ) -> Table:
        """A temporary table of ``columns`` (name, typed like), filled with ``rows`` (tuples);
        ``key=None``: no primary key, and NULLs allowed (identities of a table without one)."""
        name = f"_sa_references_{prefix}_{next(_table_names)}"
        nullable = key is None
        table = Table(
            name,
            MetaData(),
            *(Column(n, c.type, nullable=nullable, autoincrement=False) for n, c in columns),
            *([] if key is None else [PrimaryKeyConstraint(*key)]),
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
        if self.backend.pairs_shape == "arrays" and sql.plain_values(columns):
            return sql.unnest_mapping(columns, pairs)
        names = [(f"src_{i}", c) for i, c in enumerate(columns)]
        names += [(f"tgt_{i}", c) for i, c in enumerate(columns)]
        rows = [s + t for s, t in pairs.items()]
        return self.create("map", names, rows, [f"src_{i}" for i in range(len(columns))])

    def identities(self, columns: Sequence[AnyColumn], rows: Iterable[Values]) -> Table:
        names = [(f"id_{i}", c) for i, c in enumerate(columns)]
        rows = list(rows)
        with_null = any(None in row for row in rows)
        return self.create("keep", names, rows, None if with_null else [n for n, _ in names])

    def drop(self) -> None:
        temporary = "TEMPORARY " if self.backend.drop_temporary_keyword else ""
        for table in self.created:
            name = self.connection.dialect.identifier_preparer.quote(table.name)
            self.connection.exec_driver_sql(f"DROP {temporary}TABLE IF EXISTS {name}")
        self.created.clear()

    def drop_after_failure(self) -> None:
        """MySQL keeps temporary tables through a rollback: drop them, best effort.

        Elsewhere the caller's ROLLBACK TO SAVEPOINT removes them (transactional DDL),
        and a statement now could fail in a transaction the error aborted.
        """
        if self.backend.temporary_tables_survive_rollback:
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
