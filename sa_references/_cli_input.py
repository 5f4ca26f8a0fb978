"""The command line's inputs: the database URL, the reflected table, keys and CSV pairs.

Also the errors a command reports as one line (:class:`CommandError` and its
subclasses, each with its exit status).
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import decimal
import difflib
import io
import os
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, cast

from sqlalchemy import (
    Connection,
    Engine,
    ForeignKeyConstraint,
    MetaData,
    Table,
    create_engine,
    event,
    inspect,
    text,
)
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.schema import BLANK_SCHEMA

from ._backend import backend_of
from ._catalog import (
    CatalogForeignKey,
    check_read_references,
    referencing_tree,
    restore_rules,
)
from ._pairs import primary_key_values
from .exc import ConcurrentMergeError, ReferencesError, RowNotFoundError, SelfReferenceError

URL_ENV_VAR = "SA_REFERENCES_URL"

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_DECLINED = 3
EXIT_COMMITTED_OUTPUT_FAILED = 4
EXIT_WOULD_FAIL = 5
#: the reader of stdout went away (``| head``), nothing was changed: silent, as Unix
#: tools killed by SIGPIPE, whose status a shell reports as 128 + 13
EXIT_BROKEN_PIPE = 141
EXIT_INTERRUPTED = 130

Values = tuple[Any, ...]


class CommandError(Exception):
    """A failure the command reports as one line, with its exit status."""

    exit_status = EXIT_ERROR


class UsageError(CommandError):
    exit_status = EXIT_USAGE


class Declined(CommandError):
    """The merge's plan was not confirmed (``confirm`` returned False); nothing changed."""

    exit_status = EXIT_DECLINED


class OutputClosed(CommandError):
    """stdout's reader went away before a command that changes nothing had written all;
    reported by its exit status alone."""

    exit_status = EXIT_BROKEN_PIPE


class OutputFailedAfterCommit(CommandError):
    """The merge was committed; writing its result then failed (a closed pipe, a full disk)."""

    exit_status = EXIT_COMMITTED_OUTPUT_FAILED


def one_line(text: str) -> str:
    return " ".join(text.split())


def describe_error(error: BaseException) -> str:
    """The error as one line: a driver's message without SQLAlchemy's statement dump; the
    library's refusals in the command line's terms (keys as typed, options as flags)."""
    if isinstance(error, ReferencesError):
        return one_line(describe_refusal(error))
    if isinstance(error, DBAPIError) and error.orig is not None:
        prefix = "sa_references: "
        notes = [n[len(prefix) :] for n in getattr(error, "__notes__", ()) if n.startswith(prefix)]
        where = f" ({'; '.join(notes)})" if notes else ""
        return one_line(f"{type(error).__name__}: {error.orig}{where}")
    if isinstance(error, SQLAlchemyError):
        return one_line(str(error.args[0]) if error.args else str(error))
    return one_line(str(error))


def describe_refusal(error: ReferencesError) -> str:
    reason = error.reason
    if isinstance(error, RowNotFoundError) and error.role and error.keys:
        reason = f"{error.role} row {key_text(error.keys[0])} not found in {error.table}"
    elif isinstance(error, RowNotFoundError) and error.keys and not error.role:
        shown = ", ".join(key_text(key) for key in error.keys[:5])
        more = f" and {len(error.keys) - 5} more" if len(error.keys) > 5 else ""
        problem = "no longer exist" if isinstance(error, ConcurrentMergeError) else "not found"
        reason = f"{len(error.keys)} key(s) {problem} in {error.table}: {shown}{more}"
        if isinstance(error, ConcurrentMergeError):
            reason += " (deleted or merged away by another transaction; run the merge again)"
    elif isinstance(error, SelfReferenceError) and len(error.rows) <= 1:
        reason = (
            f"the target references the source through {error.key}: merging would make it "
            "reference itself"
        )
    elif isinstance(error, SelfReferenceError):
        rows = ", ".join(f"({key_text(row)})" for row in error.rows[:5])
        more = f" and {len(error.rows) - 5} more" if len(error.rows) > 5 else ""
        reason = (
            f"{len(error.rows)} targets reference their own source through {error.key} "
            f"(rows {rows}{more}): merging would make them reference themselves"
        )
    if error.remedy is not None:
        flag = "--" + error.remedy.option.replace("_", "-") + " "
        reason = f"{reason} {error.remedy.advice(flag, error.remedy.values)}"
    return reason


