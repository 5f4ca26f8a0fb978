"""What a database backend can do, asked once per dialect.

Every difference between SQLite, PostgreSQL and MySQL/MariaDB that a merge
depends on is decided here and nowhere else: the rest of the package asks a
:class:`Backend` for a capability, never a dialect for its name.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, Literal

import sqlalchemy
from sqlalchemy import Connection, Table, event, text
from sqlalchemy.engine import Dialect, Inspector
from sqlalchemy.exc import DBAPIError

#: how many primary keys one locking SELECT passes: IN lists, one PostgreSQL array,
#: one MySQL JSON array of integers
LockShape = Literal["in", "array", "json"]

#: how a single merge's SAVEPOINT ends: RELEASEd, or never released but set again
#: under the same name by the next merge (MySQL/MariaDB replace a savepoint set twice)
SavepointStyle = Literal["released", "reused"]

#: how the live catalog's foreign keys are listed in one pass: PostgreSQL's
#: ``pg_constraint``, MySQL's ``information_schema``, else SQLAlchemy's Inspector
CatalogShape = Literal["pg_constraint", "information_schema", "inspector"]

#: how a locking SELECT also reads, in the same statement, the rows as they were when it
#: started: a CTE sharing the statement's snapshot (PostgreSQL), or a plain SELECT run
#: first in a UNION (MySQL/MariaDB)
SeenShape = Literal["cte", "union"]

#: how a batch's (source, target) pairs reach the database: one array parameter per
#: column (PostgreSQL ``unnest()``), or a temporary table
PairsShape = Literal["arrays", "temporary_table"]


@dataclass(frozen=True)
class Backend:
    """The capabilities of one dialect (see :func:`backend_of`)."""

    #: ``SELECT ... FOR UPDATE`` locks rows (SQLite locks the whole database instead)
    row_locks: bool
    #: how a locking SELECT passes many primary keys
    lock_shape: LockShape
    #: plain SELECTs may answer from a REPEATABLE READ snapshot older than the locks
    #: (InnoDB): reads that must see the latest rows are locking reads
    snapshot_reads: bool
    #: a locking read of a row another transaction changed or deleted after this one's
    #: REPEATABLE READ snapshot fails with a serialization failure (PostgreSQL), where
    #: InnoDB reads the latest row instead
    locks_fail_after_snapshot: bool
    #: how a lock also sees the rows as they were before it waited, so that a row another
    #: transaction deleted meanwhile is told from a key no row had (None: no row locks)
    seen_beside_locks: SeenShape | None
    #: how a single merge's Core SAVEPOINT ends
    savepoint_style: SavepointStyle
    #: the driver may hold no transaction open before a SAVEPOINT (pysqlite): BEGIN first
    begin_before_savepoint: bool
    #: several UPDATEs run as one statement of data-modifying CTEs
    combined_updates: bool
    #: how a batch's pairs are passed for integer and string columns
    pairs_shape: PairsShape
    #: temporary tables outlive ROLLBACK TO SAVEPOINT (MySQL: no transactional DDL)
    temporary_tables_survive_rollback: bool
    #: ``DROP TEMPORARY TABLE`` is how a temporary table is dropped
    drop_temporary_keyword: bool
    #: many integer keys can be matched against one JSON array parameter (SQLite 3.38+)
    json_key_lists: bool
    #: ``UPDATE ... RETURNING`` on one table, and on an UPDATE joined to other tables
    update_returning: bool
    update_returning_multifrom: bool
    #: string comparisons may be equal for values Python finds different (MySQL's
    #: case-insensitive, PAD SPACE collations): memory cannot compute what matched
    inexact_string_comparison: bool
    #: foreign keys are enforced only after ``PRAGMA foreign_keys=ON`` on each connection
    foreign_keys_need_pragma: bool
    #: the database is a file a mistyped path would silently create (SQLite)
    file_database: bool
    #: how the catalog's foreign keys are listed
    catalog_shape: CatalogShape
    #: partitions repeat their partitioned table's foreign keys in the catalog (PostgreSQL)
    partitions_repeat_foreign_keys: bool
    #: a foreign key may reference a table of another schema (not SQLite's attached files)
    foreign_keys_cross_schemas: bool
    #: reflection reports a key's ON DELETE / ON UPDATE RESTRICT as no rule at all
    #: (MySQL/MariaDB's ``SHOW CREATE TABLE`` leaves it out); the catalog has it
    reflection_omits_restrict: bool


_backends: weakref.WeakKeyDictionary[Dialect, Backend] = weakref.WeakKeyDictionary()


def backend_of(bind: Connection | Dialect) -> Backend:
    """The :class:`Backend` of a connection's (or a dialect's) database, computed once."""
    dialect = bind.dialect if isinstance(bind, Connection) else bind
    try:
        return _backends[dialect]
    except KeyError:
        backend = _backends[dialect] = _describe(dialect)
        return backend


def _describe(dialect: Dialect) -> Backend:
    name = dialect.name
    version = dialect.server_version_info or ()
    sqlite, postgresql, mysql = name == "sqlite", name == "postgresql", name == "mysql"
    mariadb = bool(getattr(dialect, "is_mariadb", False))
    # MariaDB 10.6 and MySQL 8.0.4 brought JSON_TABLE
    json_table = mysql and version >= ((10, 6) if mariadb else (8, 0, 4))
    return Backend(
        row_locks=not sqlite,
        lock_shape="array" if postgresql else "json" if json_table else "in",
        snapshot_reads=mysql,
        locks_fail_after_snapshot=postgresql,
        seen_beside_locks="cte" if postgresql else "union" if mysql else None,
        savepoint_style="reused" if mysql else "released",
        begin_before_savepoint=sqlite,
        combined_updates=postgresql,
        pairs_shape="arrays" if postgresql else "temporary_table",
        temporary_tables_survive_rollback=mysql,
        drop_temporary_keyword=mysql,
        json_key_lists=sqlite and version >= (3, 38),  # JSON functions built in
        update_returning=bool(dialect.update_returning),
        update_returning_multifrom=bool(dialect.update_returning_multifrom),
        inexact_string_comparison=mysql,
        foreign_keys_need_pragma=sqlite,
        file_database=sqlite,
        catalog_shape=(
            "pg_constraint" if postgresql else "information_schema" if mysql else "inspector"
        ),
        partitions_repeat_foreign_keys=postgresql,
        foreign_keys_cross_schemas=not sqlite,
        reflection_omits_restrict=mysql,
    )


def foreign_keys_enforced(connection: Connection) -> bool:
    """Whether the database enforces foreign keys (and runs their ON DELETE / ON UPDATE
    rules) on this connection."""
    if not backend_of(connection).foreign_keys_need_pragma:
        return True
    return bool(connection.exec_driver_sql("PRAGMA foreign_keys").scalar())


def inherited_table_names(table: Table) -> tuple[str, ...]:
    """The names of the tables ``table`` inherits from (PostgreSQL): a partition's
    partitioned table, a child table's parents.

    Read from the Table: its ``postgresql_inherits`` option, declared or reflected
    (SQLAlchemy 2.1 reflects it), else what reflection on SQLAlchemy 2.0 found in the
    catalog (see :func:`_note_reflected_inherits`).  The names are plain (PostgreSQL's
    ``INHERITS`` takes no schema): the tables are in ``table``'s schema.  Empty when
    nothing is recorded, and on every other dialect.
    """
    options = table.dialect_options
    # looked up only when present: no dialect's options are loaded for nothing
    inherits = options["postgresql"].get("inherits") if "postgresql" in options else None
    if inherits is None:
        recorded: tuple[str, ...] = table.info.get(_INHERITS, ())
        return recorded
    if isinstance(inherits, str):  # quoted_name too
        return (str(inherits),)
    return tuple(str(name) for name in inherits)


#: Table.info key of the parents a reflected table has in the catalog (SQLAlchemy 2.0)
_INHERITS = "sa_references.inherits"

#: every table that inherits, with its parents (PostgreSQL's names, as SQLAlchemy 2.1
#: reflects them)
_PG_INHERITS = text(
    "SELECT n.nspname::text, c.relname::text, "
    "array_agg(p.relname::text ORDER BY i.inhseqno) "
    "FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
    "JOIN pg_namespace n ON n.oid = c.relnamespace JOIN pg_class p ON p.oid = i.inhparent "
    "GROUP BY n.nspname, c.relname"
)


def _note_reflected_inherits(inspector: Inspector, table: Table, _column: Any) -> None:
    """``column_reflect`` on SQLAlchemy 2.0, which does not reflect ``postgresql_inherits``:
    record a reflected table's parents in ``table.info``, from one catalog query per
    Inspector (one per ``MetaData.reflect()``), on PostgreSQL only."""
    if _INHERITS in table.info or not backend_of(inspector.dialect).partitions_repeat_foreign_keys:
        return
    found: dict[tuple[str, str], tuple[str, ...]] | None = inspector.info_cache.get(_INHERITS)
    if found is None:
        bind = inspector.bind
        if isinstance(bind, Connection):
            rows = list(bind.execute(_PG_INHERITS))
        else:
            with bind.connect() as connection:
                rows = list(connection.execute(_PG_INHERITS))
        found = inspector.info_cache[_INHERITS] = {
            (schema, name): tuple(parents) for schema, name, parents in rows
        }
    schema = table.schema or inspector.default_schema_name
    table.info[_INHERITS] = found.get((schema or "", table.name), ())


#: SQLAlchemy 2.1 reflects a PostgreSQL table's parents (``postgresql_inherits``), 2.0 not
if tuple(int(part) for part in sqlalchemy.__version__.split(".")[:2]) < (2, 1):
    event.listen(Table, "column_reflect", _note_reflected_inherits)


#: SQLSTATE of a serialization failure ("could not serialize access due to concurrent update")
SERIALIZATION_FAILURE = "40001"


def is_serialization_failure(backend: Backend, error: DBAPIError) -> bool:
    """Whether ``error`` is the serialization failure of a locking read that found its row
    changed after the snapshot (PostgreSQL's SQLSTATE 40001; psycopg names it ``sqlstate``,
    psycopg2 ``pgcode``).  Never on MySQL, whose deadlocks share that SQLSTATE."""
    if not backend.locks_fail_after_snapshot:
        return False
    orig = error.orig
    state = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    return state == SERIALIZATION_FAILURE
