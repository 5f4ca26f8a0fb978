"""Foreign keys from other schemas (PostgreSQL schemas, MariaDB databases) are followed.

A merge that missed them would leave rows on the source, and ``--delete`` would then
cascade-delete them (ON DELETE CASCADE) or fail.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, inspect
from sqlalchemy.engine import make_url

from tests import test_cli

cli = test_cli.cli  # fixture

pytestmark = pytest.mark.backends("postgresql", "mariadb")


@dataclass
class Schemas:
    url: str
    engine: Engine
    default: str  # the schema the URL connects to (public, or the MariaDB database)
    other: str  # a second schema (a second MariaDB database)

    def rows(self, table: str) -> list[tuple[Any, ...]]:
        with self.engine.connect() as connection:
            return sorted(tuple(r) for r in connection.exec_driver_sql(f"SELECT * FROM {table}"))


@pytest.fixture
def schemas(backend: str) -> Iterator[Schemas]:
    engine = create_engine(backend)
    if engine.dialect.name == "postgresql":
        default, other, kind, cascade = "public", "h2_sales", "SCHEMA", " CASCADE"
    else:
        default = make_url(backend).database or ""
        other, kind, cascade = f"{default}_sales", "DATABASE", ""

    def clean() -> None:
        with engine.begin() as connection:  # referencing tables first (MariaDB)
            present = [s for s in (other, default) if has_schema(connection, s)]
            for name in ("xs_invoice", "xs_customer"):
                for schema in present:
                    connection.exec_driver_sql(f"DROP TABLE IF EXISTS {schema}.{name}")
            connection.exec_driver_sql(f"DROP {kind} IF EXISTS {other}{cascade}")

    clean()
    with engine.begin() as connection:
        connection.exec_driver_sql(f"CREATE {kind} {other}")
    yield Schemas(backend, engine, default, other)
    clean()
    engine.dispose()


def has_schema(connection: Any, name: str) -> bool:
    return name in inspect(connection).get_schema_names()


def create(schemas: Schemas, customer_in: str, invoice_in: str) -> None:
    with schemas.engine.begin() as connection:
        for statement in [
            f"CREATE TABLE {customer_in}.xs_customer (id INTEGER NOT NULL PRIMARY KEY, "
            "name VARCHAR(20) NOT NULL)",
            f"CREATE TABLE {invoice_in}.xs_invoice (id INTEGER NOT NULL PRIMARY KEY, "
            "customer_id INTEGER NOT NULL, "
            f"FOREIGN KEY (customer_id) REFERENCES {customer_in}.xs_customer (id) "
            "ON DELETE CASCADE)",
            f"INSERT INTO {customer_in}.xs_customer VALUES (1, 'Ada'), (2, 'ada')",
            f"INSERT INTO {invoice_in}.xs_invoice VALUES (10, 2), (11, 2), (12, 1)",
        ]:
            connection.exec_driver_sql(statement)


def test_key_from_another_schema_into_a_named_schema(cli: Any, schemas: Schemas) -> None:
    """public.invoice -> sales.customer: ``--schema sales`` follows it."""
    create(schemas, schemas.other, schemas.default)
    customer, invoice = f"{schemas.other}.xs_customer", f"{schemas.default}.xs_invoice"
    run = cli("keys", schemas.url, "xs_customer", "--schema", schemas.other, "--json")
    assert run.status == 0, run.err
    assert [k["name"] for k in run.json()["keys"]] == ["xs_invoice(customer_id)"]
    run = cli("dependents", schemas.url, "xs_customer", "2", "--schema", schemas.other, "--json")
    assert run.json()["count"] == 2
    argv = ["merge", schemas.url, "xs_customer", "2", "1", "--schema", schemas.other]
    run = cli(*argv, "--delete", "--yes", "--json")
    assert run.status == 0, run.err
    assert run.json()["rowcount"] == 2
    assert schemas.rows(customer) == [(1, "Ada")]
    assert schemas.rows(invoice) == [(10, 1), (11, 1), (12, 1)]


def test_key_from_another_schema_into_the_default_one(
    cli: Any, schemas: Schemas, tmp_path: Any
) -> None:
    """sales.invoice -> public.customer, no ``--schema``: followed, by merge and --pairs."""
    create(schemas, schemas.default, schemas.other)
    customer, invoice = f"{schemas.default}.xs_customer", f"{schemas.other}.xs_invoice"
    run = cli("keys", schemas.url, "xs_customer", "--json")
    assert [k["name"] for k in run.json()["keys"]] == [f"{schemas.other}.xs_invoice(customer_id)"]
    run = cli("merge", schemas.url, "xs_customer", "2", "1", "--dry-run", "--json")
    assert run.json()["rowcount"] == 2
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("source,target\n2,1\n")
    run = cli("merge", schemas.url, "xs_customer", "--pairs", str(pairs), "--delete", "--yes")
    assert run.status == 0, run.err
    assert schemas.rows(customer) == [(1, "Ada")]
    assert schemas.rows(invoice) == [(10, 1), (11, 1), (12, 1)]


def test_a_key_the_merge_would_not_follow_is_refused(
    cli: Any, schemas: Schemas, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Should a referencing table fail to be reflected, the merge names the key and stops."""
    from sa_references import _cli_input

    create(schemas, schemas.default, schemas.other)
    monkeypatch.setattr(_cli_input, "reflect_referencing_tables", lambda connection, table: True)
    before = schemas.rows(f"{schemas.other}.xs_invoice"), schemas.rows("xs_customer")
    for argv in (["2", "1"], ["2", "1", "--dry-run"]):
        run = cli("merge", schemas.url, "xs_customer", *argv, "--delete", "--yes")
        assert run.status == 1
        (line,) = run.err.splitlines()
        assert "foreign key(s) that the MetaData lacks" in line
        assert f"{schemas.other}.xs_invoice(customer_id) -> xs_customer(id)" in line
    assert (schemas.rows(f"{schemas.other}.xs_invoice"), schemas.rows("xs_customer")) == before


