"""Foreign keys the database holds but a :class:`~sqlalchemy.MetaData` lacks.

A merge follows the foreign keys of its MetaData.  A key the database holds
that the MetaData does not know -- a table of another schema (a PostgreSQL
schema, a MariaDB database), a table nobody modelled -- is never re-pointed:
its rows stay on the source, and deleting the source then cascades to them
(ON DELETE CASCADE), nulls them (SET NULL) or fails.  :func:`unfollowed_references`
lists such keys from the live catalog; :func:`check_references` raises
:class:`~sa_references.exc.UnfollowedReferenceError` when there is one.

One catalog pass per call, in every schema but the system ones:

* PostgreSQL: one query over ``pg_constraint`` (PostgreSQL 11 or later).  A
  key on a partitioned table is reported once, for the partitioned table, not
  for each partition (nor for each partition of a partitioned referred table).
* MySQL / MariaDB: one query over ``information_schema`` (every database the
  user can see: a "schema" there is a database).
* Other dialects (SQLite: ``main`` and attached databases): the Inspector's
  ``get_multi_foreign_keys`` per schema (on SQLite one ``PRAGMA
  foreign_key_list`` per table; SQLite keys never cross databases).

A key counts as followed when the MetaData holds a ForeignKeyConstraint on
the same table (schema and name) over the same pairs of referencing and
referred columns; schema ``None`` in the MetaData and the connection's
default schema are the same schema.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, ForeignKeyConstraint, MetaData, Table, bindparam, inspect, text
from sqlalchemy.exc import NoReferencedTableError
from sqlalchemy.orm import Session

from ._backend import backend_of
from .exc import UnfollowedReferenceError

__all__ = ["CatalogForeignKey", "check_references", "unfollowed_references"]

#: schemas whose tables are the database's own
SYSTEM_SCHEMAS = frozenset(
    {"information_schema", "pg_catalog", "pg_toast", "mysql", "performance_schema", "sys"}
)

_PG_DELETE_RULES = {
    "a": "NO ACTION",
    "r": "RESTRICT",
    "c": "CASCADE",
    "n": "SET NULL",
    "d": "SET DEFAULT",
}

_PG_KEYS = text(
    """
SELECT c.conname, n.nspname::text, t.relname::text, rn.nspname::text, rt.relname::text,
    ARRAY(SELECT a.attname::text FROM unnest(c.conkey) WITH ORDINALITY AS k(attnum, i)
          JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum
          ORDER BY k.i),
    ARRAY(SELECT a.attname::text FROM unnest(c.confkey) WITH ORDINALITY AS k(attnum, i)
          JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.attnum
          ORDER BY k.i),
    c.confdeltype::text
FROM pg_constraint c
JOIN pg_class t ON t.oid = c.conrelid
JOIN pg_namespace n ON n.oid = t.relnamespace
JOIN pg_class rt ON rt.oid = c.confrelid
JOIN pg_namespace rn ON rn.oid = rt.relnamespace
WHERE c.contype = 'f' AND c.conparentid = 0
  AND rn.nspname = ANY(:schemas) AND rt.relname = ANY(:tables)
ORDER BY n.nspname, t.relname, c.conname
"""
)

_MYSQL_KEYS = text(
    """
SELECT k.CONSTRAINT_NAME, k.TABLE_SCHEMA, k.TABLE_NAME, k.COLUMN_NAME,
    k.REFERENCED_TABLE_SCHEMA, k.REFERENCED_TABLE_NAME, k.REFERENCED_COLUMN_NAME, r.DELETE_RULE
FROM information_schema.KEY_COLUMN_USAGE k
JOIN information_schema.REFERENTIAL_CONSTRAINTS r
  ON r.CONSTRAINT_SCHEMA = k.CONSTRAINT_SCHEMA AND r.CONSTRAINT_NAME = k.CONSTRAINT_NAME
  AND r.TABLE_NAME = k.TABLE_NAME