def key_text(values: Sequence[Any]) -> str:
    """Primary key values as KEY is typed: comma-separated, CSV-quoted where needed (a
    comma, a quote, a line break), binary as hex, NULL as NULL."""
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow([_key_cell(v) for v in values])
    return out.getvalue().removesuffix("\n")


def _key_cell(value: Any) -> Any:
    if value is None:
        return "NULL"
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    return value


# ---------------------------------------------------------------- database


def url_text(text: str) -> str:
    """The URL argument, or the environment variable's value for ``-``."""
    if text != "-":
        return text
    value = os.environ.get(URL_ENV_VAR, "")
    if not value:
        raise UsageError(f"URL is '-' but ${URL_ENV_VAR} is not set")
    return value


def make_engine(text: str) -> Engine:
    try:
        url = make_url(text)
        check_sqlite_file(url)
        engine = create_engine(url)
    except (ArgumentError, NoSuchModuleError) as error:
        raise CommandError(f"bad database URL: {describe_error(error)}{url_hint(text)}") from None
    except ImportError as error:
        raise CommandError(
            f"cannot load the database driver for {url.drivername}: {error}{url_hint(text)}"
        ) from None
    if backend_of(engine.dialect).foreign_keys_need_pragma:
        enforce_sqlite_foreign_keys(engine)
    return engine


#: URL schemes other tools accept, and what SQLAlchemy names them (with the driver we test)
_SCHEMES = {
    "postgres": "postgresql+psycopg",
    "postgresql": "postgresql+psycopg",
    "mysql": "mysql+pymysql",
    "mariadb": "mariadb+pymysql",
}


def url_hint(text: str) -> str:
    """'; did you mean postgresql+psycopg://...?' for a scheme SQLAlchemy does not take as
    written (``postgres://``) or whose default driver is missing (``mysql://``)."""
    scheme, separator, _ = text.partition("://")
    better = _SCHEMES.get(scheme.lower())
    if not separator or better is None:
        return ""
    return f"; did you mean {better}://...?"


def check_sqlite_file(url: URL) -> None:
    """Refuse to let SQLite create an empty database for a mistyped path."""
    if not backend_of(url.get_dialect()()).file_database:
        return
    database = url.database or ""
    if database in ("", ":memory:") or database.startswith("file:"):
        return
    if not Path(database).is_file():
        raise CommandError(f"SQLite database file {database!r} does not exist")


