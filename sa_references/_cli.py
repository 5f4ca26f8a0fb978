"""``sa-references``: the library's merge and dependents engine on a reflected schema.

For databases without SQLAlchemy models: each command reflects the schema
(``MetaData().reflect()``) and calls :func:`referencing_keys`,
:func:`row_dependents`, :func:`merge_rows` or ``merge_many``; the command line
adds no logic of its own beyond parsing, confirming and printing.

Commands
========

``sa-references demo [--db PATH]``
    Create a small SQLite shop database (a temporary file unless ``--db``
    names a new one), then run the commands below on it.
``sa-references keys URL TABLE [--json]``
    The foreign keys that reference TABLE: referencing table and columns,
    referred columns, ON DELETE / ON UPDATE rules and the unique keys of the
    referencing table that include them (where a merge can conflict).
``sa-references dependents URL TABLE KEY [--limit N] [--json]``
    Per referencing key, how many rows reference the row and the first N
    (default 5) of them.
``sa-references merge URL TABLE SOURCE_KEY TARGET_KEY [options]``
    Re-point every reference to SOURCE_KEY to TARGET_KEY.  Shows the plan
    (a dry run) and asks for confirmation on stdin unless ``--yes``;
    ``--dry-run`` only shows the plan.  When stdin is not a terminal,
    ``--yes`` (or ``--dry-run``) is required.  Options: ``--on-conflict
    raise|delete|ignore`` (default raise), ``--delete`` (delete the source row
    afterwards), ``--on-self-reference raise|null``, ``--json``.
``sa-references merge URL TABLE --pairs FILE.csv [options]``
    Bulk deduplication: every (source, target) pair of the CSV file, chains
    (a -> b -> c) resolved, applied with ``merge_many`` in batches of
    ``--batch-size`` pairs (default 1000), all in one transaction.  A progress
    line is written to stderr when stderr is a terminal, a summary at the end.

Every command takes ``--schema NAME`` (the schema TABLE lives in, e.g. a
PostgreSQL schema; referencing keys are looked for in that schema).

Arguments
=========

URL
    A SQLAlchemy database URL (``postgresql+psycopg://user@host/db``,
    ``mysql+pymysql://...``, ``sqlite:///file.db``).  Give ``-`` to read it
    from the environment variable ``SA_REFERENCES_URL`` so that passwords
    stay out of the shell history and the process list.  A ``sqlite:///``
    file must exist; foreign keys are enforced on SQLite connections
    (``PRAGMA foreign_keys=ON``).
KEY
    A primary key: one value per primary key column, in the primary key's
    column order, separated by commas (``17``; ``TEA,M`` for a two-column
    key).  A value that contains a comma or a double quote is quoted
    CSV-style: ``'"Smith, Ada",3'``.  Each value is converted with its
    column's Python type (``int``, ``Decimal``, ``date``, ``UUID``...; other
    types are passed as strings).
FILE.csv
    UTF-8 CSV with a header line naming the columns ``source`` and ``target``
    (other columns are ignored, blank lines skipped); each cell is a KEY as
    above, so a composite key is one quoted cell: ``"TEA,MED","TEA,M"``.

Exit status
===========

0 success (a dry run included); 1 the command failed -- unknown table, key not
found, wrong number of key values, a conflict under ``--on-conflict raise``, a
cycle or malformed line in the CSV file, a bad URL, an unreachable server, any
database error; 2 usage error -- the command line is invalid, ``-`` was given
without ``SA_REFERENCES_URL``, or a merge needs ``--yes`` because stdin is not
a terminal; 3 the merge was not confirmed at the prompt; 130 interrupted.
Errors are one line on stderr.  A failed or declined merge changes nothing:
each merge runs in one transaction.

JSON output (``--json``)
========================

One JSON document on stdout (the plan shown before a confirmation prompt then
goes to stderr, as text).  Key order is fixed; tables are named as
``schema.table`` when ``--schema`` is given; values JSON cannot represent are
strings (ISO 8601 dates and times, decimal strings, hex for binary data).

``keys``::

    {"table": "customer",
     "keys": [{"name": "orders(customer_id)", "table": "orders",
               "columns": ["customer_id"], "referred_table": "customer",
               "referred_columns": ["id"], "on_delete": "CASCADE",
               "on_update": "NO ACTION",
               "unique_keys": [{"name": "...", "columns": ["..."]}]}]}

``dependents``::

    {"table": "customer", "key": {"id": 3}, "count": 4,
     "keys": [{"name": "orders(customer_id)", "table": "orders",
               "columns": ["customer_id"], "count": 2,
               "sample": [{"id": 7, "customer_id": 3}]}]}

``merge``::

    {"table": "customer", "source": {"id": 3}, "target": {"id": 1},
     "dry_run": false, "on_conflict": "delete", "delete": true,
     "rowcount": 4, "deleted": 1, "left": 0,
     "keys": [{"name": "customer_tag(customer_id)", "table": "customer_tag",
               "columns": ["customer_id"], "repointed": 1, "deleted": 1,
               "left": 0,
               "conflicts": [{"constraint": "customer_tag primary key",
                              "rows": [[3, 1]]}]}]}

``merge --pairs``: as ``merge`` with ``"pairs": N`` (the number of pairs read)
in place of ``source`` and ``target``.  ``keys`` lists every referencing key,
in a fixed order, zero counts included.  ``rowcount`` is the number of rows
re-pointed, ``deleted`` the conflicting rows deleted, ``left`` those left on
the source; conflict ``rows`` are the identities (primary key values) of the
clashing rows.  Clashing rows are never counted in ``repointed``; in a dry
run under ``--on-conflict raise`` they are listed in ``conflicts`` (the merge
itself would fail).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime
import decimal
import difflib
import json
import os
import sqlite3
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, MetaData, Table, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, SQLAlchemyError

from . import __version__
from ._dependents import row_dependents
from ._keys import ReferencingKey, referencing_keys
from ._merge import merge_many, merge_rows
from ._pairs import primary_key_values
from ._report import BatchReport, Conflict, KeyResult, MergeReport
from .exc import MergeConflictError

PROG = "sa-references"
URL_ENV_VAR = "SA_REFERENCES_URL"

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_DECLINED = 3
EXIT_INTERRUPTED = 130

DEFAULT_LIMIT = 5
DEFAULT_BATCH_SIZE = 1000

EPILOG = f"""\
URL: a SQLAlchemy database URL, or - to read it from ${URL_ENV_VAR}.
KEY: primary key values in column order, comma-separated ("17", "TEA,M");
quote a value holding a comma CSV-style ('"Smith, Ada",3').

