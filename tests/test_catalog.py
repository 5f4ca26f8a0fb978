"""unfollowed_references / check_references: foreign keys of the live catalog that a
MetaData lacks, on every backend (other schemas, partitions, composite keys)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, MetaData, Table, create_engine, event, inspect
from sqlalchemy.engine import make_url

from sa_references import CatalogForeignKey, check_references, unfollowed_references
from sa_references.exc import UnfollowedReferenceError

pytestmark = pytest.mark.backends("sqlite", "postgresql", "mariadb")

TABLES = ["cat_line", "cat_invoice", "cat_order", "cat_customer"]


@pytest.fixture
def engine(backend: str, tmp_path: Path) -> Iterator[Engine]:
    if backend.startswith("sqlite"):
        engine = create_engine(f"sqlite:///{tmp_path / 'catalog.db'}")
    else:
        engine = create_engine(backend)

    def drop() -> None:
        with engine.begin() as connection:
            for name in TABLES:
                connection.exec_driver_sql(f"DROP TABLE IF EXISTS {name}")

    drop()
    with engine.begin() as connection:
        for statement in [
            "CREATE TABLE cat_customer (id INTEGER NOT NULL, region VARCHAR(5) NOT NULL, "
            "PRIMARY KEY (id), UNIQUE (region, id))",
            "CREATE TABLE cat_order (id INTEGER NOT NULL PRIMARY KEY, customer_id INTEGER, "
            "FOREIGN KEY (customer_id) REFERENCES cat_customer (id))",
            "CREATE TABLE cat_invoice (id INTEGER NOT NULL PRIMARY KEY, customer_id INTEGER, "
            "region VARCHAR(5), CONSTRAINT cat_invoice_customer FOREIGN KEY (region, customer_id) "
            "REFERENCES cat_customer (region, id) ON DELETE CASCADE)",
            "CREATE TABLE cat_line (id INTEGER NOT NULL PRIMARY KEY, order_id INTEGER, "
            "FOREIGN KEY (order_id) REFERENCES cat_order (id))",
        ]:
            connection.exec_driver_sql(statement)
    yield engine
    drop()
    engine.dispose()


def reflected(engine: Engine, *names: str) -> MetaData:
    metadata = MetaData()
    with engine.connect() as connection:
        metadata.reflect(connection, only=list(names))
    return metadata


def test_keys_missing_from_the_metadata(engine: Engine) -> None:
    metadata = reflected(engine, "cat_customer", "cat_order", "cat_line")
    with engine.connect() as connection:
        found = unfollowed_references(connection, metadata)
        (key,) = found
        assert key == CatalogForeignKey(
            name=key.name,
            schema=None,
            table="cat_invoice",
            columns=("region", "customer_id"),
            referred_schema=None,
            referred_table="cat_customer",
            referred_columns=("region", "id"),
            on_delete="CASCADE",
        )
        if engine.dialect.name != "sqlite":  # SQLite keeps no constraint names
            assert key.name == "cat_invoice_customer"
        assert str(key).startswith("cat_invoice(region, customer_id) -> cat_customer(region, id)")
        # a Table: only the keys to it
        assert unfollowed_references(connection, metadata.tables["cat_customer"]) == found
        assert unfollowed_references(connection, metadata.tables["cat_order"]) == []
        with pytest.raises(UnfollowedReferenceError, match=r"cat_invoice\(region, customer_id\)"):
            check_references(connection, metadata)
        # cat_order alone: cat_line references it and is not in the MetaData
        only_order = reflected(engine, "cat_order")
        (line,) = unfollowed_references(connection, only_order.tables["cat_order"])
        assert (line.table, line.columns, line.referred_columns) == (
            "cat_line",
            ("order_id",),
            ("id",),
        )

        full = reflected(engine, *TABLES)
        assert unfollowed_references(connection, full) == []
        check_references(connection, full)
        assert unfollowed_references(connection, MetaData()) == []


def test_one_catalog_query_on_servers(engine: Engine) -> None:
    if engine.dialect.name == "sqlite":
        pytest.skip("SQLite has no catalog query: PRAGMA foreign_key_list per table")
    metadata = reflected(engine, "cat_customer", "cat_order", "cat_line")
    with engine.connect() as connection:
        inspect(connection).default_schema_name  # noqa: B018  (read once per connection)
        sent: list[str] = []
        event.listen(connection, "before_cursor_execute", lambda *a: sent.append(a[2]))
        assert len(unfollowed_references(connection, metadata)) == 1
    assert len(sent) == 1, sent


def test_keys_from_other_schemas_and_partitions(engine: Engine, backend: str) -> None:
    """PostgreSQL: a schema and a partitioned table; MariaDB: another database."""
    dialect = engine.dialect.name
    if dialect == "sqlite":
        pytest.skip("SQLite keys never cross databases")
    if dialect == "postgresql":
        other, kind, cascade = "h2_catalog", "SCHEMA", " CASCADE"
    else:
        other, kind, cascade = f"{make_url(backend).database}_catalog", "DATABASE", ""
    default = inspect(engine).default_schema_name
    statements = [
        f"CREATE TABLE {other}.cat_note (id INTEGER NOT NULL PRIMARY KEY, customer_id INTEGER, "
        f"FOREIGN KEY (customer_id) REFERENCES {default}.cat_customer (id))",
    ]
    if dialect == "postgresql":
        statements += [
            "CREATE TABLE cat_visit (id INTEGER NOT NULL, customer_id INTEGER "
            "REFERENCES cat_customer (id), PRIMARY KEY (id)) PARTITION BY RANGE (id)",
            "CREATE TABLE cat_visit_1 PARTITION OF cat_visit FOR VALUES FROM (0) TO (100)",
            "CREATE TABLE cat_visit_2 PARTITION OF cat_visit FOR VALUES FROM (100) TO (200)",
        ]
    with engine.begin() as connection:
        connection.exec_driver_sql(f"DROP {kind} IF EXISTS {other}{cascade}")
        connection.exec_driver_sql("DROP TABLE IF EXISTS cat_visit")
        connection.exec_driver_sql(f"CREATE {kind} {other}")
        for statement in statements:
            connection.exec_driver_sql(statement)
    try:
        metadata = reflected(engine, *TABLES)
        with engine.connect() as connection:
            found = unfollowed_references(connection, metadata)
            assert [k.fullname for k in found] == (
                ["cat_visit", f"{other}.cat_note"]
                if dialect == "postgresql"
                else [f"{other}.cat_note"]
            )
            note = found[-1]
            assert (note.schema, note.referred_schema, note.columns) == (
                other,
                None,
                ("customer_id",),
            )
            # reflecting them makes them followed (the partitions need not be reflected)
            Table("cat_note", metadata, schema=other, autoload_with=connection)
            if dialect == "postgresql":
                Table("cat_visit", metadata, autoload_with=connection)
            assert unfollowed_references(connection, metadata) == []
            # the other schema's table alone: nothing references it
            alone = MetaData()
            note_table = Table("cat_note", alone, schema=other, autoload_with=connection)
            assert unfollowed_references(connection, note_table) == []
    finally:
        with engine.begin() as connection:
            connection.exec_driver_sql(f"DROP TABLE IF EXISTS {other}.cat_note")
            connection.exec_driver_sql("DROP TABLE IF EXISTS cat_visit")
            connection.exec_driver_sql(f"DROP {kind} IF EXISTS {other}{cascade}")


def test_a_session_is_accepted(engine: Engine) -> None:
    from sqlalchemy.orm import Session

    metadata = reflected(engine, "cat_customer", "cat_order", "cat_line")
    with Session(engine) as session:
        assert [k.table for k in unfollowed_references(session, metadata)] == ["cat_invoice"]
        with pytest.raises(UnfollowedReferenceError):
            check_references(session, metadata.tables["cat_customer"])
