"""merge_into: what moves, conflicts, atomicity, statement counts, on every backend."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import create_engine, event, func, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from sa_references import MergeConflictError, ReferencesError, referencing_keys
from tests.conftest import TwoBinds
from tests.models import (
    Approval,
    Base,
    Car,
    Coupon,
    Customer,
    Engineer,
    Group,
    Machine,
    Manager,
    Order,
    Profile,
    Project,
    Review,
    Shelf,
    Trap,
    Trip,
    Truck,
    Warehouse,
    customer_group,
    customer_tag,
)


def snapshot(session: Session) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every referencing table, straight from the database."""
    tables = {k.table for k in referencing_keys(Customer)}
    return {
        t.name: sorted(tuple(r) for r in session.execute(select(t)).all())
        for t in sorted(tables, key=lambda t: t.name)
    }


@pytest.fixture
def shop(session: Session) -> dict[str, Any]:
    dupe = Customer(name="dupe", code="D")
    keeper = Customer(name="keeper", code="K")
    other = Customer(name="other", code="O")
    vip, news = Group(name="vip"), Group(name="news")
    dupe.groups = [vip, news]
    keeper.groups = [vip]
    session.add_all([dupe, keeper, other, vip, news])
    session.add_all(
        [
            Order(customer=dupe, note="d1"),
            Order(customer=dupe, billing_customer=dupe, note="d2"),
            Order(customer=keeper, billing_customer=dupe, note="k1"),
            Order(customer=other, note="o1"),
            Review(author=dupe, stars=5),
            Review(author=dupe, stars=3),
            Review(author=keeper, stars=5),
            Coupon(customer=dupe),
            Customer(name="referred", referrer=dupe),
        ]
    )
    session.flush()
    session.execute(
        customer_tag.insert(),
        [
            {"customer_id": dupe.id, "tag": "a"},
            {"customer_id": dupe.id, "tag": "b"},
            {"customer_id": keeper.id, "tag": "b"},
        ],
    )
    return {"dupe": dupe, "keeper": keeper, "other": other, "vip": vip, "news": news}


def refs_to(session: Session, customer: Customer) -> int:
    return sum(
        session.execute(
            select(func.count())
            .select_from(k.table)
            .where(
                k.columns[0]
                == getattr(customer, "code" if k.referred_columns[0].name == "code" else "id")
            )
        ).scalar_one()
        for k in referencing_keys(Customer)
    )


def test_repoints_every_key(session: Session, shop: dict[str, Any], statements: Any) -> None:
    dupe, keeper = shop["dupe"], shop["keeper"]
    keys = referencing_keys(Customer)
    with statements() as log:
        report = dupe.merge_into(keeper, on_conflict="delete")
    assert len(log.updated) == len(keys)  # one per referencing key, even empty ones
    assert (
        report.rowcount == 2 + 2 + 1 + 1 + 1 + 1 + 1
    )  # orders, billing, group, review, coupon, referral, tag
    assert report["order(customer_id)"].repointed == 2
    assert report["order(billing_customer_id)"].repointed == 2
    assert report["customer_group(customer_id)"].deleted == 1
    assert report["review(author_id)"].deleted == 1
    assert report["customer_tag(customer_id)"].deleted == 1
    assert report.deleted == 3
    assert refs_to(session, dupe) == 0
    session.expire_all()
    assert sorted(o.note for o in keeper.orders) == ["d1", "d2", "k1"]
    assert sorted(g.name for g in keeper.groups) == ["news", "vip"]
    assert keeper.coupons and keeper.referrals[0].name == "referred"
    assert sorted(r.stars for r in keeper.reviews) == [3, 5]
    tags = session.execute(
        select(customer_tag.c.tag).where(customer_tag.c.customer_id == keeper.id)
    )
    assert sorted(t for (t,) in tags) == ["a", "b"]


def test_statements_use_bound_parameters(
    session: Session, shop: dict[str, Any], statements: Any
) -> None:
    with statements() as log:
        shop["dupe"].merge_into(shop["keeper"], on_conflict="delete")
    for statement in log.sql:
        assert str(shop["dupe"].id) not in statement.replace("(1)", "")
        assert "'D'" not in statement and "'K'" not in statement


