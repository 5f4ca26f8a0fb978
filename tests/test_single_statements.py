"""The statements of one merge: on PostgreSQL, plain re-pointing UPDATEs run as one statement.

When a merge re-points several keys of distinct tables with nothing else to do for them (no
conflict to delete or leave, no self-reference to clear, nothing to fetch), PostgreSQL gets
one statement of data-modifying CTEs (``WITH u0 AS (UPDATE ... RETURNING ...), ... SELECT
count(*) ...``) instead of one UPDATE per key; every other backend keeps one UPDATE per key.
The report's per-key counts, the atomicity of a merge and a dry run's counts are the same
either way.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import CheckConstraint, ForeignKey, MetaData, String, UniqueConstraint, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

from sa_references import ReferencesMixin, merge_into, merge_rows, referencing_keys
from tests.conftest import Backend


class SingleBase(ReferencesMixin, DeclarativeBase):
    metadata = MetaData()


# -- a hub referenced by five tables, one key each (the benchmark's shape) -------------------


class Hub(SingleBase):
    __tablename__ = "ss_hub"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(20))


HUB_TABLES = ("ss_address", "ss_invoice", "ss_note", "ss_order", "ss_ticket")


def _hub_row(name: str) -> type[SingleBase]:
    namespace: dict[str, Any] = {
        "__tablename__": name,
        "__annotations__": {"id": Mapped[int], "hub_id": Mapped[int]},
        "id": mapped_column(primary_key=True),
        "hub_id": mapped_column(ForeignKey("ss_hub.id"), index=True),
    }
    return type(name.title().replace("_", ""), (SingleBase,), namespace)


HUB_ROWS = {name: _hub_row(name) for name in HUB_TABLES}


# -- a shop: keys to two referred columns, two keys of one table, a unique pair, a CHECK -------


class Shop(SingleBase):
    __tablename__ = "ss_shop"

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(20), unique=True)
    stock: Mapped[list[Stock]] = relationship(
        back_populates="shop", foreign_keys="Stock.shop_id", order_by="Stock.id"
    )


class Coupon(SingleBase):
    """References the shop's ``code``: its parameters are not the ``id`` keys' ones."""

    __tablename__ = "ss_coupon"

    id: Mapped[int] = mapped_column(primary_key=True)
    shop_code: Mapped[str | None] = mapped_column(ForeignKey("ss_shop.code"))


class Guard(SingleBase):
    """Refuses to reference ``blocked_id``: a database error raised mid-merge on demand."""

    __tablename__ = "ss_guard"
    __table_args__ = (
        CheckConstraint("blocked_id IS NULL OR shop_id <> blocked_id", name="ck_ss_guard"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    shop_id: Mapped[int] = mapped_column(ForeignKey("ss_shop.id"))
    blocked_id: Mapped[int | None] = mapped_column(default=None)


class Pair(SingleBase):
    """Two keys of one table under one unique constraint: the second key's conflicts are read
    again once the first one has moved rows."""

    __tablename__ = "ss_pair"
    __table_args__ = (UniqueConstraint("a_id", "b_id", name="uq_ss_pair"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    a_id: Mapped[int] = mapped_column(ForeignKey("ss_shop.id"))
    b_id: Mapped[int] = mapped_column(ForeignKey("ss_shop.id"))


class Stock(SingleBase):
    """Two keys of one table, no unique key over them."""

    __tablename__ = "ss_stock"

    id: Mapped[int] = mapped_column(primary_key=True)
    shop_id: Mapped[int] = mapped_column(ForeignKey("ss_shop.id"))
    alt_shop_id: Mapped[int | None] = mapped_column(ForeignKey("ss_shop.id"))
    shop: Mapped[Shop] = relationship(back_populates="stock", foreign_keys=[shop_id])


class Visit(SingleBase):
    __tablename__ = "ss_visit"

    id: Mapped[int] = mapped_column(primary_key=True)
    shop_id: Mapped[int] = mapped_column(ForeignKey("ss_shop.id"))


#: the shop's keys in merge order, with the rows of the dupe each one re-points
SHOP_COUNTS = {
    "ss_coupon(shop_code)": 1,
    "ss_guard(shop_id)": 2,
    "ss_pair(a_id)": 3,
    "ss_pair(b_id)": 1,
    "ss_stock(alt_shop_id)": 2,
    "ss_stock(shop_id)": 4,
    "ss_visit(shop_id)": 5,
}


@pytest.fixture(scope="module")
def single_tables(db: Backend) -> Iterator[None]:
    SingleBase.metadata.drop_all(db.engine)
    SingleBase.metadata.create_all(db.engine)
    yield
    SingleBase.metadata.drop_all(db.engine)


@pytest.fixture
def hubs(single_tables: None, session: Session) -> tuple[Hub, Hub]:
    dupe, keeper = Hub(name="dupe"), Hub(name="keeper")
    session.add_all([dupe, keeper])
    session.flush()
    for n, cls in enumerate(HUB_ROWS.values(), start=1):
        session.add_all([cls(hub_id=dupe.id) for _ in range(n)] + [cls(hub_id=keeper.id)])
    session.flush()
    return dupe, keeper


@pytest.fixture
def shops(single_tables: None, session: Session) -> dict[str, Any]:
    dupe, keeper, other = Shop(code="D"), Shop(code="K"), Shop(code="O")
    extra = Shop(code="X")
    session.add_all([dupe, keeper, other, extra])
    session.flush()
    rows: list[Any] = [
        Coupon(shop_code="D"),
        Coupon(shop_code="K"),
        Guard(shop_id=dupe.id),
        Guard(shop_id=dupe.id, blocked_id=other.id),
        Guard(shop_id=keeper.id),
        *(Pair(a_id=dupe.id, b_id=b.id) for b in (keeper, other, extra)),
        Pair(a_id=other.id, b_id=dupe.id),
        Stock(shop_id=dupe.id, alt_shop_id=dupe.id),
        Stock(shop_id=dupe.id, alt_shop_id=dupe.id),
        Stock(shop_id=dupe.id),
        Stock(shop_id=dupe.id, alt_shop_id=keeper.id),
        Stock(shop_id=keeper.id, alt_shop_id=keeper.id),
        *(Visit(shop_id=dupe.id) for _ in range(5)),
        Visit(shop_id=other.id),
    ]
    session.add_all(rows)
    session.flush()
    return {"dupe": dupe, "keeper": keeper, "other": other, "rows": rows}


def fused(statements: list[str]) -> list[str]:
    """The statements of data-modifying CTEs (not a lock's CTEs, which only read)."""
    return [
        s
        for s in statements
        if s.lstrip().upper().startswith("WITH") and re.search(r"UPDATE\s+\S+\s+SET", s)
    ]


def updated_tables(statement: str) -> list[str]:
    return [t.strip('"`') for t in re.findall(r"UPDATE\s+(\S+)\s+SET", statement)]


def snapshot(session: Session) -> dict[str, list[tuple[Any, ...]]]:
    return {
        t.name: sorted(tuple(r) for r in session.execute(select(t)).all())
        for t in SingleBase.metadata.sorted_tables
    }


def test_five_keys_of_five_tables(
    db: Backend, session: Session, hubs: tuple[Hub, Hub], statements: Any
) -> None:
    """SAVEPOINT, the lock, one statement for every key, RELEASE: 4 statements on PostgreSQL;
    on MariaDB the SAVEPOINT is never released (7), on SQLite nothing is locked (7)."""
    dupe, keeper = hubs
    with statements() as log:
        report = merge_into(dupe, keeper)
    expected = {"postgresql": 4, "mysql": 7, "sqlite": 7}[db.dialect]
    assert len(log.all) == expected, log.all
    assert [r.key.table.name for r in report] == list(HUB_TABLES)
    assert [r.repointed for r in report] == [1, 2, 3, 4, 5]
    assert report.rowcount == 15 and report.deleted == 0 and report.left == 0
    if db.can.combined_updates:
        (statement,) = fused(log.all)
        assert updated_tables(statement) == list(HUB_TABLES)
        assert log.count("UPDATE") == 0
    else:
        assert not fused(log.all) and log.count("UPDATE") == 5
    for cls in HUB_ROWS.values():
        owners = session.execute(select(cls.hub_id)).scalars().all()  # type: ignore[attr-defined]
        assert set(owners) == {keeper.id}


def test_merging_back_uses_the_cached_statement(
    db: Backend, session: Session, hubs: tuple[Hub, Hub], statements: Any
) -> None:
    dupe, keeper = hubs
    merge_into(dupe, keeper)
    with statements() as log:
        report = merge_into(keeper, dupe)
    assert [r.repointed for r in report] == [2, 3, 4, 5, 6]
    if db.can.combined_updates:
        assert len(fused(log.all)) == 1


def test_exact_counts_per_key_and_table_once_per_statement(
    db: Backend, session: Session, shops: dict[str, Any], statements: Any
) -> None:
    dupe, keeper = shops["dupe"], shops["keeper"]
    with statements() as log:
        report = merge_into(dupe, keeper)
    assert {r.key.name: r.repointed for r in report} == SHOP_COUNTS
    assert [r.key.name for r in report] == list(SHOP_COUNTS)
    assert report.deleted == report.left == 0 and not report.conflicts
    if db.can.combined_updates:
        statements_ = fused(log.all)
        # a table at most once per statement, keys in order; ss_pair(b_id) re-reads its
        # conflicts after ss_pair(a_id) ran, so the runs break there and at ss_stock
        assert [updated_tables(s) for s in statements_] == [
            ["ss_coupon", "ss_guard", "ss_pair"],
            ["ss_pair", "ss_stock"],
            ["ss_stock", "ss_visit"],
        ]
        assert log.count("UPDATE") == 0
        # SAVEPOINT, lock, 2 conflict reads, 3 statements, the re-read, RELEASE
        assert len(log.all) == 9
    else:
        assert not fused(log.all) and log.count("UPDATE") == len(SHOP_COUNTS)
    for key in referencing_keys(Shop):
        column = key.columns[0]
        held = session.execute(select(column).where(column.is_not(None))).scalars().all()
        assert dupe.id not in held and "D" not in held
    assert [s.shop for s in shops["rows"] if isinstance(s, Stock)] == [keeper] * 5


def test_dry_run_counts_equal_the_merge(
    db: Backend, session: Session, shops: dict[str, Any], statements: Any
) -> None:
    dupe, keeper = shops["dupe"], shops["keeper"]
    before = snapshot(session)
    with statements() as log:
        planned = merge_into(dupe, keeper, dry_run=True)
    assert snapshot(session) == before
    if db.can.combined_updates:
        assert len(fused(log.all)) == 3
    report = merge_into(dupe, keeper)
    assert planned.dry_run and not report.dry_run
    counts = [(r.key.name, r.repointed, r.deleted, r.left) for r in report]
    assert [(r.key.name, r.repointed, r.deleted, r.left) for r in planned] == counts
    assert {name: n for name, n, _, _ in counts} == SHOP_COUNTS


def test_dry_run_of_the_hub(db: Backend, session: Session, hubs: tuple[Hub, Hub]) -> None:
    dupe, keeper = hubs
    planned = merge_into(dupe, keeper, dry_run=True)
    report = merge_into(dupe, keeper)
    assert [r.repointed for r in planned] == [r.repointed for r in report] == [1, 2, 3, 4, 5]


def test_conflicts_keep_their_own_statements(
    db: Backend, session: Session, shops: dict[str, Any], statements: Any
) -> None:
    """A key with rows to delete or leave is re-pointed on its own; the others still fuse."""
    dupe, keeper, other = shops["dupe"], shops["keeper"], shops["other"]
    session.add(Pair(a_id=keeper.id, b_id=other.id))  # dupe's (dupe, other) now clashes
    session.flush()
    with statements() as log:
        report = merge_into(dupe, keeper, on_conflict="delete")
    assert report["ss_pair(a_id)"].deleted == 1
    assert report["ss_pair(a_id)"].repointed == 2
    assert report["ss_coupon(shop_code)"].repointed == 1
    assert report["ss_visit(shop_id)"].repointed == 5
    if db.can.combined_updates:
        assert [updated_tables(s) for s in fused(log.all)] == [
            ["ss_coupon", "ss_guard"],
            ["ss_pair", "ss_stock"],
            ["ss_stock", "ss_visit"],
        ]
        assert [t for s in log.sql for t in updated_tables(s) if not s.startswith("WITH")] == [
            "ss_pair"
        ]


def test_fetch_mode_is_never_fused(
    db: Backend, session: Session, hubs: tuple[Hub, Hub], statements: Any
) -> None:
    dupe, keeper = hubs
    with statements() as log:
        report = merge_into(dupe, keeper, synchronize_session="fetch")
    assert not fused(log.all)
    assert [r.repointed for r in report] == [1, 2, 3, 4, 5]


def test_merge_rows_fuses_too(
    db: Backend, session: Session, shops: dict[str, Any], statements: Any
) -> None:
    dupe, keeper = shops["dupe"].id, shops["keeper"].id
    table = SingleBase.metadata.tables["ss_shop"]
    with statements() as log:
        report = merge_rows(session.connection(), table, dupe, keeper)
    assert {r.key.name: r.repointed for r in report} == SHOP_COUNTS
    assert len(fused(log.all)) == (3 if db.can.combined_updates else 0)


def test_an_error_in_a_fused_statement_changes_nothing(
    db: Backend, session: Session, shops: dict[str, Any], statements: Any
) -> None:
    """The CHECK constraint refuses one of ss_guard's rows: every key of the statement (and
    every earlier one) is undone, the error names the keys, the session stays usable."""
    dupe, other = shops["dupe"], shops["other"]
    stock = list(dupe.stock)
    before = snapshot(session)
    with statements() as log, pytest.raises(DBAPIError) as info:
        merge_into(dupe, other)
    assert "ck_ss_guard" in str(info.value).lower()
    notes = "".join(getattr(info.value, "__notes__", []))
    assert "ss_guard(shop_id)" in notes
    if db.can.combined_updates:
        assert "ss_coupon(shop_code)" in notes and "ss_pair(a_id)" in notes
        assert fused(log.all) and log.all[-1].upper().startswith("ROLLBACK TO SAVEPOINT")
    assert snapshot(session) == before
    assert [s.shop for s in stock] == [dupe] * len(stock)
    assert [s.shop_id for s in stock] == [dupe.id] * len(stock)
    session.add(Visit(shop_id=other.id))
    session.flush()
    assert merge_into(dupe, shops["keeper"]).rowcount == sum(SHOP_COUNTS.values())
