"""The mixin's methods as a model sees them: hidden by a model attribute of the same name
(said when the class is declared), overridable, and typed."""

from __future__ import annotations

import functools
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
from sqlalchemy import ForeignKey, MetaData
from sqlalchemy.exc import SAWarning
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

from sa_references import MergeReport, ReferencesMixin, dependents, merge_into
from tests.conftest import Backend


def hr_models() -> tuple[type, type, type]:
    class Base(ReferencesMixin, DeclarativeBase):
        metadata = MetaData()

    with pytest.warns(SAWarning, match=r"Employee.dependents hides ReferencesMixin.dependents"):

        class Employee(Base):
            __tablename__ = "mx_employee"
            id: Mapped[int] = mapped_column(primary_key=True)
            dependents: Mapped[list[Dependent]] = relationship()

    class Dependent(Base):
        __tablename__ = "mx_dependent"
        id: Mapped[int] = mapped_column(primary_key=True)
        employee_id: Mapped[int] = mapped_column(ForeignKey("mx_employee.id"))

    return Base, Employee, Dependent


def test_a_model_attribute_named_dependents_is_said_and_the_function_works(db: Backend) -> None:
    Base, Employee, Dependent = hr_models()
    Base.metadata.create_all(db.engine)
    try:
        with Session(db.engine) as session:
            dupe, keeper = Employee(), Employee()
            session.add_all([dupe, keeper])
            session.flush()
            session.add_all([Dependent(employee_id=dupe.id), Dependent(employee_id=dupe.id)])
            session.flush()
            assert len(dupe.dependents) == 2  # the model's relationship, as declared
            assert dependents(dupe).count() == 2  # the library's, by its functional form
            report = dupe.merge_into(keeper)
            assert report.rowcount == 2 and len(keeper.dependents) == 2
            assert dependents(keeper).count() == 2 and dependents(dupe).count() == 0
            session.rollback()
    finally:
        Base.metadata.drop_all(db.engine)


def test_a_method_overriding_merge_into_is_not_warned_of() -> None:
    class Base(ReferencesMixin, DeclarativeBase):
        metadata = MetaData()

    class Audited(Base):  # no warning: pytest turns SAWarning into an error
        __tablename__ = "mx_audited"
        id: Mapped[int] = mapped_column(primary_key=True)

        def merge_into(self, target: Audited, **options: object) -> MergeReport:  # type: ignore[override]
            return merge_into(self, target)

    assert Audited.merge_into is not ReferencesMixin.merge_into


def test_merge_into_types_the_target_as_the_source_class(tmp_path: Path) -> None:
    """mypy refuses a Customer merged into a Club, and takes a subclass."""
    source = tmp_path / "typed.py"
    source.write_text(
        textwrap.dedent(
            """
            from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
            from sa_references import ReferencesMixin

            class Base(ReferencesMixin, DeclarativeBase):
                pass

            class Customer(Base):
                __tablename__ = "customer"
                id: Mapped[int] = mapped_column(primary_key=True)

            class Vip(Customer):
                pass

            class Club(Base):
                __tablename__ = "club"
                id: Mapped[int] = mapped_column(primary_key=True)

            def merges(customer: Customer, vip: Vip, club: Club) -> None:
                customer.merge_into(vip)
                customer.merge_into(club)
            """
        )
    )
    run = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(source)],
        capture_output=True,
        text=True,
        check=False,
    )
    errors = [line for line in run.stdout.splitlines() if ": error:" in line]
    assert len(errors) == 1, run.stdout
    assert (
        'Argument 1 to "merge_into" of "ReferencesMixin" has incompatible type "Club"'
        in (errors[0])
    ), run.stdout


def test_the_warning_is_said_once_where_the_attribute_is_declared() -> None:
    class Base(ReferencesMixin, DeclarativeBase):
        metadata = MetaData()

    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")

        class Employee(Base):
            __tablename__ = "mx_emp"
            id: Mapped[int] = mapped_column(primary_key=True)
            kind: Mapped[str]
            dependents: Mapped[list[Kid]] = relationship()
            __mapper_args__ = {"polymorphic_on": "kind", "polymorphic_identity": "e"}

        class Manager(Employee):  # inherits the relationship: not said again
            __tablename__ = "mx_manager"
            id: Mapped[int] = mapped_column(ForeignKey("mx_emp.id"), primary_key=True)
            __mapper_args__ = {"polymorphic_identity": "m"}

        class Kid(Base):
            __tablename__ = "mx_kid"
            id: Mapped[int] = mapped_column(primary_key=True)
            emp_id: Mapped[int] = mapped_column(ForeignKey("mx_emp.id"))

        class HasDependents:  # a plain mixin of the application
            dependents = "a column the HR schema names so"

        class Staff(HasDependents, Base):
            __tablename__ = "mx_staff"
            id: Mapped[int] = mapped_column(primary_key=True)

        class Partial(Base):  # a method put in place on purpose: not said
            __tablename__ = "mx_partial"
            id: Mapped[int] = mapped_column(primary_key=True)
            merge_into = functools.partialmethod(ReferencesMixin.merge_into, delete=True)

    messages = [str(w.message) for w in said]
    assert messages == [
        "Employee.dependents hides ReferencesMixin.dependents(): "
        "use sa_references.dependents(obj) for Employee objects",
        "Staff.dependents hides ReferencesMixin.dependents(): "
        "use sa_references.dependents(obj) for Staff objects",
    ]
    assert {w.filename for w in said} == {__file__}  # the class statement, not SQLAlchemy's
    assert Manager.__mapper__.inherits is Employee.__mapper__ and Partial and Staff
