"""The frameworks that host SQLAlchemy: Flask-SQLAlchemy and SQLModel.

The README's base class (``class Base(ReferencesMixin, DeclarativeBase)``) given to
``SQLAlchemy(model_class=Base)``; ``ReferencesSession`` as Flask-SQLAlchemy's session
class, routed by ``__bind_key__``, its queue reached through ``db.session()``; SQLModel
models with the mixin and the functional forms.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import ForeignKey, String, select
from sqlalchemy.exc import InvalidRequestError
from sqlalchemy.orm import DeclarativeBase, Mapped, MappedAsDataclass, mapped_column, relationship

from sa_references import ReferencesMixin, ReferencesSession, merge_into
from tests.conftest import Backend

flask_sqlalchemy = pytest.importorskip("flask_sqlalchemy")
flask = pytest.importorskip("flask")


def url_of(db: Backend) -> str:
    return f"sqlite:///{db.url}" if db.dialect == "sqlite" else db.url


def flask_app(db: Backend, base: type, session_class: type | None = None) -> tuple[Any, Any]:
    options = {} if session_class is None else {"class_": session_class}
    fsa = flask_sqlalchemy.SQLAlchemy(model_class=base, session_options=options)
    app = flask.Flask(__name__)
    # the models live on the bind "shop": statements must be routed by __bind_key__
    app.config["SQLALCHEMY_DATABASE_URI"] = "sqlite://"
    app.config["SQLALCHEMY_BINDS"] = {"shop": url_of(db)}
    fsa.init_app(app)
    return app, fsa


def shop_models(fsa: Any, dataclasses: bool) -> tuple[type, type]:
    kw: dict[str, Any] = {"init": False} if dataclasses else {}

    class Customer(fsa.Model):  # type: ignore[name-defined,misc]
        __tablename__ = "fw_customer"
        __bind_key__ = "shop"
        id: Mapped[int] = mapped_column(primary_key=True, **kw)
        name: Mapped[str] = mapped_column(String(20), **kw)
        orders: Mapped[list[Order]] = relationship(back_populates="customer", **kw)

    class Order(fsa.Model):  # type: ignore[name-defined,misc]
        __tablename__ = "fw_order"
        __bind_key__ = "shop"
        id: Mapped[int] = mapped_column(primary_key=True, **kw)
        customer_id: Mapped[int] = mapped_column(ForeignKey("fw_customer.id"), **kw)
        customer: Mapped[Customer] = relationship(back_populates="orders", **kw)

    return Customer, Order


def _skip_unless_flask_takes_dataclass_bases() -> None:
    """Flask-SQLAlchemy 3.1 on SQLAlchemy 2.1 refuses any MappedAsDataclass base, the
    mixin or not: the combination is tested where Flask-SQLAlchemy itself takes it."""

    class Plain(MappedAsDataclass, DeclarativeBase):
        pass

    try:
        flask_sqlalchemy.SQLAlchemy(model_class=Plain)
    except InvalidRequestError as error:
        pytest.skip(f"Flask-SQLAlchemy refuses a plain MappedAsDataclass base: {error}"[:200])


@pytest.fixture(params=["declarative", "dataclasses"])
def base(request: pytest.FixtureRequest) -> type:
    if request.param == "dataclasses":
        _skip_unless_flask_takes_dataclass_bases()

        class DataclassBase(ReferencesMixin, MappedAsDataclass, DeclarativeBase):
            pass

        return DataclassBase

    class Base(ReferencesMixin, DeclarativeBase):
        pass

    return Base


@pytest.fixture(params=["Session", "ReferencesSession", "combined"])
def flask_shop(
    db: Backend, base: type, request: pytest.FixtureRequest
) -> Iterator[tuple[Any, Any, type, type]]:
    session_class: type | None = None
    if request.param == "ReferencesSession":
        session_class = ReferencesSession
    elif request.param == "combined":

        class AppSession(ReferencesSession, flask_sqlalchemy.session.Session):  # type: ignore[misc]
            pass

        session_class = AppSession
    app, fsa = flask_app(db, base, session_class)
    Customer, Order = shop_models(fsa, dataclasses=issubclass(base, MappedAsDataclass))
    with app.app_context():
        fsa.create_all(bind_key="shop")
        try:
            yield app, fsa, Customer, Order
        finally:
            fsa.session.remove()
            fsa.drop_all(bind_key="shop")
            for engine in fsa.engines.values():
                engine.dispose()


def test_the_readme_base_class_works_in_flask_sqlalchemy(
    flask_shop: tuple[Any, Any, type, type],
) -> None:
    _app, fsa, Customer, Order = flask_shop
    session = fsa.session
    dupe, keeper = Customer(), Customer()
    dupe.name, keeper.name = "dupe", "keeper"
    order = Order()
    order.customer = dupe
    session.add_all([dupe, keeper, order])
    session.commit()
    assert dupe.dependents().count() == 1
    report = dupe.merge_into(keeper)
    if isinstance(session(), ReferencesSession):  # the queue, through the scoped_session
        assert session().queued_merges == 1 and not report.applied
    session.commit()
    assert report.applied and report.rowcount == 1
    assert order.customer is keeper and keeper.orders == [order]
    engine = fsa.engines["shop"]
    with engine.connect() as connection:
        table = Order.__table__
        assert connection.execute(select(table.c.customer_id)).scalars().all() == [keeper.id]
    # routed by __bind_key__: the default bind (an empty in-memory SQLite) has no such table
    assert session.get_bind(mapper=Customer.__mapper__) is engine


def test_the_functional_form_works_in_flask_sqlalchemy(
    flask_shop: tuple[Any, Any, type, type],
) -> None:
    _app, fsa, Customer, Order = flask_shop
    session = fsa.session
    dupe, keeper, order = Customer(), Customer(), Order()
    dupe.name, keeper.name, order.customer = "dupe", "keeper", dupe
    session.add_all([dupe, keeper, order])
    session.commit()
    merge_into(dupe, keeper, dry_run=True)
    session.commit()
    assert order.customer is dupe


# -- SQLModel ------------------------------------------------------------------------------


@functools.cache
def _sqlmodel_shop() -> tuple[Any, type, type, type]:
    """Built once: SQLModel maps every class on one registry of its own."""
    import sqlmodel

    metadata = __import__("sqlalchemy").MetaData()

    class Model(sqlmodel.SQLModel):
        pass

    Model.metadata = metadata  # a MetaData of its own: SQLModel's default is global

    class Customer(ReferencesMixin, Model, table=True):  # type: ignore[call-arg,misc]
        __tablename__ = "sm_customer"
        id: int | None = sqlmodel.Field(default=None, primary_key=True)
        name: str = sqlmodel.Field(max_length=20)

    class Order(Model, table=True):  # type: ignore[call-arg,misc]
        __tablename__ = "sm_order"
        id: int | None = sqlmodel.Field(default=None, primary_key=True)
        customer_id: int = sqlmodel.Field(foreign_key="sm_customer.id")

    class AppSession(ReferencesSession, sqlmodel.Session):  # type: ignore[misc]
        """The documented combination: SQLModel's exec() and the queue."""

    return sqlmodel, Customer, Order, AppSession


def sqlmodel_shop() -> tuple[Any, type, type, type]:
    pytest.importorskip("sqlmodel")
    return _sqlmodel_shop()


@pytest.mark.parametrize("entry", ["mixin", "function", "queued"])
def test_sqlmodel_models_merge(db: Backend, entry: str) -> None:
    sqlmodel, Customer, Order, AppSession = sqlmodel_shop()
    metadata = Customer.metadata
    metadata.create_all(db.engine)
    try:
        session_class = AppSession if entry == "queued" else sqlmodel.Session
        with session_class(db.engine) as session:
            dupe, keeper = Customer(name="dupe"), Customer(name="keeper")
            session.add_all([dupe, keeper])
            session.commit()
            session.add(Order(customer_id=dupe.id))
            session.commit()
            merge = merge_into if entry == "function" else type(dupe).merge_into
            report = merge(dupe, keeper)
            session.commit()
            assert report.applied and report.rowcount == 1
            found = session.exec(sqlmodel.select(Order.customer_id)).all()
            assert found == [keeper.id]
            assert keeper.dependents().count() == 1 and dupe.dependents().count() == 0
    finally:
        metadata.drop_all(db.engine)
