"""#13.1 and #13.14: keys that share columns with other keys of the same row.

Multi-tenant composite keys share ``tenant_id`` between two foreign keys of one row (or
with its primary key): re-pointing one key must not silently change what the other
references.  A composite foreign key that includes the merged column must give the same
result on every backend and entry point: it works, or it is refused cleanly.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import (
    Column,
    ForeignKeyConstraint,
    Integer,
    MetaData,
    String,
    Table,
    UniqueConstraint,
)
from sqlalchemy.exc import DBAPIError

from sa_references import SharedColumnError, merge_into
from tests.conftest import Backend
from tests.promise_schemas import (
    ENTRY_POINTS,
    ORM_ENTRY_POINTS,
    built,
    mapped,
    merge,
    orm_session,
    rows,
    seed,
    snapshot,
    still_usable,
)

# -- #13.1: overlapping composite keys ---------------------------------------------------


def tenant_schema(shape: str) -> tuple[MetaData, Table, Table, Table]:
    md = MetaData()
    customer = Table(
        "pr1_customer",
        md,
        Column("tenant_id", Integer, primary_key=True, autoincrement=False),
        Column("id", Integer, primary_key=True, autoincrement=False),
        Column("name", String(20)),
    )
    product = Table(
        "pr1_product",
        md,
        Column("tenant_id", Integer, primary_key=True, autoincrement=False),
        Column("id", Integer, primary_key=True, autoincrement=False),
        Column("name", String(20)),
    )
    if shape == "two_keys":
        # orders(tenant_id, customer_id) -> customer, orders(tenant_id, product_id) -> product
        orders = Table(
            "pr1_orders",
            md,
            Column("id", Integer, primary_key=True, autoincrement=False),
            Column("tenant_id", Integer, nullable=False),
            Column("customer_id", Integer, nullable=False),
            Column("product_id", Integer, nullable=False),
            ForeignKeyConstraint(
                ["tenant_id", "customer_id"],
                ["pr1_customer.tenant_id", "pr1_customer.id"],
                name="fk_pr1_orders_customer",
            ),
            ForeignKeyConstraint(
                ["tenant_id", "product_id"],
                ["pr1_product.tenant_id", "pr1_product.id"],
                name="fk_pr1_orders_product",
            ),
        )
    else:
        # the shared column is part of the referencing row's primary key
        orders = Table(
            "pr1_orders",
            md,
            Column("tenant_id", Integer, primary_key=True, autoincrement=False),
            Column("id", Integer, primary_key=True, autoincrement=False),
            Column("customer_id", Integer, nullable=False),
            Column("product_id", Integer),
            ForeignKeyConstraint(
                ["tenant_id", "customer_id"],
                ["pr1_customer.tenant_id", "pr1_customer.id"],
                name="fk_pr1_orders_customer",
            ),
        )
    return md, customer, product, orders


def seed_tenants(connection: Any, customer: Table, product: Table, orders: Table) -> None:
    seed(
        connection,
        {
            customer: [
                {"tenant_id": 1, "id": 10, "name": "dupe"},
                {"tenant_id": 1, "id": 11, "name": "keeper, same tenant"},
                {"tenant_id": 2, "id": 20, "name": "keeper, other tenant"},
            ],
            product: [
                {"tenant_id": 1, "id": 5, "name": "tea of tenant 1"},
                {"tenant_id": 2, "id": 5, "name": "coffee of tenant 2"},
            ],
            orders: [{"id": 1, "tenant_id": 1, "customer_id": 10, "product_id": 5}],
        },
    )


@pytest.mark.parametrize("shape", ["two_keys", "primary_key"])
@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_shared_column_with_different_values_is_refused(
    db: Backend, entry: str, shape: str
) -> None:
    md, customer, product, orders = tenant_schema(shape)
    with built(db, md) as connection:
        seed_tenants(connection, customer, product, orders)
        before = snapshot(connection, md)
        with pytest.raises(SharedColumnError) as info:
            merge(entry, connection, customer, (1, 10), (2, 20), cls=mapped(customer))
        message = str(info.value)
        assert "pr1_orders(tenant_id, customer_id)" in message
        if shape == "two_keys":
            assert "pr1_orders(tenant_id, product_id)" in message
        else:
            assert "primary key" in message.lower()
        assert "object at 0x" not in message
        assert snapshot(connection, md) == before
        still_usable(connection)


@pytest.mark.parametrize("shape", ["two_keys", "primary_key"])
@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_shared_column_with_equal_values_is_merged(db: Backend, entry: str, shape: str) -> None:
    md, customer, product, orders = tenant_schema(shape)
    with built(db, md) as connection:
        seed_tenants(connection, customer, product, orders)
        report = merge(entry, connection, customer, (1, 10), (1, 11), cls=mapped(customer))
        assert report.rowcount == 1
        assert rows(connection, orders, "id", "tenant_id", "customer_id", "product_id") == [
            (1, 1, 11, 5)
        ]


# -- #13.14: a composite foreign key that includes the merged column ----------------------


def line_schema(shape: str, on_update: str | None) -> tuple[MetaData, Table, Table, Table]:
    md = MetaData()
    customer = Table(
        "pr14_customer",
        md,
        Column("id", Integer, primary_key=True, autoincrement=False),
    )
    orders = Table(
        "pr14_orders",
        md,
        Column("id", Integer, primary_key=True, autoincrement=False),
        Column("customer_id", Integer, nullable=False),
        ForeignKeyConstraint(["customer_id"], ["pr14_customer.id"], name="fk_pr14_orders_cust"),
        UniqueConstraint("id", "customer_id", name="uq_pr14_orders_id_customer"),
    )
    line = Table(
        "pr14_order_line",
        md,
        Column("id", Integer, primary_key=True, autoincrement=False),
        Column("order_id", Integer, nullable=False),
        Column("customer_id", Integer, nullable=False),
        ForeignKeyConstraint(
            ["order_id", "customer_id"],
            ["pr14_orders.id", "pr14_orders.customer_id"],
            name="fk_pr14_line_order",
            onupdate=on_update,
        ),
    )
    if shape == "also_direct":  # order_line.customer_id also references customer directly
        line.append_constraint(
            ForeignKeyConstraint(["customer_id"], ["pr14_customer.id"], name="fk_pr14_line_cust")
        )
    return md, customer, orders, line


def attempt_line_merge(db: Backend, entry: str, shape: str, on_update: str | None) -> str:
    """Run the merge; "merged" or "refused" (checked), or the assertion that fails."""
    md, customer, orders, line = line_schema(shape, on_update)
    with built(db, md) as connection:
        seed(
            connection,
            {
                customer: [{"id": 1}, {"id": 2}],
                orders: [{"id": 7, "customer_id": 1}, {"id": 8, "customer_id": 2}],
                line: [
                    {"id": 70, "order_id": 7, "customer_id": 1},
                    {"id": 80, "order_id": 8, "customer_id": 2},
                ],
            },
        )
        before = snapshot(connection, md)
        try:
            merge(entry, connection, customer, 1, 2, cls=mapped(customer))
        except DBAPIError as error:  # a raw database error is never the answer
            pytest.fail(f"{entry}: raw database error {type(error.orig).__name__}: {error.orig}")
        except SharedColumnError:
            assert snapshot(connection, md) == before, f"{entry} refused but changed rows"
            still_usable(connection)
            return "refused"
        assert rows(connection, orders) == [(7, 2), (8, 2)]
        # the line follows its order: same order, the order's new customer
        assert rows(connection, line) == [(70, 7, 2), (80, 8, 2)]
        return "merged"


def expected_line_outcome(db: Backend, shape: str, on_update: str | None) -> str:
    """The lines follow their order only where the database carries them along (an
    enforced ON UPDATE CASCADE); otherwise the merge is refused before any write.  With a
    direct key too, the line's customer_id is shared by two keys: refused."""
    enforced = db.name != "sqlite-nofk"
    if shape == "via_order" and on_update == "CASCADE" and enforced:
        return "merged"
    return "refused"


