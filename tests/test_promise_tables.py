"""Referencing tables of unusual shapes: #13.11 (no primary key, a JSON column),
#13.12 (no primary key, a NULL in the clashing row), #13.13 (``schema_translate_map``),
#13.15 (PostgreSQL ``UNIQUE NULLS NOT DISTINCT``), #13.22 (PostgreSQL partitioned tables).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import (
    JSON,
    Column,
    Connection,
    ForeignKey,
    ForeignKeyConstraint,
    Integer,
    MetaData,
    String,
    Table,
    UniqueConstraint,
    event,
    text,
)
from sqlalchemy.exc import DBAPIError

from sa_references import (
    MergeConflictError,
    dependents,
    referencing_keys,
    row_dependents,
)
from tests.conftest import Backend
from tests.promise_schemas import (
    ENTRY_POINTS,
    built,
    committed,
    mapped,
    merge,
    orm_session,
    rows,
    seed,
    snapshot,
    still_usable,
)


def customer_table(md: MetaData, name: str) -> Table:
    return Table(name, md, Column("id", Integer, primary_key=True, autoincrement=False))


# -- #13.11: no primary key, a JSON column ----------------------------------------------------


def events_schema() -> tuple[MetaData, Table, Table]:
    md = MetaData()
    customer = customer_table(md, "pr11_customer")
    event_ = Table(
        "pr11_event",
        md,
        Column("customer_id", Integer, ForeignKey("pr11_customer.id"), nullable=False),
        # nullable: the unique key cannot identify a row, so every column does
        Column("tag", String(10), nullable=True),
        Column("payload", JSON),
        UniqueConstraint("customer_id", "tag", name="uq_pr11_event_tag"),
    )
    return md, customer, event_


def seed_events(connection: Connection, customer: Table, event_: Table) -> None:
    seed(
        connection,
        {
            customer: [{"id": 1}, {"id": 2}, {"id": 3}],
            event_: [
                {"customer_id": 1, "tag": "a", "payload": {"x": 1}},
                {"customer_id": 1, "tag": "b", "payload": {"y": [1, 2]}},
                {"customer_id": 2, "tag": "a", "payload": {"z": 2}},
            ],
        },
    )


@pytest.mark.parametrize("on_conflict", ["raise", "delete", "ignore"])
@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_json_table_without_primary_key(db: Backend, entry: str, on_conflict: str) -> None:
    md, customer, event_ = events_schema()
    with built(db, md) as connection:
        seed_events(connection, customer, event_)
        # "raise": into customer 3, nothing clashes; else into 2, the tag "a" clashes
        target = 3 if on_conflict == "raise" else 2
        report = merge(
            entry, connection, customer, 1, target, cls=mapped(customer), on_conflict=on_conflict
        )
        found = sorted(
            (r.customer_id, r.tag, r.payload) for r in connection.execute(event_.select())
        )
        if on_conflict == "raise":
            assert report.rowcount == 2
            assert found == [(2, "a", {"z": 2}), (3, "a", {"x": 1}), (3, "b", {"y": [1, 2]})]
        elif on_conflict == "delete":
            assert (report.rowcount, report.deleted) == (1, 1)
            assert found == [(2, "a", {"z": 2}), (2, "b", {"y": [1, 2]})]
        else:
            assert (report.rowcount, report.left) == (1, 1)
            assert found == [(1, "a", {"x": 1}), (2, "a", {"z": 2}), (2, "b", {"y": [1, 2]})]


@pytest.mark.parametrize("how", ["row_dependents", "dependents"])
def test_json_table_without_primary_key_dependents(db: Backend, how: str) -> None:
    md, customer, event_ = events_schema()
    with built(db, md) as connection:
        seed_events(connection, customer, event_)
        if how == "row_dependents":
            found = row_dependents(connection, customer, 1)
        else:
            session = orm_session(connection, "merge_into")
            found = dependents(session.get(mapped(customer), 1))
        assert found.count() == 2
        # the table is mapped by no class: its rows are per key (row_dependents: iteration)
        rows = [r for key_rows in found.by_key().values() for r in key_rows]
        assert sorted(r.tag for r in rows) == ["a", "b"]
        if how == "row_dependents":
            assert sorted(r.tag for r in found) == ["a", "b"]


# -- #13.12: no primary key, a NULL in the clashing row ---------------------------------------


def tagging_schema() -> tuple[MetaData, Table, Table]:
    md = MetaData()
    customer = customer_table(md, "pr12_customer")
    tagging = Table(
        "pr12_tagging",
        md,
        Column("customer_id", Integer, ForeignKey("pr12_customer.id"), nullable=False),
        # nullable: the unique key cannot identify a row, so every column does
        Column("tag", String(10), nullable=True),
        Column("note", String(10), nullable=True),
        UniqueConstraint("customer_id", "tag", name="uq_pr12_tagging_tag"),
    )
    return md, customer, tagging


@pytest.mark.parametrize("on_conflict", ["delete", "ignore"])
@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_null_in_clashing_row_without_primary_key(
    db: Backend, entry: str, on_conflict: str
) -> None:
    md, customer, tagging = tagging_schema()
    with built(db, md) as connection:
        seed(
            connection,
            {
                customer: [{"id": 1}, {"id": 2}],
                tagging: [
                    {"customer_id": 1, "tag": "a", "note": None},  # clashes with (2, "a")
                    {"customer_id": 1, "tag": "b", "note": "x"},
                    {"customer_id": 2, "tag": "a", "note": "k"},
                ],
            },
        )
        cls = mapped(customer)
        before = snapshot(connection, md)
        plan = merge(
            entry, connection, customer, 1, 2, cls=cls, on_conflict=on_conflict, dry_run=True
        )
        assert snapshot(connection, md) == before
        report = merge(entry, connection, customer, 1, 2, cls=cls, on_conflict=on_conflict)
        assert (plan.rowcount, plan.deleted, plan.left) == (
            report.rowcount,
            report.deleted,
            report.left,
        )
        if on_conflict == "delete":
            assert (report.rowcount, report.deleted) == (1, 1)
            assert rows(connection, tagging) == [(2, "a", "k"), (2, "b", "x")]
        else:
            assert (report.rowcount, report.left) == (1, 1)
            assert rows(connection, tagging) == [(1, "a", None), (2, "a", "k"), (2, "b", "x")]


# -- #13.13: schema_translate_map -------------------------------------------------------------

SCHEMA = {
    "postgresql": "pr13_x",
    "mariadb": "test_h3_x",
    "sqlite": "pr13_x",
    "sqlite-nofk": "pr13_x",
}


@contextlib.contextmanager
def translated_engine(db: Backend, tmp_path: Any) -> Iterator[Any]:
    """An engine whose default schema is translated to a schema of its own."""
    schema = SCHEMA[db.name]
    engine = db.make_engine()
    if db.dialect == "sqlite":
        path = str(tmp_path / "pr13_x.db")

        @event.listens_for(engine, "connect")
        def _attach(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.execute(f"ATTACH DATABASE '{path}' AS {schema}")

    elif db.dialect == "postgresql":
        with engine.begin() as c:
            c.execute(text(f"CREATE SCHEMA IF NOT EXISTS {schema}"))
    else:
        with engine.begin() as c:
            c.execute(text(f"CREATE DATABASE IF NOT EXISTS {schema}"))
    try:
        yield engine.execution_options(schema_translate_map={None: schema})
    finally:
        if db.dialect == "postgresql":
            with engine.begin() as c:
                c.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
        elif db.dialect != "sqlite":
            with engine.begin() as c:
                c.execute(text(f"DROP DATABASE IF EXISTS {schema}"))
        engine.dispose()


@pytest.mark.parametrize("on_conflict", ["raise", "delete", "ignore"])
@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_schema_translate_map(db: Backend, tmp_path: Any, entry: str, on_conflict: str) -> None:
    md = MetaData()
    customer = customer_table(md, "pr13_customer")
    orders = Table(
        "pr13_orders",
        md,
        Column("id", Integer, primary_key=True, autoincrement=False),
        Column("customer_id", Integer, ForeignKey("pr13_customer.id"), nullable=False),
    )
    tag = Table(
        "pr13_tag",
        md,
        Column("customer_id", Integer, ForeignKey("pr13_customer.id"), primary_key=True),
        Column("tag", String(10), primary_key=True),
    )
    with translated_engine(db, tmp_path) as engine, built(db, md, engine=engine) as connection:
        seed(
            connection,
            {
                customer: [{"id": 1}, {"id": 2}],
                orders: [{"id": 1, "customer_id": 1}, {"id": 2, "customer_id": 2}],
                tag: []
                if on_conflict == "raise"
                else [{"customer_id": 1, "tag": "a"}, {"customer_id": 2, "tag": "a"}],
            },
        )
        # the tables really are in the translated schema
        schema = SCHEMA[db.name]
        found = connection.execute(text(f"SELECT count(*) FROM {schema}.pr13_orders")).scalar()
        assert found == 2
        report = merge(
            entry, connection, customer, 1, 2, cls=mapped(customer), on_conflict=on_conflict
        )
        assert report.rowcount == 1
        assert rows(connection, orders) == [(1, 2), (2, 2)]
        assert (
            rows(connection, tag)
            == {"raise": [], "delete": [(2, "a")], "ignore": [(1, "a"), (2, "a")]}[on_conflict]
        )


# -- #13.15: PostgreSQL UNIQUE NULLS NOT DISTINCT ---------------------------------------------


@contextlib.contextmanager
def nulls_not_distinct(db: Backend, reflected: bool) -> Iterator[tuple[Connection, MetaData]]:
    md = MetaData()
    customer_table(md, "pr15_customer")
    Table(
        "pr15_tagging",
        md,
        Column("id", Integer, primary_key=True, autoincrement=False),
        Column("customer_id", Integer, ForeignKey("pr15_customer.id"), nullable=False),
        Column("tag", String(10), nullable=True),
        UniqueConstraint(
            "customer_id", "tag", name="uq_pr15_tagging", postgresql_nulls_not_distinct=True
        ),
    )
    with built(db, md) as connection:
        if reflected:
            md = MetaData()
            md.reflect(connection, only=["pr15_customer", "pr15_tagging"])
        seed(
            connection,
            {
                md.tables["pr15_customer"]: [{"id": 1}, {"id": 2}],
                md.tables["pr15_tagging"]: [
                    {"id": 10, "customer_id": 1, "tag": None},  # clashes with 20: NULLs equal
                    {"id": 11, "customer_id": 1, "tag": "a"},
                    {"id": 20, "customer_id": 2, "tag": None},
                ],
            },
        )
        yield connection, md


@pytest.mark.backends("postgresql")
@pytest.mark.parametrize("reflected", [False, True], ids=["declared", "reflected"])
@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_nulls_not_distinct_clash_raises(db: Backend, entry: str, reflected: bool) -> None:
    with nulls_not_distinct(db, reflected) as (connection, md):
        customer = md.tables["pr15_customer"]
        cls = mapped(customer)
        before = snapshot(connection, md)
        plan = merge(entry, connection, customer, 1, 2, cls=cls, dry_run=True)
        assert [(c.table, c.rows) for c in plan.conflicts] == [("pr15_tagging", ((10,),))]
        with pytest.raises(MergeConflictError) as info:
            merge(entry, connection, customer, 1, 2, cls=cls)
        assert "pr15_tagging" in str(info.value)
        assert snapshot(connection, md) == before
        still_usable(connection)


@pytest.mark.backends("postgresql")
@pytest.mark.parametrize("on_conflict", ["delete", "ignore"])
@pytest.mark.parametrize("reflected", [False, True], ids=["declared", "reflected"])
@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_nulls_not_distinct_clash_resolved(
    db: Backend, entry: str, reflected: bool, on_conflict: str
) -> None:
    with nulls_not_distinct(db, reflected) as (connection, md):
        customer, tagging = md.tables["pr15_customer"], md.tables["pr15_tagging"]
        try:
            report = merge(
                entry, connection, customer, 1, 2, cls=mapped(customer), on_conflict=on_conflict
            )
        except DBAPIError as error:
            pytest.fail(f"raw database error: {error.orig}")
        assert report.rowcount == 1
        if on_conflict == "delete":
            assert report.deleted == 1
            assert rows(connection, tagging) == [(11, 2, "a"), (20, 2, None)]
        else:
            assert report.left == 1
            assert rows(connection, tagging) == [(10, 1, None), (11, 2, "a"), (20, 2, None)]


# -- #13.22: PostgreSQL partitioned tables ----------------------------------------------------

#: how the partitions are laid out: two partitions; the first one partitioned again
#: (nested); the parent's key explicitly named and the second partition made on its own,
#: with a key of another name, then attached
LAYOUTS = ("flat", "nested", "named")
#: only the partitioned table declared (the partitions unknown to the MetaData), every
#: table reflected, or the partitions declared too, with ``postgresql_inherits``
HOWS = ("declared", "reflected", "declared_partitions")

#: each layout's partitions: name, parent, bounds, how it is partitioned again
_PARTITIONS: dict[str, list[tuple[str, str, str, str | None]]] = {
    "flat": [
        ("pr22_orders_eu", "pr22_orders", "IN ('eu')", None),
        ("pr22_orders_us", "pr22_orders", "IN ('us')", None),
    ],
    "nested": [
        ("pr22_orders_eu", "pr22_orders", "IN ('eu', 'fr')", "LIST (region)"),
        ("pr22_orders_eu_eu", "pr22_orders_eu", "IN ('eu')", None),
        ("pr22_orders_eu_fr", "pr22_orders_eu", "IN ('fr')", None),
        ("pr22_orders_us", "pr22_orders", "IN ('us')", None),
    ],
    "named": [
        ("pr22_orders_eu", "pr22_orders", "IN ('eu')", None),
        ("pr22_orders_us", "pr22_orders", "IN ('us')", None),  # attached
    ],
}


def orders_table(md: MetaData, name: str, fk_name: str | None = None, **options: Any) -> Table:
    return Table(
        name,
        md,
        Column("id", Integer, primary_key=True, autoincrement=False),
        Column("region", String(2), primary_key=True),
        Column("customer_id", Integer, nullable=False),
        Column("sku", String(10), nullable=False),
        ForeignKeyConstraint(["customer_id"], ["pr22_customer.id"], name=fk_name),
        UniqueConstraint("customer_id", "sku", "region", name=f"uq_{name}_sku"),
        **options,
    )


def _fk_name(layout: str, table: str) -> str | None:
    if layout != "named":
        return None
    return "fk_pr22_us_customer" if table == "pr22_orders_us" else "fk_pr22_orders_customer"


@contextlib.contextmanager
def partitioned(
    db: Backend, how: str, layout: str = "flat"
) -> Iterator[tuple[Connection, MetaData]]:
    partitions = _PARTITIONS[layout]
    md = MetaData()
    customer_table(md, "pr22_customer")
    parent_fk = _fk_name(layout, "pr22_orders")
    orders_table(md, "pr22_orders", parent_fk, postgresql_partition_by="LIST (region)")
    with built(db, md) as connection:
        for name, parent, bounds, sub in partitions:
            by = f" PARTITION BY {sub}" if sub else ""
            if _fk_name(layout, name) == parent_fk:
                connection.execute(
                    text(f"CREATE TABLE {name} PARTITION OF {parent} FOR VALUES {bounds}{by}")
                )
                continue
            connection.execute(  # a table of its own, with its own key, attached
                text(
                    f"CREATE TABLE {name} (id INTEGER NOT NULL, region VARCHAR(2) NOT NULL, "
                    "customer_id INTEGER NOT NULL, sku VARCHAR(10) NOT NULL, "
                    f"PRIMARY KEY (id, region), CONSTRAINT {_fk_name(layout, name)} "
                    "FOREIGN KEY (customer_id) REFERENCES pr22_customer (id))"
                )
            )
            connection.execute(
                text(f"ALTER TABLE {parent} ATTACH PARTITION {name} FOR VALUES {bounds}")
            )
        names = [name for name, _, _, _ in partitions]
        if how == "reflected":
            md = MetaData()
            md.reflect(connection, only=["pr22_customer", "pr22_orders", *names])
            assert {len(md.tables[name].foreign_keys) for name in names} == {1}
        elif how == "declared_partitions":
            md = MetaData()
            customer_table(md, "pr22_customer")
            orders_table(md, "pr22_orders", parent_fk, postgresql_partition_by="LIST (region)")
            for name, parent, _, sub in partitions:
                options = {"postgresql_partition_by": sub} if sub else {}
                orders_table(
                    md, name, _fk_name(layout, name), postgresql_inherits=parent, **options
                )
        seed(
            connection,
            {
                md.tables["pr22_customer"]: [{"id": 1}, {"id": 2}],
                md.tables["pr22_orders"]: [
                    {"id": 1, "region": "eu", "customer_id": 1, "sku": "tea"},  # clashes
                    {"id": 2, "region": "eu", "customer_id": 2, "sku": "tea"},
                    {"id": 3, "region": "us", "customer_id": 1, "sku": "cup"},
                ],
            },
        )
        yield connection, md


@pytest.mark.backends("postgresql")
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("how", HOWS)
def test_partitioned_keys_and_dependents_counted_once(db: Backend, how: str, layout: str) -> None:
    with partitioned(db, how, layout) as (connection, md):
        customer = md.tables["pr22_customer"]
        assert [k.name for k in referencing_keys(customer)] == ["pr22_orders(customer_id)"]
        found = row_dependents(connection, customer, 1)
        assert found.count() == 2
        assert sorted(r.id for r in found) == [1, 3]


@pytest.mark.backends("postgresql")
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("how", HOWS)
@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_partitioned_conflicts_listed_once(db: Backend, entry: str, how: str, layout: str) -> None:
    with partitioned(db, how, layout) as (connection, md):
        customer = md.tables["pr22_customer"]
        cls = mapped(customer)
        before = snapshot(connection, md)
        with pytest.raises(MergeConflictError) as info:
            merge(entry, connection, customer, 1, 2, cls=cls)
        assert [(c.table, c.rows) for c in info.value.conflicts] == [("pr22_orders", ((1, "eu"),))]
        assert snapshot(connection, md) == before


@pytest.mark.backends("postgresql")
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("how", HOWS)
@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_partitioned_ignore_counts_once(db: Backend, entry: str, how: str, layout: str) -> None:
    with partitioned(db, how, layout) as (connection, md):
        customer, orders = md.tables["pr22_customer"], md.tables["pr22_orders"]
        report = merge(
            entry, connection, customer, 1, 2, cls=mapped(customer), on_conflict="ignore"
        )
        assert (report.rowcount, report.left, report.deleted) == (1, 1, 0)
        assert rows(connection, orders, "id", "customer_id") == [(1, 1), (2, 2), (3, 2)]


@pytest.mark.backends("postgresql")
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("how", HOWS)
def test_partitioned_orm_dependents(db: Backend, how: str, layout: str) -> None:
    with partitioned(db, how, layout) as (connection, md):
        session = orm_session(connection, "merge_into")
        dupe = session.get(mapped(md.tables["pr22_customer"]), 1)
        assert dependents(dupe).count() == 2
        # the partitioned table is mapped by no class: its rows are per key
        rows = [r for key_rows in dependents(dupe).by_key().values() for r in key_rows]
        assert sorted(r.id for r in rows) == [1, 3]


def _statements_on(engine: Any, found: list[str]) -> Any:
    def seen(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        found.append(statement)

    event.listen(engine, "before_cursor_execute", seen)
    return seen


@pytest.mark.backends("postgresql")
def test_partitions_reflected_through_an_engine_read_the_catalog_once(db: Backend) -> None:
    """On SQLAlchemy 2.0, which does not reflect ``postgresql_inherits``, the partitions'
    parents come from one catalog query per reflection; merges and counts ask none."""
    md = MetaData()
    customer_table(md, "pr22_customer")
    orders_table(md, "pr22_orders", postgresql_partition_by="LIST (region)")
    names = ["pr22_customer", "pr22_orders", "pr22_orders_eu", "pr22_orders_us"]
    with committed(db, md, {md.tables["pr22_customer"]: [{"id": 1}, {"id": 2}]}):
        with db.engine.begin() as connection:
            for name, region in (("pr22_orders_eu", "eu"), ("pr22_orders_us", "us")):
                connection.execute(
                    text(f"CREATE TABLE {name} PARTITION OF pr22_orders FOR VALUES IN ('{region}')")
                )
        statements: list[str] = []
        listener = _statements_on(db.engine, statements)
        try:
            reflected = MetaData()
            reflected.reflect(db.engine, only=names)
            during_reflection = len([s for s in statements if "pg_inherits i" in s])
            one = MetaData()  # a table at a time, each with an inspector of its own
            for name in names:
                Table(name, one, autoload_with=db.engine)
            del statements[:]
            for tables in (reflected, one):
                customer = tables.tables["pr22_customer"]
                assert [k.name for k in referencing_keys(customer)] == ["pr22_orders(customer_id)"]
            with db.engine.begin() as connection:
                seed(
                    connection,
                    {
                        reflected.tables["pr22_orders"]: [
                            {"id": 1, "region": "eu", "customer_id": 1, "sku": "tea"},
                            {"id": 2, "region": "us", "customer_id": 1, "sku": "cup"},
                        ]
                    },
                )
                customer = reflected.tables["pr22_customer"]
                assert row_dependents(connection, customer, 1).count() == 2
                report = merge("merge_rows", connection, customer, 1, 2)
                assert report.rowcount == 2
        finally:
            event.remove(db.engine, "before_cursor_execute", listener)
        assert during_reflection <= 1
        assert not [s for s in statements if "pg_inherits" in s or "pg_class" in s]
