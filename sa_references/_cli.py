"""``sa-references``: the library's merge and dependents engine on a reflected schema.

For databases without SQLAlchemy models: each command reflects the schema
(``MetaData().reflect()``), plus every table of another schema whose foreign
keys reference TABLE (found in the database's catalog), and calls
:func:`referencing_keys`, :func:`row_dependents`, :func:`merge_rows` or
``merge_many``; the command line adds no logic of its own beyond parsing,
confirming and printing.

Modules: this one parses the command line and turns errors into one line;
:mod:`._cli_commands` holds the commands as Python functions that return
results (dataclasses); :mod:`._cli_render` writes them as text or JSON;
:mod:`._cli_input` reads URLs, keys and CSV pairs; :mod:`._cli_demo` and the
package data ``demo.sql`` make the demo.

The commands, their arguments, exit statuses and JSON formats are described in
:mod:`sa_references.cli`.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from sqlalchemy.exc import SQLAlchemyError

from . import __version__
from ._cli_commands import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_LIMIT,
    MergeResult,
    PairsResult,
    dependents,
    keys,
    merge,
    merge_pairs,
)
from ._cli_demo import DEMO_INTRO, demo_commands, demo_copy, demo_database, shell_quote
from ._cli_input import (
    EXIT_COMMITTED_OUTPUT_FAILED,
    EXIT_DECLINED,
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    EXIT_WOULD_FAIL,
    URL_ENV_VAR,
    CommandError,
    Declined,
    OutputClosed,
    OutputFailedAfterCommit,
    UsageError,
    describe_error,
)
from ._cli_render import write_dependents, write_keys, write_merge
from ._options import ON_CONFLICT, ON_SELF_REFERENCE, MergeOptions
from ._options import merge_options as merge_options_of

__all__ = [
    "EXIT_COMMITTED_OUTPUT_FAILED",
    "EXIT_DECLINED",
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "EXIT_WOULD_FAIL",
    "URL_ENV_VAR",
    "CommandError",
    "Declined",
    "UsageError",
    "build_parser",
    "main",
]

PROG = "sa-references"

EPILOG = f"""\
URL: a SQLAlchemy database URL, or - to read it from ${URL_ENV_VAR}.
KEY: primary key values in column order, comma-separated ("17", "TEA,M");
quote a value holding a comma CSV-style ('"Smith, Ada",3').

