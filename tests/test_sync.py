"""Objects already loaded agree with the database after a merge, without SELECTs."""

from __future__ import annotations

import gc
import itertools
from typing import Any

import pytest
from sqlalchemy import ForeignKey, MetaData, String, inspect, select, update
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from sa_references import merge_into
from tests.models import Customer, Group, Order, Profile, Review, customer_group


@pytest.fixture
def loaded(session: Session) -> dict[str, Any]:
    """Two customers with orders, groups and reviews, everything loaded."""
    dupe, keeper = Customer(name="dupe"), Customer(name="keeper")
    vip, news = Group(name="vip"), Group(name="news")
    dupe.groups = [vip, news]
    keeper.groups = [vip]
    orders = [
        Order(customer=dupe, note="d1"),
        Order(customer=dupe, note="d2"),
        Order(customer=keeper, note="k1"),
    ]
    reviews = [
        Review(author=dupe, stars=5),
        Review(author=dupe, stars=4),
        Review(author=keeper, stars=5),
    ]
    session.add_all([dupe, keeper, vip, news, *orders, *reviews])
    session.flush()
    session.expire_all()
    # load everything the user would have loaded
    for obj in (dupe, keeper, vip, news, *orders, *reviews):
        session.refresh(obj)
    for obj in (dupe, keeper):
        obj.orders, obj.groups, obj.reviews  # noqa: B018
    for group in (vip, news):
        group.members  # noqa: B018
    for order in orders:
        order.customer  # noqa: B018
    for review in reviews:
        review.author  # noqa: B018
    return {
        "dupe": dupe,
        "keeper": keeper,
        "vip": vip,
        "news": news,
        "orders": orders,
        "reviews": reviews,
    }


def test_everything_synced_without_select(
    session: Session, loaded: dict[str, Any], statements: Any
) -> None:
    dupe, keeper, vip, news = loaded["dupe"], loaded["keeper"], loaded["vip"], loaded["news"]
    d1, d2, k1 = loaded["orders"]
    r5, r4, k5 = loaded["reviews"]
    dupe.merge_into(keeper, on_conflict="delete")
    with statements() as log:
        assert d1.customer_id == keeper.id and d2.customer_id == keeper.id
        assert d1.customer is keeper and d2.customer is keeper and k1.customer is keeper
        assert dupe.orders == []
        assert keeper.orders == [k1, d1, d2]
        assert dupe.groups == []
        assert sorted(g.name for g in keeper.groups) == ["news", "vip"]
        assert vip.members == [keeper]  # the clashing association row was deleted
        assert news.members == [keeper]
        assert dupe.reviews == []
        assert keeper.reviews == [k5, r4]
        assert r4.author is keeper
    assert log.sql == []
    assert r5 not in session  # deleted as a conflict
    # and it is what the database says
    session.expire_all()
    assert sorted(o.note for o in keeper.orders) == ["d1", "d2", "k1"]
    assert sorted(g.name for g in keeper.groups) == ["news", "vip"]
    assert [c.name for c in vip.members] == ["keeper"]


def test_ignore_keeps_clashing_members_on_source(
    session: Session, loaded: dict[str, Any], statements: Any
) -> None:
    dupe, keeper, vip = loaded["dupe"], loaded["keeper"], loaded["vip"]
    r5 = loaded["reviews"][0]
    dupe.merge_into(keeper, on_conflict="ignore")
    with statements() as log:
        assert dupe.groups == [vip]
        assert sorted(c.name for c in vip.members) == ["dupe", "keeper"]
        assert dupe.reviews == [r5] and r5.author is dupe
    assert log.sql == []
    session.expire_all()
    assert [g.name for g in dupe.groups] == ["vip"]
    assert sorted(c.name for c in vip.members) == ["dupe", "keeper"]


