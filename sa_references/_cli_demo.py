"""``sa-references demo``: a small SQLite shop database and the commands to run on it.

The database is built from the package data file ``demo.sql``.
"""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

from ._cli_input import CommandError

DEMO_INTRO = """\
A shop database: customers 1 "Ada Lovelace" and 3 "ada lovelace" are one person.
Customer 3 has an address, two orders, two tags (one, "vip", that customer 1 has too)
and referred customer 4 (customer.referrer_id references customer itself).
Products have a two-column key (sku, size); "TEA,MED" duplicates "TEA,M".
"""


def demo_sql() -> str:
    """The demo database's schema and rows (``sa_references/demo.sql``)."""
    return resources.files("sa_references").joinpath("demo.sql").read_text(encoding="utf-8")


def demo_commands(url: str) -> list[list[str]]:
    """The command lines the demo runs, in order."""
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
def demo_database(path: Path | None) -> Iterator[Path]:
    """Create the demo database at ``path`` (a new file), or in a temporary directory
    removed afterwards; yields its path."""
    with _database_path(path) as where:
        with contextlib.closing(sqlite3.connect(where)) as connection:
            connection.executescript(demo_sql())
            connection.commit()
        yield where


@contextlib.contextmanager
def _database_path(path: Path | None) -> Iterator[Path]:
    if path is not None:
        if path.exists():
            raise CommandError(f"{path} already exists; give --db a new file name")
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="sa-references-demo-") as directory:
        yield Path(directory) / "shop.db"


@contextlib.contextmanager
def demo_copy(path: Path, copy: bool) -> Iterator[Path]:
    """``path`` itself, or (``copy``) a temporary copy of it, removed afterwards."""
    if not copy:
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="sa-references-demo-") as directory:
        target = Path(directory) / path.name
        shutil.copyfile(path, target)
        yield target