exit status: 0 success, 1 error (nothing changed), 2 usage error,
3 merge not confirmed, 4 merge committed but its output failed,
5 dry run of a merge that would fail, 130 interrupted,
141 stdout closed early (as in `| head`; silent).
See `python -m pydoc sa_references.cli` for the commands and the --json formats.
"""


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
        choices=ON_CONFLICT,
        default="raise",
        help="rows of a referencing table that would clash on a unique key: fail (raise, "
        "the default), delete the source's clashing rows, or leave them on the source",
    )
    parser.add_argument(
        "--on-self-reference",
        choices=ON_SELF_REFERENCE,
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
    except Declined as error:  # the user's answer, not an error
        print(f"{PROG}: {error}", file=sys.stderr)
        return error.exit_status
    except CommandError as error:
        if str(error):
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


def write_output(write: Callable[[TextIO], None], committed: bool) -> None:
    """Write a result to stdout and flush it, so that a failure shows here, not at exit.

    After a committed merge a failure is :class:`OutputFailedAfterCommit` (exit status
    4): the database has changed even though the result could not be shown.
    """
    try:
        write(sys.stdout)
        sys.stdout.flush()
    except OSError as error:
        silence_stdout()
        if committed:
            raise OutputFailedAfterCommit(
                f"the merge was committed, but writing its result failed: {describe_error(error)}"
            ) from None
        if isinstance(error, BrokenPipeError):
            raise OutputClosed("") from None
        raise


def silence_stdout() -> None:
    """Point stdout's file descriptor at /dev/null, so that the interpreter's own flush at
    exit does not fail again (and print a traceback) on a closed pipe."""
    try:
        descriptor = sys.stdout.fileno()
    except (OSError, ValueError, io.UnsupportedOperation):
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, descriptor)
    finally:
        os.close(devnull)


# ---------------------------------------------------------------- commands


def run_keys(args: argparse.Namespace) -> int:
    result = keys(args.url, args.table, schema=args.schema)
    write_output(lambda out: write_keys(result, out, args.json), committed=False)
    return EXIT_OK


def run_dependents(args: argparse.Namespace) -> int:
    result = dependents(args.url, args.table, args.key, schema=args.schema, limit=args.limit)
    write_output(lambda out: write_dependents(result, out, args.json), committed=False)
    return EXIT_OK


def merge_options(args: argparse.Namespace) -> MergeOptions:
    """The library's options object, from the command line's choices."""
    return merge_options_of(
        on_conflict=args.on_conflict,
        on_self_reference=args.on_self_reference,
        delete=args.delete,
        dry_run=args.dry_run,
    )


def run_merge(args: argparse.Namespace) -> int:
    interactive = not (args.yes or args.dry_run)
    if interactive:
        require_terminal()
    options = merge_options(args)
    ask = Prompt(args.json) if interactive else None
    result: MergeResult | PairsResult
    if args.pairs is not None:
        progress = Progress() if sys.stderr.isatty() else None
        result = merge_pairs(
            args.url,
            args.table,
            args.pairs,
            options,
            batch_size=args.batch_size,
            schema=args.schema,
            confirm=ask,
            progress=progress,
        )
    else:
        result = merge(
            args.url,
            args.table,
            args.source,
            args.target,
            options,
            schema=args.schema,
            confirm=ask,
        )
    write_output(lambda out: write_merge(result, out, args.json), committed=result.committed)
    return EXIT_WOULD_FAIL if result.refusal is not None else EXIT_OK


def require_terminal() -> None:
    if not sys.stdin.isatty():
        raise UsageError(
            "merge: stdin is not a terminal, so the merge cannot be confirmed; "
            "pass --yes to merge without confirmation, or --dry-run"
        )


class Prompt:
    """The confirmation: show the plan (as text; on stderr when JSON follows on stdout),
    fail now if the merge would fail anyway, then ask on stdin."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json

    def __call__(self, plan: MergeResult | PairsResult) -> bool:
        write_merge(plan, sys.stderr if self.as_json else sys.stdout)
        plan.refuse()
        print("Apply this merge? [y/N] ", end="", file=sys.stderr, flush=True)
        return read_answer().strip().lower() in ("y", "yes")


def read_answer() -> str:
    """A line from stdin; the prompt's line is ended at end of input or on ^C."""
    answer = ""
    try:
        answer = sys.stdin.readline()
    finally:
        if not answer.endswith("\n"):
            print(file=sys.stderr)
    return answer


class Progress:
    """``merged 2000/5000 pairs (40%)`` (or ``planned``), rewritten in place on a
    terminal's stderr."""

    def __call__(self, phase: str, done: int, total: int) -> None:
        percent = 100 * done // total if total else 100
        sys.stderr.write(f"\r{phase} {done}/{total} pairs ({percent}%)")
        if done >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def run_demo(args: argparse.Namespace) -> int:
    """Create the demo database and run the demo's commands on it; with ``--db`` they run on
    a copy, so the file kept still holds the duplicates to try the commands on."""
    with demo_database(args.db) as path, demo_copy(path, args.db is not None) as merged:
        url = f"sqlite:///{merged}"
        print(f"Created {path}")
        print(DEMO_INTRO)
        if args.db is not None:
            print(f"(The commands run on a copy of {path}, which keeps the duplicates.)\n")
        shown = demo_commands(f"sqlite:///{path}")
        for command, display in zip(demo_commands(url), shown):
            print("$ " + " ".join(shell_quote(a) for a in [PROG, *display]), flush=True)
            command_args = parse_arguments(command)
            status = run_reporting_errors(command_args.run, command_args)
            print()
            if status != EXIT_OK:
                return status
    if args.db is None:
        print(f"Run `{PROG} demo --db shop.db` to keep the database and try the commands.")
    else:
        kept = shell_quote(f"sqlite:///{args.db}")
        print(f"{args.db} holds the database as created, before these merges: try")
        print(f"  {PROG} dependents {kept} customer 3")
        print(f"  {PROG} merge {kept} customer 3 1 --on-conflict delete --delete --dry-run")
    return EXIT_OK