WHERE k.REFERENCED_TABLE_SCHEMA IN :schemas AND k.REFERENCED_TABLE_NAME IN :tables
ORDER BY k.TABLE_SCHEMA, k.TABLE_NAME, k.CONSTRAINT_NAME, k.ORDINAL_POSITION
"""
).bindparams(bindparam("schemas", expanding=True), bindparam("tables", expanding=True))


#: which tables reference which, every database's: see _mysql_tree
_MYSQL_REFERENCES = text(
    "SELECT CONSTRAINT_SCHEMA, TABLE_NAME, CONSTRAINT_NAME, UNIQUE_CONSTRAINT_SCHEMA, "
    "REFERENCED_TABLE_NAME, DELETE_RULE FROM information_schema.REFERENTIAL_CONSTRAINTS"
)

#: the key columns of the tables named (the keys they hold; opens those tables alone)
_MYSQL_KEY_COLUMNS = text(
    """
SELECT CONSTRAINT_NAME, TABLE_SCHEMA, TABLE_NAME, COLUMN_NAME,
    REFERENCED_TABLE_SCHEMA, REFERENCED_TABLE_NAME, REFERENCED_COLUMN_NAME
FROM information_schema.KEY_COLUMN_USAGE
WHERE TABLE_SCHEMA IN :schemas AND TABLE_NAME IN :tables AND REFERENCED_TABLE_NAME IS NOT NULL
ORDER BY TABLE_SCHEMA, TABLE_NAME, CONSTRAINT_NAME, ORDINAL_POSITION
"""
).bindparams(bindparam("schemas", expanding=True), bindparam("tables", expanding=True))

_MYSQL_RULES = text(
    """
