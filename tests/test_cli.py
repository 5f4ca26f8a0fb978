"""The ``sa-references`` command line, on databases built here with raw DDL (no models).

Every command runs through ``main([...])`` on SQLite, PostgreSQL and MariaDB
(``--dburi``), and as a subprocess (``python -m sa_references`` and the
``sa-references`` console script).  Each bad input is checked to leave the
database exactly as it was.
"""

from __future__ import annotations

import datetime
import decimal
import importlib.util
import io
import json
import os
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import (
    Boolean,
    Column,
    Date,
    DateTime,
    Engine,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    String,
    Table,
    Uuid,
    create_engine,
    event,
    text,
)
from sqlalchemy.engine import make_url
from sqlalchemy.types import NullType, TypeEngine

from sa_references._cli_input import key_values
from sa_references._cli_render import json_value
from sa_references.cli import EXIT_WOULD_FAIL, URL_ENV_VAR, main
from sa_references.command import CommandError

pytestmark = pytest.mark.backends("sqlite", "postgresql", "mariadb")

TABLES = ["cli_order", "cli_customer_tag", "cli_product", "cli_tag", "cli_customer"]
SCHEMA = "cli_schema"
CONSOLE_SCRIPT = Path(sys.executable).with_name("sa-references")


def ddl(q: str, r: str) -> list[str]:
    """The test schema; ``q`` qualifies table names (``"cli_schema."`` or ``""``), ``r``
    the names in REFERENCES clauses (SQLite allows no schema there)."""
    return [
        f"CREATE TABLE {q}cli_customer (id INTEGER NOT NULL, name VARCHAR(50) NOT NULL, "
        "referrer_id INTEGER, PRIMARY KEY (id), "
        f"FOREIGN KEY (referrer_id) REFERENCES {r}cli_customer (id))",
        f"CREATE TABLE {q}cli_tag (id INTEGER NOT NULL, name VARCHAR(50) NOT NULL, "
        "PRIMARY KEY (id))",
        f"CREATE TABLE {q}cli_customer_tag (customer_id INTEGER NOT NULL, "
        "tag_id INTEGER NOT NULL, PRIMARY KEY (customer_id, tag_id), "
        f"FOREIGN KEY (customer_id) REFERENCES {r}cli_customer (id), "
        f"FOREIGN KEY (tag_id) REFERENCES {r}cli_tag (id))",
        f"CREATE TABLE {q}cli_product (sku VARCHAR(20) NOT NULL, variant VARCHAR(10) NOT NULL, "
        "name VARCHAR(50) NOT NULL, PRIMARY KEY (sku, variant))",
        f"CREATE TABLE {q}cli_order (id INTEGER NOT NULL, customer_id INTEGER NOT NULL, "
        "sku VARCHAR(20) NOT NULL, variant VARCHAR(10) NOT NULL, PRIMARY KEY (id), "
        f"FOREIGN KEY (customer_id) REFERENCES {r}cli_customer (id) ON DELETE CASCADE, "
        f"FOREIGN KEY (sku, variant) REFERENCES {r}cli_product (sku, variant))",
        # 3 and 5 duplicate 1 (5 -> 3 -> 1 is a chain); 4 was referred by 3, 2 by 1
        f"INSERT INTO {q}cli_customer VALUES (1, 'Ada', NULL), (2, 'Grace', 1), "
        "(3, 'ada', NULL), (4, 'Alan', 3), (5, 'ADA', NULL), (6, 'Zed', NULL)",
        f"INSERT INTO {q}cli_tag VALUES (1, 'vip'), (2, 'news')",
        # 1 and 3 are both "vip": re-pointing (3, 1) clashes on the primary key
        f"INSERT INTO {q}cli_customer_tag VALUES (1, 1), (3, 1), (3, 2), (5, 2)",
        f"INSERT INTO {q}cli_product VALUES ('TEA', 'S', 'small tea'), "
        "('TEA', 'M', 'medium tea'), ('TEA', 'MED', 'medium tea'), ('MUG', 'STD', 'mug')",
        f"INSERT INTO {q}cli_order VALUES (1, 1, 'TEA', 'S'), (2, 3, 'MUG', 'STD'), "
        "(3, 3, 'TEA', 'MED'), (4, 2, 'TEA', 'M'), (5, 5, 'TEA', 'S')",
    ]


@dataclass
class Database:
    """A database holding the ``cli_`` tables, and the URL the CLI is given."""

    url: str
    engine: Engine
    schema: str | None = None

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def table(self, name: str) -> str:
        return f"{self.schema}.{name}" if self.schema else name

    def args(self) -> list[str]:
        return ["--schema", self.schema] if self.schema else []

    def rows(self, name: str) -> list[tuple[Any, ...]]:
        with self.engine.connect() as connection:
            result = connection.execute(text(f"SELECT * FROM {self.table(name)}"))
            return sorted(tuple(row) for row in result)

    def snapshot(self) -> dict[str, list[tuple[Any, ...]]]:
        return {name: self.rows(name) for name in TABLES}

    def customer_of_orders(self) -> dict[int, int]:
        return {row[0]: row[1] for row in self.rows("cli_order")}


def drop_tables(engine: Engine, q: str = "") -> None:
    with engine.begin() as connection:
        for name in TABLES:
            connection.exec_driver_sql(f"DROP TABLE IF EXISTS {q}{name}")


def create_tables(engine: Engine, q: str = "", r: str | None = None) -> None:
    drop_tables(engine, q)
    with engine.begin() as connection:
        for statement in ddl(q, q if r is None else r):
            connection.exec_driver_sql(statement)


