"""Found while attacking: loaded objects after the merge's transaction is rolled back.

A merge inside ``session.begin_nested()`` (a SAVEPOINT the application rolls back, e.g.
one item of a batch job that failed) is undone in the database, but the objects it brought
in step keep the merged state: ``order.customer_id`` says keeper, ``dupe.orders`` is empty,
``keeper.orders`` holds the order.  The ORM expires, on a SAVEPOINT rollback, only what it
saw modified.  Deleting ``dupe`` afterwards then neither nulls nor re-points its order (the
collection in memory is empty): a raw IntegrityError, or, without enforced foreign keys, an
order referencing a deleted customer.  Required: after the rollback, what is loaded
matches the database (expired or restored).
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import ForeignKey, MetaData, String, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

from sa_references import ReferencesMixin, ReferencesSession
from tests.conftest import Backend
from tests.promise_schemas import built, seed


def shop() -> tuple[MetaData, Any, Any]:
    class Base(ReferencesMixin, DeclarativeBase):
        metadata = MetaData()

    class Customer(Base):
        __tablename__ = "prr_customer"
        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
        name: Mapped[str] = mapped_column(String(10))
        orders: Mapped[list[Order]] = relationship(back_populates="customer")

    class Order(Base):
        __tablename__ = "prr_orders"
        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
        customer_id: Mapped[int | None] = mapped_column(ForeignKey("prr_customer.id"))
        customer: Mapped[Customer | None] = relationship(back_populates="orders")

    return Base.metadata, Customer, Order


@pytest.mark.parametrize("session_class", [Session, ReferencesSession], ids=["plain", "queued"])
def test_loaded_objects_follow_a_rolled_back_merge(
    db: Backend, session_class: type[Session]
) -> None:
    md, Customer, Order = shop()
    with built(db, md) as connection:
        seed(
            connection,
            {
                Customer.__table__: [{"id": 1, "name": "dupe"}, {"id": 2, "name": "keeper"}],
                Order.__table__: [{"id": 1, "customer_id": 1}],
            },
        )
        session = session_class(bind=connection, join_transaction_mode="create_savepoint")
        dupe, keeper, order = (
            session.get(Customer, 1),
            session.get(Customer, 2),
            session.get(Order, 1),
        )
        assert dupe.orders == [order] and keeper.orders == []
        try:
            with session.begin_nested():
                dupe.merge_into(keeper)
                session.flush()
                raise RuntimeError("the batch item failed")
        except RuntimeError:
            pass
        in_db = session.execute(select(Order.customer_id)).scalar_one()
        assert in_db == 1  # undone in the database
        # what is loaded says the same (reloaded if expired)
        assert order.customer_id == 1
        assert order.customer is dupe
        assert dupe.orders == [order] and keeper.orders == []
        session.close()