exit status: 0 success, 1 error (nothing changed), 2 usage error,
3 merge not confirmed, 130 interrupted.  See `python -m pydoc sa_references._cli`
for the --json formats.
"""

Values = tuple[Any, ...]
JSONDict = dict[str, Any]


class CommandError(Exception):
    """A failure the command reports as one line, with its exit status."""

    exit_status = EXIT_ERROR


class UsageError(CommandError):
    exit_status = EXIT_USAGE


class Declined(CommandError):
    exit_status = EXIT_DECLINED


# ---------------------------------------------------------------- arguments


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Merge duplicate rows and see what references a row, in any database "
        "SQLAlchemy can reflect.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_demo_command(commands)
    add_keys_command(commands)
    add_dependents_command(commands)
    add_merge_command(commands)
    return parser


def add_command(commands: Any, name: str, help: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = commands.add_parser(
        name,
        help=help,
        description=help,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return parser


def add_table_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("url", metavar="URL", help=f"database URL, or - for ${URL_ENV_VAR}")
    parser.add_argument("table", metavar="TABLE", help="the referenced table")
    parser.add_argument("--schema", help="the schema TABLE is in (e.g. a PostgreSQL schema)")


def add_demo_command(commands: Any) -> None:
    parser = add_command(
        commands,
        "demo",
        "create a small SQLite shop database and merge a duplicate customer in it",
    )
    parser.add_argument(
        "--db", metavar="PATH", type=Path, help="create the database here (a new file) and keep it"
    )
    parser.set_defaults(run=run_demo)


def add_keys_command(commands: Any) -> None:
    parser = add_command(commands, "keys", "list the foreign keys that reference TABLE")
    add_table_arguments(parser)
    parser.add_argument("--json", action="store_true", help="write JSON to stdout")
    parser.set_defaults(run=run_keys)


def add_dependents_command(commands: Any) -> None:
    parser = add_command(
        commands, "dependents", "count and sample the rows that reference one row of TABLE"
    )
    add_table_arguments(parser)
    parser.add_argument("key", metavar="KEY", help="primary key of the row")
    parser.add_argument(
        "--limit",
        type=non_negative_int,
        default=DEFAULT_LIMIT,
        metavar="N",
        help=f"rows shown per referencing key (default {DEFAULT_LIMIT}; 0: counts only)",
    )
    parser.add_argument("--json", action="store_true", help="write JSON to stdout")
    parser.set_defaults(run=run_dependents)


def add_merge_command(commands: Any) -> None:
    parser = add_command(
        commands,
        "merge",
        "re-point every reference to SOURCE_KEY to TARGET_KEY (or every pair of --pairs)",
    )
    add_table_arguments(parser)
    parser.add_argument("source", metavar="SOURCE_KEY", nargs="?", help="the duplicate row")
    parser.add_argument("target", metavar="TARGET_KEY", nargs="?", help="the row kept")
    parser.add_argument(
        "--pairs",
        metavar="FILE.csv",
        type=Path,
        help="merge every (source, target) pair of a CSV file with a header source,target",
    )
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        default=DEFAULT_BATCH_SIZE,
        metavar="N",
        help=f"pairs per merge_many call with --pairs (default {DEFAULT_BATCH_SIZE})",
    )
    parser.add_argument("--dry-run", action="store_true", help="show the plan; change nothing")
    parser.add_argument(
        "--delete", action="store_true", help="delete the source row(s) after re-pointing"
    )
    parser.add_argument(
        "--on-conflict",
        choices=("raise", "delete", "ignore"),
        default="raise",
        help="rows of a referencing table that would clash on a unique key: fail (raise, "
        "the default), delete the source's clashing rows, or leave them on the source",
    )
    parser.add_argument(
        "--on-self-reference",
        choices=("raise", "null"),
        default="raise",
        help="when the target row references the source row: fail (default) or clear "
        "that reference",
    )
    parser.add_argument(
        "--yes",
        "-y",
        action="store_true",
        help="merge without asking (required when stdin is not a terminal)",
    )
    parser.add_argument("--json", action="store_true", help="write JSON to stdout")
    parser.set_defaults(run=run_merge)


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more: {text}")
    return value


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more: {text}")
    return value


def check_merge_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """argparse cannot express "SOURCE_KEY and TARGET_KEY, or --pairs"."""
    if args.command != "merge":
        return
    if args.pairs is not None:
        if args.source is not None:
            parser.error("merge: give either SOURCE_KEY TARGET_KEY or --pairs FILE.csv, not both")
    elif args.target is None:
        parser.error("merge: SOURCE_KEY and TARGET_KEY are required (or --pairs FILE.csv)")


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_merge_arguments(parser, args)
    return args


# ---------------------------------------------------------------- entry point


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (see the module docstring)."""
    try:
        args = parse_arguments(argv)
    except SystemExit as exit:  # argparse: --help, --version, usage errors
        return exit.code if isinstance(exit.code, int) else EXIT_USAGE
    return run_reporting_errors(args.run, args)


