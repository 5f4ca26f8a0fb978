"""merge_rows, merge_many and row_dependents on reflected tables (no classes)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from sqlalchemy import (
    Column,
    Connection,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    TypeDecorator,
    func,
    literal_column,
    select,
)
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import Session

from sa_references import (
    MergeConflictError,
    ReferencesError,
    merge_many,
    merge_rows,
    referencing_keys,
    row_dependents,
)


@pytest.fixture
def connection(session: Session) -> Connection:
    return session.connection()


@pytest.fixture
def tables(connection: Connection) -> dict[str, Table]:
    metadata = MetaData()
    metadata.reflect(connection)
    return dict(metadata.tables)


@pytest.fixture
def people(connection: Connection, tables: dict[str, Table]) -> list[int]:
    customer, order = tables["customer"], tables["order"]
    ids = []
    for i in range(5):
        result = connection.execute(customer.insert().values(name=f"p{i}", code=f"P{i}"))
        ids.append(result.inserted_primary_key[0])
    connection.execute(
        order.insert(),
        [
            {"customer_id": c, "note": f"{c}-{j}", "billing_customer_id": None}
            for c in ids
            for j in range(2)
        ],
    )
    group = tables["group"]
    gid = connection.execute(group.insert().values(name="g")).inserted_primary_key[0]
    connection.execute(
        tables["customer_group"].insert(),
        [{"customer_id": ids[0], "group_id": gid}, {"customer_id": ids[1], "group_id": gid}],
    )
    return ids


def owners(connection: Connection, tables: dict[str, Table]) -> list[int]:
    order = tables["order"]
    return sorted(connection.execute(select(order.c.customer_id)).scalars())


def test_referencing_keys_of_reflected_table(tables: dict[str, Table]) -> None:
    names = {k.name for k in referencing_keys(tables["customer"])}
    assert {
        "order(customer_id)",
        "order(billing_customer_id)",
        "customer_group(customer_id)",
    } <= names
    assert "customer(referrer_id)" in names and "coupon(customer_code)" in names


def test_merge_rows(connection: Connection, tables: dict[str, Table], people: list[int]) -> None:
    a, b = people[:2]
    with pytest.raises(MergeConflictError, match="customer_group"):
        merge_rows(connection, tables["customer"], a, b)
    plan = merge_rows(connection, tables["customer"], a, b, on_conflict="delete", dry_run=True)
    assert plan.dry_run and plan.rowcount == 2 and plan.deleted == 1
    assert owners(connection, tables).count(a) == 2
    report = merge_rows(
        connection, tables["customer"], (a,), {"id": b}, on_conflict="delete", delete=True
    )
    assert report.rowcount == 2 and report.deleted == 1
    assert a not in owners(connection, tables)
    assert connection.scalar(select(func.count()).where(tables["customer"].c.id == a)) == 0


@pytest.mark.parametrize(
    ("source", "target", "error", "match"),
    [
        (10**9, "first", ReferencesError, "not found"),
        ("first", "first", ReferencesError, "into itself"),
        ((1, 2), "first", ArgumentError, "1 column"),
        ({"nope": 1}, "first", ArgumentError, "keyed by"),
    ],
)
def test_merge_rows_bad_keys(
    connection: Connection,
    tables: dict[str, Table],
    people: list[int],
    source: Any,
    target: Any,
    error: type[Exception],
    match: str,
) -> None:
    source = people[0] if source == "first" else source
    target = people[0] if target == "first" else target
    before = owners(connection, tables)
    with pytest.raises(error, match=match):
        merge_rows(connection, tables["customer"], source, target)
    assert owners(connection, tables) == before


def test_merge_rows_needs_a_table(connection: Connection) -> None:
    with pytest.raises(ArgumentError, match="Table"):
        merge_rows(connection, "customer", 1, 2)  # type: ignore[arg-type]
    with pytest.raises(ArgumentError, match="on_conflict"):
        merge_rows(connection, Table("x", MetaData()), 1, 2, on_conflict="merge")  # type: ignore[arg-type]


def test_merge_many(
    connection: Connection, tables: dict[str, Table], people: list[int], statements: Any
) -> None:
    a, b, c, d, e = people
    with pytest.raises(MergeConflictError):
        merge_many(connection, tables["customer"], [(a, c), (b, c)])
    assert owners(connection, tables) == sorted(p for p in people for _ in range(2))
    with statements() as log:
        report = merge_many(
            connection, tables["customer"], [(a, c), (b, c), (c, e)], on_conflict="delete"
        )
    assert log.count("UPDATE") <= len(referencing_keys(tables["customer"]))
    assert report.pairs == [((a,), (e,)), ((b,), (e,)), ((c,), (e,))]
    assert report["order(customer_id)"].repointed == 6
    assert report.deleted == 1  # two sources brought group g into e
    assert owners(connection, tables) == sorted([d, d] + [e] * 8)
    members = connection.execute(select(tables["customer_group"].c.customer_id)).scalars().all()
    assert members == [e]
    assert "batch of 3 merge(s)" in str(report)


def test_merge_many_refusals(
    connection: Connection, tables: dict[str, Table], people: list[int]
) -> None:
    a, b, c = people[:3]
    before = owners(connection, tables)
    with pytest.raises(ReferencesError, match="cycle"):
        merge_many(connection, tables["customer"], [(a, b), (b, c), (c, a)])
    with pytest.raises(ReferencesError, match="already queued"):
        merge_many(connection, tables["customer"], [(a, b), (a, c)])
    with pytest.raises(ReferencesError, match="not found"):
        merge_many(connection, tables["customer"], [(a, 10**9)])
    with pytest.raises(ArgumentError):
        merge_many(connection, "customer", [(a, b)])  # type: ignore[arg-type]
    assert owners(connection, tables) == before


def test_merge_many_dry_run_and_delete(
    connection: Connection, tables: dict[str, Table], people: list[int]
) -> None:
    a, b, c = people[2:]
    plan = merge_many(connection, tables["customer"], [(a, c), (b, c)], dry_run=True)
    assert plan.dry_run and plan.rowcount == 4
    assert owners(connection, tables).count(c) == 2
    merge_many(connection, tables["customer"], [(a, c), (b, c)], delete=True)
    remaining = connection.execute(select(tables["customer"].c.id)).scalars().all()
    assert a not in remaining and b not in remaining and c in remaining


def test_merge_many_self_reference(
    connection: Connection, tables: dict[str, Table], people: list[int]
) -> None:
    a, b = people[3:5]
    customer = tables["customer"]
    connection.execute(customer.update().where(customer.c.id == b).values(referrer_id=a))
    with pytest.raises(ReferencesError, match="reference themselves"):
        merge_many(connection, customer, [(a, b)])
    plan = merge_many(connection, customer, [(a, b)], on_self_reference="null", dry_run=True)
    report = merge_many(connection, customer, [(a, b)], on_self_reference="null")
    assert connection.scalar(select(customer.c.referrer_id).where(customer.c.id == b)) is None
    for counted in (plan, report):
        assert counted["customer(referrer_id)"].repointed == 0
        assert counted["customer(referrer_id)"].cleared_rows == ((b,),)
        assert counted.cleared == 1


def test_row_dependents(
    connection: Connection, tables: dict[str, Table], people: list[int]
) -> None:
    deps = row_dependents(connection, tables["customer"], people[0])
    by_key = {k.name: rows for k, rows in deps.by_key().items()}
    assert by_key["order(customer_id)"].count() == 2
    assert by_key["customer_group(customer_id)"].count() == 1
    assert deps.count() == 3
    assert len(list(deps)) == 3


def test_merge_many_reads_keys_not_rows(
    connection: Connection, tables: dict[str, Table], people: list[int], statements: Any
) -> None:
    """Every key refers to group's primary key: the pairs give the values.  The rows are
    only checked to exist, by the lock (one SELECT ... FOR UPDATE) or, on SQLite, which
    takes no row locks, by one SELECT of the keys."""
    group, members = tables["group"], tables["customer_group"]
    ids = [
        connection.execute(group.insert().values(name=f"g{i}")).inserted_primary_key[0]
        for i in range(3)
    ]
    connection.execute(
        members.insert(), [{"customer_id": people[i], "group_id": ids[i]} for i in range(3)]
    )
    pairs = [(ids[0], ids[2]), (ids[1], ids[2])]
    with statements() as log:
        report = merge_many(connection, group, pairs)
    # a lock may read in CTEs first (PostgreSQL: WITH ... SELECT), or in a UNION (MariaDB)
    reads = [
        s for s in log.sql if re.match(r"(WITH\s.*)?SELECT\s.*\sFROM\s[`\"]group[`\"]\s", s, re.S)
    ]
    assert len(reads) == 1
    if connection.dialect.name != "sqlite":
        assert "FOR UPDATE" in reads[0]
    assert report.rowcount == 2
    moved = select(members.c.group_id).where(members.c.group_id.in_(ids))
    assert list(connection.execute(moved).scalars()) == [ids[2]] * 3
    before = connection.execute(select(members)).all()
    for missing in ([(10**9, ids[2])], [(ids[2], 10**9)]):
        with pytest.raises(ReferencesError, match="not found"):
            merge_many(connection, group, missing)
    assert connection.execute(select(members)).all() == before


class _Code(TypeDecorator[str]):
    """Stored upper case, read back lower case: bound values must go through the type."""

    impl = String(10)
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Any) -> str | None:
        return None if value is None else value.upper()

    def process_result_value(self, value: str | None, dialect: Any) -> str | None:
        return None if value is None else value.lower()


def test_batch_keys_of_a_type_that_processes_values(db: Any) -> None:
    """The pairs reach the mapping (table or arrays) through the key's type: sent raw, the
    codes would match no row."""
    metadata = MetaData()
    item = Table("coded_item", metadata, Column("code", _Code, primary_key=True))
    line = Table(
        "coded_line",
        metadata,
        Column("id", Integer, primary_key=True),
        Column("item_code", _Code, ForeignKey("coded_item.code"), nullable=False),
    )
    metadata.create_all(db.engine)
    try:
        with db.engine.begin() as connection:
            connection.execute(item.insert(), [{"code": c} for c in ("a", "b", "c", "d")])
            connection.execute(
                line.insert(), [{"id": i, "item_code": c} for i, c in enumerate("abcd", 1)]
            )
            report = merge_many(connection, item, [("a", "d"), ("b", "d"), ("c", "b")])
            assert report.rowcount == 3
            codes = connection.execute(select(line.c.item_code).order_by(line.c.id)).scalars()
            assert list(codes) == ["d", "d", "d", "d"]
            stored = select(func.count()).where(line.c.item_code == literal_column("'D'"))
            assert connection.execute(stored.select_from(line)).scalar_one() == 4
    finally:
        metadata.drop_all(db.engine)


def test_many_rows_locked_by_one_statement(
    connection: Connection, tables: dict[str, Table], statements: Any
) -> None:
    """More keys than one IN list holds: PostgreSQL passes them as an array, MariaDB as one
    JSON array (JSON_TABLE), so one SELECT ... FOR UPDATE locks them all (SQLite: one SELECT
    with json_each checks they exist); a key no row has is still found missing, among few
    keys or many, and nothing changed."""
    group = tables["group"]
    connection.execute(group.insert(), [{"name": f"bulk{i}"} for i in range(2400)])
    ids = list(
        connection.execute(
            select(group.c.id).where(group.c.name.like("bulk%")).order_by(group.c.id)
        ).scalars()
    )
    pairs = list(zip(ids[1::2], ids[::2]))
    with statements() as log:
        report = merge_many(connection, group, pairs)
    assert report.rowcount == 0 and len(report.pairs) == 1200
    locks = [s for s in log.sql if "FOR UPDATE" in s]
    dialect = connection.dialect.name
    if dialect == "postgresql":
        assert len(locks) == 1 and "ANY" in locks[0]
    elif dialect == "mysql":
        assert len(locks) == 1 and "JSON_TABLE" in locks[0]
    else:  # SQLite locks the whole database; the rows are counted by one SELECT, not read
        assert locks == []
        reads = [s for s in log.sql if re.match(r"SELECT\s.*\sFROM\s\"group\"\s", s, re.S)]
        assert len(reads) == 1 and "json_each" in reads[0] and "count(*)" in reads[0]
    before = connection.execute(select(func.count()).select_from(group)).scalar_one()
    for missing in ([(ids[0], 10**9)], [*pairs[:-1], (pairs[-1][0], 10**9)]):
        with pytest.raises(ReferencesError, match=r"1 key\(s\) not found.*1000000000"):
            merge_many(connection, group, missing)
    assert connection.execute(select(func.count()).select_from(group)).scalar_one() == before