def test_deterministic_key_order(session: Session, shop: dict[str, Any], statements: Any) -> None:
    with statements() as log:
        shop["dupe"].merge_into(shop["keeper"], on_conflict="delete")
    assert log.updated == sorted(log.updated)
    assert len(log.updated) == len(referencing_keys(Customer))


def test_conflict_raise_changes_nothing(session: Session, shop: dict[str, Any]) -> None:
    before = snapshot(session)
    with pytest.raises(MergeConflictError) as info:
        shop["dupe"].merge_into(shop["keeper"])
    error = info.value
    assert {c.table for c in error.conflicts} == {"customer_group", "review", "customer_tag"}
    assert "customer_group" in str(error) and "1 row(s)" in str(error)
    by_table = {c.table: c for c in error.conflicts}
    assert by_table["customer_group"].rows == ((shop["dupe"].id, shop["vip"].id),)
    assert by_table["review"].constraint == "uq_review_author_stars"
    assert isinstance(error, ReferencesError)
    assert snapshot(session) == before
    # the session is usable afterwards
    session.add(Order(customer=shop["other"]))
    session.flush()


def test_conflict_ignore_leaves_rows(session: Session, shop: dict[str, Any]) -> None:
    dupe, keeper, vip = shop["dupe"], shop["keeper"], shop["vip"]
    report = dupe.merge_into(keeper, on_conflict="ignore")
    assert report.left == 3
    assert report["customer_group(customer_id)"].left == 1
    left = session.execute(
        select(customer_group.c.group_id).where(customer_group.c.customer_id == dupe.id)
    ).all()
    assert left == [(vip.id,)]
    assert (
        session.execute(
            select(func.count()).select_from(Review).where(Review.author_id == dupe.id)
        ).scalar_one()
        == 1
    )


def test_one_to_one_conflict(session: Session, shop: dict[str, Any]) -> None:
    dupe, keeper = shop["dupe"], shop["keeper"]
    session.add_all([Profile(customer=dupe, bio="old"), Profile(customer=keeper, bio="new")])
    session.flush()
    with pytest.raises(MergeConflictError, match="profile"):
        dupe.merge_into(keeper, on_conflict="raise")
    dupe.merge_into(keeper, on_conflict="delete")
    bios = session.execute(select(Profile.bio, Profile.customer_id)).all()
    assert bios == [("new", keeper.id)]


def test_one_to_one_moves_when_target_has_none(session: Session, shop: dict[str, Any]) -> None:
    dupe, keeper = shop["dupe"], shop["keeper"]
    session.add(Profile(customer=dupe, bio="only"))
    session.flush()
    dupe.merge_into(keeper, on_conflict="delete")
    assert keeper.profile is not None and keeper.profile.bio == "only"
    assert dupe.profile is None


def test_null_in_unique_key_is_not_a_conflict(session: Session) -> None:
    a, b = Customer(name="a"), Customer(name="b")
    session.add_all([a, b])
    session.flush()
    # customer_tag's (customer_id, tag) is unique; Review's (author_id, stars) too.
    session.add_all([Review(author=a, stars=1), Review(author=b, stars=2)])
    session.flush()
    report = a.merge_into(b)
    assert report.rowcount == 1


def test_composite_foreign_key(session: Session, statements: Any) -> None:
    old, new = Warehouse(region="eu", number=1), Warehouse(region="eu", number=2)
    old.shelves = [Shelf(label="a"), Shelf(label="b")]
    new.shelves = [Shelf(label="b")]
    session.add_all([old, new])
    session.flush()
    with pytest.raises(MergeConflictError, match="uq_shelf_label"):
        old.merge_into(new)
    with statements() as log:
        report = old.merge_into(new, on_conflict="ignore")
    assert log.count("UPDATE") == 1  # one per constraint, not per column
    assert report.rowcount == 1 and report.left == 1
    rows = session.execute(
        select(Shelf.number, Shelf.label).order_by(Shelf.number, Shelf.label)
    ).all()
    assert rows == [(1, "b"), (2, "a"), (2, "b")]


def test_composite_key_partial_overlap(session: Session) -> None:
    """Two warehouses that share a region: only ``number`` changes."""
    old, new = Warehouse(region="us", number=7), Warehouse(region="us", number=8)
    old.shelves = [Shelf(label="x")]
    session.add_all([old, new])
    session.flush()
    old.merge_into(new)
    assert session.execute(select(Shelf.region, Shelf.number)).all() == [("us", 8)]