def enforce_sqlite_foreign_keys(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _foreign_keys_on(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()


@contextlib.contextmanager
def database(url: str) -> Iterator[Engine]:
    """An engine for the URL argument (``-``: the environment variable), disposed of after."""
    engine = make_engine(url_text(url))
    try:
        yield engine
    finally:
        engine.dispose()


def check_schema(connection: Connection, schema: str) -> None:
    """Refuse ``--schema`` naming no schema (on SQLite: no attached database)."""
    known = inspect(connection).get_schema_names()
    # SQLite's attached databases, and MySQL's with lower_case_table_names, take any case
    if schema not in known and schema.lower() not in {name.lower() for name in known}:
        close = difflib.get_close_matches(schema, known, n=3)
        hint = (
            f"; did you mean {', '.join(close)}?"
            if close
            else f" (the database has: {', '.join(sorted(known))})"
        )
        raise CommandError(f"schema {schema!r} not found{hint}")


def reflect_table(
    connection: Connection, name: str, schema: str | None, *, check: bool = False
) -> Table:
    """Reflect TABLE (one-line error naming close matches) and the tables of any schema
    whose foreign keys reference it, then those referencing them, and so on (found in
    the database's catalog): what a merge of TABLE follows, and no other table.

    ``check``: raise :class:`~sa_references.exc.UnfollowedReferenceError` if a foreign
    key to a reflected table still lacks from the MetaData (a merge would not follow it).
    """
    if schema is not None:
        check_schema(connection, schema)
    keys = referencing_tree(connection, schema, name)
    default = inspect(connection).default_schema_name or ""
    home = schema or default
    wanted = {name} | {k.table for k in keys if (k.schema or default) == home}
    metadata = MetaData()
    metadata.info[_CATALOG_KEYS] = keys
    metadata.reflect(
        connection,
        schema=schema,
        only=lambda table, _metadata: table in wanted,
        # the tables they refer to are not needed: only the keys that refer to TABLE
        resolve_fks=False,
    )
    fullname = f"{schema}.{name}" if schema else name
    table = metadata.tables.get(fullname)
    if table is None:
        raise CommandError(f"table {name!r} not found{_table_hint(connection, name, schema)}")
    if reflect_referencing_tables(connection, table) and check:
        # against the keys just read from the catalog: none may lack from the MetaData
        check_read_references(connection, metadata, metadata.info[_CATALOG_KEYS])
    restore_rules(connection, metadata)
    return table


#: MetaData.info key of the catalog's keys that reference its tables (see reflect_table)
_CATALOG_KEYS = "sa_references.catalog_keys"


def _table_hint(connection: Connection, name: str, schema: str | None) -> str:
    """' in schema ...; did you mean ...?' for a table that is not there."""
    where = f" in schema {schema!r}" if schema else ""
    partitions = partition_names(connection, schema)
    known = [t for t in inspect(connection).get_table_names(schema) if t not in partitions]
    close = difflib.get_close_matches(name, known, n=3)
    return where + (f"; did you mean {', '.join(close)}?" if close else "")


def partition_names(connection: Connection, schema: str | None) -> set[str]:
    """PostgreSQL: the partitions in the schema (left out of "did you mean": a table's
    rows are merged through its partitioned table)."""
    if not backend_of(connection).partitions_repeat_foreign_keys:
        return set()
    rows = connection.execute(
        text(
            "SELECT c.relname::text FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relispartition AND n.nspname = COALESCE(:schema, current_schema())"
        ),
        {"schema": schema},
    )
    return set(rows.scalars())


def reflect_referencing_tables(connection: Connection, table: Table) -> bool:
    """Add to ``table``'s MetaData the tables of other schemas whose foreign keys
    reference it, or (recursively) a table of the MetaData that does (found in the
    database's catalog, see :func:`~sa_references._catalog.referencing_tree`), so that
    merges follow them.

    Schemas are named as the MetaData names them: the default schema as ``None``,
    or by name when TABLE was reflected with it (``--schema public``).  Returns whether
    any table references TABLE.
    """
    metadata = table.metadata
    keys: list[CatalogForeignKey] | None = metadata.info.get(_CATALOG_KEYS)
    if keys is None:
        keys = metadata.info[_CATALOG_KEYS] = referencing_tree(connection, table.schema, table.name)
    default = inspect(connection).default_schema_name
    default_form = table.schema if table.schema is not None and table.schema == default else None

    def local(schema: str | None) -> str | None:
        return default_form if schema is None or schema == default else schema

    def full(schema: str | None, name: str) -> str:
        return f"{schema}.{name}" if schema else name

    def referred_schema(
        _table: Table, _to: str | None, _fk: ForeignKeyConstraint, referred: str | None
    ) -> str | None:
        schema = local(referred)  # BLANK_SCHEMA: no schema (None would keep the old one)
        return schema if schema is not None else cast(str, BLANK_SCHEMA)

    missing = {
        (key.schema, key.table)
        for key in keys
        if full(local(key.schema), key.table) not in metadata.tables
    }
    scratch = MetaData()
    for schema, name in sorted(missing, key=lambda m: (m[0] or "", m[1])):
        Table(name, scratch, schema=schema, autoload_with=connection, resolve_fks=False)
    for reflected in scratch.tables.values():
        schema = local(reflected.schema)
        if full(schema, reflected.name) not in metadata.tables:
            reflected.to_metadata(
                metadata,
                schema=schema,  # type: ignore[arg-type]  # None: the default schema
                referred_schema_fn=referred_schema,
            )
    return bool(keys)


# ---------------------------------------------------------------- keys


def split_key(text: str) -> list[str]:
    """``"TEA,M"`` -> ``["TEA", "M"]``; CSV quoting for values holding commas."""
    if text == "":
        return []
    try:
        return next(csv.reader([text], strict=True))
    except csv.Error as error:
        raise CommandError(f"cannot read key {text!r}: {error}") from None


def convert_value(column: Any, text: str) -> Any:
    """A command-line string as the column's Python type, where that type is known."""
    try:
        python_type = column.type.python_type
    except NotImplementedError:
        return text
    convert = CONVERTERS.get(python_type)
    if convert is None:
        return text
    try:
        return convert(text)
    except (ValueError, ArithmeticError):
        raise CommandError(
            f"{text!r} is not a valid {python_type.__name__} for "
            f"{column.table.fullname}.{column.name}"
        ) from None


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "t", "yes", "y"):
        return True
    if lowered in ("0", "false", "f", "no", "n"):
        return False
    raise ValueError(text)


CONVERTERS: dict[type, Callable[[str], Any]] = {
    str: str,
    int: int,
    float: float,
    bool: parse_bool,
    decimal.Decimal: decimal.Decimal,
    datetime.date: datetime.date.fromisoformat,
    datetime.datetime: datetime.datetime.fromisoformat,
    datetime.time: datetime.time.fromisoformat,
    uuid.UUID: uuid.UUID,
    bytes: bytes.fromhex,
}


def key_values(table: Table, key: Any) -> Values:
    """KEY as a tuple of primary key values: a string as on the command line (each value
    converted to its column's type), or the values themselves (a scalar, a sequence or a
    mapping, as for :func:`merge_rows`)."""
    if not isinstance(key, str):
        return primary_key_values(table, key)
    parts = split_key(key)
    columns = list(table.primary_key.columns)
    if len(parts) != len(columns):
        primary_key_values(table, parts)  # raises: no primary key, or the wrong number of values
    return primary_key_values(table, [convert_value(c, p) for c, p in zip(columns, parts)])


# ---------------------------------------------------------------- CSV pairs


def read_pairs(
    path: Path,
    table: Table,
    lines: dict[Values, tuple[str, int]] | None = None,
    pair_lines: list[int] | None = None,
) -> list[tuple[Values, Values]]:
    """The (source, target) keys of a CSV file; errors name the file and line.  ``lines``
    receives, per key, its role and the first line it is on; ``pair_lines`` each pair's."""
    pairs = []
    with path.open(newline="", encoding="utf-8-sig") as stream:
        reader = csv.reader(stream, strict=True)
        try:
            columns = pair_columns(next(reader, None))
            for row in reader:
                if any(cell.strip() for cell in row):
                    pair = pair_from_row(table, row, columns)
                    pairs.append(pair)
                    if lines is not None:
                        lines.setdefault(pair[0], ("source", reader.line_num))
                        lines.setdefault(pair[1], ("target", reader.line_num))
                    if pair_lines is not None:
                        pair_lines.append(reader.line_num)
        except CommandError as error:
            raise CommandError(f"{path} line {reader.line_num}: {error}") from None
        except (csv.Error, SQLAlchemyError) as error:
            message = describe_error(error)
            raise CommandError(f"{path} line {reader.line_num}: {message}") from None
    return pairs


def pair_columns(header: list[str] | None) -> tuple[int, int, int]:
    """Positions of the source and target columns, and the number of columns."""
    cells = [cell.strip().lower() for cell in header or []]
    if "source" not in cells or "target" not in cells:
        raise CommandError(f"the header must name the columns source and target; got {header}")
    return cells.index("source"), cells.index("target"), len(cells)


def pair_from_row(
    table: Table, row: list[str], columns: tuple[int, int, int]
) -> tuple[Values, Values]:
    source, target, width = columns
    if len(row) != width:
        raise CommandError(f"expected {width} fields like the header, found {len(row)}")
    if not row[source] or not row[target]:
        raise CommandError("the source or the target is empty")
    return key_values(table, row[source]), key_values(table, row[target])
