"""Key values as users hold them: #13.20 (numpy integers), #13.21 (keys equal under the
collation, MariaDB).  ``numpy`` is needed (the ``test`` extra should list it)."""

from __future__ import annotations

import pytest
from sqlalchemy import Column, ForeignKey, Integer, MetaData, String, Table

from sa_references import RowNotFoundError, merge_many, merge_rows, row_dependents
from tests.conftest import Backend
from tests.promise_schemas import built, rows, seed, snapshot, still_usable

np = pytest.importorskip("numpy")


def numbered(size: int) -> tuple[MetaData, Table, Table]:
    md = MetaData()
    customer = Table(
        "pr20_customer", md, Column("id", Integer, primary_key=True, autoincrement=False)
    )
    orders = Table(
        "pr20_orders",
        md,
        Column("id", Integer, primary_key=True, autoincrement=False),
        Column("customer_id", Integer, ForeignKey("pr20_customer.id"), nullable=False),
    )
    return md, customer, orders


def seed_numbered(connection: object, customer: Table, orders: Table, n: int) -> None:
    # customers 1..2n; order i references customer i (sources are 1..n, targets n+1..2n)
    seed(
        connection,  # type: ignore[arg-type]
        {
            customer: [{"id": i} for i in range(1, 2 * n + 1)],
            orders: [{"id": i, "customer_id": i} for i in range(1, n + 1)],
        },
    )


@pytest.mark.parametrize("dtype", ["int64", "int32"])
def test_merge_rows_numpy_keys(db: Backend, dtype: str) -> None:
    md, customer, orders = numbered(1)
    with built(db, md) as connection:
        seed_numbered(connection, customer, orders, 1)
        kind = getattr(np, dtype)
        report = merge_rows(connection, customer, kind(1), kind(2))
        assert report.rowcount == 1
        assert rows(connection, orders) == [(1, 2)]


def test_row_dependents_numpy_key(db: Backend) -> None:
    md, customer, orders = numbered(1)
    with built(db, md) as connection:
        seed_numbered(connection, customer, orders, 1)
        found = row_dependents(connection, customer, np.int64(1))
        assert found.count() == 1
        assert [r.id for r in found] == [1]


@pytest.mark.parametrize("n", [3, 600])
def test_merge_many_numpy_keys(db: Backend, n: int) -> None:
    md, customer, orders = numbered(n)
    with built(db, md) as connection:
        seed_numbered(connection, customer, orders, n)
        sources = np.arange(1, n + 1, dtype=np.int64)
        pairs = list(zip(sources, sources + n))
        report = merge_many(connection, customer, pairs, delete=True)
        assert report.rowcount == n
        assert rows(connection, orders) == [(i, i + n) for i in range(1, n + 1)]
        assert len(rows(connection, customer)) == n


# -- #13.21: keys equal under the collation -------------------------------------------------------


def coded() -> tuple[MetaData, Table, Table]:
    md = MetaData()
    customer = Table("pr21_customer", md, Column("code", String(10), primary_key=True))
    orders = Table(
        "pr21_orders",
        md,
        Column("id", Integer, primary_key=True, autoincrement=False),
        Column("customer_code", String(10), ForeignKey("pr21_customer.code"), nullable=False),
    )
    return md, customer, orders


@pytest.mark.parametrize("given", ["ada", "ADA "])
@pytest.mark.parametrize("entry", ["merge_rows", "merge_many"])
def test_key_equal_under_the_collation(db: Backend, entry: str, given: str) -> None:
    """On MariaDB ``'ada'`` and ``'ADA '`` are the stored ``'ADA'`` (a case-insensitive, PAD
    SPACE collation): both entry points accept them.  Elsewhere neither does."""
    md, customer, orders = coded()
    with built(db, md) as connection:
        seed(
            connection,
            {
                customer: [{"code": "ADA"}, {"code": "BOB"}],
                orders: [{"id": 1, "customer_code": "ADA"}, {"id": 2, "customer_code": "BOB"}],
            },
        )
        before = snapshot(connection, md)

        def run() -> object:
            if entry == "merge_rows":
                return merge_rows(connection, customer, given, "BOB", delete=True)
            return merge_many(connection, customer, [(given, "BOB")], delete=True)

        if db.name != "mariadb":
            with pytest.raises(RowNotFoundError):
                run()
            assert snapshot(connection, md) == before
            still_usable(connection)
            return
        report = run()
        assert report.rowcount == 1  # type: ignore[attr-defined]
        assert rows(connection, orders) == [(1, "BOB"), (2, "BOB")]
        assert rows(connection, customer) == [("BOB",)]
