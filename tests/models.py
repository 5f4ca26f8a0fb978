"""The test schema: a shop with every kind of reference a merge must follow."""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    DDL,
    Boolean,
    Column,
    Engine,
    ForeignKey,
    ForeignKeyConstraint,
    Integer,
    MetaData,
    String,
    Table,
    UniqueConstraint,
    event,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from sa_references import ReferencesMixin


class Base(ReferencesMixin, DeclarativeBase):
    metadata = MetaData()


customer_group = Table(
    "customer_group",
    Base.metadata,
    Column("customer_id", ForeignKey("customer.id"), primary_key=True),
    Column("group_id", ForeignKey("group.id"), primary_key=True),
)

# an association table no class maps, without a primary key
customer_tag = Table(
    "customer_tag",
    Base.metadata,
    Column("customer_id", ForeignKey("customer.id"), nullable=False),
    Column("tag", String(20), nullable=False),
    UniqueConstraint("customer_id", "tag", name="uq_customer_tag"),
)


class Customer(Base):
    __tablename__ = "customer"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    code: Mapped[str | None] = mapped_column(String(20), unique=True)
    referrer_id: Mapped[int | None] = mapped_column(ForeignKey("customer.id"))

    referrer: Mapped[Customer | None] = relationship(remote_side=[id], back_populates="referrals")
    referrals: Mapped[list[Customer]] = relationship(back_populates="referrer")
    orders: Mapped[list[Order]] = relationship(
        back_populates="customer", foreign_keys="Order.customer_id"
    )
    billed_orders: Mapped[list[Order]] = relationship(
        back_populates="billing_customer", foreign_keys="Order.billing_customer_id"
    )
    groups: Mapped[list[Group]] = relationship(secondary=customer_group, back_populates="members")
    profile: Mapped[Profile | None] = relationship(back_populates="customer")
    reviews: Mapped[list[Review]] = relationship(back_populates="author")
    coupons: Mapped[list[Coupon]] = relationship(
        back_populates="customer", cascade="all, delete-orphan"
    )

    def __repr__(self) -> str:
        return f"<Customer {self.id} {self.name}>"