def test_foreign_key_to_unique_column(session: Session, shop: dict[str, Any]) -> None:
    dupe, keeper = shop["dupe"], shop["keeper"]
    report = dupe.merge_into(keeper, on_conflict="delete")
    assert report["coupon(customer_code)"].repointed == 1
    assert session.execute(select(Coupon.customer_code)).scalars().all() == ["K"]


def test_target_without_referred_value_is_refused(session: Session, shop: dict[str, Any]) -> None:
    nocode = Customer(name="nocode")
    session.add(nocode)
    session.flush()
    before = snapshot(session)
    with pytest.raises(ReferencesError, match="coupon"):
        shop["dupe"].merge_into(nocode, on_conflict="delete")
    assert snapshot(session) == before


def test_self_referential_key(session: Session, shop: dict[str, Any]) -> None:
    dupe, keeper = shop["dupe"], shop["keeper"]
    report = dupe.merge_into(keeper, on_conflict="delete")
    assert report["customer(referrer_id)"].repointed == 1
    referred = session.execute(select(Customer).where(Customer.name == "referred")).scalar_one()
    assert referred.referrer is keeper


def test_self_reference_guard(session: Session, shop: dict[str, Any]) -> None:
    dupe, keeper = shop["dupe"], shop["keeper"]
    keeper.referrer = dupe
    session.flush()
    before = snapshot(session)
    with pytest.raises(ReferencesError, match="reference itself"):
        dupe.merge_into(keeper, on_conflict="delete")
    assert snapshot(session) == before
    assert keeper.referrer is dupe


def test_self_reference_null(session: Session, shop: dict[str, Any]) -> None:
    dupe, keeper = shop["dupe"], shop["keeper"]
    keeper.referrer = dupe
    session.flush()
    plan = dupe.merge_into(keeper, on_self_reference="null", dry_run=True)
    report = dupe.merge_into(keeper, on_conflict="delete", on_self_reference="null")
    for counted in (plan, report):  # the dry run says what the merge does
        result = counted["customer(referrer_id)"]
        assert result.repointed == 1  # only "referred"
        assert (result.cleared, result.cleared_rows) == (1, ((keeper.id,),))
        assert counted.cleared == 1
        assert "customer(referrer_id): 1 re-pointed, 1 cleared" in str(counted)
    assert keeper.referrer is None
    assert (
        session.execute(
            select(func.count()).where(Customer.referrer_id == Customer.id)
        ).scalar_one()
        == 0
    )


def test_source_row_referencing_itself(session: Session) -> None:
    a, b = Customer(name="a"), Customer(name="b")
    session.add_all([a, b])
    session.flush()
    a.referrer_id = a.id
    session.flush()
    assert a.referrer is a
    a.merge_into(b)
    assert a.referrer is b


def test_joined_inheritance(session: Session, statements: Any) -> None:
    dupe, keeper = Engineer(name="dupe"), Engineer(name="keeper")
    boss = Manager(name="boss")
    mentee = Engineer(name="mentee", mentor=dupe)
    session.add_all([dupe, keeper, boss, mentee])
    session.flush()
    session.add_all([Project(lead=dupe), Machine(engineer=dupe), Approval(manager_id=boss.id)])
    session.flush()
    with statements() as log:
        report = dupe.merge_into(keeper)
    tables = {r.key.table.name for r in report.keys}
    assert tables == {"employee", "project", "machine"}  # never the sibling's approval
    assert not any("approval" in s for s in log.sql)
    assert sorted(log.updated) == ["employee", "machine", "project"]
    assert report.rowcount == 3
    assert mentee.mentor is keeper
    assert session.execute(select(Machine.engineer_id)).scalar_one() == keeper.id
    assert session.execute(select(Project.lead_id)).scalar_one() == keeper.id


def test_joined_inheritance_base_into_subclass(session: Session) -> None:
    from tests.models import Employee

    plain, engineer = Employee(name="plain"), Engineer(name="eng")
    session.add_all([plain, engineer])
    session.flush()
    session.add(Project(lead=plain))
    session.flush()
    plain.merge_into(engineer)
    assert session.execute(select(Project.lead_id)).scalar_one() == engineer.id
    with pytest.raises(ReferencesError, match="class"):
        engineer.merge_into(plain)