def test_sqlalchemy_evaluate_leaves_relationships_stale(
    session: Session, loaded: dict[str, Any]
) -> None:
    """What the ORM's own synchronize_session='evaluate' does, and what we do instead."""
    dupe, keeper = loaded["dupe"], loaded["keeper"]
    d1 = loaded["orders"][0]
    session.execute(
        update(Order).where(Order.customer_id == dupe.id).values(customer_id=keeper.id),
        execution_options={"synchronize_session": "evaluate"},
    )
    assert d1.customer_id == keeper.id
    assert d1.customer is dupe  # stale
    assert d1 in dupe.orders and d1 not in keeper.orders  # stale
    session.rollback()


def test_delete_after_merge_keeps_moved_rows(session: Session, loaded: dict[str, Any]) -> None:
    dupe, keeper = loaded["dupe"], loaded["keeper"]
    dupe.merge_into(keeper, on_conflict="delete")
    session.delete(dupe)
    session.flush()
    session.expire_all()
    assert sorted(o.note for o in keeper.orders) == ["d1", "d2", "k1"]


def test_source_collection_unloaded_target_loaded_expires(session: Session) -> None:
    dupe, keeper = Customer(name="d"), Customer(name="k")
    session.add_all([dupe, keeper, Order(customer=dupe), Order(customer=keeper)])
    session.flush()
    session.expire(dupe, ["orders"])
    assert len(keeper.orders) == 1
    dupe.merge_into(keeper)
    assert "orders" not in inspect(keeper).dict  # cannot be computed: expired
    assert len(keeper.orders) == 2


def test_target_collection_unloaded(session: Session) -> None:
    dupe, keeper = Customer(name="d"), Customer(name="k")
    order = Order(customer=dupe)
    session.add_all([dupe, keeper, order])
    session.flush()
    session.expire(keeper, ["orders"])
    dupe.merge_into(keeper)
    assert dupe.orders == []
    assert keeper.orders == [order]


def test_foreign_key_loaded_relationship_not(session: Session, statements: Any) -> None:
    dupe, keeper = Customer(name="d"), Customer(name="k")
    order = Order(customer=dupe)
    session.add_all([dupe, keeper, order])
    session.flush()
    session.expire(order, ["customer"])
    session.expire(dupe, ["orders"])
    dupe.merge_into(keeper)
    with statements() as log:
        assert order.customer_id == keeper.id
        assert order.customer is keeper  # many-to-one from the identity map, no SQL
    assert log.sql == []


def test_relationship_loaded_foreign_key_expired(session: Session) -> None:
    dupe, keeper = Customer(name="d"), Customer(name="k")
    order = Order(customer=dupe)
    session.add_all([dupe, keeper, order])
    session.flush()
    session.expire(order, ["customer_id"])
    assert "customer" in inspect(order).dict
    dupe.merge_into(keeper)
    assert order.customer is keeper
    assert order.customer_id == keeper.id


def test_one_to_one_synced(session: Session) -> None:
    dupe, keeper = Customer(name="d"), Customer(name="k")
    profile = Profile(customer=dupe)
    session.add_all([dupe, keeper, profile])
    session.flush()
    assert keeper.profile is None
    dupe.merge_into(keeper)
    assert keeper.profile is profile and dupe.profile is None and profile.customer is keeper


def test_self_referential_collections(session: Session, statements: Any) -> None:
    dupe, keeper = Customer(name="d"), Customer(name="k")
    kid = Customer(name="kid", referrer=dupe)
    session.add_all([dupe, keeper, kid])
    session.flush()
    assert dupe.referrals == [kid] and keeper.referrals == []
    dupe.merge_into(keeper)
    with statements() as log:
        assert kid.referrer is keeper
        assert keeper.referrals == [kid] and dupe.referrals == []
    assert log.sql == []


@pytest.mark.parametrize("mode", ["evaluate", "fetch", "expire"])
def test_synchronize_modes_agree_with_database(
    session: Session, loaded: dict[str, Any], mode: str
) -> None:
    dupe, keeper, vip = loaded["dupe"], loaded["keeper"], loaded["vip"]
    d1 = loaded["orders"][0]
    merge_into(dupe, keeper, on_conflict="delete", synchronize_session=mode)  # type: ignore[arg-type]
    assert d1.customer is keeper and d1.customer_id == keeper.id
    assert sorted(o.note for o in keeper.orders) == ["d1", "d2", "k1"]
    assert dupe.orders == []
    assert vip.members == [keeper]
    assert sorted(g.name for g in keeper.groups) == ["news", "vip"]