SELECT CONSTRAINT_SCHEMA, TABLE_NAME, CONSTRAINT_NAME, DELETE_RULE, UPDATE_RULE
FROM information_schema.REFERENTIAL_CONSTRAINTS
WHERE CONSTRAINT_SCHEMA IN :schemas AND TABLE_NAME IN :tables
"""
).bindparams(bindparam("schemas", expanding=True), bindparam("tables", expanding=True))


@dataclass(frozen=True)
class CatalogForeignKey:
    """A foreign key constraint as the database's catalog holds it.

    ``schema`` and ``referred_schema`` are ``None`` for the connection's
    default schema, as in ``Table.schema``; ``columns``
    and ``referred_columns`` are pairwise, in the constraint's order.
    """

    name: str | None
    schema: str | None
    table: str
    columns: tuple[str, ...]
    referred_schema: str | None
    referred_table: str
    referred_columns: tuple[str, ...]
    #: ``"CASCADE"``, ``"SET NULL"``, ``"NO ACTION"``...; None when the catalog does not say
    on_delete: str | None = None

    @property
    def fullname(self) -> str:
        """The referencing table, ``schema.table`` outside the default schema."""
        return f"{self.schema}.{self.table}" if self.schema else self.table

    @property
    def referred_fullname(self) -> str:
        if self.referred_schema:
            return f"{self.referred_schema}.{self.referred_table}"
        return self.referred_table

    def __str__(self) -> str:
        name = f" ({self.name})" if self.name else ""
        return (
            f"{self.fullname}({', '.join(self.columns)}) -> "
            f"{self.referred_fullname}({', '.join(self.referred_columns)}){name}"
        )


_Pairs = frozenset[tuple[str, str]]
_Signature = tuple[str, str, str, str, _Pairs]  # schema, table, referred schema, table, pairs


def unfollowed_references(
    connection: Connection | Session, metadata_or_table: MetaData | Table
) -> list[CatalogForeignKey]:
    """The foreign keys of the live database that reference a table of ``metadata_or_table``
    (every table of a MetaData, or the one Table) but have no matching
    ForeignKeyConstraint in its MetaData: keys a merge would not follow.

    ``connection``: a Connection, or a Session (its connection for the tables'
    bind is used).  Looks in every schema of the database but the system ones;
    sorted by referencing table (the default schema's first), then name.  E.g.::

        with engine.connect() as connection:
            for key in unfollowed_references(connection, Base.metadata):
                print("not modelled:", key)
    """
    if isinstance(metadata_or_table, Table):
        metadata, tables = metadata_or_table.metadata, [metadata_or_table]
    else:
        metadata, tables = metadata_or_table, list(metadata_or_table.tables.values())
    if not tables:
        return []
    if isinstance(connection, Session):
        connection = connection.connection(bind_arguments={"clause": tables[0]})
    default = inspect(connection).default_schema_name or ""
    targets = {(t.schema or default, t.name) for t in tables}
    return _unfollowed(metadata, targets, _catalog_keys(connection, targets, default), default)


def _unfollowed(
    metadata: MetaData,
    targets: set[tuple[str, str]],
    keys: Iterable[CatalogForeignKey],
    default: str,
) -> list[CatalogForeignKey]:
    """Those of ``keys`` that reference one of ``targets`` and that ``metadata`` lacks."""
    followed = _followed(metadata.tables.values(), default)
    found = [
        key
        for key in keys
        if (key.referred_schema or default, key.referred_table) in targets
        and _signature(key, default) not in followed
    ]
    return sorted(
        found, key=lambda k: (k.schema is not None, k.schema or "", k.table, k.name or "")
    )


def check_references(connection: Connection | Session, metadata_or_table: MetaData | Table) -> None:
    """Raise :class:`~sa_references.exc.UnfollowedReferenceError` naming every key of
    :func:`unfollowed_references`; do nothing when there is none."""
    _refuse(unfollowed_references(connection, metadata_or_table))


def check_read_references(
    connection: Connection, metadata: MetaData, keys: Iterable[CatalogForeignKey]
) -> None:
    """:func:`check_references` for every table of ``metadata``, against ``keys`` already
    read from the catalog (by :func:`referencing_tree`) rather than read again."""
    default = inspect(connection).default_schema_name or ""
    targets = {(t.schema or default, t.name) for t in metadata.tables.values()}
    _refuse(_unfollowed(metadata, targets, keys, default))


def _refuse(found: Sequence[CatalogForeignKey]) -> None:
    if found:
        raise UnfollowedReferenceError(
            f"the database holds {len(found)} foreign key(s) that the MetaData lacks, "
            "so a merge would not re-point them: "
            + "; ".join(str(k) for k in found)
            + " (add the referencing tables to the MetaData, e.g. by reflecting them)"
        )


def referencing_tree(
    connection: Connection, schema: str | None, table: str
) -> list[CatalogForeignKey]:
    """The catalog's foreign keys that reference the table ``schema.table`` (``schema``
    None: the default one), then those that reference a table holding one of them, and
    so on: every key whose rules a merge of that table may have to follow (ON DELETE
    CASCADE chains, ON UPDATE CASCADE of re-pointed columns).

    In every schema but the system ones; one catalog query per level on PostgreSQL, two
    on MySQL/MariaDB (see :func:`_mysql_tree`), the Inspector's keys of every table once
    elsewhere (SQLite).  Each key is listed once; partitions' copies of their partitioned
    table's keys are not.
    """
    default = inspect(connection).default_schema_name or ""
    shape = backend_of(connection).catalog_shape
    start = (schema or default, table)
    if shape == "information_schema":
        return _mysql_tree(connection, start, default)
    every = _inspector_keys(connection, default) if shape == "inspector" else None
    seen, frontier = {start}, {start}
    found: list[CatalogForeignKey] = []
    while frontier:
        keys = every if every is not None else _catalog_keys(connection, frontier, default)
        holders = set()
        for key in keys:
            if (key.referred_schema or default, key.referred_table) not in frontier:
                continue
            found.append(key)
            holder = (key.schema or default, key.table)
            if holder not in seen:
                seen.add(holder)
                holders.add(holder)
        frontier = holders
    return found


def _mysql_tree(
    connection: Connection, start: tuple[str, str], default: str
) -> list[CatalogForeignKey]:
    """:func:`referencing_tree` on MySQL/MariaDB in two queries, whatever its depth.
    ``KEY_COLUMN_USAGE`` filtered by the referred table opens every table of the server
    (MariaDB 10.11, 570 tables: 6 ms a query, 12 ms joined to the rules), where
    ``REFERENTIAL_CONSTRAINTS`` (which tables reference which, no columns) takes 4 ms.  So
    the tree is found from the latter, then the columns of its keys are read from
    ``KEY_COLUMN_USAGE`` filtered by the holding tables, which opens those alone."""
    edges = list(connection.execute(_MYSQL_REFERENCES))
    seen, frontier = {start}, {start}
    rules: dict[tuple[str, str, str], str] = {}  # the tree's keys, with their ON DELETE
    while frontier:
        holders = set()
        for schema, table, name, r_schema, r_table, rule in edges:
            if (r_schema, r_table) not in frontier:
                continue
            rules[(schema, table, name)] = rule
            if (schema, table) not in seen:
                seen.add((schema, table))
                holders.add((schema, table))
        frontier = holders
    if not rules:
        return []
    rows = connection.execute(
        _MYSQL_KEY_COLUMNS,
        {"schemas": sorted({s for s, _, _ in rules}), "tables": sorted({t for _, t, _ in rules})},
    )
    grouped: dict[tuple[str, str, str], list[tuple[str, ...]]] = {}
    for name, schema, table, column, r_schema, r_table, r_column in rows:
        if (schema, table, name) in rules:
            grouped.setdefault((schema, table, name), []).append(
                (column, r_schema, r_table, r_column)
            )
    return [
        CatalogForeignKey(
            name=name,
            schema=_local(schema, default),
            table=table,
            columns=tuple(p[0] for p in parts),
            referred_schema=_local(parts[0][1], default),
            referred_table=parts[0][2],
            referred_columns=tuple(p[3] for p in parts),
            on_delete=rules[(schema, table, name)],
        )
        for (schema, table, name), parts in grouped.items()
    ]


def restore_rules(connection: Connection, metadata: MetaData) -> None:
    """Give the MetaData's foreign keys the ON DELETE / ON UPDATE rules the catalog holds
    where reflection lost them: MySQL/MariaDB's ``SHOW CREATE TABLE``, which reflection
    reads, leaves RESTRICT out, so a key declared ON DELETE RESTRICT reflects as if it
    said nothing.  One query over ``information_schema.REFERENTIAL_CONSTRAINTS`` for
    every table of the MetaData; elsewhere reflection keeps the rules: nothing is read."""
    if not backend_of(connection).reflection_omits_restrict or not metadata.tables:
        return
    default = inspect(connection).default_schema_name or ""
    tables = list(metadata.tables.values())
    rows = connection.execute(
        _MYSQL_RULES,
        {
            "schemas": sorted({t.schema or default for t in tables}),
            "tables": sorted({t.name for t in tables}),
        },
    )
    rules = {(row[0], row[1], row[2]): (row[3], row[4]) for row in rows}
    for table in tables:
        for constraint in table.foreign_key_constraints:
            name = str(constraint.name) if constraint.name else ""
            found = rules.get((table.schema or default, table.name, name))
            if found is None:
                continue
            delete, update = found
            if constraint.ondelete is None and delete not in (None, "NO ACTION"):
                constraint.ondelete = delete
            if constraint.onupdate is None and update not in (None, "NO ACTION"):
                constraint.onupdate = update


# ---------------------------------------------------------------- the MetaData's keys


def _followed(tables: Iterable[Table], default: str) -> set[_Signature]:
    signatures = set()
    for table in tables:
        for constraint in table.foreign_key_constraints:
            signature = _constraint_signature(constraint, default)
            if signature is not None:
                signatures.add(signature)
    return signatures


def _constraint_signature(constraint: ForeignKeyConstraint, default: str) -> _Signature | None:
    table = constraint.table
    try:
        referred = constraint.referred_table
        pairs = frozenset(
            (element.parent.name, element.column.name) for element in constraint.elements
        )
    except NoReferencedTableError:  # referred table not in the MetaData: not a merge's key
        return None
    return (table.schema or default, table.name, referred.schema or default, referred.name, pairs)


def _signature(key: CatalogForeignKey, default: str) -> _Signature:
    return (
        key.schema or default,
        key.table,
        key.referred_schema or default,
        key.referred_table,
        frozenset(zip(key.columns, key.referred_columns)),
    )


# ---------------------------------------------------------------- the catalog


def _catalog_keys(
    connection: Connection, targets: set[tuple[str, str]], default: str
) -> list[CatalogForeignKey]:
    """Keys referencing (a superset of) ``targets``, by the dialect's cheapest pass."""
    schemas = sorted({s for s, _ in targets})
    names = sorted({n for _, n in targets})
    shape = backend_of(connection).catalog_shape
    if shape == "pg_constraint":
        return _postgresql_keys(connection, schemas, names, default)
    if shape == "information_schema":
        return _mysql_keys(connection, schemas, names, default)
    return _inspector_keys(connection, default)