def test_different_subclasses_refused(session: Session) -> None:
    eng, boss = Engineer(name="e"), Manager(name="m")
    session.add_all([eng, boss])
    session.flush()
    with pytest.raises(ReferencesError):
        eng.merge_into(boss)


def test_single_table_inheritance(session: Session) -> None:
    a, b, t = Car(), Car(), Truck()
    session.add_all([a, b, t])
    session.flush()
    session.add_all([Trip(vehicle=a), Trip(vehicle=t)])
    session.flush()
    report = a.merge_into(b)
    assert report.rowcount == 1
    assert b.trips and not a.trips
    assert len(t.trips) == 1


def test_delete_source(session: Session, shop: dict[str, Any]) -> None:
    dupe, keeper = shop["dupe"], shop["keeper"]
    dupe_orders = list(dupe.orders)  # loaded collection on the source
    dupe.merge_into(keeper, on_conflict="delete", delete=True)
    assert dupe in session.deleted or not session.query(Customer).filter_by(name="dupe").count()
    session.flush()
    assert session.get(Customer, dupe.id) is None
    for order in dupe_orders:
        session.refresh(order)
        assert order.customer_id == keeper.id


def test_delete_source_with_stale_collection_and_no_expire(db: Any) -> None:
    """The sqlalchemy-utils data-loss scenario: expire_on_commit=False, delete the loser."""
    with Session(db.engine, expire_on_commit=False) as session:
        dupe, keeper = Customer(name="dupe"), Customer(name="keeper")
        orders = [Order(customer=dupe), Order(customer=dupe)]
        session.add_all([dupe, keeper, *orders])
        session.commit()
        try:
            assert len(dupe.orders) == 2
            dupe.merge_into(keeper, delete=True)
            session.commit()
            ids = (
                session.execute(
                    select(Order.customer_id).where(Order.id.in_([o.id for o in orders]))
                )
                .scalars()
                .all()
            )
            assert ids == [keeper.id, keeper.id]
        finally:
            session.rollback()
            session.execute(Order.__table__.delete().where(Order.id.in_([o.id for o in orders])))
            session.execute(
                Customer.__table__.delete().where(Customer.name.in_(["dupe", "keeper"]))
            )
            session.commit()


def test_unflushed_references_are_merged(session: Session, shop: dict[str, Any]) -> None:
    dupe, keeper = shop["dupe"], shop["keeper"]
    pending = Order(customer=dupe, note="pending")
    session.add(pending)
    dupe.merge_into(keeper, on_conflict="delete")
    assert pending.customer is keeper
    assert (
        session.execute(select(Order.customer_id).where(Order.note == "pending")).scalar_one()
        == keeper.id
    )


def test_pending_target_is_flushed(session: Session, shop: dict[str, Any]) -> None:
    fresh = Customer(name="fresh", code="F")
    session.add(fresh)
    report = shop["other"].merge_into(fresh)
    assert fresh.id is not None and report.rowcount == 1


def test_dry_run(session: Session, shop: dict[str, Any], statements: Any) -> None:
    before = snapshot(session)
    with statements() as log:
        plan = shop["dupe"].merge_into(shop["keeper"], dry_run=True)
    # the merge's own statements count, inside a SAVEPOINT always rolled back (never released)
    (opened,) = [s for s in log.all if s.lstrip().upper().startswith("SAVEPOINT")]
    assert log.all[0] == opened and log.all[-1].split() == ["ROLLBACK", "TO", *opened.split()]
    assert not [s for s in log.all if s.lstrip().upper().startswith("RELEASE")]
    assert log.count("UPDATE") and log.count("INSERT") == 0
    assert plan.dry_run
    assert plan["order(customer_id)"].repointed == 2
    assert {c.table for c in plan.conflicts} == {"customer_group", "review", "customer_tag"}
    assert snapshot(session) == before
    deleting = shop["dupe"].merge_into(shop["keeper"], dry_run=True, on_conflict="delete")
    real = shop["dupe"].merge_into(shop["keeper"], on_conflict="delete")
    assert [(r.key, r.repointed, r.deleted) for r in deleting] == [
        (r.key, r.repointed, r.deleted) for r in real
    ]