def sqlite_test_engine(url: str) -> Engine:
    engine = create_engine(url)

    @event.listens_for(engine, "connect")
    def _foreign_keys(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.execute("PRAGMA foreign_keys=ON")

    return engine


@pytest.fixture
def database(backend: str, tmp_path: Path) -> Iterator[Database]:
    if backend.startswith("sqlite"):
        url = f"sqlite:///{tmp_path / 'cli.db'}"
        engine = sqlite_test_engine(url)
    else:
        url = backend
        engine = create_engine(url)
    create_tables(engine)
    yield Database(url, engine)
    drop_tables(engine)
    engine.dispose()


@pytest.fixture
def schema_database(backend: str, tmp_path: Path) -> Iterator[Database]:
    """The tables in a named schema: PostgreSQL's ``cli_schema``, a second MariaDB
    database (a schema there), SQLite's ``main``."""
    if backend.startswith("sqlite"):
        url = f"sqlite:///{tmp_path / 'cli.db'}"
        engine = sqlite_test_engine(url)
        create_tables(engine, "main.", "")
        yield Database(url, engine, "main")
        engine.dispose()
        return
    engine = create_engine(backend)
    if engine.dialect.name == "postgresql":
        schema, kind, cascade = SCHEMA, "SCHEMA", " CASCADE"
    else:  # one per test database, so that runs on other databases of the server never clash
        schema, kind, cascade = f"{make_url(backend).database}_{SCHEMA}", "DATABASE", ""
    with engine.begin() as connection:
        connection.exec_driver_sql(f"DROP {kind} IF EXISTS {schema}{cascade}")
        connection.exec_driver_sql(f"CREATE {kind} {schema}")
    create_tables(engine, f"{schema}.")
    yield Database(backend, engine, schema)
    with engine.begin() as connection:
        connection.exec_driver_sql(f"DROP {kind} {schema}{cascade}")
    engine.dispose()


@dataclass
class Run:
    status: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


class FakeStdin(io.StringIO):
    def __init__(self, answer: str, tty: bool) -> None:
        super().__init__(answer)
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


class TerminalStderr(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Any:
    """``cli(*argv, stdin=..., tty=...)``: run ``main`` and capture what it wrote."""

    def run(*argv: str, stdin: str = "", tty: bool = False) -> Run:
        capsys.readouterr()
        monkeypatch.setattr(sys, "stdin", FakeStdin(stdin, tty))
        status = main(list(argv))
        out, err = capsys.readouterr()
        return Run(status, out, err)

    return run


def assert_error(run: Run, status: int, *fragments: str) -> None:
    """One line on stderr naming the problem, the status, no traceback."""
    assert run.status == status, (run.out, run.err)
    lines = run.err.splitlines()
    assert len(lines) == 1, run.err
    assert lines[0].startswith("sa-references: error: ")
    for fragment in fragments:
        assert fragment in lines[0]
    assert "Traceback" not in run.err + run.out


def write_csv(path: Path, body: str) -> str:
    path.write_text(body, encoding="utf-8")
    return str(path)


# ---------------------------------------------------------------- keys


def test_keys_lists_referencing_keys(cli: Any, database: Database) -> None:
    run = cli("keys", database.url, "cli_customer", "--json")
    assert run.status == 0, run.err
    document = run.json()
    assert document["table"] == "cli_customer"
    keys = {k["name"]: k for k in document["keys"]}
    assert list(keys) == [
        "cli_customer(referrer_id)",
        "cli_customer_tag(customer_id)",
        "cli_order(customer_id)",
    ]
    order = keys["cli_order(customer_id)"]
    assert order["table"] == "cli_order"
    assert order["columns"] == ["customer_id"]
    assert order["referred_table"] == "cli_customer"
    assert order["referred_columns"] == ["id"]
    assert order["on_delete"] == "CASCADE"
    assert order["on_update"] in ("NO ACTION", "RESTRICT")
    assert order["unique_keys"] == []
    (tag_unique,) = keys["cli_customer_tag(customer_id)"]["unique_keys"]
    assert tag_unique["columns"] == ["customer_id", "tag_id"]
    assert keys["cli_customer(referrer_id)"]["on_delete"] in ("NO ACTION", "RESTRICT")

    run = cli("keys", database.url, "cli_customer")
    assert run.status == 0
    assert run.out.splitlines()[0] == "cli_customer is referenced by 3 foreign keys"
    assert "cli_order(customer_id) -> cli_customer(id)" in run.out
    assert "on delete CASCADE" in run.out
    assert f"unique keys over it: {tag_unique['name']}" in run.out


def test_keys_of_an_unreferenced_table(cli: Any, database: Database) -> None:
    run = cli("keys", database.url, "cli_order")
    assert (run.status, run.out) == (0, "cli_order is referenced by 0 foreign keys\n")
    assert cli("keys", database.url, "cli_order", "--json").json() == {
        "table": "cli_order",
        "keys": [],
    }


def test_keys_of_a_composite_key(cli: Any, database: Database) -> None:
    run = cli("keys", database.url, "cli_product", "--json")
    assert run.status == 0, run.err
    (key,) = run.json()["keys"]
    assert key["name"] == "cli_order(sku, variant)"
    assert key["columns"] == ["sku", "variant"]
    assert key["referred_columns"] == ["sku", "variant"]


# ---------------------------------------------------------------- dependents


def test_dependents_counts_and_samples(cli: Any, database: Database) -> None:
    run = cli("dependents", database.url, "cli_customer", "3", "--json")
    assert run.status == 0, run.err
    document = run.json()
    assert document["table"] == "cli_customer"
    assert document["key"] == {"id": 3}
    assert document["count"] == 5
    keys = {k["name"]: k for k in document["keys"]}
    assert keys["cli_customer(referrer_id)"]["count"] == 1
    assert keys["cli_customer(referrer_id)"]["sample"] == [
        {"id": 4, "name": "Alan", "referrer_id": 3}
    ]
    assert keys["cli_customer_tag(customer_id)"]["sample"] == [
        {"customer_id": 3, "tag_id": 1},
        {"customer_id": 3, "tag_id": 2},
    ]
    assert keys["cli_order(customer_id)"]["columns"] == ["customer_id"]
    assert [r["id"] for r in keys["cli_order(customer_id)"]["sample"]] == [2, 3]

    run = cli("dependents", database.url, "cli_customer", "3", "--limit", "1")
    assert run.status == 0, run.err
    lines = run.out.splitlines()
    assert lines[0] == "cli_customer (id=3) is referenced by 5 rows"
    assert "  cli_order(customer_id): 2 rows" in lines
    assert '    id=2 customer_id=3 sku="MUG" variant="STD"' in lines
    assert "    ... and 1 more" in lines

    run = cli("dependents", database.url, "cli_customer", "6", "--limit", "0", "--json")
    assert run.json()["count"] == 0
    assert all(k["sample"] == [] and k["count"] == 0 for k in run.json()["keys"])


def test_dependents_of_a_composite_key(cli: Any, database: Database) -> None:
    run = cli("dependents", database.url, "cli_product", "TEA,S", "--json")
    assert run.status == 0, run.err
    document = run.json()
    assert document["key"] == {"sku": "TEA", "variant": "S"}
    (key,) = document["keys"]
    assert key["count"] == 2
    assert [r["id"] for r in key["sample"]] == [1, 5]


def test_dependents_bad_keys(cli: Any, database: Database) -> None:
    before = database.snapshot()
    assert_error(cli("dependents", database.url, "cli_customer", "99"), 1, "not found")
    assert_error(cli("dependents", database.url, "cli_customer", "1,2"), 1, "got 2 value(s)")
    assert_error(cli("dependents", database.url, "cli_customer", "x"), 1, "'x' is not a valid int")
    assert_error(cli("dependents", database.url, "cli_product", "TEA"), 1, "keyed by 2 column(s)")
    assert_error(cli("dependents", database.url, "cli_nothing", "1"), 1, "'cli_nothing' not found")
    assert_error(cli("dependents", database.url, "cli_customer", ""), 1, "got 0 value(s)")
    assert_error(cli("dependents", "sqlite://", "cli_customer", "1"), 1, "not found")
    assert database.snapshot() == before


# ---------------------------------------------------------------- merge


def test_merge_dry_run_changes_nothing(cli: Any, database: Database) -> None:
    before = database.snapshot()
    run = cli("merge", database.url, "cli_customer", "3", "1", "--dry-run", "--json")
    assert run.status == EXIT_WOULD_FAIL, run.err  # the conflict, under raise
    document = run.json()
    assert document["dry_run"] is True
    assert document["source"] == {"id": 3}
    assert document["target"] == {"id": 1}
    assert document["on_conflict"] == "raise"
    assert document["rowcount"] == 4  # the clashing row is listed, never counted as moving
    (tag_key,) = [k for k in document["keys"] if k["conflicts"]]
    assert tag_key["name"] == "cli_customer_tag(customer_id)"
    assert tag_key["conflicts"][0]["rows"] == [[3, 1]]

    run = cli("merge", database.url, "cli_customer", "3", "1", "--dry-run")
    assert run.status == EXIT_WOULD_FAIL, run.err
    assert "clash on" in run.out
    assert "Dry run: nothing changed." in run.out
    assert database.snapshot() == before


def test_merge_applies_with_yes(cli: Any, database: Database) -> None:
    run = cli(
        "merge",
        database.url,
        "cli_customer",
        "3",
        "1",
        "--on-conflict",
        "delete",
        "--delete",
        "--yes",
        "--json",
    )
    assert run.status == 0, run.err
    document = run.json()
    assert document["dry_run"] is False
    assert (document["rowcount"], document["deleted"], document["left"]) == (4, 1, 0)
    assert document["delete"] is True
    assert [row[0] for row in database.rows("cli_customer")] == [1, 2, 4, 5, 6]
    assert database.rows("cli_customer_tag") == [(1, 1), (1, 2), (5, 2)]
    assert database.customer_of_orders() == {1: 1, 2: 1, 3: 1, 4: 2, 5: 5}
    assert (4, "Alan", 1) in database.rows("cli_customer")


def test_merge_ignore_leaves_conflicts(cli: Any, database: Database) -> None:
    run = cli("merge", database.url, "cli_customer", "3", "1", "--on-conflict", "ignore", "--yes")
    assert run.status == 0, run.err
    assert "Re-pointed 4 rows, deleted 0 conflicting rows, left 1." in run.out
    assert database.rows("cli_customer_tag") == [(1, 1), (1, 2), (3, 1), (5, 2)]


def test_merge_composite_key(cli: Any, database: Database) -> None:
    run = cli("merge", database.url, "cli_product", "TEA,MED", "TEA,M", "--delete", "--yes")
    assert run.status == 0, run.err
    assert 'Merged: cli_product (sku="TEA", variant="MED") into (sku="TEA", variant="M")' in run.out
    assert database.rows("cli_order")[2] == (3, 3, "TEA", "M")
    assert ("TEA", "MED", "medium tea") not in database.rows("cli_product")


def test_merge_asks_for_confirmation(cli: Any, database: Database) -> None:
    before = database.snapshot()
    run = cli("merge", database.url, "cli_customer", "5", "6", stdin="n\n", tty=True)
    assert run.status == 3
    assert run.out.startswith("Plan: cli_customer (id=5) into (id=6)")
    assert "  cli_order(customer_id): 1 to re-point" in run.out
    assert "Apply this merge? [y/N]" in run.err
    assert run.err.endswith("[y/N] sa-references: merge not confirmed; nothing changed\n")
    assert "error" not in run.err  # an answer, not an error
    assert database.snapshot() == before

    run = cli("merge", database.url, "cli_customer", "5", "6", "--json", stdin="y\n", tty=True)
    assert run.status == 0, run.err
    assert run.json()["dry_run"] is False  # one JSON document: the result
    assert run.json()["rowcount"] == 2
    assert run.err.startswith("Plan: cli_customer (id=5) into (id=6)")  # the plan, as text
    assert "Apply this merge? [y/N]" in run.err
    assert database.customer_of_orders()[5] == 6
    assert (6, 2) in database.rows("cli_customer_tag")


def test_merge_interrupted_at_the_prompt(
    cli: Any, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupt(self: Any) -> str:
        raise KeyboardInterrupt

    monkeypatch.setattr(FakeStdin, "readline", interrupt)
    before = database.snapshot()
    run = cli("merge", database.url, "cli_customer", "5", "6", tty=True)
    assert run.status == 130
    assert run.err.splitlines()[-1] == "sa-references: error: interrupted; nothing changed"
    assert database.snapshot() == before


def test_merge_refuses_without_a_terminal(cli: Any, database: Database) -> None:
    before = database.snapshot()
    run = cli("merge", database.url, "cli_customer", "4", "2", stdin="y\n", tty=False)
    assert_error(run, 2, "stdin is not a terminal", "--yes")
    assert run.out == ""
    assert database.snapshot() == before


def test_merge_conflict_under_raise_changes_nothing(cli: Any, database: Database) -> None:
    before = database.snapshot()
    run = cli("merge", database.url, "cli_customer", "3", "1", "--yes")
    assert_error(run, 1, "would violate a unique key", "cli_customer_tag")
    # asked interactively, it fails before asking
    run = cli("merge", database.url, "cli_customer", "3", "1", stdin="y\n", tty=True)
    assert_error(run, 1, "would violate a unique key")
    assert "Apply this merge?" not in run.err
    assert database.snapshot() == before


def test_merge_failing_statement_rolls_back(cli: Any, database: Database) -> None:
    """Ignored conflicts keep referencing the source: deleting it fails after the updates."""
    before = database.snapshot()
    argv = ["--on-conflict", "ignore", "--delete", "--yes"]
    run = cli("merge", database.url, "cli_customer", "3", "1", *argv)
    assert_error(run, 1, "IntegrityError")
    assert database.snapshot() == before


def test_merge_self_reference(cli: Any, database: Database) -> None:
    before = database.snapshot()
    run = cli("merge", database.url, "cli_customer", "1", "2", "--yes")
    assert_error(run, 1, "reference itself")
    assert database.snapshot() == before
    null = ["--on-self-reference", "null"]
    text_plan = cli("merge", database.url, "cli_customer", "1", "2", *null, "--dry-run")
    assert "cli_customer(referrer_id): 0 to re-point, 1 to clear" in text_plan.out
    assert "Would re-point 2 rows, clear 1," in text_plan.out
    plan = cli("merge", database.url, "cli_customer", "1", "2", *null, "--dry-run", "--json")
    run = cli("merge", database.url, "cli_customer", "1", "2", *null, "-y", "--json")
    assert run.status == 0, run.err
    assert (2, "Grace", None) in database.rows("cli_customer")
    for document in (plan.json(), run.json()):  # what is cleared is counted and named
        assert document["cleared"] == 1
        (key,) = [k for k in document["keys"] if k["name"] == "cli_customer(referrer_id)"]
        assert (key["cleared"], key["cleared_rows"], key["repointed"]) == (1, [[2]], 0)


def test_merge_bad_input_changes_nothing(cli: Any, database: Database, tmp_path: Path) -> None:
    before = database.snapshot()
    url = database.url
    cases = [
        (("merge", url, "cli_nothing", "3", "1", "--yes"), "table 'cli_nothing' not found"),
        (("merge", url, "cli_customers", "3", "1", "--yes"), "did you mean cli_customer"),
        (("merge", url, "cli_customer", "3", "99", "--yes"), "target row 99 not found"),
        (("merge", url, "cli_customer", "98", "1", "--yes"), "source row 98 not found"),
        (("merge", url, "cli_customer", "3", "3", "--yes"), "into itself"),
        (("merge", url, "cli_customer", "3,1", "1", "--yes"), "got 2 value(s)"),
        (("merge", url, "cli_product", "TEA", "TEA,M", "--yes"), "keyed by 2 column(s)"),
        (("merge", url, "cli_customer", "three", "1", "--yes"), "'three' is not a valid int"),
        (("merge", url, "cli_product", '"TEA,M', "TEA,S", "--yes"), "cannot read key"),
    ]
    for argv, fragment in cases:
        assert_error(cli(*argv), 1, fragment)
    assert database.snapshot() == before


def test_bad_url_and_unreachable_server(cli: Any, database: Database, tmp_path: Path) -> None:
    before = database.snapshot()
    assert_error(
        cli("merge", "nosuch://x/y", "cli_customer", "3", "1", "-y"), 1, "bad database URL"
    )
    assert_error(cli("keys", "not a url", "cli_customer"), 1, "bad database URL")
    assert importlib.util.find_spec("pg8000") is None  # a driver that is not installed
    run = cli("keys", "postgresql+pg8000://u@localhost/db", "cli_customer")
    assert_error(run, 1, "cannot load the database driver for postgresql+pg8000")
    if database.dialect == "sqlite":
        not_a_database = tmp_path / "text.db"
        not_a_database.write_text("this is not a database\n" * 100)
        unreachable = f"sqlite:///{not_a_database}"
        missing = f"sqlite:///{tmp_path / 'missing.db'}"
        assert_error(cli("keys", missing, "cli_customer"), 1, "does not exist")
        assert not (tmp_path / "missing.db").exists()
    else:
        unreachable = make_url(database.url).set(port=1).render_as_string(hide_password=False)
    run = cli("merge", unreachable, "cli_customer", "3", "1", "--yes")
    if database.dialect == "sqlite":
        assert_error(run, 1, "DatabaseError: file is not a database")
    else:
        assert_error(run, 1, "OperationalError: ", "refused")
    assert database.snapshot() == before


def test_url_from_the_environment(
    cli: Any, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(URL_ENV_VAR, raising=False)
    assert_error(cli("keys", "-", "cli_customer"), 2, URL_ENV_VAR)
    monkeypatch.setenv(URL_ENV_VAR, database.url)
    run = cli("keys", "-", "cli_customer", "--json")
    assert run.status == 0, run.err
    assert len(run.json()["keys"]) == 3


# ---------------------------------------------------------------- merge --pairs


def test_pairs_resolve_chains_in_batches(
    cli: Any, database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pairs = write_csv(tmp_path / "pairs.csv", "source,target,note\n5,3,typo\n\n3,1,same\n")
    base = ["merge", database.url, "cli_customer", "--pairs", pairs]
    before = database.snapshot()
    run = cli(*base, "--on-conflict", "delete", "--dry-run", "--json")
    assert run.status == 0, run.err
    assert run.json()["pairs"] == 2
    assert run.json()["dry_run"] is True
    assert database.snapshot() == before

    terminal = TerminalStderr()
    monkeypatch.setattr(sys, "stderr", terminal)
    run = cli(*base, "--on-conflict", "delete", "--delete", "--batch-size", "1", "--yes")
    assert run.status == 0, terminal.getvalue()
    assert "\rmerged 1/2 pairs (50%)\rmerged 2/2 pairs (100%)\n" in terminal.getvalue()
    assert run.out.startswith("Merged 2 pairs of cli_customer in 2 batches")
    assert "deleted the source rows." in run.out
    assert [row[0] for row in database.rows("cli_customer")] == [1, 2, 4, 6]
    assert database.rows("cli_customer_tag") == [(1, 1), (1, 2)]
    assert database.customer_of_orders() == {1: 1, 2: 1, 3: 1, 4: 2, 5: 1}
    assert (4, "Alan", 1) in database.rows("cli_customer")


def test_pairs_json_summary_and_composite_keys(
    cli: Any, database: Database, tmp_path: Path
) -> None:
    pairs = write_csv(tmp_path / "products.csv", 'source,target\n"TEA,MED","TEA,M"\n')
    run = cli("merge", database.url, "cli_product", "--pairs", pairs, "--yes", "--json")
    assert run.status == 0, run.err
    document = run.json()
    assert list(document) == [
        "table",
        "pairs",
        "dry_run",
        "on_conflict",
        "delete",
        "rowcount",
        "deleted",
        "left",
        "cleared",
        "would_fail",
        "keys",
    ]
    assert (document["pairs"], document["rowcount"]) == (1, 1)
    assert database.rows("cli_order")[2] == (3, 3, "TEA", "M")
    assert run.err == ""  # no progress line when stderr is not a terminal


def test_pairs_confirmation(cli: Any, database: Database, tmp_path: Path) -> None:
    pairs = write_csv(tmp_path / "pairs.csv", "source,target\n5,6\n")
    before = database.snapshot()
    run = cli("merge", database.url, "cli_customer", "--pairs", pairs, stdin="no\n", tty=True)
    assert run.status == 3
    assert run.out.startswith("Plan: 1 pair of cli_customer from")
    assert database.snapshot() == before
    run = cli("merge", database.url, "cli_customer", "--pairs", pairs, tty=False)
    assert_error(run, 2, "--yes")
    run = cli("merge", database.url, "cli_customer", "--pairs", pairs, stdin="y\n", tty=True)
    assert run.status == 0, run.err
    assert database.customer_of_orders()[5] == 6


def test_pairs_json_after_confirmation(cli: Any, database: Database, tmp_path: Path) -> None:
    pairs = write_csv(tmp_path / "pairs.csv", "source,target\n5,6\n")
    argv = ["merge", database.url, "cli_customer", "--pairs", pairs, "--json"]
    run = cli(*argv, stdin="yes\n", tty=True)
    assert run.status == 0, run.err
    assert run.err.startswith("Plan: 1 pair of cli_customer from")
    assert (run.json()["dry_run"], run.json()["rowcount"]) == (False, 2)


def test_pairs_bad_input_changes_nothing(cli: Any, database: Database, tmp_path: Path) -> None:
    before = database.snapshot()
    cases = [
        ("source,target\n5,3\n3,5\n", "line 3: merging cli_customer 3 into cli_customer 5"),
        ("source,target\n1,3\n3,5\n5,1\n", "line 4: merging cli_customer 5 into"),
        ("source,target\n3,1\n", "would violate a unique key"),
        ("source,target\n4,2\n6\n", "line 3: expected 2 fields"),
        ("source,target\n4,2\n6,1,9\n", "line 3: expected 2 fields"),
        ("source,target\n4,2\n,1\n", "line 3: the source or the target is empty"),
        ("source,target\n4,2\nsix,1\n", "line 3: 'six' is not a valid int"),
        ('source,target\n4,2\n"6,7",1\n', "line 3: cli_customer is keyed by 1 column(s)"),
        ('source,target\n4,2\n"6,1\n', "line 3: unexpected end of data"),
        ("from,to\n4,2\n", "the header must name the columns source and target"),
        ("source,target\n4,2\n6,99\n", "line 3: target row 99 not found in cli_customer"),
        ("source,target\n4,2\n4,6\n", "line 3: cli_customer 4 is already queued"),
    ]
    for number, (body, fragment) in enumerate(cases):
        pairs = write_csv(tmp_path / f"pairs{number}.csv", body)
        run = cli("merge", database.url, "cli_customer", "--pairs", pairs, "--yes")
        assert_error(run, 1, fragment)
    missing = str(tmp_path / "missing.csv")
    assert_error(cli("merge", database.url, "cli_customer", "--pairs", missing, "-y"), 1, missing)
    assert database.snapshot() == before


def test_pairs_failure_in_a_later_batch_rolls_back_earlier_ones(
    cli: Any, database: Database, tmp_path: Path
) -> None:
    """5 -> 1 merges cleanly; then 3 -> 1 leaves clashing tags on 3 and cannot delete it."""
    before = database.snapshot()
    pairs = write_csv(tmp_path / "pairs.csv", "source,target\n5,1\n3,1\n")
    argv = ["--on-conflict", "ignore", "--delete", "--batch-size", "1", "--yes"]
    run = cli("merge", database.url, "cli_customer", "--pairs", pairs, *argv)
    assert_error(run, 1, "IntegrityError")
    assert database.snapshot() == before


# ---------------------------------------------------------------- PostgreSQL schema


def test_schema_qualified_table(cli: Any, schema_database: Database, tmp_path: Path) -> None:
    db = schema_database
    url, schema, q = db.url, db.args(), f"{db.schema}."
    run = cli("keys", url, "cli_customer", *schema, "--json")
    assert run.status == 0, run.err
    assert run.json()["table"] == f"{q}cli_customer"
    assert [k["name"] for k in run.json()["keys"]] == [
        f"{q}cli_customer(referrer_id)",
        f"{q}cli_customer_tag(customer_id)",
        f"{q}cli_order(customer_id)",
    ]
    run = cli("dependents", url, "cli_product", "TEA,S", *schema, "--json")
    assert run.json()["count"] == 2
    assert run.json()["table"] == f"{q}cli_product"
    before = db.snapshot()
    assert_error(cli("keys", url, "cli_customer", "--schema", "nope"), 1, "nope")
    unqualified = cli("keys", url, "cli_customer")
    if db.schema == "main":  # SQLite's default schema
        assert unqualified.out.startswith("cli_customer is referenced by 3 foreign keys")
    else:
        assert_error(unqualified, 1, "table 'cli_customer' not found")
    assert_error(cli("merge", url, "cli_customer", "3", "1", *schema, "-y"), 1, "unique key")
    assert db.snapshot() == before

    run = cli("merge", url, "cli_customer", "3", "1", *schema, "--on-conflict", "delete", "-y")
    assert run.status == 0, run.err
    assert db.customer_of_orders() == {1: 1, 2: 1, 3: 1, 4: 2, 5: 5}
    pairs = write_csv(tmp_path / "pairs.csv", 'source,target\n"TEA,MED","TEA,M"\n5,3\n')
    run = cli("merge", url, "cli_product", "--pairs", pairs, *schema, "--yes")
    assert_error(run, 1, f"line 3: {q}cli_product is keyed by 2 column(s)")
    pairs = write_csv(tmp_path / "pairs.csv", 'source,target\n"TEA,MED","TEA,M"\n')
    run = cli("merge", url, "cli_product", "--pairs", pairs, *schema, "--delete", "--yes")
    assert run.status == 0, run.err
    assert ("TEA", "MED", "medium tea") not in db.rows("cli_product")


# ---------------------------------------------------------------- values


def test_key_values_take_the_column_type() -> None:
    columns: dict[str, TypeEngine[Any]] = {
        "i": Integer(),
        "d": Date(),
        "t": DateTime(),
        "n": Numeric(10, 2),
        "u": Uuid(),
        "b": Boolean(),
        "s": String(10),
        "x": LargeBinary(),
        "z": NullType(),
    }
    table = Table("t", MetaData(), *(Column(k, v, primary_key=True) for k, v in columns.items()))
    key = "7,2024-02-29,2024-02-29T12:30:00,1.50,12345678-1234-5678-1234-567812345678,"
    key += "true,007,cafe,raw"
    values = key_values(table, key)
    assert values == (
        7,
        datetime.date(2024, 2, 29),
        datetime.datetime(2024, 2, 29, 12, 30),
        decimal.Decimal("1.50"),
        uuid.UUID("12345678-1234-5678-1234-567812345678"),
        True,
        "007",
        b"\xca\xfe",
        "raw",
    )
    assert [json_value(v) for v in values] == [
        7,
        "2024-02-29",
        "2024-02-29T12:30:00",
        "1.50",
        "12345678-1234-5678-1234-567812345678",
        True,
        "007",
        "cafe",
        "raw",
    ]
    with pytest.raises(CommandError, match=r"'maybe' is not a valid bool for t.b"):
        key_values(table, key.replace("true", "maybe"))
    with pytest.raises(CommandError, match=r"'2024-02-30' is not a valid date for t.d"):
        key_values(table, key.replace("2024-02-29,", "2024-02-30,"))
    assert key_values(table, key.replace("true", "0"))[5] is False
    single = Table("s", MetaData(), Column("name", String(20), primary_key=True))
    assert key_values(single, '"Smith, Ada"') == ("Smith, Ada",)


# ---------------------------------------------------------------- usage


def test_usage_errors_exit_2(cli: Any, database: Database, tmp_path: Path) -> None:
    before = database.snapshot()
    pairs = write_csv(tmp_path / "pairs.csv", "source,target\n4,2\n")
    url = database.url
    for argv in [
        (),
        ("frobnicate",),
        ("keys", url),
        ("merge", url, "cli_customer", "3"),
        ("merge", url, "cli_customer", "3", "1", "--pairs", pairs),
        ("merge", url, "cli_customer", "3", "1", "--on-conflict", "merge"),
        ("dependents", url, "cli_customer", "3", "--limit", "-1"),
        ("merge", url, "cli_customer", "--pairs", pairs, "--batch-size", "0"),
    ]:
        run = cli(*argv)
        assert run.status == 2, argv
        assert "usage: sa-references" in run.err
        assert "Traceback" not in run.err
    assert database.snapshot() == before


def test_help_documents_exit_status_and_environment() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sa_references", "merge", "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0
    assert result.stdout.startswith("usage: sa-references merge")
    assert "exit status: 0 success, 1 error (nothing changed), 2 usage error" in result.stdout
    assert f"${URL_ENV_VAR}" in result.stdout
    assert main(["--version"]) == 0


# ---------------------------------------------------------------- subprocesses


def run_process(argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    kw.setdefault("stdin", subprocess.DEVNULL)
    return subprocess.run(argv, capture_output=True, text=True, check=False, **kw)


def commands() -> dict[str, list[str]]:
    assert CONSOLE_SCRIPT.exists(), "the console script is missing: run `pip install -e .`"
    return {
        "python -m": [sys.executable, "-m", "sa_references"],
        "console script": [str(CONSOLE_SCRIPT)],
    }


@pytest.mark.parametrize("how", ["python -m", "console script"])
def test_commands_as_subprocesses(how: str, database: Database, tmp_path: Path) -> None:
    command = commands()[how]
    env = {**os.environ, URL_ENV_VAR: database.url}
    result = run_process([*command, "keys", "-", "cli_customer", "--json"], env=env)
    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)["keys"]) == 3

    result = run_process([*command, "dependents", database.url, "cli_product", "TEA,S"])
    assert result.returncode == 0, result.stderr
    assert 'cli_product (sku="TEA", variant="S") is referenced by 2 rows' in result.stdout

    before = database.snapshot()
    merge = [*command, "merge", database.url, "cli_customer", "3", "1"]
    result = run_process(merge)  # stdin is not a terminal
    assert result.returncode == 2
    assert "pass --yes" in result.stderr
    result = run_process([*merge, "--yes"])
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1
    assert "would violate a unique key" in result.stderr
    assert "Traceback" not in result.stderr
    result = run_process([*command, "keys", "nosuch://", "t"])
    assert (result.returncode, result.stderr.count("\n")) == (1, 1)
    assert database.snapshot() == before

    result = run_process([*merge, "--on-conflict", "delete", "--yes", "--json"])
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["rowcount"] == 4

    pairs = write_csv(tmp_path / "pairs.csv", "source,target\n5,6\n")
    result = run_process(
        [*command, "merge", database.url, "cli_customer", "--pairs", pairs, "--yes", "--delete"]
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert 5 not in [row[0] for row in database.rows("cli_customer")]
    assert database.customer_of_orders()[5] == 6


def test_merge_confirmed_on_a_real_terminal(database: Database) -> None:
    """stdin is a pseudo-terminal: the plan is shown and the answer read from it."""
    primary, secondary = os.openpty()
    try:
        process = subprocess.Popen(
            [
                *commands()["console script"],
                "merge",
                database.url,
                "cli_product",
                "TEA,MED",
                "TEA,M",
            ],
            stdin=secondary,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        os.write(primary, b"y\n")
        out, err = process.communicate(timeout=60)
    finally:
        os.close(primary)
        os.close(secondary)
    assert process.returncode == 0, err
    assert "Apply this merge? [y/N]" in err
    assert out.startswith('Plan: cli_product (sku="TEA", variant="MED") into')
    assert 'Merged: cli_product (sku="TEA", variant="MED") into (sku="TEA", variant="M")' in out
    assert database.rows("cli_order")[2] == (3, 3, "TEA", "M")


# ---------------------------------------------------------------- demo


def demo_state(path: Path) -> tuple[list[Any], list[Any], list[Any]]:
    with sqlite3.connect(path) as connection:
        return (
            connection.execute("SELECT id FROM customer ORDER BY id").fetchall(),
            connection.execute("SELECT id, customer_id FROM orders ORDER BY id").fetchall(),
            connection.execute("SELECT * FROM customer_tag ORDER BY 1, 2").fetchall(),
        )


def test_demo(cli: Any, tmp_path: Path) -> None:
    run = cli("demo")
    assert run.status == 0, run.err
    assert run.err == ""
    out = run.out
    assert "$ sa-references keys sqlite:///" in out
    assert "customer is referenced by 4 foreign keys" in out
    assert "customer (id=3) is referenced by 6 rows" in out
    assert "customer_tag(customer_id): 1 to re-point, 1 conflicting to delete" in out
    assert (
        "Would re-point 5 rows, delete 1 conflicting row, leave 0 and delete the source row." in out
    )
    assert "Re-pointed 5 rows, deleted 1 conflicting row, left 0; deleted the source row." in out
    assert "customer (id=1) is referenced by 9 rows" in out
    assert 'Merged: product (sku="TEA", size="MED") into (sku="TEA", size="M")' in out
    assert "sa-references demo --db shop.db" in out

    path = tmp_path / "shop.db"
    run = cli("demo", "--db", str(path))
    assert run.status == 0, run.err
    assert "Re-pointed 5 rows, deleted 1 conflicting row" in run.out  # on a copy
    assert f"$ sa-references keys sqlite:///{path} customer" in run.out  # shown as kept
    created = (
        [(1,), (2,), (3,), (4,)],
        [(1, 1), (2, 3), (3, 3), (4, 2)],
        [(1, 1), (3, 1), (3, 2)],
    )
    assert demo_state(path) == created  # kept as created: the commands can be tried on it
    kept = f"sqlite:///{path}"
    assert f"sa-references merge {kept} customer 3 1 --on-conflict delete --delete" in run.out
    tried = cli("merge", kept, "customer", "3", "1", "--on-conflict", "delete", "--delete", "-y")
    assert tried.status == 0, tried.err
    assert demo_state(path) == (
        [(1,), (2,), (4,)],
        [(1, 1), (2, 1), (3, 1), (4, 2)],
        [(1, 1), (1, 2)],
    )
    run = cli("merge", kept, "product", "TEA,MED", "TEA,M", "--delete", "--yes")
    run = cli("dependents", kept, "product", "TEA,M", "--json")
    assert [r["id"] for r in run.json()["keys"][0]["sample"]] == [3, 4]
    assert_error(cli("demo", "--db", str(path)), 1, "already exists")


@pytest.mark.parametrize("how", ["python -m", "console script"])
def test_demo_as_subprocess(how: str, tmp_path: Path) -> None:
    result = run_process([*commands()[how], "demo"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Re-pointed 5 rows, deleted 1 conflicting row" in result.stdout
    created = Path(result.stdout.splitlines()[0].removeprefix("Created "))
    assert created.name == "shop.db"
    assert not created.exists()  # the temporary database is gone


def test_dry_run_of_a_merge_that_would_fail_shows_the_plan(cli: Any, database: Database) -> None:
    """A self-reference or a conflict under raise: the whole plan, then why it would fail,
    with its own exit status; the JSON says so too."""
    before = database.snapshot()
    run = cli("merge", database.url, "cli_customer", "1", "2", "--dry-run")
    assert run.status == EXIT_WOULD_FAIL, run.err
    assert "cli_customer(referrer_id): 0 to re-point, 1 row would reference itself" in run.out
    assert "cli_order(customer_id): 1 to re-point" in run.out
    failing = run.out.splitlines()[-1]
    assert failing.startswith(
        "The merge would fail: the target references the source through "
        "cli_customer(referrer_id): merging would make it reference itself"
    )
    assert failing.endswith("(pass --on-self-reference null to clear that reference first)")
    document = cli("merge", database.url, "cli_customer", "1", "2", "--dry-run", "--json")
    assert document.status == EXIT_WOULD_FAIL
    assert "--on-self-reference null" in document.json()["would_fail"]
    (referrer,) = [k for k in document.json()["keys"] if k["name"] == "cli_customer(referrer_id)"]
    # nothing is cleared by a merge that would be refused: the rows are named apart
    assert (referrer["cleared"], referrer["cleared_rows"]) == (0, [])
    assert referrer["self_references"] == [[2]] and document.json()["cleared"] == 0
    run = cli("merge", database.url, "cli_customer", "3", "1", "--dry-run")
    assert run.status == EXIT_WOULD_FAIL
    assert "1 row clash on" in run.out
    assert run.out.splitlines()[-1].endswith("(pass --on-conflict delete or ignore)")
    ok = cli("merge", database.url, "cli_customer", "3", "1", "--dry-run", "--json")
    assert ok.status == EXIT_WOULD_FAIL and ok.json()["would_fail"].startswith("merge would")
    fine = cli("merge", database.url, "cli_customer", "6", "1", "--dry-run", "--json")
    assert fine.status == 0 and fine.json()["would_fail"] is None
    assert database.snapshot() == before


def test_errors_name_flags_and_keys_as_typed(cli: Any, database: Database) -> None:
    run = cli("merge", database.url, "cli_customer", "3", "1", "--yes")
    assert_error(run, 1, "(pass --on-conflict delete or ignore)")
    assert "on_conflict" not in run.err
    run = cli("merge", database.url, "cli_customer", "1", "2", "--yes")
    assert_error(run, 1, "the target references the source", "--on-self-reference null")
    assert "(2,)" not in run.err and "on_self_reference" not in run.err
    run = cli("merge", database.url, "cli_product", "TEA,MED", "TEA,XL", "--yes")
    assert_error(run, 1, "target row TEA,XL not found in cli_product")


def test_pairs_name_the_line_of_a_key_without_a_row(
    cli: Any, database: Database, tmp_path: Path
) -> None:
    before = database.snapshot()
    pairs = write_csv(tmp_path / "dupes.csv", "source,target\n3,1\n\n98,1\n")
    for extra in (["--yes"], ["--dry-run"]):
        run = cli("merge", database.url, "cli_customer", "--pairs", pairs, *extra)
        assert_error(run, 1, f"{pairs} line 4: source row 98 not found in cli_customer")
    assert database.snapshot() == before


def test_pairs_with_yes_run_once(cli: Any, database: Database, tmp_path: Path) -> None:
    """Not planned first: one UPDATE per referencing key with rows to move, per batch."""
    pairs = write_csv(tmp_path / "dupes.csv", "source,target\n5,3\n3,1\n")
    updates: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("UPDATE"):
            updates.append(statement)

    event.listen(Engine, "before_cursor_execute", count)
    try:
        argv = ["merge", database.url, "cli_customer", "--pairs", pairs, "--on-conflict"]
        run = cli(*argv, "delete", "--yes", "--json")
    finally:
        event.remove(Engine, "before_cursor_execute", count)
    assert run.status == 0, run.err
    assert run.json()["rowcount"] == 5
    # one batch: one UPDATE per referencing key of cli_customer (4), none rehearsed
    assert len(updates) <= 4, updates


def test_urls_other_tools_take_get_a_hint(cli: Any, database: Database) -> None:
    run = cli("keys", "postgres://u@localhost/db", "cli_customer")
    assert_error(run, 1, "bad database URL", "did you mean postgresql+psycopg://...?")
    assert importlib.util.find_spec("MySQLdb") is None  # mysql:// defaults to mysqlclient
    run = cli("keys", "mysql://root@localhost/test", "cli_customer")
    assert_error(run, 1, "cannot load the database driver", "did you mean mysql+pymysql://...?")


def test_schema_that_does_not_exist(cli: Any, database: Database) -> None:
    """On SQLite a schema is an attached database: "main" is one, "sales" is not."""
    run = cli("keys", database.url, "cli_customer", "--schema", "no_such_schema")
    assert_error(run, 1, "schema 'no_such_schema' not found")
    assert "sqlite_master" not in run.err and "OperationalError" not in run.err
    if database.dialect == "sqlite":  # attached databases' names take any case
        run = cli("keys", database.url, "cli_customer", "--schema", "MAIN")
        assert run.status == 0, run.err


def test_json_writes_arrays_and_sets_as_arrays() -> None:
    """PostgreSQL arrays and MySQL SET values: JSON arrays, a SET's in a stable order."""
    assert json_value(["Deleted Scenes", "Behind the Scenes"]) == [
        "Deleted Scenes",
        "Behind the Scenes",
    ]
    assert json_value({"b", "a", "c"}) == ["a", "b", "c"]
    assert json_value([[1, 2], [datetime.date(2024, 1, 2)]]) == [[1, 2], ["2024-01-02"]]
    assert json_value({"k": decimal.Decimal("1.5")}) == {"k": "1.5"}


def test_a_failing_source_deletion_names_the_step(cli: Any, database: Database) -> None:
    """Ignored conflicts keep referencing the source: the error says which step failed."""
    before = database.snapshot()
    argv = ["--on-conflict", "ignore", "--delete", "--yes"]
    run = cli("merge", database.url, "cli_customer", "3", "1", *argv)
    assert_error(run, 1, "IntegrityError", "deleting the source row(s) of cli_customer")
    assert database.snapshot() == before


def test_pairs_name_every_line_of_keys_without_a_row(
    cli: Any, database: Database, tmp_path: Path
) -> None:
    """All of them, by line, with their count: not one per run."""
    before = database.snapshot()
    pairs = write_csv(tmp_path / "dupes.csv", "source,target\n3,1\n98,1\n97,99\n4,2\n")
    run = cli("merge", database.url, "cli_customer", "--pairs", pairs, "--yes")
    assert_error(
        run,
        1,
        f"{pairs}: 3 keys not found in cli_customer: line 3 source 98, line 4 source 97, "
        "line 4 target 99",
    )
    assert database.snapshot() == before
