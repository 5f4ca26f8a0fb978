"""The command line reflects only what a command needs: the table, and the tables whose
keys reference it, then theirs (found in the catalog), never the whole schema; and a merge
still follows every key, however deep the ON DELETE CASCADE chain.

Also: MariaDB's reflection reports ON DELETE RESTRICT as no rule at all; ``keys`` shows
the rule the catalog holds.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, event, text

from sa_references import command
from tests import test_cli

cli = test_cli.cli  # fixture

pytestmark = pytest.mark.backends("sqlite", "postgresql", "mariadb")

#: in the order they are dropped (referencing tables first)
TABLES = ["rf_note", "rf_line", "rf_order", "rf_unrelated", "rf_product", "rf_customer"]

DDL = [
    "CREATE TABLE rf_customer (id INTEGER NOT NULL PRIMARY KEY, name VARCHAR(20) NOT NULL)",
    "CREATE TABLE rf_product (id INTEGER NOT NULL PRIMARY KEY)",
    "CREATE TABLE rf_unrelated (id INTEGER NOT NULL PRIMARY KEY, "
    "product_id INTEGER REFERENCES rf_product (id))",
    # level 1: re-pointed; a clash on (customer_id, code) deletes the source's order...
    "CREATE TABLE rf_order (id INTEGER NOT NULL PRIMARY KEY, customer_id INTEGER NOT NULL, "
    "code VARCHAR(5) NOT NULL, UNIQUE (customer_id, code), "
    "FOREIGN KEY (customer_id) REFERENCES rf_customer (id) ON DELETE CASCADE)",
    # ... level 2: which deletes its lines ...
    "CREATE TABLE rf_line (id INTEGER NOT NULL PRIMARY KEY, order_id INTEGER NOT NULL, "
    "product_id INTEGER NOT NULL, "
    "FOREIGN KEY (order_id) REFERENCES rf_order (id) ON DELETE CASCADE, "
    "FOREIGN KEY (product_id) REFERENCES rf_product (id))",
    # ... level 3: and clears their notes
    "CREATE TABLE rf_note (id INTEGER NOT NULL PRIMARY KEY, line_id INTEGER, "
    "FOREIGN KEY (line_id) REFERENCES rf_line (id) ON DELETE SET NULL)",
    "INSERT INTO rf_customer VALUES (1, 'Ada'), (2, 'ada')",
    "INSERT INTO rf_product VALUES (7)",
    "INSERT INTO rf_unrelated VALUES (1, 7)",
    "INSERT INTO rf_order VALUES (10, 1, 'A'), (11, 2, 'A'), (12, 2, 'B')",
    "INSERT INTO rf_line VALUES (100, 11, 7), (101, 11, 7), (102, 10, 7)",
    "INSERT INTO rf_note VALUES (1000, 100), (1001, 102)",
]


class Database:
    def __init__(self, url: str, engine: Engine) -> None:
        self.url, self.engine = url, engine

    def rows(self, table: str) -> list[tuple[Any, ...]]:
        with self.engine.connect() as connection:
            return sorted(tuple(r) for r in connection.execute(text(f"SELECT * FROM {table}")))


def drop(engine: Engine) -> None:
    with engine.begin() as connection:
        for name in TABLES:
            connection.exec_driver_sql(f"DROP TABLE IF EXISTS {name}")


@pytest.fixture
def database(backend: str, tmp_path: Path) -> Iterator[Database]:
    if backend.startswith("sqlite"):
        url = f"sqlite:///{tmp_path / 'reflection.db'}"
        engine = test_cli.sqlite_test_engine(url)
    else:
        url, engine = backend, create_engine(backend)
    drop(engine)
    with engine.begin() as connection:
        for statement in DDL:
            connection.exec_driver_sql(statement)
    yield Database(url, engine)
    drop(engine)
    engine.dispose()


def test_keys_reflects_the_table_and_its_referencing_tables_only(database: Database) -> None:
    """Not rf_unrelated nor rf_product (rf_line refers to it), nor the other tests' tables."""
    found = command.keys(database.url, "rf_customer")
    assert [k.name for k in found.keys] == ["rf_order(customer_id)"]
    tables = set(found.table.metadata.tables)
    assert tables == {"rf_customer", "rf_order", "rf_line", "rf_note"}