def test_failure_midway_leaves_nothing_half_done(session: Session, shop: dict[str, Any]) -> None:
    dupe, keeper = shop["dupe"], shop["keeper"]
    session.add(Trap(customer_id=dupe.id, armed=True))
    session.flush()
    orders = list(dupe.orders)
    before = snapshot(session)
    with pytest.raises(DBAPIError) as info:
        dupe.merge_into(keeper, on_conflict="delete")
    assert "zz_trap(customer_id)" in "".join(getattr(info.value, "__notes__", []))
    assert snapshot(session) == before  # earlier keys' UPDATEs undone
    assert [o.customer for o in orders] == [dupe, dupe]
    assert len(dupe.orders) == 2
    # the session is usable, no rollback needed
    session.add(Order(customer=keeper, note="after"))
    session.flush()
    assert session.execute(select(func.count()).select_from(Order)).scalar_one() == 5


def test_a_failed_merge_keeps_the_earlier_merges_of_the_transaction(
    session: Session, shop: dict[str, Any]
) -> None:
    """Each merge has its own SAVEPOINT (on MariaDB one name, set again by every merge):
    a failing merge undoes itself only."""
    dupe, keeper, other = shop["dupe"], shop["keeper"], shop["other"]
    other.merge_into(keeper)
    session.add(Trap(customer_id=dupe.id, armed=True))
    session.flush()
    after_first = snapshot(session)
    with pytest.raises(DBAPIError):
        dupe.merge_into(keeper, on_conflict="delete")
    assert snapshot(session) == after_first
    assert session.execute(select(Order.customer_id).where(Order.note == "o1")).scalar_one() == (
        keeper.id
    )
    session.execute(Trap.__table__.delete())  # the trap refuses any update of an armed row
    dupe.merge_into(keeper, on_conflict="delete")
    assert {c for (c,) in session.execute(select(Order.customer_id))} == {keeper.id}


def test_a_failed_merge_inside_the_callers_savepoint(
    session: Session, shop: dict[str, Any]
) -> None:
    """A merge before the caller's SAVEPOINT, a failing one and a good one inside it: the
    failure undoes itself only, and the caller's SAVEPOINT still works both ways."""
    dupe, keeper, other = shop["dupe"], shop["keeper"], shop["other"]
    other.merge_into(keeper)
    session.add(Trap(customer_id=dupe.id, armed=True))
    session.flush()
    after_first = snapshot(session)
    nested = session.begin_nested()
    with pytest.raises(DBAPIError):
        dupe.merge_into(keeper, on_conflict="delete")
    assert snapshot(session) == after_first
    session.execute(Trap.__table__.delete())  # the trap refuses any update of an armed row
    dupe.merge_into(keeper, on_conflict="delete")
    nested.rollback()
    assert snapshot(session) == after_first  # the caller's rollback undid the good merge
    session.execute(Trap.__table__.delete())
    with session.begin_nested():
        dupe.merge_into(keeper, on_conflict="delete")
    assert {c for (c,) in session.execute(select(Order.customer_id))} == {keeper.id}


def test_the_savepoint_of_a_single_merge(
    db: Any, session: Session, shop: dict[str, Any], statements: Any
) -> None:
    """Released after each merge, except on MariaDB/MySQL: setting a savepoint again under
    the same name replaces it there, and COMMIT drops it, so the RELEASE round trip is saved."""
    dupe, keeper, other = shop["dupe"], shop["keeper"], shop["other"]
    with statements() as log:
        other.merge_into(keeper)
        dupe.merge_into(keeper, on_conflict="delete")
    opened = [s for s in log.all if s.upper().startswith("SAVEPOINT")]
    released = [s for s in log.all if s.upper().startswith("RELEASE")]
    assert len(opened) == 2
    if db.can.savepoint_style == "reused":
        assert opened == ["SAVEPOINT sa_references_0"] * 2 and released == []
    else:
        assert [s.split()[-1] for s in released] == [s.split()[-1] for s in opened]
    # a merge that deletes its source flushes the ORM inside: the Session's own SAVEPOINT
    with statements() as log:
        spare = Customer(name="spare", code="S")
        session.add(spare)
        session.flush()
        spare.merge_into(keeper, delete=True)
    assert [s for s in log.all if s.upper().startswith("RELEASE")]