def run_reporting_errors(run: Callable[[argparse.Namespace], int], args: Any) -> int:
    """Run a command; expected failures become one line on stderr and an exit status."""
    try:
        return run(args)
    except CommandError as error:
        report_error(str(error))
        return error.exit_status
    except (SQLAlchemyError, OSError, csv.Error, UnicodeDecodeError) as error:
        report_error(describe_error(error))
        return EXIT_ERROR
    except KeyboardInterrupt:
        report_error("interrupted; nothing changed")
        return EXIT_INTERRUPTED


def report_error(message: str) -> None:
    print(f"{PROG}: error: {message}", file=sys.stderr)


def one_line(text: str) -> str:
    return " ".join(text.split())


def describe_error(error: BaseException) -> str:
    """The error as one line: a driver's message without SQLAlchemy's statement dump."""
    if isinstance(error, DBAPIError) and error.orig is not None:
        return one_line(f"{type(error).__name__}: {error.orig}")
    if isinstance(error, SQLAlchemyError):
        return one_line(str(error.args[0]) if error.args else str(error))
    return one_line(str(error))


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
        raise CommandError(f"bad database URL: {describe_error(error)}") from None
    except ImportError as error:
        raise CommandError(
            f"cannot load the database driver for {url.drivername}: {error}"
        ) from None
    if engine.dialect.name == "sqlite":
        enforce_sqlite_foreign_keys(engine)
    return engine


def check_sqlite_file(url: URL) -> None:
    """Refuse to let SQLite create an empty database for a mistyped path."""
    if url.get_backend_name() != "sqlite":
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
    """An engine for the URL argument, disposed of afterwards."""
    engine = make_engine(url_text(url))
    try:
        yield engine
    finally:
        engine.dispose()