def test_fetch_updates_objects_with_unloaded_keys(session: Session) -> None:
    dupe, keeper = Customer(name="d"), Customer(name="k")
    order = Order(customer=dupe)
    session.add_all([dupe, keeper, order])
    session.flush()
    session.expire(order)
    dupe.merge_into(keeper, synchronize_session="fetch")
    assert order.customer is keeper


def test_expire_mode_expires(session: Session, loaded: dict[str, Any]) -> None:
    dupe, keeper = loaded["dupe"], loaded["keeper"]
    d1 = loaded["orders"][0]
    dupe.merge_into(keeper, on_conflict="delete", synchronize_session="expire")
    assert "customer_id" not in inspect(d1).dict
    assert "orders" not in inspect(keeper).dict


def test_synchronize_false_leaves_memory_alone(session: Session, loaded: dict[str, Any]) -> None:
    dupe, keeper = loaded["dupe"], loaded["keeper"]
    d1 = loaded["orders"][0]
    dupe.merge_into(keeper, on_conflict="delete", synchronize_session=False)
    assert d1.customer_id == dupe.id  # stale, as documented
    session.expire_all()
    assert d1.customer_id == keeper.id


def test_unflushed_change_survives(session: Session) -> None:
    dupe, keeper, other = Customer(name="d"), Customer(name="k"), Customer(name="o")
    order = Order(customer=dupe, note="n")
    session.add_all([dupe, keeper, other, order])
    session.flush()
    order.customer = other  # unflushed: flushed first, then not moved
    dupe.merge_into(keeper)
    assert order.customer is other
    session.expire_all()
    assert order.customer is other


def test_association_rows_in_database(session: Session, loaded: dict[str, Any]) -> None:
    dupe, keeper = loaded["dupe"], loaded["keeper"]
    dupe.merge_into(keeper, on_conflict="delete")
    rows = session.execute(select(customer_group.c.customer_id)).scalars().all()
    assert set(rows) == {keeper.id} and len(rows) == 2


def test_many_to_one_never_gets_an_object_of_another_class(db: Any) -> None:
    """A table mapped twice (declarative and automap): each class keeps its own objects."""
    from sqlalchemy import Column, ForeignKey, Integer, MetaData, Table
    from sqlalchemy.ext.automap import automap_base
    from sqlalchemy.orm import DeclarativeBase, mapped_column

    from sa_references import ReferencesMixin

    metadata = MetaData()

    class Base(ReferencesMixin, DeclarativeBase):
        pass

    Base.metadata = metadata  # type: ignore[misc]

    class Author(Base):
        __tablename__ = "twice_author"
        id = mapped_column(Integer, primary_key=True)

    Table(
        "twice_book",
        metadata,
        Column("id", Integer, primary_key=True),
        Column("author_id", ForeignKey("twice_author.id")),
    )
    Auto = automap_base(metadata=metadata)
    Auto.prepare()
    metadata.create_all(db.engine)
    try:
        with Session(db.engine) as session:
            a, k = Author(id=1), Author(id=2)
            session.add_all([a, k])
            session.flush()
            session.execute(metadata.tables["twice_book"].insert().values(id=1, author_id=1))
            book = session.scalars(select(Auto.classes.twice_book)).one()
            assert type(book.twice_author) is Auto.classes.twice_author
            a.merge_into(k)
            assert book.author_id == 2
            assert type(book.twice_author) is Auto.classes.twice_author
            assert book.twice_author.id == 2
    finally:
        metadata.drop_all(db.engine)
        Auto.registry.dispose()
        Base.registry.dispose()


# -- objects that enter the session after its first merge ----------------------------------------
# The synchronizer follows the session's lifecycle events instead of scanning the whole
# identity map on every merge; each way into the identity map must be seen.


_codes = itertools.count()