def test_savepoints_nest(session: Session, shop: dict[str, Any]) -> None:
    """The savepoint of a single merge inside another: each undoes its own block only
    (on MariaDB each nesting level has its own name, reused merge after merge)."""
    from sa_references._transaction import savepoint

    connection = session.connection()
    table = Customer.__table__
    names = select(table.c.name).where(table.c.id == shop["other"].id)

    def rename(name: str) -> None:
        connection.execute(table.update().where(table.c.id == shop["other"].id).values(name=name))

    with savepoint(connection, orm=False):
        rename("outer")
        with pytest.raises(RuntimeError), savepoint(connection, orm=False):
            rename("inner")
            raise RuntimeError("inner block fails")
        assert connection.execute(names).scalar_one() == "outer"
        with savepoint(connection, orm=False):
            rename("inner again")
    assert connection.execute(names).scalar_one() == "inner again"
    with pytest.raises(RuntimeError), savepoint(connection, orm=False):
        rename("outer 2")
        with savepoint(connection, orm=False):
            rename("inner 2")
        raise RuntimeError("outer block fails after the inner one succeeded")
    assert connection.execute(names).scalar_one() == "inner again"


def test_failure_in_delete_undoes_the_merge(session: Session, shop: dict[str, Any]) -> None:

    dupe, keeper = shop["dupe"], shop["keeper"]
    before = snapshot(session)

    def refuse(*_args: Any) -> None:
        raise RuntimeError("delete refused")

    event.listen(Customer, "before_delete", refuse)
    try:
        with pytest.raises(RuntimeError, match="delete refused"):
            dupe.merge_into(keeper, on_conflict="delete", delete=True)
    finally:
        event.remove(Customer, "before_delete", refuse)
    assert snapshot(session) == before
    assert dupe in session and not inspect_deleted(dupe)
    assert len(dupe.orders) == 2 and len(keeper.orders) == 1


def inspect_deleted(obj: Any) -> bool:
    from sqlalchemy import inspect

    return bool(inspect(obj).deleted)


def test_rollback_undoes_merge(session: Session, shop: dict[str, Any]) -> None:
    session.commit()  # the test's outer transaction still rolls everything back afterwards
    before = snapshot(session)
    shop["dupe"].merge_into(shop["keeper"], on_conflict="delete")
    session.rollback()
    assert snapshot(session) == before


def test_rollback_on_plain_pysqlite_engine(tmp_path: Any) -> None:
    """Without the savepoint recipe, pysqlite would commit at RELEASE SAVEPOINT."""

    from tests.models import Base

    engine = create_engine(f"sqlite:///{tmp_path / 'plain.db'}")
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        dupe, keeper = Customer(name="d"), Customer(name="k")
        session.add_all([dupe, keeper, Order(customer=dupe)])
        session.commit()
        dupe.merge_into(keeper)
        session.rollback()
        assert session.execute(select(Order.customer_id)).scalar_one() == dupe.id
        # and a commit keeps it
        dupe.merge_into(keeper)
        keeper_id = keeper.id
        session.commit()
    with Session(engine) as session:
        assert session.execute(select(Order.customer_id)).scalar_one() == keeper_id
    engine.dispose()


def test_detached_expired_object_is_a_references_error(
    session: Session, shop: dict[str, Any]
) -> None:
    session.commit()  # expires everything
    session.expunge(shop["dupe"])
    with pytest.raises(ReferencesError, match=r"source detached Customer \(\d+,\) is not attached"):
        shop["dupe"].merge_into(shop["keeper"])


def test_session_binding_the_classes_to_another_engine(two_binds: TwoBinds) -> None:
    """The SAVEPOINT opens on the connection the session binds the merged class to, not on
    its default bind: a dry run (and a failing merge) leaves nothing there."""
    connection = two_binds.connection
    with Session(bind=two_binds.default, binds={Base: connection}) as session:
        dupe, keeper = Customer(name="dupe"), Customer(name="keeper")
        session.add_all([dupe, keeper, Order(customer=dupe), Order(customer=dupe)])
        session.flush()
        report = dupe.merge_into(keeper, dry_run=True)
        assert report.rowcount == 2
        counted = select(func.count()).where(Order.customer_id == dupe.id)
        assert connection.execute(counted).scalar_one() == 2
        assert dupe.merge_into(keeper).rowcount == 2
        assert connection.execute(counted).scalar_one() == 0
        assert two_binds.sent_to_default == []  # nothing ran on the default bind