@pytest.mark.parametrize("on_update", [None, "CASCADE"], ids=["no_action", "cascade"])
@pytest.mark.parametrize("shape", ["via_order", "also_direct"])
@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_composite_key_including_the_merged_column(
    db: Backend, entry: str, shape: str, on_update: str | None
) -> None:
    assert attempt_line_merge(db, entry, shape, on_update) == expected_line_outcome(
        db, shape, on_update
    )


@pytest.mark.parametrize("on_update", [None, "CASCADE"], ids=["no_action", "cascade"])
@pytest.mark.parametrize("shape", ["via_order", "also_direct"])
def test_composite_key_including_the_merged_column_same_everywhere(
    db: Backend, shape: str, on_update: str | None
) -> None:
    outcomes = {}
    for entry in ENTRY_POINTS:
        try:
            outcomes[entry] = attempt_line_merge(db, entry, shape, on_update)
        except BaseException as error:  # collected: the test reports every entry point
            outcomes[entry] = f"failed: {type(error).__name__}"
    assert len(set(outcomes.values())) == 1, outcomes
    assert next(iter(outcomes.values())) == expected_line_outcome(db, shape, on_update), outcomes


@pytest.mark.parametrize("entry", ORM_ENTRY_POINTS)
def test_loaded_lines_follow_their_order_under_on_update_cascade(db: Backend, entry: str) -> None:
    """The database carries the lines along (ON UPDATE CASCADE): loaded lines, which the
    merge never re-pointed itself, must not keep their order's old customer."""
    if db.name == "sqlite-nofk":
        pytest.skip("not enforced: refused (test_composite_key_including_the_merged_column)")
    md, customer, orders, line = line_schema("via_order", "CASCADE")
    Customer, Order, Line = mapped(customer), mapped(orders), mapped(line)
    with built(db, md) as connection:
        seed(
            connection,
            {
                customer: [{"id": 1}, {"id": 2}],
                orders: [{"id": 7, "customer_id": 1}],
                line: [{"id": 70, "order_id": 7, "customer_id": 1}],
            },
        )
        session = orm_session(connection, entry)
        loaded_line, loaded_order = session.get(Line, 70), session.get(Order, 7)
        dupe, keeper = session.get(Customer, 1), session.get(Customer, 2)
        merge_into(dupe, keeper)
        session.flush()
        assert (loaded_order.customer_id, loaded_line.customer_id) == (2, 2)
        with orm_session(connection, "merge_into") as fresh:
            assert fresh.get(Line, 70).customer_id == 2
        session.close()
