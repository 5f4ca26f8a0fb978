"""After a merge every loaded object equals a fresh load from the database.

Each test loads a small graph, merges (one ``merge_into``, or a ``ReferencesSession``
batch applied at flush) in every synchronize mode, then compares every object of
the Session with a second Session's load of the same row, on the same connection:
column attributes, composites, SQL-expression properties and relationship
memberships; and ``session.get()`` by the row's identity returns the object.
Rule: what cannot be computed exactly is expired, never left stale.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pytest
from sqlalchemy import (
    DateTime,
    ForeignKey,
    ForeignKeyConstraint,
    Integer,
    MetaData,
    String,
    func,
    inspect,
    select,
)
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    column_property,
    composite,
    mapped_column,
    relationship,
)

from sa_references import ReferencesMixin, ReferencesSession, merge_into
from sa_references._sync import synchronize
from tests.conftest import Backend

MODES = ["evaluate", "fetch", "expire"]
COLLATE = {"mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_general_ci"}
_stamps = itertools.count(100)


def next_stamp() -> int:
    return next(_stamps)


class Base(ReferencesMixin, DeclarativeBase):
    metadata = MetaData()


class Customer(Base):
    __tablename__ = "syi_customer"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(20))
    tier: Mapped[str] = mapped_column(String(10), default="basic")

    orders: Mapped[list[Order]] = relationship(back_populates="customer")
    memberships: Mapped[list[Membership]] = relationship(back_populates="customer")
    vip_orders: Mapped[list[Order]] = relationship(
        primaryjoin="and_(Order.customer_id == Customer.id, Customer.tier == 'vip')",
        viewonly=True,
    )
    open_orders: Mapped[list[Order]] = relationship(
        primaryjoin="and_(Order.customer_id == Customer.id, Order.status == 'open')",
        viewonly=True,
    )


class Club(Base):
    __tablename__ = "syi_club"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    memberships: Mapped[list[Membership]] = relationship(back_populates="club")


class Membership(Base):
    """An association object whose primary key contains the foreign key."""

    __tablename__ = "syi_membership"

    customer_id: Mapped[int] = mapped_column(ForeignKey("syi_customer.id"), primary_key=True)
    club_id: Mapped[int] = mapped_column(ForeignKey("syi_club.id"), primary_key=True)
    note: Mapped[str] = mapped_column(String(20), default="")

    customer: Mapped[Customer] = relationship(back_populates="memberships")
    club: Mapped[Club] = relationship(back_populates="memberships")


class Order(Base):
    __tablename__ = "syi_order"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    customer_id: Mapped[int] = mapped_column(ForeignKey("syi_customer.id"))
    status: Mapped[str] = mapped_column(String(10), default="open")
    updated_at: Mapped[datetime | None] = mapped_column(DateTime, onupdate=func.now())
    stamp: Mapped[int] = mapped_column(Integer, default=0, onupdate=next_stamp)

    customer: Mapped[Customer] = relationship(back_populates="orders")
    vip_customer: Mapped[Customer | None] = relationship(
        primaryjoin="and_(Order.customer_id == Customer.id, Customer.tier == 'vip')",
        viewonly=True,
    )
    customer_x10: Mapped[int] = column_property(customer_id * 10)


Order.customer_name = column_property(  # type: ignore[attr-defined]
    select(Customer.name).where(Customer.id == Order.customer_id).scalar_subquery()
)
Customer.order_count = column_property(  # type: ignore[attr-defined]
    select(func.count(Order.id))
    .where(Order.customer_id == Customer.id)
    .correlate_except(Order)
    .scalar_subquery()
)
# the same criteria, not viewonly
Customer.vip_orders_rw = relationship(  # type: ignore[attr-defined]
    Order,
    primaryjoin="and_(Order.customer_id == Customer.id, Customer.tier == 'vip')",
    back_populates="vip_customer_rw",
    overlaps="orders,customer",
)
Order.vip_customer_rw = relationship(  # type: ignore[attr-defined]
    Customer,
    primaryjoin="and_(Order.customer_id == Customer.id, Customer.tier == 'vip')",
    back_populates="vip_orders_rw",
    overlaps="orders,customer",
)


@dataclass
class TenantRef:
    tenant_id: int
    no: int


class TenantCustomer(Base):
    __tablename__ = "syi_tenant_customer"

    tenant_id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    no: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    invoices: Mapped[list[Invoice]] = relationship(back_populates="customer")


class Invoice(Base):
    __tablename__ = "syi_invoice"
    __table_args__ = (
        ForeignKeyConstraint(
            ["tenant_id", "customer_no"],
            ["syi_tenant_customer.tenant_id", "syi_tenant_customer.no"],
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    tenant_id: Mapped[int] = mapped_column()
    customer_no: Mapped[int] = mapped_column()
    ref: Mapped[TenantRef] = composite(TenantRef, "tenant_id", "customer_no")
    customer: Mapped[TenantCustomer] = relationship(back_populates="invoices")


class Account(Base):
    """A string primary key; on MariaDB its collation is case- and PAD-SPACE-insensitive."""

    __tablename__ = "syi_account"
    __table_args__ = COLLATE

    name: Mapped[str] = mapped_column(String(20), primary_key=True)
    logins: Mapped[list[Login]] = relationship(back_populates="account")


class Login(Base):
    __tablename__ = "syi_login"
    __table_args__ = (
        ForeignKeyConstraint(["account_name"], ["syi_account.name"]),
        COLLATE,
    )

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    account_name: Mapped[str] = mapped_column(String(20))
    account: Mapped[Account] = relationship(back_populates="logins")


class Mailbox(Base):
    """A unique string column referred to (not the primary key)."""

    __tablename__ = "syi_mailbox"
    __table_args__ = COLLATE

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    address: Mapped[str] = mapped_column(String(20), unique=True)
    aliases: Mapped[list[Alias]] = relationship(back_populates="mailbox")


class Alias(Base):
    __tablename__ = "syi_alias"
    __table_args__ = (
        ForeignKeyConstraint(["mailbox_address"], ["syi_mailbox.address"]),
        COLLATE,
    )

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    mailbox_address: Mapped[str] = mapped_column(String(20))
    mailbox: Mapped[Mailbox] = relationship(back_populates="aliases")


# -- fixtures -----------------------------------------------------------------------------------


def inexact_strings(db: Backend) -> bool:
    return db.dialect in ("mysql", "mariadb")


@pytest.fixture(scope="module")
def schema(db: Backend) -> Iterator[Backend]:
    Base.metadata.drop_all(db.engine)
    Base.metadata.create_all(db.engine)
    yield db
    Base.metadata.drop_all(db.engine)


@pytest.fixture(params=["single", "batch"])
def via(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def session(schema: Backend, via: str) -> Iterator[Session]:
    """A Session (a ReferencesSession for batches) in a transaction rolled back afterwards."""
    cls = ReferencesSession if via == "batch" else Session
    with schema.engine.connect() as connection:
        transaction = connection.begin()
        with cls(bind=connection, join_transaction_mode="create_savepoint") as s:
            yield s
        if transaction.is_active:
            transaction.rollback()


def merge(session: Session, dupe: Any, keeper: Any, mode: str) -> None:
    if isinstance(session, ReferencesSession):
        dupe.merge_into(keeper, synchronize_session=mode)
        session.flush()
    else:
        merge_into(dupe, keeper, synchronize_session=mode)  # type: ignore[arg-type]


def load_everything(session: Session, objects: list[Any]) -> None:
    session.flush()
    session.expire_all()
    for obj in objects:
        session.refresh(obj)
        for name in [p.key for p in inspect(obj).mapper.attrs]:
            getattr(obj, name)


# -- the invariant ------------------------------------------------------------------------------


def _identity(obj: Any) -> Any:
    return None if obj is None else inspect(obj).identity


def _relationship_value(obj: Any, name: str, uselist: bool) -> Any:
    value = getattr(obj, name)
    if uselist:
        return sorted(_identity(m) for m in value)
    return _identity(value)


def assert_matches_database(session: Session) -> None:
    """Every object of the session equals a second Session's load of its row."""
    objects = list(session.identity_map.values())
    with Session(bind=session.connection(), autoflush=False) as other:
        for obj in objects:
            state = inspect(obj)
            mapper = state.mapper
            fresh = other.get(mapper.class_, state.identity)
            assert fresh is not None, f"{obj!r} is filed under {state.identity}, a row gone"
            found = session.get(mapper.class_, inspect(fresh).identity)
            assert found is obj, f"get({inspect(fresh).identity}) gave {found!r}, not {obj!r}"
            for name in [p.key for p in mapper.column_attrs]:
                assert getattr(obj, name) == getattr(fresh, name), f"{obj!r}.{name}"
            for name in [p.key for p in mapper.composites]:
                assert getattr(obj, name) == getattr(fresh, name), f"{obj!r}.{name}"
            for rel in mapper.relationships:
                mine = _relationship_value(obj, rel.key, bool(rel.uselist))
                theirs = _relationship_value(fresh, rel.key, bool(rel.uselist))
                assert mine == theirs, f"{obj!r}.{rel.key}"