def _merge_pair(session: Session) -> tuple[Customer, Customer]:
    dupe = Customer(name="dupe", code=f"dupe-{next(_codes)}")
    keeper = Customer(name="keeper", code=f"keeper-{next(_codes)}")
    session.add_all([dupe, keeper])
    session.flush()
    return dupe, keeper


def _first_merge(session: Session) -> None:
    """Merges that start the session's index of loaded objects (at the second one)."""
    for _ in range(2):
        a, b = _merge_pair(session)
        merge_into(a, b)


def test_object_loaded_after_the_first_merge_is_synced(session: Session) -> None:
    dupe, keeper = _merge_pair(session)
    session.add(Order(customer=dupe, note="later"))
    session.flush()
    session.expunge_all()
    _first_merge(session)
    order = session.scalars(select(Order).where(Order.note == "later")).one()  # loaded
    dupe, keeper = session.get(Customer, dupe.id), session.get(Customer, keeper.id)
    merge_into(dupe, keeper)
    assert order.customer_id == keeper.id and order.customer is keeper


def test_object_flushed_after_the_first_merge_is_synced(session: Session) -> None:
    _first_merge(session)
    dupe, keeper = _merge_pair(session)
    order = Order(customer=dupe, note="new")
    session.add(order)
    session.flush()  # pending to persistent
    merge_into(dupe, keeper)
    assert order.customer_id == keeper.id and order.customer is keeper


def test_object_attached_after_the_first_merge_is_synced(session: Session) -> None:
    dupe, keeper = _merge_pair(session)
    order = Order(customer_id=dupe.id, note="detached")
    session.add(order)
    session.flush()
    session.expunge(order)
    _first_merge(session)
    session.add(order)  # detached to persistent
    merge_into(dupe, keeper)
    assert order.customer_id == keeper.id


def test_object_restored_by_a_rollback_after_the_first_merge_is_synced(session: Session) -> None:
    dupe, keeper = _merge_pair(session)
    order = Order(customer_id=dupe.id, note="restored")
    session.add(order)
    session.flush()
    nested = session.begin_nested()
    session.delete(order)
    session.flush()
    _first_merge(session)  # the order is not in the identity map now
    nested.rollback()  # deleted to persistent
    assert inspect(order).persistent
    merge_into(dupe, keeper)
    assert order.customer_id == keeper.id


def test_objects_loaded_again_after_expunge_all_are_synced(session: Session) -> None:
    dupe, keeper = _merge_pair(session)
    session.add_all([Order(customer=dupe, note=f"o{i}") for i in range(3)])
    session.flush()
    dupe_id, keeper_id = dupe.id, keeper.id
    for _ in range(3):  # the index forgets what left and follows what comes back
        _first_merge(session)
        session.expunge_all()
        orders = session.scalars(select(Order).where(Order.note.like("o%"))).all()
        dupe, keeper = session.get(Customer, dupe_id), session.get(Customer, keeper_id)
        merge_into(dupe, keeper)
        assert {o.customer_id for o in orders} == {keeper_id}
        dupe_id, keeper_id = keeper_id, _merge_pair(session)[1].id
        session.flush()


def test_source_collections_stay_unloaded_unless_deleted(session: Session) -> None:
    """Nothing is written into the unloaded collections of a source that stays (memory)."""
    dupe, keeper = _merge_pair(session)
    session.add(Order(customer=dupe, note="o"))
    session.flush()
    session.expire(dupe, ["orders"])
    merge_into(dupe, keeper)
    assert "orders" not in inspect(dupe).dict
    assert dupe.orders == []  # loads: nothing is left on the source


def test_deleted_source_needs_no_select_for_its_children(session: Session, statements: Any) -> None:
    """Its collections are known empty once merged: deleting it reads no children."""
    counts = []
    for delete in (False, True):
        dupe, keeper = _merge_pair(session)
        session.add(Order(customer=dupe, note="o"))
        session.flush()
        session.expire(dupe)
        with statements() as log:
            merge_into(dupe, keeper, delete=delete)
        # the live catalog is read (once) before a merge deletes its source: not children
        catalog = ("sqlite_master", "pg_catalog", "pg_constraint", "information_schema")
        reads = [s for s in log.sql if s.lstrip().upper().startswith("SELECT")]
        counts.append(len([s for s in reads if not any(c in s for c in catalog)]))
    assert counts[1] == counts[0]


