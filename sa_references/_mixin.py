"""``ReferencesMixin``: ``merge_into`` and ``dependents`` as model methods."""

from __future__ import annotations

import functools
import inspect
import sys
import warnings
from typing import Any

from sqlalchemy.exc import SAWarning

from ._compat import Self
from ._dependents import Dependents, dependents
from ._merge import merge_into
from ._options import (
    USE_SESSION_DEFAULT,
    OnConflict,
    OnSelfReference,
    SessionDefault,
    SynchronizeMode,
)
from ._report import MergeReport


class ReferencesMixin:
    """Mixin for a declarative base: every model gets :meth:`merge_into` and :meth:`dependents`.

    E.g.::

        from sqlalchemy import ForeignKey
        from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
        from sa_references import ReferencesMixin


        class Base(ReferencesMixin, DeclarativeBase):
            pass


        class Customer(Base):
            __tablename__ = "customer"
            id: Mapped[int] = mapped_column(primary_key=True)
            orders: Mapped[list["Order"]] = relationship(back_populates="customer")


        class Order(Base):
            __tablename__ = "order"
            id: Mapped[int] = mapped_column(primary_key=True)
            customer_id: Mapped[int] = mapped_column(ForeignKey("customer.id"))
            customer: Mapped[Customer] = relationship(back_populates="orders")


        report = dupe.merge_into(keeper, delete=True)
        assert keeper.dependents().count() == report.rowcount + keeper_orders_before

    Both methods work through ``object_session(self)``.
    """

    # no __slots__: Flask-SQLAlchemy rebuilds the base from Base.__bases__ and copies its
    # __dict__, whose "__dict__" descriptor a slotted mixin makes the wrong one

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # before declarative maps the class: its __dict__ is still what the class declares
        _warn_of_hidden_methods(cls)
        super().__init_subclass__(**kwargs)

    def merge_into(
        self,
        target: Self,
        *,
        on_conflict: OnConflict = "raise",
        delete: bool = False,
        dry_run: bool = False,
        synchronize_session: SynchronizeMode | SessionDefault = USE_SESSION_DEFAULT,
        on_self_reference: OnSelfReference = "raise",
    ) -> MergeReport:
        """Re-point every reference to this object to ``target``.

        Unrelated to :meth:`Session.merge() <sqlalchemy.orm.Session.merge>`.
        See :func:`sa_references.merge_into` for the options.

        E.g.::

            report = dupe.merge_into(keeper, on_conflict="delete", delete=True)
        """
        return merge_into(
            self,
            target,
            on_conflict=on_conflict,
            delete=delete,
            dry_run=dry_run,
            synchronize_session=synchronize_session,
            on_self_reference=on_self_reference,
        )

    def dependents(self) -> Dependents[object]:
        """The mapped objects that reference this object (lazy; rows of unmapped tables
        are per key in :meth:`Dependents.by_key`; see :class:`Dependents`).

        E.g.::

            print(customer.dependents().count())
        """
        return dependents(self)


def _warn_of_hidden_methods(cls: type) -> None:
    """A model attribute named ``merge_into`` or ``dependents`` (an HR schema's
    ``dependents`` relationship) hides the mixin's method: said once, when the class that
    declares it (or first takes it from a plain mixin) is declared; the functional forms
    keep working.  Methods overriding them are meant, and not warned of."""
    for name in ("merge_into", "dependents"):
        owner = next((k for k in cls.__mro__ if name in k.__dict__), None)
        if owner is None or owner is ReferencesMixin:
            continue
        if owner is not cls and issubclass(owner, ReferencesMixin):
            continue  # declared by a model above, and said there
        if isinstance(owner.__dict__[name], _METHODS) or inspect.isfunction(owner.__dict__[name]):
            continue
        warnings.warn(
            f"{cls.__name__}.{name} hides ReferencesMixin.{name}(): "
            f"use sa_references.{name}(obj) for {cls.__name__} objects",
            SAWarning,
            stacklevel=_stack_level_outside_libraries(),
        )


#: what a class may put in place of the mixin's methods without hiding them by mistake
_METHODS = (classmethod, staticmethod, property, functools.partialmethod)
#: modules whose frames a class declaration passes through before reaching ours
_LIBRARIES = ("sqlalchemy", "flask_sqlalchemy", "sqlmodel", "sa_references")


def _stack_level_outside_libraries() -> int:
    """The ``stacklevel`` of the first caller outside SQLAlchemy and the frameworks that
    declare classes for it: the user's class statement."""
    level, frame = 1, sys._getframe(1)
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        if module.split(".")[0] not in _LIBRARIES:
            return level
        level, frame = level + 1, frame.f_back  # type: ignore[assignment]
    return level