# -- 6: primary keys that contain the foreign key -----------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_association_object_refiled_under_its_new_identity(session: Session, mode: str) -> None:
    dupe, keeper = Customer(id=1, name="dupe"), Customer(id=2, name="keeper")
    chess, golf = Club(id=1), Club(id=2)
    moved = Membership(customer=dupe, club=chess, note="moved")
    own = Membership(customer=keeper, club=golf, note="own")
    session.add_all([dupe, keeper, chess, golf, moved, own])
    load_everything(session, [dupe, keeper, chess, golf, moved, own])
    merge(session, dupe, keeper, mode)
    assert session.get(Membership, (2, 1)) is moved
    assert inspect(moved).identity == (2, 1)
    assert_matches_database(session)
    moved.note = "changed"
    session.flush()  # no StaleDataError: the object is filed under the row's identity
    assert session.scalars(select(Membership.note).where(Membership.club_id == 1)).one() == (
        "changed"
    )


@pytest.mark.parametrize("mode", MODES)
def test_expired_association_object_refiled_under_its_new_identity(
    session: Session, mode: str
) -> None:
    """Its key is read from its identity: nothing of it is loaded."""
    dupe, keeper, moved = _association(session)
    session.expire(moved)
    merge(session, dupe, keeper, mode)
    assert session.get(Membership, (2, 1)) is moved
    assert moved.customer_id == 2 and moved.note == "moved"
    assert_matches_database(session)