# PyMySQL streams yield_per results on an unbuffered cursor, which a merge's statements
# would discard: the case cannot arise on MariaDB/MySQL
@pytest.mark.backends("sqlite", "sqlite-nofk", "postgresql")
def test_rows_of_a_result_opened_before_the_first_merge_are_synced(session: Session) -> None:
    """A query's loader decides once, when it runs, whether to fire loaded_as_persistent:
    the objects a result streams after the session's first merge come without the event
    (results without yield_per are read whole before the query returns)."""
    dupe, keeper = _merge_pair(session)
    session.add_all([Order(customer=dupe, note=f"stream{i}") for i in range(6)])
    session.flush()
    dupe_id, keeper_id = dupe.id, keeper.id
    session.expunge_all()
    query = select(Order).where(Order.note.like("stream%")).order_by(Order.id)
    result = session.scalars(query.execution_options(yield_per=2))
    first = next(result)
    _first_merge(session)  # the session starts following its loads here
    rest = list(result)  # loaded without the event
    assert len(rest) == 5
    merge_into(session.get(Customer, dupe_id), session.get(Customer, keeper_id))
    assert {o.customer_id for o in [first, *rest]} == {keeper_id}


def test_objects_collected_or_expunged_leave_the_index(session: Session) -> None:
    """The index counts what it holds; objects that left are forgotten (by their events or
    the garbage collector), so no rebuild is needed and new ones are still seen."""
    dupe, keeper = _merge_pair(session)
    session.add_all([Order(customer=dupe, note=f"gone{i}") for i in range(4)])
    session.flush()
    _first_merge(session)
    index = session._sa_references_loaded  # type: ignore[attr-defined]
    assert len(index._class_of) == len(session.identity_map)
    orders = session.scalars(select(Order).where(Order.note.like("gone%"))).all()
    session.expunge(orders[0])
    del orders
    gc.collect()
    assert len(index._class_of) == len(session.identity_map)
    later = Order(customer=dupe, note="later")
    session.add(later)
    session.flush()
    merge_into(dupe, keeper)
    assert later.customer_id == keeper.id


def test_identity_class_of_an_abstract_intermediate_mapper(db: Any) -> None:
    """Below a polymorphic_abstract mapper, identity keys name the abstract class (neither the
    mapper's own class nor the base's): loaded objects are still found and synced."""

    class Base(DeclarativeBase):
        metadata = MetaData()

    class Account(Base):
        __tablename__ = "abstract_account"
        id: Mapped[int] = mapped_column(primary_key=True)

    class Party(Base):
        __tablename__ = "abstract_party"
        id: Mapped[int] = mapped_column(primary_key=True)
        kind: Mapped[str] = mapped_column(String(20))
        __mapper_args__ = {"polymorphic_on": "kind", "polymorphic_identity": "party"}

    class Org(Party):
        __mapper_args__ = {"polymorphic_abstract": True}

    class Company(Org):
        __tablename__ = "abstract_company"
        id: Mapped[int] = mapped_column(ForeignKey("abstract_party.id"), primary_key=True)
        account_id: Mapped[int] = mapped_column(ForeignKey("abstract_account.id"))
        __mapper_args__ = {"polymorphic_identity": "company"}

    Base.metadata.create_all(db.engine)
    try:
        with Session(db.engine) as session:
            dupe, keeper = Account(id=1), Account(id=2)
            company = Company(id=10, account_id=1)
            session.add_all([dupe, keeper, company])
            session.flush()
            assert inspect(company).key[0] is Org
            merge_into(dupe, keeper)
            assert "account_id" in inspect(company).dict  # updated, not expired
            assert company.account_id == 2
            session.rollback()
    finally:
        Base.metadata.drop_all(db.engine)
        Base.registry.dispose()
