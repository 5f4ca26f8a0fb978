"""ReferencesSession: queued merges applied set-based at flush, on every backend."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import func, inspect, select
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.orm import sessionmaker

from sa_references import MergeConflictError, ReferencesError, ReferencesSession, referencing_keys
from tests.conftest import TwoBinds
from tests.models import Customer, Group, Order, Review, Shelf, Trap, Warehouse, customer_group


@pytest.fixture
def rsession(db: Any) -> Iterator[ReferencesSession]:
    with db.engine.connect() as connection:
        transaction = connection.begin()
        with ReferencesSession(bind=connection, join_transaction_mode="create_savepoint") as s:
            yield s
        if transaction.is_active:
            transaction.rollback()


def customers(session: ReferencesSession, n: int, orders: int = 2) -> list[Customer]:
    people = [Customer(name=f"c{i}", code=f"C{i}") for i in range(n)]
    session.add_all(people)
    session.add_all(
        [Order(customer=c, note=f"{c.name}-{j}") for c in people for j in range(orders)]
    )
    session.flush()
    return people


def owners(session: ReferencesSession) -> dict[str, int]:
    rows = session.execute(select(Order.note, Order.customer_id).execution_options(autoflush=False))
    return dict(rows.all())


def test_construction(db: Any) -> None:
    maker = sessionmaker(db.engine, class_=ReferencesSession, autoflush=False)
    with maker() as session:
        assert isinstance(session, ReferencesSession)
        assert session.autoflush is False and session.synchronize_session == "evaluate"
    with ReferencesSession(db.engine, synchronize_session="fetch") as session:
        assert session.synchronize_session == "fetch"
    with pytest.raises(ArgumentError):
        ReferencesSession(db.engine, synchronize_session="sometimes")  # type: ignore[arg-type]


def test_merge_is_queued_until_flush(rsession: ReferencesSession) -> None:
    a, b = customers(rsession, 2)
    report = a.merge_into(b)
    assert not report.applied and rsession.queued_merges == 1
    assert owners(rsession)["c0-0"] == a.id  # not yet applied
    rsession.flush()
    assert report.applied and rsession.queued_merges == 0
    assert report.rowcount == 2 and report["order(customer_id)"].repointed == 2
    assert owners(rsession)["c0-0"] == b.id


def test_query_after_merge_sees_merged_state(rsession: ReferencesSession) -> None:
    a, b = customers(rsession, 2)
    a.merge_into(b)
    count = rsession.scalar(select(func.count()).where(Order.customer_id == b.id))
    assert count == 4


def test_commit_applies_queue_with_nothing_else_pending(rsession: ReferencesSession) -> None:
    a, b = customers(rsession, 2)
    rsession.commit()
    assert not rsession.dirty and not rsession.new
    a.merge_into(b)
    rsession.commit()
    assert rsession.queued_merges == 0
    assert set(owners(rsession).values()) == {b.id}


def test_rollback_drops_queue(rsession: ReferencesSession) -> None:
    a, b = customers(rsession, 2)
    rsession.commit()
    a.merge_into(b)
    rsession.rollback()
    assert rsession.queued_merges == 0
    rsession.flush()
    assert set(owners(rsession).values()) == {a.id, b.id}


def test_rolled_back_savepoint_drops_only_its_merges(rsession: ReferencesSession) -> None:
    a, b, c, d = customers(rsession, 4)
    a.merge_into(b)
    nested = rsession.begin_nested()  # flushes: a -> b is applied here
    assert rsession.queued_merges == 0
    c.merge_into(d)
    nested.rollback()
    assert rsession.queued_merges == 0
    rsession.flush()
    assert owners(rsession)["c0-0"] == b.id and owners(rsession)["c2-0"] == c.id


def test_one_update_per_key_for_many_merges(
    db: Any, rsession: ReferencesSession, statements: Any
) -> None:
    people = customers(rsession, 120)
    keys = referencing_keys(Customer)
    assert len(keys) == 9
    for dupe, keeper in zip(people[::2], people[1::2]):
        dupe.merge_into(keeper)
    with statements() as log:
        rsession.flush()
    assert log.count("UPDATE") <= len(keys)
    assert len(log.sql) < 60  # O(keys), not O(merges)
    locks = [s for s in log.sql if "FOR UPDATE" in s and "FROM customer" in s]
    can = db.can
    if can.pairs_shape == "arrays":
        # the pairs travel as arrays: one lock, no mapping table to create and fill
        assert len(locks) == 1 and "ANY" in locks[0]
        assert log.count("CREATE") == 0 and log.count("INSERT") == 0
    elif can.lock_shape == "json":
        assert len(locks) == 1  # 120 customers: one chunk
    moved = owners(rsession)
    assert all(moved[f"c{i}-0"] == people[i + 1].id for i in range(0, 120, 2))


def test_chains_resolve(rsession: ReferencesSession) -> None:
    a, b, c = customers(rsession, 3)
    ra = a.merge_into(b)
    rb = b.merge_into(c)
    rsession.flush()
    assert set(owners(rsession).values()) == {c.id}
    assert ra.batch is rb.batch and ra.batch is not None and ra.batch.rowcount == 4
    assert len(ra.batch.pairs) == 2
    # a batch's one UPDATE per key does not count per merge: no counts of their own
    assert ra.rowcount is None and rb.rowcount is None and ra.keys == []
    assert "applied in a batch of 2 merge(s): 4 row(s) re-pointed in all" in str(ra)


def test_cycle_refused_when_queued(rsession: ReferencesSession) -> None:
    a, b, c = customers(rsession, 3)
    a.merge_into(b)
    b.merge_into(c)
    with pytest.raises(ReferencesError, match="cycle"):
        c.merge_into(a)
    assert rsession.queued_merges == 2
    rsession.flush()
    assert set(owners(rsession).values()) == {c.id}


def test_source_queued_twice_with_different_targets(rsession: ReferencesSession) -> None:
    a, b, c = customers(rsession, 3)
    a.merge_into(b)
    with pytest.raises(ReferencesError, match="already queued"):
        a.merge_into(c)
    a.merge_into(b)  # the same pair again is harmless
    rsession.flush()


def test_two_sources_clash_in_one_target(rsession: ReferencesSession) -> None:
    a, b, keeper, other = customers(rsession, 4, orders=0)
    g = Group(name="g")
    a.groups = [g]
    b.groups = [g]
    other.groups = [g]
    rsession.flush()
    a.merge_into(keeper)
    b.merge_into(keeper)
    with pytest.raises(MergeConflictError) as info:
        rsession.flush()
    assert info.value.conflicts[0].table == "customer_group"
    assert info.value.conflicts[0].sources == ((b.id,),)
    assert rsession.queued_merges == 2  # nothing of the batch ran; the queue came back whole
    with rsession.no_autoflush:  # an autoflush would apply the queue, and fail again
        rows = rsession.execute(select(customer_group.c.customer_id)).scalars().all()
    assert sorted(rows) == sorted([a.id, b.id, other.id])
    # the session is usable: queue again, deleting the clash (the options asked last apply)
    a.merge_into(keeper, on_conflict="delete")
    b.merge_into(keeper, on_conflict="delete")
    rsession.flush()
    rows = rsession.execute(select(customer_group.c.customer_id)).scalars().all()
    assert sorted(rows) == sorted([keeper.id, other.id])
    rsession.expire(g)
    assert sorted(c.name for c in g.members) == ["c2", "c3"]


def test_conflict_with_target_ignore(rsession: ReferencesSession) -> None:
    a, b, keeper = customers(rsession, 3, orders=0)
    rsession.add_all(
        [Review(author=a, stars=5), Review(author=b, stars=4), Review(author=keeper, stars=5)]
    )
    rsession.flush()
    a.merge_into(keeper, on_conflict="ignore")
    b.merge_into(keeper, on_conflict="ignore")
    rsession.flush()
    rows = rsession.execute(select(Review.author_id, Review.stars).order_by(Review.stars)).all()
    assert sorted(rows) == sorted([(keeper.id, 4), (a.id, 5), (keeper.id, 5)])


def test_pending_insert_referencing_source(rsession: ReferencesSession) -> None:
    a, b = customers(rsession, 2, orders=0)
    a.merge_into(b)
    order = Order(customer=a, note="late")
    rsession.add(order)
    rsession.flush()
    assert owners(rsession)["late"] == b.id
    assert order.customer is b


def test_delete_source_after_queueing(rsession: ReferencesSession) -> None:
    a, b = customers(rsession, 2)
    moved = list(a.orders)
    a.merge_into(b)
    rsession.delete(a)
    rsession.flush()
    assert rsession.get(Customer, a.id) is None
    assert [o.customer for o in moved] == [b, b]
    assert set(owners(rsession).values()) == {b.id}


def test_delete_option(rsession: ReferencesSession) -> None:
    a, b = customers(rsession, 2)
    a.merge_into(b, delete=True)
    rsession.flush()
    assert rsession.scalar(select(func.count()).select_from(Customer)) == 1


@pytest.mark.parametrize("mode", ["evaluate", "fetch", "expire"])
def test_synchronize_modes(db: Any, mode: str) -> None:
    with db.engine.connect() as connection:
        transaction = connection.begin()
        session = ReferencesSession(
            bind=connection, join_transaction_mode="create_savepoint", synchronize_session=mode
        )
        a, b, c = customers(session, 3)  # type: ignore[arg-type]
        orders_a = list(a.orders)
        assert len(b.orders) == 2
        a.merge_into(b)
        c.merge_into(b)
        session.flush()
        assert [o.customer for o in orders_a] == [b, b]
        assert a.orders == [] and len(b.orders) == 6
        session.close()
        transaction.rollback()


def test_synchronize_false_per_call(rsession: ReferencesSession) -> None:
    a, b = customers(rsession, 2)
    order = a.orders[0]
    a.merge_into(b, synchronize_session=False)
    rsession.flush()
    assert order.customer_id == a.id  # stale, as asked
    rsession.expire_all()
    assert order.customer_id == b.id


def test_evaluate_syncs_without_select(rsession: ReferencesSession, statements: Any) -> None:
    a, b = customers(rsession, 2)
    orders_a = list(a.orders)
    assert len(b.orders) == 2
    a.merge_into(b)
    rsession.flush()
    with statements() as log:
        assert [o.customer_id for o in orders_a] == [b.id, b.id]
        assert [o.customer for o in orders_a] == [b, b]
        assert len(b.orders) == 4 and a.orders == []
    assert log.sql == []


def test_failure_leaves_nothing_of_the_batch(rsession: ReferencesSession) -> None:
    a, b, c, d = customers(rsession, 4)
    rsession.add(Trap(customer_id=c.id, armed=True))
    rsession.flush()
    before = owners(rsession)
    orders_a = list(a.orders)
    a.merge_into(b)
    c.merge_into(d)
    with pytest.raises(DBAPIError) as info:
        rsession.flush()
    notes = "".join(getattr(info.value, "__notes__", []))
    assert "zz_trap(customer_id)" in notes and "pair" in notes
    assert owners(rsession) == before
    assert [o.customer for o in orders_a] == [a, a]
    assert rsession.queued_merges == 2  # the queue came back whole: nothing of it ran
    with pytest.raises(DBAPIError):  # and is applied, whole, at the next flush
        rsession.flush()
    rsession.rollback()  # drops it
    assert rsession.queued_merges == 0
    rsession.add(Order(customer=b, note="after"))
    rsession.flush()


def test_composite_key_batch(rsession: ReferencesSession) -> None:
    """Every column of a composite key changes: MySQL's left-to-right SET must not bite."""
    old, new = Warehouse(region="eu", number=1), Warehouse(region="us", number=2)
    swap = Warehouse(region="us", number=1)
    old.shelves = [Shelf(label="a"), Shelf(label="b")]
    swap.shelves = [Shelf(label="c")]
    rsession.add_all([old, new, swap])
    rsession.flush()
    old.merge_into(new)
    swap.merge_into(new)
    rsession.flush()
    rows = rsession.execute(select(Shelf.region, Shelf.number, Shelf.label).order_by(Shelf.label))
    assert rows.all() == [("us", 2, "a"), ("us", 2, "b"), ("us", 2, "c")]
    assert [s.label for s in new.shelves] == ["a", "b", "c"]