def test_a_table_nothing_references_is_reflected_alone(database: Database) -> None:
    found = command.keys(database.url, "rf_unrelated")
    assert found.keys == ()
    assert set(found.table.metadata.tables) == {"rf_unrelated"}


def test_reflection_queries_do_not_grow_with_the_schema(database: Database) -> None:
    """Twenty more unrelated tables: the same statements for ``keys`` (SQLite reads the
    keys of every table, and reflects only the tables it needs)."""

    def statements() -> int:
        count = 0

        def counted(*_args: Any) -> None:
            nonlocal count
            count += 1

        event.listen(Engine, "before_cursor_execute", counted)
        try:
            command.keys(database.url, "rf_customer")
        finally:
            event.remove(Engine, "before_cursor_execute", counted)
        return count

    before = statements()
    extra = [f"rf_extra_{i}" for i in range(20)]
    with database.engine.begin() as connection:
        for name in extra:
            connection.exec_driver_sql(
                f"CREATE TABLE {name} (id INTEGER NOT NULL PRIMARY KEY, "
                "product_id INTEGER REFERENCES rf_product (id), note VARCHAR(10))"
            )
    try:
        after = statements()
    finally:
        with database.engine.begin() as connection:
            for name in extra:
                connection.exec_driver_sql(f"DROP TABLE {name}")
    grown = after - before
    if database.engine.dialect.name == "sqlite":
        # per table its keys only (PRAGMA foreign_key_list, and the CREATE TABLE statement
        # for their names), where reflecting it takes a dozen statements
        assert grown == 2 * len(extra)
    else:
        assert grown == 0


def test_a_merge_follows_cascades_two_levels_down(cli: Any, database: Database) -> None:
    """Deleting the source's clashing order cascades to its lines, which clear a note:
    the plan counts each level, and the merge does what it showed."""
    argv = ["merge", database.url, "rf_customer", "2", "1", "--on-conflict", "delete"]
    run = cli(*argv, "--dry-run", "--json")
    assert run.status == 0, run.err
    (key,) = run.json()["keys"]
    assert (key["repointed"], key["deleted"]) == (1, 1)
    assert key["cascaded"] == [
        {"table": "rf_line", "action": "delete", "count": 2},
        {"table": "rf_note", "action": "set null", "count": 1},
    ]
    run = cli(*argv, "--delete", "--yes", "--json")
    assert run.status == 0, run.err
    assert database.rows("rf_customer") == [(1, "Ada")]
    assert database.rows("rf_order") == [(10, 1, "A"), (12, 1, "B")]
    assert database.rows("rf_line") == [(102, 10, 7)]
    assert sorted(database.rows("rf_note"), key=lambda r: r[0]) == [(1000, None), (1001, 102)]


def test_keys_show_restrict_as_declared(cli: Any, database: Database) -> None:
    """ON DELETE RESTRICT (MariaDB's reflection loses it; the catalog has it)."""
    with database.engine.begin() as connection:
        connection.exec_driver_sql(
            "CREATE TABLE rf_unrelated_r (id INTEGER NOT NULL PRIMARY KEY, "
            "customer_id INTEGER NOT NULL, FOREIGN KEY (customer_id) REFERENCES rf_customer (id) "
            "ON DELETE RESTRICT ON UPDATE RESTRICT)"
        )
    try:
        run = cli("keys", database.url, "rf_customer", "--json")
        assert run.status == 0, run.err
        rules = {k["name"]: (k["on_delete"], k["on_update"]) for k in run.json()["keys"]}
        # a key declaring no rule: MariaDB's catalog names its default RESTRICT
        default = "RESTRICT" if database.engine.dialect.name == "mysql" else "NO ACTION"
        assert rules == {
            "rf_order(customer_id)": ("CASCADE", default),
            "rf_unrelated_r(customer_id)": ("RESTRICT", "RESTRICT"),
        }
        run = cli("keys", database.url, "rf_customer")
        assert "on delete RESTRICT, on update RESTRICT" in run.out
        assert f"on delete CASCADE, on update {default}" in run.out
    finally:
        with database.engine.begin() as connection:
            connection.exec_driver_sql("DROP TABLE rf_unrelated_r")


def test_an_unknown_table_still_gets_a_hint(cli: Any, database: Database) -> None:
    run = cli("keys", database.url, "rf_custmer")
    test_cli.assert_error(run, 1, "table 'rf_custmer' not found", "did you mean rf_customer")
