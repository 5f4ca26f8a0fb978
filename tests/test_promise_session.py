"""ReferencesSession: #13.2 (after a failed batch), #13.18 (keeper deleted while queued),
#13.19 (the same pair queued again with other options).

Each test builds its own declarative schema (tables ``pr2_*``) and works in a
ReferencesSession joined to a connection whose transaction is rolled back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import Column, ForeignKey, Integer, MetaData, String, Table, inspect
from sqlalchemy.exc import ArgumentError, PendingRollbackError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from sa_references import (
    MergeConflictError,
    ReferencesError,
    ReferencesMixin,
    ReferencesSession,
    SessionStateError,
)
from tests.conftest import Backend
from tests.promise_schemas import built, rows, seed, snapshot, still_usable


@dataclass
class Shop:
    metadata: MetaData
    Customer: Any
    Order: Any
    membership: Table


def shop() -> Shop:
    class Base(ReferencesMixin, DeclarativeBase):
        metadata = MetaData()

    class Customer(Base):
        __tablename__ = "pr2_customer"
        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
        name: Mapped[str] = mapped_column(String(20))
        referrer_id: Mapped[int | None] = mapped_column(ForeignKey("pr2_customer.id"))
        orders: Mapped[list[Order]] = relationship(back_populates="customer")

    class Order(Base):
        __tablename__ = "pr2_orders"
        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
        # nullable: deleting a customer through the ORM nulls its loaded orders
        customer_id: Mapped[int | None] = mapped_column(ForeignKey("pr2_customer.id"))
        customer: Mapped[Customer | None] = relationship(back_populates="orders")

    membership = Table(
        "pr2_membership",
        Base.metadata,
        Column("customer_id", ForeignKey("pr2_customer.id"), primary_key=True),
        Column("club", Integer, primary_key=True, autoincrement=False),
    )
    return Shop(Base.metadata, Customer, Order, membership)


def seed_shop(connection: Any, s: Shop) -> None:
    customers = s.Customer.__table__
    seed(
        connection,
        {
            customers: [
                {"id": i, "name": n, "referrer_id": None}
                for i, n in enumerate(["dupe", "keeper", "dupe2", "keeper2"], 1)
            ],
            s.Order.__table__: [{"id": 1, "customer_id": 1}, {"id": 2, "customer_id": 1}],
            s.membership: [{"customer_id": 3, "club": 9}, {"customer_id": 4, "club": 9}],
        },
    )


def references_session(connection: Any) -> ReferencesSession:
    return ReferencesSession(bind=connection, join_transaction_mode="create_savepoint")


# -- #13.2: a failed batch ------------------------------------------------------------------


def test_failed_batch_never_runs_half(db: Backend) -> None:
    s = shop()
    with built(db, s.metadata) as connection:
        seed_shop(connection, s)
        before = snapshot(connection, s.metadata)
        session = references_session(connection)
        dupe, keeper, dupe2, keeper2 = (session.get(s.Customer, i) for i in (1, 2, 3, 4))
        dupe.merge_into(keeper)
        session.delete(dupe)
        dupe2.merge_into(keeper2)  # clashes on the membership (club 9)
        with pytest.raises(MergeConflictError):
            session.commit()
        # either the session refuses to go on until rollback(), or the queue (and the
        # deletion that waits for it) is still there and clashes again
        try:
            session.commit()
        except (SessionStateError, PendingRollbackError, MergeConflictError):
            session.rollback()
        session.close()
        orders = rows(connection, s.Order.__table__)
        customers = {r[0] for r in rows(connection, s.Customer.__table__)}
        assert len(orders) == 2, "an order was lost"
        if 1 in customers:  # nothing applied: nothing changed
            assert snapshot(connection, s.metadata) == before
        else:  # dupe deleted: only with its orders re-pointed
            assert orders == [(1, 2), (2, 2)], f"dupe deleted, its orders: {orders}"
        still_usable(connection)


# -- #13.18: the keeper deleted while its merge is queued ---------------------------------------


def test_keeper_deleted_while_queued_is_refused_before_any_write(db: Backend) -> None:
    s = shop()
    with built(db, s.metadata) as connection:
        seed_shop(connection, s)
        connection.execute(s.Order.__table__.insert(), [{"id": 3, "customer_id": 2}])
        before = snapshot(connection, s.metadata)
        session = references_session(connection)
        dupe, keeper = session.get(s.Customer, 1), session.get(s.Customer, 2)
        dupe.merge_into(keeper)
        session.delete(keeper)
        with pytest.raises(ReferencesError) as info:
            session.flush()
        # refused before any write: the keeper's and the dupe's orders are untouched
        assert snapshot(connection, s.metadata) == before
        assert "object at 0x" not in str(info.value), str(info.value)
        session.rollback()
        session.close()
        assert snapshot(connection, s.metadata) == before
        still_usable(connection)


# -- #13.19: the same pair queued again with other options ---------------------------------------

OPTION_CASES = {
    # option: (first call's options, second call's options)
    "on_conflict": ({"on_conflict": "raise"}, {"on_conflict": "delete"}),
    "delete": ({"delete": False}, {"delete": True}),
    "on_self_reference": ({"on_self_reference": "raise"}, {"on_self_reference": "null"}),
    "synchronize_session": ({"synchronize_session": False}, {"synchronize_session": "evaluate"}),
}


@pytest.mark.parametrize("option", list(OPTION_CASES))
def test_same_pair_with_other_options_is_not_silently_ignored(db: Backend, option: str) -> None:
    first, second = OPTION_CASES[option]
    s = shop()
    with built(db, s.metadata) as connection:
        seed_shop(connection, s)
        customers = s.Customer.__table__
        # a clash for on_conflict, a self-reference for on_self_reference
        connection.execute(s.membership.insert(), [{"customer_id": 1, "club": 5}])
        connection.execute(s.membership.insert(), [{"customer_id": 2, "club": 5}])
        if option == "on_self_reference":
            connection.execute(customers.update().where(customers.c.id == 2), {"referrer_id": 1})
        session = references_session(connection)
        dupe, keeper = session.get(s.Customer, 1), session.get(s.Customer, 2)
        order = session.get(s.Order, 1)
        if option != "on_conflict":
            first = {**first, "on_conflict": "delete"}
            second = {**second, "on_conflict": "delete"}
        dupe.merge_into(keeper, **first)
        try:
            dupe.merge_into(keeper, **second)
        except (ArgumentError, ReferencesError):
            assert session.queued_merges == 1  # refused, the first stays queued
            session.rollback()
            session.close()
            return
        session.flush()  # the later options must be the ones applied
        if option == "on_conflict":
            assert rows(connection, s.membership) == [(2, 5), (3, 9), (4, 9)]
        elif option == "delete":
            assert 1 not in {r[0] for r in rows(connection, customers)}
        elif option == "on_self_reference":
            assert rows(connection, customers, "id", "referrer_id")[1] == (2, None)
        else:
            assert inspect(order).dict.get("customer_id") == keeper.id
        session.rollback()
        session.close()


def test_same_pair_with_same_options_returns_the_same_report(db: Backend) -> None:
    s = shop()
    with built(db, s.metadata) as connection:
        seed_shop(connection, s)
        session = references_session(connection)
        dupe, keeper = session.get(s.Customer, 1), session.get(s.Customer, 2)
        first = dupe.merge_into(keeper, on_conflict="delete", delete=True)
        again = dupe.merge_into(keeper, on_conflict="delete", delete=True)
        assert again is first and session.queued_merges == 1
        session.flush()
        assert rows(connection, s.Order.__table__) == [(1, 2), (2, 2)]
        session.rollback()
        session.close()