def test_dry_run_is_immediate(rsession: ReferencesSession) -> None:
    a, b = customers(rsession, 2)
    plan = a.merge_into(b, dry_run=True)
    assert plan.applied and plan.dry_run and plan.rowcount == 2
    assert rsession.queued_merges == 0


def _async_url(db: Any) -> str:
    if db.dialect == "sqlite":
        return f"sqlite+aiosqlite:///{db.url}"
    return db.engine.url.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)


@pytest.mark.backends("sqlite", "sqlite-nofk", "postgresql")
def test_async_session(db: Any) -> None:
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    async def scenario() -> list[Any]:
        engine = create_async_engine(_async_url(db))
        try:
            async with AsyncSession(
                engine, sync_session_class=ReferencesSession, expire_on_commit=False
            ) as session:
                a, b = Customer(name="async-a"), Customer(name="async-b")
                session.add_all([a, b, Order(customer=a, note="async-1")])
                await session.flush()
                report = await session.run_sync(lambda _s: a.merge_into(b))
                await session.commit()
                owner = await session.scalar(
                    select(Order.customer_id).where(Order.note == "async-1")
                )
                result = [report.applied, report.rowcount, owner == b.id]
                await session.execute(Order.__table__.delete().where(Order.note == "async-1"))
                await session.execute(
                    Customer.__table__.delete().where(Customer.name.in_(["async-a", "async-b"]))
                )
                await session.commit()
                return result
        finally:
            await engine.dispose()

    assert asyncio.run(scenario()) == [True, 1, True]


