"""The schema every example of the documentation uses (imported before each doctest group)."""

from __future__ import annotations

from sqlalchemy import Column, Engine, ForeignKey, String, Table, create_engine, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

from sa_references import ReferencesMixin, ReferencesSession

__all__ = [
    "Base",
    "Club",
    "Customer",
    "Order",
    "ReferencesSession",
    "Session",
    "membership",
    "new_engine",
    "select",
]


class Base(ReferencesMixin, DeclarativeBase):
    pass


membership = Table(
    "membership",
    Base.metadata,
    Column("customer_id", ForeignKey("customer.id"), primary_key=True),
    Column("club_id", ForeignKey("club.id"), primary_key=True),
)


class Customer(Base):
    __tablename__ = "customer"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    referrer_id: Mapped[int | None] = mapped_column(ForeignKey("customer.id"))
    referrer: Mapped[Customer | None] = relationship(remote_side=[id])
    orders: Mapped[list[Order]] = relationship(back_populates="customer")
    clubs: Mapped[list[Club]] = relationship(secondary=membership)


class Order(Base):
    __tablename__ = "orders"
    id: Mapped[int] = mapped_column(primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customer.id"))
    customer: Mapped[Customer] = relationship(back_populates="orders")


class Club(Base):
    __tablename__ = "club"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))


def new_engine() -> Engine:
    """An empty in-memory SQLite database with the shop's tables."""
    engine = create_engine("sqlite://")
    Base.metadata.create_all(engine)
    return engine