# -- 7: onupdate columns ------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_onupdate_columns_of_moved_rows_agree(session: Session, mode: str) -> None:
    dupe, keeper = Customer(id=1, name="dupe"), Customer(id=2, name="keeper")
    order = Order(id=1, customer=dupe)
    session.add_all([dupe, keeper, order])
    load_everything(session, [dupe, keeper, order])
    assert order.updated_at is None and order.stamp == 0
    merge(session, dupe, keeper, mode)
    assert order.customer_id == 2
    assert order.stamp != 0 and order.updated_at is not None
    assert_matches_database(session)


# -- 8: attributes derived from re-pointed columns ----------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_column_properties_over_the_foreign_key_agree(session: Session, mode: str) -> None:
    dupe, keeper = Customer(id=1, name="dupe"), Customer(id=2, name="keeper")
    order = Order(id=1, customer=dupe)
    session.add_all([dupe, keeper, order])
    load_everything(session, [dupe, keeper, order])
    assert order.customer_x10 == 10 and order.customer_name == "dupe"  # type: ignore[attr-defined]
    merge(session, dupe, keeper, mode)
    assert order.customer_x10 == 20 and order.customer_name == "keeper"  # type: ignore[attr-defined]
    assert_matches_database(session)


@pytest.mark.parametrize("mode", MODES)
def test_sql_expressions_of_the_merged_rows_agree(session: Session, mode: str) -> None:
    """A correlated count of the referencing rows, on the source and the target."""
    dupe, keeper = Customer(id=1, name="dupe"), Customer(id=2, name="keeper")
    orders = [Order(id=1, customer=dupe), Order(id=2, customer=dupe)]
    session.add_all([dupe, keeper, *orders])
    load_everything(session, [dupe, keeper, *orders])
    assert (dupe.order_count, keeper.order_count) == (2, 0)  # type: ignore[attr-defined]
    merge(session, dupe, keeper, mode)
    assert (dupe.order_count, keeper.order_count) == (0, 2)  # type: ignore[attr-defined]
    assert_matches_database(session)


@pytest.mark.parametrize("mode", MODES)
def test_composite_over_a_composite_foreign_key_agrees(session: Session, mode: str) -> None:
    dupe, keeper = TenantCustomer(tenant_id=1, no=1), TenantCustomer(tenant_id=1, no=2)
    invoice = Invoice(id=1, customer=dupe)
    session.add_all([dupe, keeper, invoice])
    load_everything(session, [dupe, keeper, invoice])
    assert invoice.ref == TenantRef(1, 1)
    merge(session, dupe, keeper, mode)
    assert invoice.ref == TenantRef(1, 2)
    assert_matches_database(session)