def reflect_table(connection: Connection, name: str, schema: str | None) -> Table:
    """Reflect the schema and return TABLE from it (one-line error naming close matches)."""
    metadata = MetaData()
    metadata.reflect(connection, schema=schema)
    fullname = f"{schema}.{name}" if schema else name
    table = metadata.tables.get(fullname)
    if table is not None:
        return table
    where = f" in schema {schema!r}" if schema else ""
    known = [t.name for t in metadata.tables.values() if t.schema == schema]
    close = difflib.get_close_matches(name, known, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise CommandError(f"table {name!r} not found{where}{hint}")


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


def key_values(table: Table, text: str) -> Values:
    """KEY as a tuple of primary key values, each converted to its column's type."""
    parts = split_key(text)
    columns = list(table.primary_key.columns)
    if len(parts) != len(columns):
        primary_key_values(table, parts)  # raises: no primary key, or the wrong number of values
    return primary_key_values(table, [convert_value(c, p) for c, p in zip(columns, parts)])


def key_dict(table: Table, values: Sequence[Any]) -> JSONDict:
    return {c.name: json_value(v) for c, v in zip(table.primary_key.columns, values)}


def format_key(table: Table, values: Sequence[Any]) -> str:
    return ", ".join(f"{name}={json.dumps(v)}" for name, v in key_dict(table, values).items())


# ---------------------------------------------------------------- output


def json_value(value: Any) -> Any:
    """A database value as JSON: strings for what JSON has no type for."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    return str(value)


def print_json(document: Mapping[str, Any]) -> None:
    print(json.dumps(document, indent=2, ensure_ascii=False))


def plural(count: int, noun: str, nouns: str = "") -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {nouns or noun + 's'}"


def names(columns: Sequence[Any]) -> list[str]:
    return [c.name for c in columns]


def format_row(row: Mapping[str, Any]) -> str:
    return " ".join(f"{name}={json.dumps(json_value(v))}" for name, v in row.items())


# ---------------------------------------------------------------- keys command


def run_keys(args: argparse.Namespace) -> int:
    with database(args.url) as engine, engine.connect() as connection:
        table = reflect_table(connection, args.table, args.schema)
    keys = referencing_keys(table)
    if args.json:
        print_json({"table": table.fullname, "keys": [key_json(k) for k in keys]})
    else:
        print_keys(table, keys)
    return EXIT_OK


def rule(value: str | None) -> str:
    return value.upper() if value else "NO ACTION"


def key_json(key: ReferencingKey) -> JSONDict:
    return {
        "name": key.name,
        "table": key.table.fullname,
        "columns": names(key.columns),
        "referred_table": key.referred_table.fullname,
        "referred_columns": names(key.referred_columns),
        "on_delete": rule(key.constraint.ondelete),
        "on_update": rule(key.constraint.onupdate),
        "unique_keys": [{"name": u.name, "columns": names(u.columns)} for u in key.unique_keys],
    }


def print_keys(table: Table, keys: Sequence[ReferencingKey]) -> None:
    print(f"{table.fullname} is referenced by {plural(len(keys), 'foreign key')}")
    for key in keys:
        unique = ", ".join(u.name for u in key.unique_keys) or "none"
        print(
            f"  {key.name} -> {key.referred_table.fullname}"
            f"({', '.join(names(key.referred_columns))})"
        )
        print(
            f"      on delete {rule(key.constraint.ondelete)}, "
            f"on update {rule(key.constraint.onupdate)}; unique keys over it: {unique}"
        )


# ---------------------------------------------------------------- dependents command


@dataclass
class KeySample:
    key: ReferencingKey
    count: int
    rows: list[dict[str, Any]]


def run_dependents(args: argparse.Namespace) -> int:
    with database(args.url) as engine, engine.connect() as connection:
        table = reflect_table(connection, args.table, args.schema)
        key = key_values(table, args.key)
        samples = sample_dependents(connection, table, key, args.limit)
    if args.json:
        print_json(dependents_json(table, key, samples))
    else:
        print_dependents(table, key, samples)
    return EXIT_OK


def sample_dependents(
    connection: Connection, table: Table, key: Values, limit: int
) -> list[KeySample]:
    deps = row_dependents(connection, table, key)
    samples = []
    for referencing_key, rows in deps.by_key().items():
        count = rows.count()
        sampled = []
        if count and limit:
            result = connection.execute(rows.select().limit(limit))
            sampled = [dict(row._mapping) for row in result]
        samples.append(KeySample(referencing_key, count, sampled))
    return samples


def dependents_json(table: Table, key: Values, samples: Sequence[KeySample]) -> JSONDict:
    return {
        "table": table.fullname,
        "key": key_dict(table, key),
        "count": sum(s.count for s in samples),
        "keys": [
            {
                "name": s.key.name,
                "table": s.key.table.fullname,
                "columns": names(s.key.columns),
                "count": s.count,
                "sample": [{k: json_value(v) for k, v in row.items()} for row in s.rows],
            }
            for s in samples
        ],
    }


def print_dependents(table: Table, key: Values, samples: Sequence[KeySample]) -> None:
    total = sum(s.count for s in samples)
    print(f"{table.fullname} ({format_key(table, key)}) is referenced by {plural(total, 'row')}")
    for sample in samples:
        print(f"  {sample.key.name}: {plural(sample.count, 'row')}")
        for row in sample.rows:
            print(f"    {format_row(row)}")
        if sample.count > len(sample.rows) and sample.rows:
            print(f"    ... and {sample.count - len(sample.rows)} more")


# ---------------------------------------------------------------- merge command


@dataclass(frozen=True)
class RowPair:
    """The source and target rows of a single merge."""

    table: Table
    source: Values
    target: Values

    def describe(self) -> str:
        source = format_key(self.table, self.source)
        target = format_key(self.table, self.target)
        return f"{self.table.fullname} ({source}) into ({target})"


def run_merge(args: argparse.Namespace) -> int:
    if not (args.yes or args.dry_run):
        require_terminal()
    if args.pairs is not None:
        return run_merge_pairs(args)
    with database(args.url) as engine:
        with engine.connect() as connection:
            table = reflect_table(connection, args.table, args.schema)
            rows = RowPair(table, key_values(table, args.source), key_values(table, args.target))
            if args.dry_run or not args.yes:
                plan = merge_pair(connection, rows, args, dry_run=True)
        if args.dry_run or not args.yes:
            show_plan(args, rows, plan)
            if args.dry_run:
                return EXIT_OK
            refuse_conflicts(args, plan)
            confirm()
        with engine.begin() as connection:
            report = merge_pair(connection, rows, args, dry_run=False)
        show_result(args, rows, report)
    return EXIT_OK


def merge_pair(
    connection: Connection, rows: RowPair, args: argparse.Namespace, dry_run: bool
) -> MergeReport:
    return merge_rows(
        connection, rows.table, rows.source, rows.target, dry_run=dry_run, **options(args)
    )


def options(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "on_conflict": args.on_conflict,
        "delete": args.delete,
        "on_self_reference": args.on_self_reference,
    }


def require_terminal() -> None:
    if not sys.stdin.isatty():
        raise UsageError(
            "merge: stdin is not a terminal, so the merge cannot be confirmed; "
            "pass --yes to merge without confirmation, or --dry-run"
        )


def refuse_conflicts(args: argparse.Namespace, plan: MergeReport) -> None:
    """Fail before asking when the merge would fail anyway."""
    if args.on_conflict == "raise" and plan.conflicts:
        raise MergeConflictError(plan.conflicts)


def confirm() -> None:
    print("Apply this merge? [y/N] ", end="", file=sys.stderr, flush=True)
    answer = read_answer()
    if answer.strip().lower() not in ("y", "yes"):
        raise Declined("merge not confirmed; nothing changed")


def read_answer() -> str:
    """A line from stdin; the prompt's line is ended at end of input or on ^C."""
    answer = ""
    try:
        answer = sys.stdin.readline()
    finally:
        if not answer.endswith("\n"):
            print(file=sys.stderr)
    return answer


def show_plan(args: argparse.Namespace, rows: RowPair, plan: MergeReport) -> None:
    """The dry run: JSON for --dry-run --json; else text, on stderr when JSON follows."""
    if args.json and args.dry_run:
        print_json(merge_json(args, rows, plan))
    elif args.json:
        with contextlib.redirect_stdout(sys.stderr):
            print_merge(args, rows, plan)
    else:
        print_merge(args, rows, plan)


def show_result(args: argparse.Namespace, rows: RowPair, report: MergeReport) -> None:
    if args.json:
        print_json(merge_json(args, rows, report))
    else:
        print_merge(args, rows, report)


def merge_json(args: argparse.Namespace, rows: RowPair, report: MergeReport) -> JSONDict:
    return {
        "table": rows.table.fullname,
        "source": key_dict(rows.table, rows.source),
        "target": key_dict(rows.table, rows.target),
        **totals_json(args, report.dry_run, report.keys),
    }


def totals_json(args: argparse.Namespace, dry_run: bool, results: Sequence[KeyResult]) -> JSONDict:
    return {
        "dry_run": dry_run,
        "on_conflict": args.on_conflict,
        "delete": args.delete,
        "rowcount": sum(r.repointed for r in results),
        "deleted": sum(r.deleted for r in results),
        "left": sum(r.left for r in results),
        "keys": [key_result_json(r) for r in results],
    }


def key_result_json(result: KeyResult) -> JSONDict:
    return {
        "name": result.key.name,
        "table": result.key.table.fullname,
        "columns": names(result.key.columns),
        "repointed": result.repointed,
        "deleted": result.deleted,
        "left": result.left,
        "conflicts": [conflict_json(c) for c in result.conflicts],
    }


def conflict_json(conflict: Conflict) -> JSONDict:
    return {
        "constraint": conflict.constraint,
        "rows": [[json_value(v) for v in row] for row in conflict.rows],
    }


def print_merge(args: argparse.Namespace, rows: RowPair, report: MergeReport) -> None:
    print(f"{'Plan' if report.dry_run else 'Merged'}: {rows.describe()}")
    print_key_results(args, report.keys, report.dry_run)
    print_totals(args, report.dry_run, report.keys, "the source row")


PLAN_WORDS = ("to re-point", "to delete", "to leave on the source")
RESULT_WORDS = ("re-pointed", "deleted", "left on the source")


def print_key_results(
    args: argparse.Namespace, results: Sequence[KeyResult], planned: bool
) -> None:
    idle = 0
    for result in results:
        if not (result.repointed or result.deleted or result.left or result.conflicts):
            idle += 1
            continue
        print(f"  {result.key.name}: {describe_key_result(args, result, planned)}")
    if idle:
        print(f"  ({plural(idle, 'other referencing key')} with nothing to re-point)")


def describe_key_result(args: argparse.Namespace, result: KeyResult, planned: bool) -> str:
    words = PLAN_WORDS if planned else RESULT_WORDS
    parts = [f"{result.repointed} {words[0]}"]
    if result.deleted:
        parts.append(f"{result.deleted} conflicting {words[1]}")
    if result.left:
        parts.append(f"{result.left} conflicting {words[2]}")
    if args.on_conflict == "raise":
        parts += [
            f"{plural(len(c.rows), 'row')} clash on {c.constraint} (see --on-conflict)"
            for c in result.conflicts
        ]
    return ", ".join(parts)


def print_totals(
    args: argparse.Namespace, dry_run: bool, results: Sequence[KeyResult], sources: str
) -> None:
    repointed = plural(sum(r.repointed for r in results), "row")
    deleted = plural(sum(r.deleted for r in results), "conflicting row")
    left = sum(r.left for r in results)
    if dry_run:
        line = f"Would re-point {repointed}, delete {deleted}, leave {left}"
        line += f" and delete {sources}." if args.delete else "."
    else:
        line = f"Re-pointed {repointed}, deleted {deleted}, left {left}"
        line += f"; deleted {sources}." if args.delete else "."
    print(line)
    if args.dry_run:
        print("Dry run: nothing changed.")


# ---------------------------------------------------------------- merge --pairs


@dataclass
class PairsResult:
    """Totals of a --pairs merge: the plan, or the batches applied."""

    pairs: int
    dry_run: bool
    keys: list[KeyResult]
    batches: int = 0


def run_merge_pairs(args: argparse.Namespace) -> int:
    with database(args.url) as engine:
        if args.dry_run or not args.yes:
            with engine.connect() as connection:
                table, pairs, plan = plan_pairs(args, connection)
            show_pairs(args, table, PairsResult(len(pairs), True, plan.keys), plan=True)
            if args.dry_run:
                return EXIT_OK
            refuse_conflicts(args, plan)
            confirm()
        with engine.begin() as connection:
            if args.yes:
                table, pairs, plan = plan_pairs(args, connection)
                refuse_conflicts(args, plan)
            result = apply_in_batches(args, connection, table, plan.pairs)
        result.pairs = len(pairs)
        show_pairs(args, table, result, plan=False)
    return EXIT_OK


def plan_pairs(
    args: argparse.Namespace, connection: Connection
) -> tuple[Table, list[tuple[Values, Values]], BatchReport]:
    """Read the CSV file and dry-run every pair at once: chains resolved, cycles refused."""
    table = reflect_table(connection, args.table, args.schema)
    pairs = read_pairs(args.pairs, table)
    plan = merge_many(connection, table, pairs, dry_run=True, **options(args))
    return table, pairs, plan


def read_pairs(path: Path, table: Table) -> list[tuple[Values, Values]]:
    """The (source, target) keys of a CSV file; errors name the file and line."""
    pairs = []
    with path.open(newline="", encoding="utf-8-sig") as stream:
        reader = csv.reader(stream, strict=True)
        try:
            columns = pair_columns(path, next(reader, None))
            for row in reader:
                if any(cell.strip() for cell in row):
                    pairs.append(pair_from_row(table, row, columns, reader.line_num))
        except CommandError as error:
            raise CommandError(f"{path} line {reader.line_num}: {error}") from None
        except (csv.Error, SQLAlchemyError) as error:
            message = describe_error(error)
            raise CommandError(f"{path} line {reader.line_num}: {message}") from None
    return pairs


def pair_columns(path: Path, header: list[str] | None) -> tuple[int, int, int]:
    """Positions of the source and target columns, and the number of columns."""
    cells = [cell.strip().lower() for cell in header or []]
    if "source" not in cells or "target" not in cells:
        raise CommandError(f"the header must name the columns source and target; got {header}")
    return cells.index("source"), cells.index("target"), len(cells)


def pair_from_row(
    table: Table, row: list[str], columns: tuple[int, int, int], line: int
) -> tuple[Values, Values]:
    source, target, width = columns
    if len(row) != width:
        raise CommandError(f"expected {width} fields like the header, found {len(row)}")
    if not row[source] or not row[target]:
        raise CommandError("the source or the target is empty")
    return key_values(table, row[source]), key_values(table, row[target])


def apply_in_batches(
    args: argparse.Namespace,
    connection: Connection,
    table: Table,
    pairs: Sequence[tuple[Any, Any]],
) -> PairsResult:
    """merge_many on chain-resolved pairs, ``--batch-size`` at a time, with progress."""
    result = PairsResult(len(pairs), False, [])
    progress = Progress(len(pairs)) if sys.stderr.isatty() else None
    for start in range(0, len(pairs), args.batch_size):
        batch = pairs[start : start + args.batch_size]
        report = merge_many(connection, table, batch, **options(args))
        result.keys = add_key_results(result.keys, report.keys)
        result.batches += 1
        if progress is not None:
            progress.update(start + len(batch))
    if progress is not None:
        progress.finish()
    return result


def add_key_results(totals: list[KeyResult], results: Sequence[KeyResult]) -> list[KeyResult]:
    by_key = {r.key: r for r in totals}
    for result in results:
        total = by_key.setdefault(result.key, KeyResult(result.key))
        total.repointed += result.repointed
        total.deleted += result.deleted
        total.left += result.left
        total.conflicts += result.conflicts
    return sorted(by_key.values(), key=lambda r: r.key.sort_key)


class Progress:
    """``merged 2000/5000 pairs (40%)``, rewritten in place on a terminal's stderr."""

    def __init__(self, total: int) -> None:
        self.total = total

    def update(self, done: int) -> None:
        percent = 100 * done // self.total if self.total else 100
        sys.stderr.write(f"\rmerged {done}/{self.total} pairs ({percent}%)")
        sys.stderr.flush()

    def finish(self) -> None:
        sys.stderr.write("\n")
        sys.stderr.flush()


def show_pairs(args: argparse.Namespace, table: Table, result: PairsResult, plan: bool) -> None:
    if args.json and (args.dry_run or not plan):
        print_json(pairs_json(args, table, result))
    elif args.json:
        with contextlib.redirect_stdout(sys.stderr):
            print_pairs(args, table, result)
    else:
        print_pairs(args, table, result)


def pairs_json(args: argparse.Namespace, table: Table, result: PairsResult) -> JSONDict:
    return {
        "table": table.fullname,
        "pairs": result.pairs,
        **totals_json(args, result.dry_run, result.keys),
    }


def print_pairs(args: argparse.Namespace, table: Table, result: PairsResult) -> None:
    pairs = plural(result.pairs, "pair")
    if result.dry_run:
        print(f"Plan: {pairs} of {table.fullname} from {args.pairs}")
    else:
        print(f"Merged {pairs} of {table.fullname} in {plural(result.batches, 'batch', 'batches')}")
    print_key_results(args, result.keys, result.dry_run)
    print_totals(args, result.dry_run, result.keys, "the source rows")


# ---------------------------------------------------------------- demo


DEMO_SCHEMA = """
CREATE TABLE customer (
    id INTEGER NOT NULL PRIMARY KEY,
    name VARCHAR(100) NOT NULL,
    email VARCHAR(100),
    referrer_id INTEGER REFERENCES customer (id)
);
CREATE TABLE address (
    id INTEGER NOT NULL PRIMARY KEY,
    customer_id INTEGER NOT NULL,
    city VARCHAR(100) NOT NULL,
    FOREIGN KEY (customer_id) REFERENCES customer (id) ON DELETE CASCADE
);
CREATE TABLE product (
    sku VARCHAR(20) NOT NULL,
    size VARCHAR(10) NOT NULL,
    name VARCHAR(100) NOT NULL,
    PRIMARY KEY (sku, size)
);
CREATE TABLE orders (
    id INTEGER NOT NULL PRIMARY KEY,
    customer_id INTEGER NOT NULL REFERENCES customer (id),
    product_sku VARCHAR(20) NOT NULL,
    product_size VARCHAR(10) NOT NULL,
    FOREIGN KEY (product_sku, product_size) REFERENCES product (sku, size)
);
CREATE TABLE tag (
    id INTEGER NOT NULL PRIMARY KEY,
    name VARCHAR(50) NOT NULL UNIQUE
);
CREATE TABLE customer_tag (
    customer_id INTEGER NOT NULL REFERENCES customer (id),
    tag_id INTEGER NOT NULL REFERENCES tag (id),
    PRIMARY KEY (customer_id, tag_id)
);
INSERT INTO customer VALUES
    (1, 'Ada Lovelace', 'ada@example.com', NULL),
    (2, 'Grace Hopper', 'grace@example.com', 1),
    (3, 'ada lovelace', 'ADA@example.com', NULL),
    (4, 'Alan Turing', 'alan@example.com', 3);
INSERT INTO address VALUES (1, 1, 'London'), (2, 3, 'Marylebone, London');
INSERT INTO product VALUES
    ('TEA', 'S', 'Tea, small'), ('TEA', 'M', 'Tea, medium'), ('TEA', 'MED', 'Tea, medium'),
    ('MUG', 'STD', 'Mug');
INSERT INTO orders VALUES
    (1, 1, 'TEA', 'S'), (2, 3, 'MUG', 'STD'), (3, 3, 'TEA', 'MED'), (4, 2, 'TEA', 'M');
INSERT INTO tag VALUES (1, 'vip'), (2, 'newsletter');
INSERT INTO customer_tag VALUES (1, 1), (3, 1), (3, 2);
"""

DEMO_INTRO = """\
A shop database: customers 1 "Ada Lovelace" and 3 "ada lovelace" are one person.
Customer 3 has an address, two orders, two tags (one, "vip", that customer 1 has too)
and referred customer 4 (customer.referrer_id references customer itself).
Products have a two-column key (sku, size); "TEA,MED" duplicates "TEA,M".
"""


def run_demo(args: argparse.Namespace) -> int:
    with demo_database_path(args.db) as path:
        create_demo_database(path)
        url = f"sqlite:///{path}"
        print(f"Created {path}")
        print(DEMO_INTRO)
        for command in demo_commands(url):
            print("$ " + " ".join(shell_quote(a) for a in [PROG, *command]), flush=True)
            command_args = parse_arguments(command)
            status = run_reporting_errors(command_args.run, command_args)
            print()
            if status != EXIT_OK:
                return status
    if args.db is None:
        print(f"Run `{PROG} demo --db shop.db` to keep the database and try the commands.")
    return EXIT_OK


def demo_commands(url: str) -> list[list[str]]:
    return [
        ["keys", url, "customer"],
        ["dependents", url, "customer", "3"],
        ["merge", url, "customer", "3", "1", "--on-conflict", "delete", "--delete", "--dry-run"],
        ["merge", url, "customer", "3", "1", "--on-conflict", "delete", "--delete", "--yes"],
        ["dependents", url, "customer", "1", "--limit", "2"],
        ["merge", url, "product", "TEA,MED", "TEA,M", "--delete", "--yes"],
    ]


def shell_quote(argument: str) -> str:
    safe = all(c.isalnum() or c in "-_./:=," for c in argument)
    return argument if safe and argument else "'" + argument.replace("'", "'\\''") + "'"


@contextlib.contextmanager
def demo_database_path(path: Path | None) -> Iterator[Path]:
    if path is not None:
        if path.exists():
            raise CommandError(f"{path} already exists; give --db a new file name")
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="sa-references-demo-") as directory:
        yield Path(directory) / "shop.db"


def create_demo_database(path: Path) -> None:
    with contextlib.closing(sqlite3.connect(path)) as connection:
        connection.executescript(DEMO_SCHEMA)
        connection.commit()