def test_delete_cascade_after_queueing_keeps_moved_rows(rsession: ReferencesSession) -> None:
    """Customer.coupons cascades deletes: the coupon moves to the keeper, it is not deleted."""
    from tests.models import Coupon

    a, b = customers(rsession, 2, orders=0)
    coupon = Coupon(customer=a)
    rsession.add(coupon)
    rsession.flush()
    assert a.coupons == [coupon]
    a.merge_into(b)
    rsession.delete(a)  # cascades to the loaded coupon
    rsession.flush()
    assert coupon in rsession and coupon.customer is b
    codes = rsession.execute(select(Coupon.customer_code)).scalars().all()
    assert codes == [b.code]


def test_merges_differing_only_in_delete_are_one_batch(
    rsession: ReferencesSession, statements: Any
) -> None:
    a, b, c, d = customers(rsession, 4)
    ra = a.merge_into(b, delete=True)
    rc = c.merge_into(d)
    with statements() as log:
        rsession.flush()
    assert ra.batch is rc.batch
    assert log.count("UPDATE") <= len(referencing_keys(Customer))
    assert inspect(a).was_deleted and not inspect(c).was_deleted
    assert set(owners(rsession).values()) == {b.id, d.id}


def test_session_binding_the_classes_to_another_engine(two_binds: TwoBinds) -> None:
    """The batch's SAVEPOINT opens on the connection the session binds the merged class to,
    not on its default bind: a failing batch leaves nothing there, a good one applies."""
    from tests.models import Base

    connection = two_binds.connection
    with ReferencesSession(bind=two_binds.default, binds={Base: connection}) as session:
        a, b, c, d = (Customer(name=name) for name in "abcd")
        orders = [Order(customer=x) for x in (a, a, c)]
        session.add_all([a, b, c, d, *orders])
        session.flush()
        session.add(Trap(customer_id=c.id, armed=True))
        session.flush()
        owned = select(Order.customer_id).order_by(Order.id)
        before = connection.execute(owned).scalars().all()
        a.merge_into(b)
        c.merge_into(d)
        with pytest.raises(DBAPIError, match="zz_trap is armed"):
            session.flush()
        assert two_binds.sent_to_default == []  # nothing ran on the default bind
        assert connection.execute(owned).scalars().all() == before
        connection.execute(Trap.__table__.delete())
        a.merge_into(b)
        c.merge_into(d)
        session.flush()
        assert connection.execute(owned).scalars().all() == [b.id, b.id, d.id]
        assert two_binds.sent_to_default == []