class Order(Base):
    __tablename__ = "order"

    id: Mapped[int] = mapped_column(primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customer.id"))
    billing_customer_id: Mapped[int | None] = mapped_column(ForeignKey("customer.id"))
    note: Mapped[str] = mapped_column(String(50), default="")

    customer: Mapped[Customer] = relationship(back_populates="orders", foreign_keys=[customer_id])
    billing_customer: Mapped[Customer | None] = relationship(
        back_populates="billed_orders", foreign_keys=[billing_customer_id]
    )

    def __repr__(self) -> str:
        return f"<Order {self.id}>"


class Group(Base):
    __tablename__ = "group"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    members: Mapped[list[Customer]] = relationship(
        secondary=customer_group, back_populates="groups"
    )

    def __repr__(self) -> str:
        return f"<Group {self.name}>"


class Profile(Base):
    __tablename__ = "profile"

    id: Mapped[int] = mapped_column(primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customer.id"), unique=True)
    bio: Mapped[str] = mapped_column(String(50), default="")
    customer: Mapped[Customer] = relationship(back_populates="profile")


class Review(Base):
    __tablename__ = "review"
    __table_args__ = (UniqueConstraint("author_id", "stars", name="uq_review_author_stars"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    author_id: Mapped[int] = mapped_column(ForeignKey("customer.id"))
    stars: Mapped[int] = mapped_column(Integer)
    author: Mapped[Customer] = relationship(back_populates="reviews")


class Coupon(Base):
    """References the customer's unique, non-primary ``code``."""

    __tablename__ = "coupon"

    id: Mapped[int] = mapped_column(primary_key=True)
    customer_code: Mapped[str | None] = mapped_column(ForeignKey("customer.code"))
    customer: Mapped[Customer | None] = relationship(back_populates="coupons")


# -- composite keys ---------------------------------------------------------


class Warehouse(Base):
    __tablename__ = "warehouse"

    region: Mapped[str] = mapped_column(String(10), primary_key=True)
    number: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    shelves: Mapped[list[Shelf]] = relationship(back_populates="warehouse")


class Shelf(Base):
    __tablename__ = "shelf"
    __table_args__ = (
        ForeignKeyConstraint(
            ["region", "number"], ["warehouse.region", "warehouse.number"], name="fk_shelf_wh"
        ),
        UniqueConstraint("region", "number", "label", name="uq_shelf_label"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    region: Mapped[str] = mapped_column(String(10))
    number: Mapped[int] = mapped_column(Integer)
    label: Mapped[str] = mapped_column(String(10))
    warehouse: Mapped[Warehouse] = relationship(back_populates="shelves")


# -- joined-table inheritance -------------------------------------------------


class Employee(Base):
    __tablename__ = "employee"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    type: Mapped[str] = mapped_column(String(20))
    mentor_id: Mapped[int | None] = mapped_column(ForeignKey("employee.id"))

    mentor: Mapped[Employee | None] = relationship(remote_side=[id], back_populates="mentees")
    mentees: Mapped[list[Employee]] = relationship(back_populates="mentor")
    projects: Mapped[list[Project]] = relationship(back_populates="lead")

    __mapper_args__ = {"polymorphic_on": "type", "polymorphic_identity": "employee"}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id} {self.name}>"


class Engineer(Employee):
    __tablename__ = "engineer"

    id: Mapped[int] = mapped_column(ForeignKey("employee.id"), primary_key=True)
    language: Mapped[str] = mapped_column(String(20), default="python")
    machines: Mapped[list[Machine]] = relationship(back_populates="engineer")

    __mapper_args__ = {"polymorphic_identity": "engineer"}


class Manager(Employee):
    __tablename__ = "manager"

    id: Mapped[int] = mapped_column(ForeignKey("employee.id"), primary_key=True)
    budget: Mapped[int] = mapped_column(default=0)

    __mapper_args__ = {"polymorphic_identity": "manager"}


class Project(Base):
    __tablename__ = "project"

    id: Mapped[int] = mapped_column(primary_key=True)
    lead_id: Mapped[int] = mapped_column(ForeignKey("employee.id"))
    lead: Mapped[Employee] = relationship(back_populates="projects")


class Machine(Base):
    __tablename__ = "machine"

    id: Mapped[int] = mapped_column(primary_key=True)
    engineer_id: Mapped[int] = mapped_column(ForeignKey("engineer.id"))
    engineer: Mapped[Engineer] = relationship(back_populates="machines")


class Approval(Base):
    __tablename__ = "approval"

    id: Mapped[int] = mapped_column(primary_key=True)
    manager_id: Mapped[int] = mapped_column(ForeignKey("manager.id"))


# -- single-table inheritance -------------------------------------------------


class Vehicle(Base):
    __tablename__ = "vehicle"

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(20))
    trips: Mapped[list[Trip]] = relationship(back_populates="vehicle")
    __mapper_args__ = {"polymorphic_on": "kind", "polymorphic_identity": "vehicle"}


class Car(Vehicle):
    __mapper_args__ = {"polymorphic_identity": "car"}


class Truck(Vehicle):
    __mapper_args__ = {"polymorphic_identity": "truck"}


class Trip(Base):
    __tablename__ = "trip"

    id: Mapped[int] = mapped_column(primary_key=True)
    vehicle_id: Mapped[int] = mapped_column(ForeignKey("vehicle.id"))
    vehicle: Mapped[Vehicle] = relationship(back_populates="trips")


# -- a referencing table whose UPDATE fails on demand (a trigger) -------------


class Trap(Base):
    """Sorted last among customer's referencing keys; a trigger refuses updates of armed rows."""

    __tablename__ = "zz_trap"

    id: Mapped[int] = mapped_column(primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customer.id"))
    armed: Mapped[bool] = mapped_column(Boolean, default=False)


_TRIGGERS = {
    "sqlite": [
        "CREATE TRIGGER zz_trap_guard BEFORE UPDATE ON zz_trap WHEN OLD.armed = 1 "
        "BEGIN SELECT RAISE(ABORT, 'zz_trap is armed'); END"
    ],
    "postgresql": [
        "CREATE OR REPLACE FUNCTION zz_trap_guard() RETURNS trigger AS $$ BEGIN "
        "IF OLD.armed THEN RAISE EXCEPTION 'zz_trap is armed'; END IF; RETURN NEW; END $$ "
        "LANGUAGE plpgsql",
        "CREATE TRIGGER zz_trap_guard BEFORE UPDATE ON zz_trap "
        "FOR EACH ROW EXECUTE FUNCTION zz_trap_guard()",
    ],
    "mysql": [
        "CREATE TRIGGER zz_trap_guard BEFORE UPDATE ON zz_trap FOR EACH ROW BEGIN "
        "IF OLD.armed THEN SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'zz_trap is armed'; "
        "END IF; END"
    ],
}

for _dialect, _statements in _TRIGGERS.items():
    for _statement in _statements:
        event.listen(Trap.__table__, "after_create", DDL(_statement).execute_if(dialect=_dialect))


def create_all(engine: Engine) -> None:
    Base.metadata.create_all(engine)


def drop_all(engine: Engine) -> None:
    with engine.begin() as connection:
        if engine.dialect.name == "mysql":
            connection.exec_driver_sql("SET FOREIGN_KEY_CHECKS=0")
        Base.metadata.drop_all(connection)
        if engine.dialect.name == "postgresql":
            connection.exec_driver_sql("DROP FUNCTION IF EXISTS zz_trap_guard() CASCADE")
        if engine.dialect.name == "mysql":
            connection.exec_driver_sql("SET FOREIGN_KEY_CHECKS=1")


def counts(session: Any, table: Any, column: Any) -> dict[Any, int]:
    """``{value: rows}`` of ``column`` in ``table``, read straight from the database."""
    from sqlalchemy import func, select

    rows = session.execute(select(column, func.count()).select_from(table).group_by(column))
    return {value: count for value, count in rows}