# -- 9: relationships with criteria on the referred side ----------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_relationships_with_criteria_on_the_referred_side_agree(
    session: Session, mode: str
) -> None:
    dupe = Customer(id=1, name="dupe", tier="vip")
    keeper = Customer(id=2, name="keeper", tier="basic")
    order = Order(id=1, customer=dupe, status="open")
    closed = Order(id=2, customer=dupe, status="closed")
    session.add_all([dupe, keeper, order, closed])
    load_everything(session, [dupe, keeper, order, closed])
    assert dupe.vip_orders == [order, closed] and order.vip_customer is dupe
    assert dupe.vip_orders_rw == [order, closed] and order.vip_customer_rw is dupe  # type: ignore[attr-defined]
    merge(session, dupe, keeper, mode)
    assert keeper.vip_orders == [] and dupe.vip_orders == []
    assert order.vip_customer is None
    assert keeper.vip_orders_rw == [] and dupe.vip_orders_rw == []  # type: ignore[attr-defined]
    assert order.vip_customer_rw is None  # type: ignore[attr-defined]
    assert keeper.open_orders == [order]  # criteria on the child side: computed
    assert_matches_database(session)


# -- 10: values equal only under the collation --------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_values_equal_under_the_collation_agree(
    session: Session, schema: Backend, mode: str
) -> None:
    loose = inexact_strings(schema)  # only MariaDB/MySQL accept 'ada' for 'ADA'
    dupe, keeper = Account(name="ADA"), Account(name="BOB")
    logins = [
        Login(id=1, account_name="ada" if loose else "ADA"),
        Login(id=2, account_name="ADA " if loose else "ADA"),
        Login(id=3, account_name="ADA"),
    ]
    session.add_all([dupe, keeper])
    session.flush()
    session.add_all(logins)
    load_everything(session, [dupe, keeper, *logins])
    assert all(login.account is dupe for login in logins)
    merge(session, dupe, keeper, mode)
    assert [login.account_name for login in logins] == ["BOB"] * 3
    assert all(login.account is keeper for login in logins)
    assert_matches_database(session)


@pytest.mark.parametrize("mode", MODES)
def test_unique_string_keys_equal_under_the_collation_agree(
    session: Session, schema: Backend, mode: str
) -> None:
    loose = inexact_strings(schema)
    dupe, keeper = Mailbox(id=1, address="ada@x"), Mailbox(id=2, address="bob@x")
    aliases = [
        Alias(id=1, mailbox_address="ADA@X" if loose else "ada@x"),
        Alias(id=2, mailbox_address="ada@x  " if loose else "ada@x"),
    ]
    session.add_all([dupe, keeper])
    session.flush()
    session.add_all(aliases)
    load_everything(session, [dupe, keeper, *aliases])
    assert all(alias.mailbox is dupe for alias in aliases)
    merge(session, dupe, keeper, mode)
    assert [alias.mailbox_address for alias in aliases] == ["bob@x"] * 2
    assert all(alias.mailbox is keeper for alias in aliases) and dupe.aliases == []
    assert_matches_database(session)


# -- the engine's side of fetch mode, and rollbacks ---------------------------------------------


def _association(session: Session) -> tuple[Customer, Customer, Membership]:
    dupe, keeper = Customer(id=1, name="dupe"), Customer(id=2, name="keeper")
    chess = Club(id=1)
    moved = Membership(customer=dupe, club=chess, note="moved")
    session.add_all([dupe, keeper, chess, moved])
    load_everything(session, [dupe, keeper, chess, moved])
    return dupe, keeper, moved


def test_fetch_refiles_rows_reported_by_their_identity_before_the_update(
    session: Session,
) -> None:
    """What fetch mode does once the engine keys ``KeyMoves.moved`` as its contract says."""
    from sa_references._keys import reference_graph, referencing_keys
    from sa_references._sync import KeyMoves

    dupe, keeper, moved = _association(session)
    merge(session, dupe, keeper, False)  # type: ignore[arg-type]
    assert inspect(moved).identity == (1, 1)  # memory left alone
    key = next(k for k in referencing_keys(Customer) if k.table is Membership.__table__)
    moves = KeyMoves(key, {(1,): (2,)}, moved={(1, 1): (2,)})
    graph = reference_graph(Base.metadata)
    synchronize(session, graph, [(dupe, keeper)], [moves], "fetch")
    assert session.get(Membership, (2, 1)) is moved and moved.customer is keeper
    assert_matches_database(session)


@pytest.mark.parametrize("mode", ["evaluate", "expire"])
def test_rollback_files_the_object_under_its_old_identity_again(
    session: Session, mode: str
) -> None:
    dupe, keeper, moved = _association(session)
    nested = session.begin_nested()
    merge(session, dupe, keeper, mode)
    assert inspect(moved).identity == (2, 1)
    nested.rollback()
    assert inspect(moved).identity == (1, 1) and session.get(Membership, (1, 1)) is moved
    assert moved.customer_id == 1 and moved.note == "moved"
    assert_matches_database(session)
