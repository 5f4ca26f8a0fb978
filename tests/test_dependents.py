"""dependents() and row_dependents(): what references a row, lazily, on every backend."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Column, ForeignKey, Integer, MetaData, Row, String, Table, select
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.automap import automap_base
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    MappedAsDataclass,
    Session,
    mapped_column,
    registry,
    relationship,
)

from sa_references import (
    Dependents,
    KeyDependents,
    ReferencesError,
    ReferencesMixin,
    dependents,
    merge_into,
    referencing_keys,
    row_dependents,
)
from tests.models import (
    Approval,
    Car,
    Coupon,
    Customer,
    Employee,
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
    customer_tag,
)


@pytest.fixture
def shop(session: Session) -> dict[str, Any]:
    """``ada`` is referenced through every key of customer; ``bob`` through a few."""
    ada = Customer(name="ada", code="A")
    bob = Customer(name="bob", code="B")
    vip, news = Group(name="vip"), Group(name="news")
    ada.groups = [vip, news]
    bob.groups = [vip]
    session.add_all([ada, bob, vip, news])
    session.flush()
    own = Order(customer=ada, note="own")
    both = Order(customer=ada, billing_customer=ada, note="both")
    billed = Order(customer=bob, billing_customer=ada, note="billed")
    session.add_all([own, both, billed, Order(customer=bob, note="bob's")])
    session.flush()
    five, three = Review(author=ada, stars=5), Review(author=ada, stars=3)
    coupon, profile = Coupon(customer=ada), Profile(customer=ada)
    referral = Customer(name="referral", referrer=ada)
    session.add_all([five, three, coupon, profile, referral, Review(author=bob, stars=5)])
    session.flush()
    session.execute(
        customer_tag.insert(),
        [
            {"customer_id": ada.id, "tag": "b"},
            {"customer_id": ada.id, "tag": "a"},
            {"customer_id": bob.id, "tag": "a"},
        ],
    )
    trap = Trap(customer_id=ada.id)
    session.add(trap)
    session.flush()
    return {
        "ada": ada,
        "bob": bob,
        "vip": vip,
        "news": news,
        "own": own,
        "both": both,
        "billed": billed,
        "five": five,
        "three": three,
        "coupon": coupon,
        "profile": profile,
        "referral": referral,
        "trap": trap,
    }


ADA = 14  # rows that reference ada


def by_name(deps: Dependents) -> dict[str, KeyDependents]:
    return {k.name: rows for k, rows in deps.by_key().items()}


def reload(session: Session, obj: Any) -> Any:
    """``obj`` loaded afresh, alone in an empty identity map."""
    cls, ident = type(obj), obj.id
    session.expunge_all()
    return session.get(cls, ident)


# -- what is listed ----------------------------------------------------------------


def test_count_covers_every_key(session: Session, shop: dict[str, Any]) -> None:
    # 2 orders, 2 billed, 2 groups, 2 tags, 2 reviews, coupon, profile, referral, trap
    assert shop["ada"].dependents().count() == 2 + 2 + 2 + 2 + 2 + 1 + 1 + 1 + 1 == ADA
    assert dependents(shop["bob"]).count() == 2 + 1 + 1 + 1


def test_by_key_breaks_the_count_down(session: Session, shop: dict[str, Any]) -> None:
    counts = {name: rows.count() for name, rows in by_name(shop["ada"].dependents()).items()}
    assert counts == {
        "coupon(customer_code)": 1,
        "customer(referrer_id)": 1,
        "customer_group(customer_id)": 2,
        "customer_tag(customer_id)": 2,
        "order(billing_customer_id)": 2,
        "order(customer_id)": 2,
        "profile(customer_id)": 1,
        "review(author_id)": 2,
        "zz_trap(customer_id)": 1,
    }


def test_by_key_has_every_referencing_key_in_order(session: Session, shop: dict[str, Any]) -> None:
    deps = shop["ada"].dependents()
    assert list(deps.by_key()) == list(referencing_keys(Customer))
    assert deps.keys == referencing_keys(Customer)
    assert all(rows.key is key for key, rows in deps.by_key().items())


def test_iterates_orm_objects_grouped_by_key(session: Session, shop: dict[str, Any]) -> None:
    s = shop
    rows = by_name(s["ada"].dependents())
    assert list(rows["coupon(customer_code)"]) == [s["coupon"]]
    assert list(rows["customer(referrer_id)"]) == [s["referral"]]
    assert list(rows["order(billing_customer_id)"]) == [s["both"], s["billed"]]
    assert list(rows["order(customer_id)"]) == [s["own"], s["both"]]
    assert list(rows["profile(customer_id)"]) == [s["profile"]]
    assert list(rows["review(author_id)"]) == [s["five"], s["three"]]
    assert list(rows["zz_trap(customer_id)"]) == [s["trap"]]


def test_iteration_is_the_keys_in_order(session: Session, shop: dict[str, Any]) -> None:
    """Iteration yields the mapped objects, keys in order; association tables' rows are
    per key only, and counted."""
    deps = shop["ada"].dependents()
    listed = list(deps)
    assert listed == [obj for rows in deps.by_key().values() if rows.mapper for obj in rows]
    assert not any(isinstance(obj, Row) for obj in listed)
    rows_of_unmapped = [row for rows in deps.by_key().values() if not rows.mapper for row in rows]
    assert len(rows_of_unmapped) == 4 and all(isinstance(r, Row) for r in rows_of_unmapped)
    assert deps.count() == len(listed) + 4 == ADA


def test_objects_come_from_the_identity_map(session: Session, shop: dict[str, Any]) -> None:
    mapped = list(shop["ada"].dependents())
    assert len(mapped) == ADA - 4  # all but the rows of the association tables
    loaded = {id(o) for o in shop.values()}
    assert {id(o) for o in mapped} <= loaded


def test_an_object_is_listed_once_per_key_it_references_through(
    session: Session, shop: dict[str, Any]
) -> None:
    listed = list(shop["ada"].dependents())
    assert listed.count(shop["both"]) == 2  # customer and billing customer
    assert listed.count(shop["own"]) == 1
    assert listed.count(shop["billed"]) == 1
    for rows in shop["ada"].dependents().by_key().values():
        objects = list(rows)
        assert len(objects) == len({id(o) for o in objects})


def test_association_tables_yield_rows(session: Session, shop: dict[str, Any]) -> None:
    ada, vip, news = shop["ada"], shop["vip"], shop["news"]
    rows = by_name(ada.dependents())
    groups = list(rows["customer_group(customer_id)"])
    tags = list(rows["customer_tag(customer_id)"])
    assert all(isinstance(r, Row) for r in groups + tags)
    assert sorted(tuple(r) for r in groups) == sorted([(ada.id, vip.id), (ada.id, news.id)])
    assert [(r.customer_id, r.tag) for r in tags] == [(ada.id, "a"), (ada.id, "b")]


def test_group_dependents_are_its_memberships(session: Session, shop: dict[str, Any]) -> None:
    ada, bob, vip, news = shop["ada"], shop["bob"], shop["vip"], shop["news"]

    def memberships(group: Any) -> list[tuple[Any, ...]]:
        return [tuple(r) for rows in group.dependents().by_key().values() for r in rows]

    assert sorted(memberships(vip)) == sorted([(ada.id, vip.id), (bob.id, vip.id)])
    assert memberships(news) == [(ada.id, news.id)]
    assert vip.dependents().count() == 2
    assert list(vip.dependents()) == []  # no mapped object references a group


def test_rows_ordered_by_identity_not_insertion(session: Session) -> None:
    ada = Customer(name="ada")
    session.add(ada)
    session.flush()
    for ident in (9003, 9001, 9002):
        session.add(Order(id=ident, customer=ada))
        session.flush()
    session.execute(Order.__table__.update().where(Order.id == 9001).values(note="moved"))
    assert [o.id for o in reload(session, ada).dependents()] == [9001, 9002, 9003]


def test_key_dependents_select_loads_the_same_rows(session: Session, shop: dict[str, Any]) -> None:
    for rows in shop["ada"].dependents().by_key().values():
        result = session.execute(rows.select())
        if rows.mapper is None:
            assert result.all() == list(rows)
        else:
            assert result.scalars().all() == list(rows)


def test_composite_key(session: Session) -> None:
    north, south = Warehouse(region="north", number=1), Warehouse(region="south", number=1)
    shelves = [Shelf(warehouse=north, label="a"), Shelf(warehouse=north, label="b")]
    session.add_all([north, south, *shelves, Shelf(warehouse=south, label="a")])
    session.flush()
    assert list(north.dependents()) == shelves
    assert north.dependents().count() == 2
    (key,) = north.dependents().by_key()
    assert key.name == "shelf(region, number)"


def test_key_to_a_unique_non_primary_column(session: Session, shop: dict[str, Any]) -> None:
    rows = by_name(shop["bob"].dependents())["coupon(customer_code)"]
    assert list(rows) == []
    bobs = Coupon(customer=shop["bob"])
    session.add(bobs)
    session.flush()
    assert list(rows) == [bobs]


# -- inheritance --------------------------------------------------------------------


def test_polymorphic_rows_load_as_their_subclass(session: Session) -> None:
    boss = Employee(name="boss")
    team = [Engineer(name="eng", mentor=boss), Manager(name="mgr", mentor=boss)]
    team.append(Employee(name="plain", mentor=boss))
    session.add_all([boss, *team])
    session.flush()
    boss = reload(session, boss)
    mentees = list(by_name(boss.dependents())["employee(mentor_id)"])
    assert [type(m) for m in mentees] == [Engineer, Manager, Employee]
    assert [m.name for m in mentees] == ["eng", "mgr", "plain"]


def test_joined_inheritance_own_and_ancestor_tables(session: Session) -> None:
    eng, boss = Engineer(name="eng"), Manager(name="boss")
    session.add_all([eng, boss])
    session.flush()
    mentee = Engineer(name="mentee", mentor=eng)
    machine, project = Machine(engineer=eng), Project(lead=eng)
    session.add_all([mentee, machine, project, Approval(manager_id=boss.id), Project(lead=boss)])
    session.flush()
    assert list(eng.dependents()) == [mentee, machine, project]
    assert [k.name for k in eng.dependents().by_key()] == [
        "employee(mentor_id)",
        "machine(engineer_id)",
        "project(lead_id)",
    ]
    assert [type(d) for d in boss.dependents()] == [Approval, Project]


def test_joined_inheritance_never_the_inheritance_row(session: Session) -> None:
    eng = Engineer(name="eng")
    session.add(eng)
    session.flush()
    assert list(eng.dependents()) == []
    assert eng.dependents().count() == 0


def test_single_table_inheritance(session: Session) -> None:
    car, truck = Car(), Truck()
    session.add_all([car, truck])
    session.flush()
    trips = [Trip(vehicle=car), Trip(vehicle=car)]
    session.add_all([*trips, Trip(vehicle=truck)])
    session.flush()
    assert list(car.dependents()) == trips
    assert truck.dependents().count() == 1


def test_self_referential_key(session: Session) -> None:
    ada = Customer(name="ada")
    session.add(ada)
    session.flush()
    referrals = [Customer(name=f"r{i}", referrer=ada) for i in range(3)]
    session.add_all(referrals)
    session.flush()
    assert list(reload(session, ada).dependents()) == [
        session.get(Customer, r.id) for r in referrals
    ]


# -- statements -----------------------------------------------------------------------


def test_reprs_name_the_object_and_the_key(session: Session, shop: dict[str, Any]) -> None:
    deps = shop["ada"].dependents()
    assert repr(deps) == f"<Dependents of Customer ({shop['ada'].id},): 9 key(s)>"
    rows = by_name(deps)["order(customer_id)"]
    assert repr(rows) == "<KeyDependents order(customer_id)>"
    table = Customer.__table__
    assert repr(row_dependents(session, table, 7)) == "<Dependents of customer (7,): 9 key(s)>"


def test_constructing_runs_no_sql(session: Session, shop: dict[str, Any], statements: Any) -> None:
    ada = reload(session, shop["ada"])
    session.expire(ada)
    with statements() as log:
        deps = ada.dependents()
        deps.by_key()
        dependents(ada)
        repr(deps)
    assert log.all == []


def test_count_is_one_statement(session: Session, shop: dict[str, Any], statements: Any) -> None:
    ada = reload(session, shop["ada"])
    with statements() as log:
        count = ada.dependents().count()
    assert count == ADA
    assert len(log.sql) == 1
    assert log.sql[0].lstrip().upper().startswith("SELECT")


def test_count_loads_nothing(session: Session, shop: dict[str, Any]) -> None:
    ada = reload(session, shop["ada"])
    assert ada.dependents().count() == ADA
    assert list(session.identity_map.values()) == [ada]


def test_key_count_is_one_statement(
    session: Session, shop: dict[str, Any], statements: Any
) -> None:
    ada = reload(session, shop["ada"])
    for rows in ada.dependents().by_key().values():
        with statements() as log:
            rows.count()
        assert len(log.sql) == 1
    assert list(session.identity_map.values()) == [ada]


def test_iteration_is_one_query_per_key(
    session: Session, shop: dict[str, Any], statements: Any
) -> None:
    ada = reload(session, shop["ada"])
    with statements() as log:
        listed = list(ada.dependents())
    assert len(listed) == ADA - 4  # the association tables' rows are per key only
    mapped_keys = [k for k in ada.dependents().by_key().values() if k.mapper is not None]
    assert len(mapped_keys) == len(referencing_keys(Customer)) - 2 == 7
    assert len(log.sql) == log.count("SELECT") == 7


def test_polymorphic_iteration_is_one_query_per_key(session: Session, statements: Any) -> None:
    boss = Employee(name="boss")
    session.add_all([boss, Engineer(name="e", mentor=boss), Manager(name="m", mentor=boss)])
    session.flush()
    boss = reload(session, boss)
    with statements() as log:
        listed = list(boss.dependents())
    assert {type(o) for o in listed} == {Engineer, Manager}
    assert len(log.sql) == 2  # employee(mentor_id), project(lead_id)


def test_statements_use_bound_parameters(
    session: Session, shop: dict[str, Any], statements: Any
) -> None:
    ada = reload(session, shop["ada"])
    with statements() as log:
        ada.dependents().count()
        list(ada.dependents())
    for statement in log.sql:
        assert "'A'" not in statement


# -- NULL referred values ----------------------------------------------------------


def test_null_referred_value_references_nothing(session: Session, statements: Any) -> None:
    nocode = Customer(name="nocode", code=None)
    session.add(nocode)
    session.flush()
    session.add_all([Coupon(customer_code=None), Order(customer=nocode)])
    session.flush()
    rows = by_name(nocode.dependents())["coupon(customer_code)"]
    with statements() as log:
        assert list(rows) == []
        assert rows.count() == 0
    assert log.all == []
    assert session.execute(rows.select()).all() == []
    assert nocode.dependents().count() == 1
    assert [type(o) for o in nocode.dependents()] == [Order]


def test_null_referred_value_costs_no_query(session: Session, statements: Any) -> None:
    nocode = Customer(name="nocode", code=None)
    session.add(nocode)
    session.flush()
    with statements() as log:
        list(nocode.dependents())
    # no query for the NULL code's key, nor for the 2 unmapped association tables
    assert len(log.sql) == len(referencing_keys(Customer)) - 1 - 2


def test_count_of_a_table_nothing_references_sends_nothing(
    session: Session, statements: Any
) -> None:
    md = MetaData()
    Table("lone", md, Column("id", Integer, primary_key=True))
    with statements() as log:
        assert row_dependents(session, md.tables["lone"], 1).count() == 0
    assert log.all == []


# -- values are read when evaluated ---------------------------------------------------------


def test_values_are_current_at_each_evaluation(session: Session) -> None:
    ada = Customer(name="ada", code="A")
    session.add(ada)
    session.flush()
    deps = ada.dependents()
    coupons = by_name(deps)["coupon(customer_code)"]
    assert deps.count() == 0
    ada.code = "NEW"
    session.flush()
    session.add(Coupon(customer_code="NEW"))
    session.flush()
    assert deps.count() == 1
    assert coupons.count() == 1
    assert [c.customer_code for c in coupons] == ["NEW"]


def test_pending_references_are_counted(session: Session, shop: dict[str, Any]) -> None:
    ada = shop["ada"]
    deps = ada.dependents()
    before = deps.count()
    session.add(Order(customer=ada, note="pending"))
    assert deps.count() == before + 1
    assert "pending" in [getattr(o, "note", None) for o in deps]


# -- errors ------------------------------------------------------------------------------


def test_transient_object(session: Session) -> None:
    with pytest.raises(ReferencesError, match="transient"):
        Customer(name="new").dependents()
    with pytest.raises(ReferencesError):
        dependents(Customer(name="new"))


def test_detached_object(session: Session) -> None:
    ada = Customer(name="ada")
    session.add(ada)
    session.flush()
    session.expunge(ada)
    with pytest.raises(ReferencesError, match="detached"):
        ada.dependents()


def test_detached_expired_object(session: Session) -> None:
    """The error names the object without loading it (its repr would need the database)."""
    ada = Customer(name="ada")
    session.add(ada)
    session.flush()
    session.expire(ada)
    session.expunge(ada)
    with pytest.raises(ReferencesError, match=r"detached Customer \(\d+,\)"):
        dependents(ada)


def test_detached_after_construction(session: Session) -> None:
    ada = Customer(name="ada")
    session.add(ada)
    session.flush()
    deps = ada.dependents()
    session.expunge(ada)
    with pytest.raises(ReferencesError):
        deps.count()
    with pytest.raises(ReferencesError):
        list(deps)


def test_pending_then_expunged(session: Session) -> None:
    ada = Customer(name="ada")
    session.add(ada)
    deps = ada.dependents()
    session.expunge(ada)  # transient again
    with pytest.raises(ReferencesError):
        deps.count()


def test_deleted_object(session: Session) -> None:
    ada = Customer(name="ada")
    session.add(ada)
    session.flush()
    deps = ada.dependents()
    assert deps.count() == 0
    session.delete(ada)
    session.flush()
    with pytest.raises(ReferencesError):
        deps.count()
    with pytest.raises(ReferencesError):
        list(ada.dependents())


def test_object_marked_for_deletion_is_not_flushed(
    session: Session, shop: dict[str, Any], statements: Any
) -> None:
    ada = shop["ada"]
    session.delete(ada)
    with statements() as log, pytest.raises(ReferencesError, match="deletion"):
        ada.dependents().count()
    assert log.count("DELETE") == 0 and log.count("UPDATE") == 0
    assert ada in session.deleted


def test_pending_object_is_flushed_first(session: Session, statements: Any) -> None:
    ada = Customer(name="ada", code="A")
    session.add(ada)
    orders = [Order(customer=ada), Order(customer=ada)]
    session.add_all(orders)
    deps = ada.dependents()
    assert ada.id is None
    with statements() as log:
        assert deps.count() == 2
    assert log.count("INSERT") >= 1
    assert ada.id is not None
    assert list(deps) == orders


def test_pending_object_without_autoflush(session: Session) -> None:
    ada = Customer(name="ada")
    session.add(ada)
    deps = ada.dependents()
    with session.no_autoflush, pytest.raises(ReferencesError, match="autoflush"):
        deps.count()
    assert deps.count() == 0  # autoflush back on


def test_not_a_mapped_object() -> None:
    for obj in (42, "customer", Customer, object()):
        with pytest.raises(ArgumentError):
            dependents(obj)


# -- row_dependents: tables without classes ----------------------------------------------


@pytest.fixture
def reflected(session: Session) -> MetaData:
    md = MetaData()
    md.reflect(session.connection())
    return md


def test_row_dependents_on_reflected_tables(
    session: Session, shop: dict[str, Any], reflected: MetaData
) -> None:
    connection = session.connection()
    deps = row_dependents(connection, reflected.tables["customer"], shop["ada"].id)
    assert deps.count() == ADA
    listed = list(deps)
    assert len(listed) == ADA
    assert all(isinstance(r, Row) for r in listed)
    counts = {k.name: rows.count() for k, rows in deps.by_key().items()}
    assert counts == {
        name: rows.count() for name, rows in by_name(shop["ada"].dependents()).items()
    }
    assert all(k.table is reflected.tables[k.table.name] for k in deps.keys)


def test_row_dependents_rows_in_key_and_identity_order(
    session: Session, shop: dict[str, Any], reflected: MetaData
) -> None:
    s = shop
    deps = row_dependents(session.connection(), reflected.tables["customer"], s["ada"].id)
    rows = {k.name: [r.id for r in rows] for k, rows in deps.by_key().items() if "id" in k.table.c}
    assert rows == {
        "coupon(customer_code)": [s["coupon"].id],
        "customer(referrer_id)": [s["referral"].id],
        "order(billing_customer_id)": [s["both"].id, s["billed"].id],
        "order(customer_id)": [s["own"].id, s["both"].id],
        "profile(customer_id)": [s["profile"].id],
        "review(author_id)": [s["five"].id, s["three"].id],
        "zz_trap(customer_id)": [s["trap"].id],
    }


def test_row_dependents_key_forms(session: Session, reflected: MetaData) -> None:
    north = Warehouse(region="north", number=1)
    session.add_all([north, Shelf(warehouse=north, label="a"), Shelf(warehouse=north, label="b")])
    session.flush()
    warehouse = reflected.tables["warehouse"]
    connection = session.connection()
    for key in (("north", 1), ["north", 1], {"region": "north", "number": 1}):
        deps = row_dependents(connection, warehouse, key)
        assert deps.count() == 2
        assert [r.label for r in deps] == ["a", "b"]


def test_row_dependents_count_sends_one_counting_statement(
    session: Session, shop: dict[str, Any], reflected: MetaData, statements: Any
) -> None:
    connection = session.connection()
    deps = row_dependents(connection, reflected.tables["customer"], shop["ada"].id)
    with statements() as log:
        assert deps.count() == ADA
    assert len([s for s in log.sql if "count(" in s.lower()]) == 1
    with statements() as log:
        assert deps.count() == ADA
    assert len(log.sql) == 1  # the referenced row is read once


def test_row_dependents_on_a_session_yields_rows(session: Session, shop: dict[str, Any]) -> None:
    deps = row_dependents(session, Customer.__table__, shop["ada"].id)
    listed = list(deps)
    assert len(listed) == ADA
    assert all(isinstance(r, Row) for r in listed)


def test_row_dependents_on_a_session_flushes_pending_changes(
    session: Session, shop: dict[str, Any]
) -> None:
    deps = row_dependents(session, Customer.__table__, shop["ada"].id)
    assert deps.count() == ADA
    session.add(Order(customer=shop["ada"], note="pending"))
    assert deps.count() == ADA + 1


def test_row_dependents_is_lazy(session: Session, shop: dict[str, Any], statements: Any) -> None:
    with statements() as log:
        deps = row_dependents(session, Customer.__table__, shop["ada"].id)
        deps.by_key()
    assert log.all == []


def test_row_dependents_missing_row(session: Session, reflected: MetaData) -> None:
    deps = row_dependents(session.connection(), reflected.tables["customer"], -1)
    with pytest.raises(ReferencesError, match="not found"):
        deps.count()


def test_row_dependents_bad_keys(session: Session, reflected: MetaData) -> None:
    connection = session.connection()
    with pytest.raises(ArgumentError):
        row_dependents(connection, reflected.tables["warehouse"], "north")
    with pytest.raises(ArgumentError):
        row_dependents(connection, reflected.tables["warehouse"], {"region": "north"})
    with pytest.raises(ReferencesError, match="no primary key"):
        row_dependents(connection, reflected.tables["customer_tag"], 1)


def test_row_dependents_needs_a_table(session: Session) -> None:
    for table in (Customer, "customer", Customer.__table__.c.id):
        with pytest.raises(ArgumentError, match="Table"):
            row_dependents(session, table, 1)  # type: ignore[arg-type]


def test_row_dependents_inheritance_key_without_mappers(
    session: Session, reflected: MetaData
) -> None:
    eng = Engineer(name="eng")
    session.add(eng)
    session.flush()
    deps = row_dependents(session.connection(), reflected.tables["employee"], eng.id)
    assert [k.name for k, rows in deps.by_key().items() if rows.count()] == ["engineer(id)"]


# -- classes of other registries sharing the MetaData ------------------------------------


class MixedBase(ReferencesMixin, DeclarativeBase):
    metadata = MetaData()


class Author(MixedBase):
    __tablename__ = "sar_author"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(20))
    mentor_id: Mapped[int | None] = mapped_column(ForeignKey("sar_author.id"))


sar_book = Table(
    "sar_book",
    MixedBase.metadata,
    Column("id", Integer, primary_key=True),
    Column("author_id", ForeignKey("sar_author.id")),
    Column("title", String(20)),
)

# automap maps every table of the MetaData it has not mapped itself: sar_author (again) and sar_book
AutoBase = automap_base(metadata=MixedBase.metadata)
AutoBase.prepare()
Book = AutoBase.classes.sar_book
AutoAuthor = AutoBase.classes.sar_author

sar_note = Table(
    "sar_note",
    MixedBase.metadata,
    Column("id", Integer, primary_key=True),
    Column("author_id", ForeignKey("sar_author.id")),
    Column("text", String(20)),
)


class Note:
    """Mapped imperatively, in a registry of its own."""

    def __init__(self, author_id: int, text: str) -> None:
        self.author_id = author_id
        self.text = text


imperative = registry(metadata=MixedBase.metadata)
imperative.map_imperatively(Note, sar_note)


class DataclassBase(MappedAsDataclass, ReferencesMixin, DeclarativeBase):
    metadata = MixedBase.metadata


class Comment(DataclassBase):
    __tablename__ = "sar_comment"

    id: Mapped[int] = mapped_column(primary_key=True, init=False)
    author_id: Mapped[int] = mapped_column(ForeignKey("sar_author.id"))
    text: Mapped[str] = mapped_column(String(20))
    reply_to_id: Mapped[int | None] = mapped_column(ForeignKey("sar_comment.id"), default=None)


class Series(MixedBase):
    """Loads its volumes with a joined eager load of a collection."""

    __tablename__ = "sar_series"

    id: Mapped[int] = mapped_column(primary_key=True)
    author_id: Mapped[int] = mapped_column(ForeignKey("sar_author.id"))
    volumes: Mapped[list[Volume]] = relationship(lazy="joined", order_by="Volume.id")


class Volume(MixedBase):
    __tablename__ = "sar_volume"

    id: Mapped[int] = mapped_column(primary_key=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("sar_series.id"))


@pytest.fixture(scope="module")
def mixed_tables(db: Any) -> Iterator[None]:
    MixedBase.metadata.create_all(db.engine)
    yield
    MixedBase.metadata.drop_all(db.engine)


@pytest.fixture
def mixed(mixed_tables: None, session: Session) -> dict[str, Any]:
    dupe, keeper = Author(name="dupe"), Author(name="keeper")
    session.add_all([dupe, keeper])
    session.flush()
    book = Book(author_id=dupe.id, title="b")
    note = Note(author_id=dupe.id, text="n")
    comment = Comment(author_id=dupe.id, text="c")
    mentee = Author(name="mentee", mentor_id=dupe.id)
    session.add_all([book, note, comment, mentee])
    session.flush()
    return {
        "dupe": dupe,
        "keeper": keeper,
        "book": book,
        "note": note,
        "comment": comment,
        "mentee": mentee,
    }


def test_keys_from_every_registry() -> None:
    names = [k.name for k in referencing_keys(Author)]
    assert names == [
        "sar_author(mentor_id)",
        "sar_book(author_id)",
        "sar_comment(author_id)",
        "sar_note(author_id)",
        "sar_series(author_id)",
    ]
    assert referencing_keys(AutoAuthor) == referencing_keys(Author)


def test_dependents_of_every_registry(session: Session, mixed: dict[str, Any]) -> None:
    deps = by_name(mixed["dupe"].dependents())
    assert list(deps["sar_book(author_id)"]) == [mixed["book"]]
    assert list(deps["sar_note(author_id)"]) == [mixed["note"]]
    assert list(deps["sar_comment(author_id)"]) == [mixed["comment"]]
    assert list(deps["sar_author(mentor_id)"]) == [mixed["mentee"]]
    assert mixed["dupe"].dependents().count() == 4


def test_dependents_loaded_fresh_are_of_each_registry(
    session: Session, mixed: dict[str, Any]
) -> None:
    dupe = reload(session, mixed["dupe"])
    types = {name: [type(o) for o in rows] for name, rows in by_name(dupe.dependents()).items()}
    assert types == {
        "sar_author(mentor_id)": [Author],
        "sar_book(author_id)": [Book],
        "sar_comment(author_id)": [Comment],
        "sar_note(author_id)": [Note],
        "sar_series(author_id)": [],
    }


def test_a_table_mapped_twice_loads_the_class_of_the_objects_registry(
    session: Session, mixed: dict[str, Any]
) -> None:
    """sar_author is mapped by Author and by automap: each lists its own kind of mentee."""
    dupe = reload(session, mixed["dupe"])
    (mentee,) = by_name(dupe.dependents())["sar_author(mentor_id)"]
    assert type(mentee) is Author
    auto_dupe = session.get(AutoAuthor, dupe.id)
    (auto_mentee,) = by_name(dependents(auto_dupe))["sar_author(mentor_id)"]
    assert type(auto_mentee) is AutoAuthor
    (book,) = by_name(dependents(auto_dupe))["sar_book(author_id)"]
    assert type(book) is Book


def test_dependents_of_dataclass_and_imperative_objects(
    session: Session, mixed: dict[str, Any]
) -> None:
    comment = mixed["comment"]
    reply = Comment(author_id=mixed["keeper"].id, text="re", reply_to_id=comment.id)
    session.add(reply)
    session.flush()
    assert list(comment.dependents()) == [reply]
    assert list(dependents(reply)) == []
    assert list(dependents(mixed["note"])) == []


def test_merge_into_moves_objects_of_every_registry(
    session: Session, mixed: dict[str, Any]
) -> None:
    dupe, keeper = mixed["dupe"], mixed["keeper"]
    report = dupe.merge_into(keeper)
    assert report.rowcount == 4
    for name in ("book", "note", "comment"):
        assert mixed[name].author_id == keeper.id  # in memory, without a refresh
    assert mixed["mentee"].mentor_id == keeper.id
    assert dupe.dependents().count() == 0
    session.expire_all()
    assert session.execute(select(sar_book.c.author_id)).scalar_one() == keeper.id
    assert session.execute(select(sar_note.c.author_id)).scalar_one() == keeper.id
    assert keeper.dependents().count() == 4


def test_merge_into_dataclass_objects(session: Session, mixed: dict[str, Any]) -> None:
    keeper = mixed["keeper"]
    first, second = mixed["comment"], Comment(author_id=keeper.id, text="second")
    session.add(second)
    session.flush()
    reply = Comment(author_id=keeper.id, text="re", reply_to_id=first.id)
    session.add(reply)
    session.flush()
    report = first.merge_into(second, delete=True)
    assert report.rowcount == 1
    assert reply.reply_to_id == second.id
    assert list(second.dependents()) == [reply]
    session.flush()
    assert session.get(Comment, first.id) is None


def test_merge_into_automap_objects(session: Session, mixed: dict[str, Any]) -> None:
    dupe = session.get(AutoAuthor, mixed["dupe"].id)
    keeper = session.get(AutoAuthor, mixed["keeper"].id)
    report = merge_into(dupe, keeper)
    assert report.rowcount == 4
    assert mixed["book"].author_id == keeper.id
    assert mixed["mentee"].mentor_id == keeper.id
    assert list(by_name(dependents(keeper))["sar_book(author_id)"]) == [mixed["book"]]


def test_joined_eager_collections_are_loaded_once(session: Session, mixed: dict[str, Any]) -> None:
    dupe = mixed["dupe"]
    series = Series(author_id=dupe.id)
    session.add(series)
    session.flush()
    session.add_all([Volume(series_id=series.id), Volume(series_id=series.id)])
    session.flush()
    dupe = reload(session, dupe)
    (loaded,) = by_name(dupe.dependents())["sar_series(author_id)"]
    assert loaded.id == series.id
    assert len(loaded.volumes) == 2