def test_partitioned_tables_counted_once(cli: Any, schemas: Schemas) -> None:
    """PostgreSQL: a key on a partitioned table is also on each partition in the catalog;
    the command line follows it once (through the partitioned table)."""
    if schemas.engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL partitions")
    create(schemas, schemas.default, schemas.other)
    statements = [
        "CREATE TABLE xs_visit (id INTEGER NOT NULL, customer_id INTEGER NOT NULL "
        "REFERENCES xs_customer (id), PRIMARY KEY (id)) PARTITION BY RANGE (id)",
        "CREATE TABLE xs_visit_low PARTITION OF xs_visit FOR VALUES FROM (0) TO (100)",
        "CREATE TABLE xs_visit_high PARTITION OF xs_visit FOR VALUES FROM (100) TO (200)",
        "INSERT INTO xs_visit VALUES (1, 2), (150, 2), (151, 1)",
    ]
    with schemas.engine.begin() as connection:
        for statement in statements:
            connection.exec_driver_sql(statement)
    try:
        run = cli("keys", schemas.url, "xs_customer", "--json")
        assert [k["name"] for k in run.json()["keys"]] == [
            f"{schemas.other}.xs_invoice(customer_id)",
            "xs_visit(customer_id)",
        ]
        run = cli("dependents", schemas.url, "xs_customer", "2", "--json")
        assert run.json()["count"] == 4  # 2 invoices, 2 visits
        run = cli("merge", schemas.url, "xs_customer", "2", "1", "--delete", "--yes", "--json")
        assert run.status == 0, run.err
        assert run.json()["rowcount"] == 4
        assert schemas.rows("xs_visit") == [(1, 1), (150, 1), (151, 1)]
    finally:
        with schemas.engine.begin() as connection:
            connection.exec_driver_sql("DROP TABLE xs_visit")


def test_a_cascade_through_another_schema_is_followed(cli: Any, schemas: Schemas) -> None:
    """xs_customer <- sales.xs_invoice (unique per customer and code) <- xs_invoice_line in
    the default schema, each ON DELETE CASCADE: deleting the source's clashing invoice
    takes its lines, two levels down and back in the first schema; only these tables are
    reflected."""
    from sa_references import command

    create(schemas, schemas.default, schemas.other)
    invoice = f"{schemas.other}.xs_invoice"
    statements = [
        f"ALTER TABLE {invoice} ADD COLUMN code VARCHAR(5) NOT NULL DEFAULT 'A'",
        f"UPDATE {invoice} SET code = 'B' WHERE id = 11",
        f"ALTER TABLE {invoice} ADD CONSTRAINT xs_invoice_code UNIQUE (customer_id, code)",
        "CREATE TABLE xs_invoice_line (id INTEGER NOT NULL PRIMARY KEY, "
        f"invoice_id INTEGER NOT NULL, FOREIGN KEY (invoice_id) REFERENCES {invoice} (id) "
        "ON DELETE CASCADE)",
        "INSERT INTO xs_invoice_line VALUES (1, 10), (2, 10), (3, 12)",
        "CREATE TABLE xs_unrelated (id INTEGER NOT NULL PRIMARY KEY)",
    ]
    with schemas.engine.begin() as connection:
        for statement in statements:
            connection.exec_driver_sql(statement)
    try:
        found = command.keys(schemas.url, "xs_customer")
        assert set(found.table.metadata.tables) == {"xs_customer", invoice, "xs_invoice_line"}
        # invoices 10 (A) and 11 (B) of 2 move to 1, whose 12 (A) clashes with 10
        argv = ["merge", schemas.url, "xs_customer", "2", "1", "--on-conflict", "delete"]
        run = cli(*argv, "--dry-run", "--json")
        assert run.status == 0, run.err
        (key,) = run.json()["keys"]
        assert (key["repointed"], key["deleted"]) == (1, 1)
        assert key["cascaded"] == [{"table": "xs_invoice_line", "action": "delete", "count": 2}]
        run = cli(*argv, "--delete", "--yes")
        assert run.status == 0, run.err
        assert schemas.rows(invoice) == [(11, 1, "B"), (12, 1, "A")]
        assert schemas.rows("xs_invoice_line") == [(3, 12)]
    finally:
        with schemas.engine.begin() as connection:
            connection.exec_driver_sql("DROP TABLE IF EXISTS xs_invoice_line")
            connection.exec_driver_sql("DROP TABLE IF EXISTS xs_unrelated")