def _local(schema: str | None, default: str) -> str | None:
    return None if schema is None or schema == default else schema


def _postgresql_keys(
    connection: Connection, schemas: Sequence[str], names: Sequence[str], default: str
) -> list[CatalogForeignKey]:
    rows = connection.execute(_PG_KEYS, {"schemas": list(schemas), "tables": list(names)})
    return [
        CatalogForeignKey(
            name=row[0],
            schema=_local(row[1], default),
            table=row[2],
            columns=tuple(row[5]),
            referred_schema=_local(row[3], default),
            referred_table=row[4],
            referred_columns=tuple(row[6]),
            on_delete=_PG_DELETE_RULES.get(row[7]),
        )
        for row in rows
    ]


def _mysql_keys(
    connection: Connection, schemas: Sequence[str], names: Sequence[str], default: str
) -> list[CatalogForeignKey]:
    rows = connection.execute(_MYSQL_KEYS, {"schemas": list(schemas), "tables": list(names)})
    grouped: dict[tuple[str, str, str], list[tuple[str, ...]]] = {}
    for name, schema, table, column, r_schema, r_table, r_column, rule in rows:
        grouped.setdefault((schema, table, name), []).append(
            (column, r_schema, r_table, r_column, rule)
        )
    keys = []
    for (schema, table, name), parts in grouped.items():
        _, r_schema, r_table, _, rule = parts[0]
        keys.append(
            CatalogForeignKey(
                name=name,
                schema=_local(schema, default),
                table=table,
                columns=tuple(p[0] for p in parts),
                referred_schema=_local(r_schema, default),
                referred_table=r_table,
                referred_columns=tuple(p[3] for p in parts),
                on_delete=rule,
            )
        )
    return keys


def _inspector_keys(connection: Connection, default: str) -> list[CatalogForeignKey]:
    inspector = inspect(connection)
    # keys that cannot cross databases stay in their own one: SQLite's attached files
    same_schema = not backend_of(connection).foreign_keys_cross_schemas
    keys = []
    for schema in inspector.get_schema_names():
        if schema.lower() in SYSTEM_SCHEMAS:
            continue
        found = inspector.get_multi_foreign_keys(schema=None if schema == default else schema)
        for (table_schema, table), foreign_keys in found.items():
            for fk in foreign_keys:
                referred_schema = fk.get("referred_schema")
                if referred_schema is None and same_schema:
                    referred_schema = table_schema
                options = fk.get("options") or {}
                ondelete = options.get("ondelete")
                keys.append(
                    CatalogForeignKey(
                        name=fk.get("name"),
                        schema=_local(table_schema, default),
                        table=table,
                        columns=tuple(fk["constrained_columns"]),
                        referred_schema=_local(referred_schema, default),
                        referred_table=fk["referred_table"],
                        referred_columns=tuple(fk["referred_columns"]),
                        on_delete=ondelete.upper() if ondelete else None,
                    )
                )
    return keys
