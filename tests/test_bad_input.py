"""Every invalid call, exhaustively: the right exception, nothing written, the session usable.

Each case arranges a situation on the test schema, then makes one invalid call
to ``merge_into`` / ``merge_rows`` / ``merge_many`` / ``dependents`` /
``row_dependents`` / ``referencing_keys`` / ``ReferencesSession``.  The test
checks the exception's exact type, that every table of the schema holds
exactly the rows it held before the call, and that the session can still run
a query and flush without a rollback.  Library bugs are strict xfails, on the
backends where they show.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from sqlalchemy import Column, Integer, MetaData, Table, func, select
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import Session

from sa_references import (
    ConcurrentMergeError,
    MergeCycleError,
    ReferencesError,
    ReferencesSession,
    RowNotFoundError,
    dependents,
    merge_into,
    merge_many,
    merge_rows,
    referencing_keys,
    row_dependents,
)
from tests.conftest import Backend
from tests.models import (
    Base,
    Customer,
    Employee,
    Engineer,
    Group,
    Manager,
    Order,
    Shelf,
    Warehouse,
    customer_tag,
)

Act = Callable[[], Any]

CUSTOMER = Customer.__table__
WAREHOUSE = Warehouse.__table__


@dataclass
class World:
    session: Session
    db: Backend
    dupe: Customer
    keeper: Customer
    lonely: Customer  # nothing references it
    engineer: Engineer
    manager: Manager
    employee: Employee
    warehouse: Warehouse
    spare_warehouse: Warehouse
    order: Order
    cleanup: list[Callable[[], Any]] = field(default_factory=list)

    @property
    def connection(self) -> Any:
        return self.session.connection()

    def other_session(self, cls: type[Session] = Session) -> Session:
        other = cls(bind=self.connection, join_transaction_mode="create_savepoint")
        self.cleanup.append(other.close)
        return other


@pytest.fixture
def world(session: Session, db: Backend) -> Iterator[World]:
    dupe, keeper, lonely = Customer(name="dupe"), Customer(name="keeper"), Customer(name="lonely")
    order = Order(customer=dupe, note="o")
    engineer, manager, employee = Engineer(name="e"), Manager(name="m"), Employee(name="p")
    warehouse = Warehouse(region="eu", number=1, shelves=[Shelf(label="a")])
    spare = Warehouse(region="eu", number=2)
    session.add_all([dupe, keeper, lonely, order, engineer, manager, employee, warehouse, spare])
    session.add(Group(name="g", members=[dupe, keeper]))
    session.flush()
    session.execute(customer_tag.insert(), [{"customer_id": dupe.id, "tag": "t"}])
    w = World(
        session, db, dupe, keeper, lonely, engineer, manager, employee, warehouse, spare, order
    )
    yield w
    for undo in reversed(w.cleanup):
        undo()


def snapshot(session: Session) -> dict[str, list[tuple[Any, ...]]]:
    return {
        t.name: sorted((tuple(r) for r in session.execute(select(t))), key=repr)
        for t in Base.metadata.sorted_tables
    }


# -- the table of cases ----------------------------------------------------------


@dataclass
class Case:
    arrange: Callable[[World], Act]
    expected: type[BaseException]
    #: backend name ("*" for all) -> reason, for a library bug shown on that backend
    bugs: dict[str, str] = field(default_factory=dict)
    #: backend name -> the exception expected there instead of ``expected``
    expected_on: dict[str, type[BaseException]] = field(default_factory=dict)


CASES: dict[str, Case] = {}
SERVERS = ("postgresql", "mariadb")


def case(
    expected: type[BaseException],
    *,
    expected_on: dict[str, type[BaseException]] | None = None,
    **bugs: str,
) -> Callable[[Callable[[World], Act]], Any]:
    def register(arrange: Callable[[World], Act]) -> Any:
        CASES[arrange.__name__] = Case(
            arrange,
            expected,
            {k.replace("_", "-"): v for k, v in bugs.items()},
            dict(expected_on or {}),
        )
        return arrange

    return register


# merge_into: wrong types -------------------------------------------------------


@case(ArgumentError)
def merge_into_source_int(w: World) -> Act:
    return lambda: merge_into(1, w.keeper)


@case(ArgumentError)
def merge_into_source_none(w: World) -> Act:
    return lambda: merge_into(None, w.keeper)


@case(ArgumentError)
def merge_into_target_none(w: World) -> Act:
    return lambda: merge_into(w.dupe, None)


@case(ArgumentError)
def merge_into_target_str(w: World) -> Act:
    return lambda: merge_into(w.dupe, "keeper")


@case(ArgumentError)
def merge_into_source_is_a_class(w: World) -> Act:
    return lambda: merge_into(Customer, w.keeper)


@case(ArgumentError)
def merge_into_target_is_a_class(w: World) -> Act:
    return lambda: merge_into(w.dupe, Customer)


@case(ArgumentError)
def merge_into_source_plain_object(w: World) -> Act:
    return lambda: merge_into(object(), w.keeper)


@case(ArgumentError)
def merge_into_source_is_a_row(w: World) -> Act:
    row = w.session.execute(select(CUSTOMER).where(CUSTOMER.c.id == w.dupe.id)).one()
    return lambda: merge_into(row, w.keeper)


@case(ArgumentError)
def mixin_target_none(w: World) -> Act:
    return lambda: w.dupe.merge_into(None)


@case(TypeError)
def merge_into_on_conflict_positional(w: World) -> Act:
    return lambda: merge_into(w.dupe, w.keeper, "delete")  # type: ignore[misc]


# merge_into: options ---------------------------------------------------------------


@case(ArgumentError)
def merge_into_unknown_on_conflict(w: World) -> Act:
    return lambda: merge_into(w.dupe, w.keeper, on_conflict="merge")  # type: ignore[arg-type]


@case(ArgumentError)
def merge_into_on_conflict_none(w: World) -> Act:
    return lambda: merge_into(w.dupe, w.keeper, on_conflict=None)  # type: ignore[arg-type]


@case(ArgumentError)
def merge_into_on_conflict_true(w: World) -> Act:
    return lambda: merge_into(w.dupe, w.keeper, on_conflict=True)  # type: ignore[arg-type]


@case(ArgumentError)
def merge_into_unknown_synchronize_session(w: World) -> Act:
    return lambda: merge_into(w.dupe, w.keeper, synchronize_session="auto")  # type: ignore[arg-type]


@case(ArgumentError)
def merge_into_synchronize_session_true(w: World) -> Act:
    return lambda: merge_into(w.dupe, w.keeper, synchronize_session=True)  # type: ignore[arg-type]


@case(ArgumentError)
def merge_into_unknown_on_self_reference(w: World) -> Act:
    return lambda: merge_into(w.dupe, w.keeper, on_self_reference="keep")  # type: ignore[arg-type]


@case(ArgumentError)
def merge_into_dry_run_with_unknown_option(w: World) -> Act:
    return lambda: merge_into(w.dupe, w.keeper, dry_run=True, on_conflict="skip")  # type: ignore[arg-type]


@case(ArgumentError)
def merge_into_unknown_option_checked_before_state(w: World) -> Act:
    """Options are checked first, even when the objects are also wrong."""
    return lambda: merge_into(Customer(), Customer(), on_conflict="merge")  # type: ignore[arg-type]


# merge_into: object states -------------------------------------------------------------


@case(ReferencesError)
def merge_into_transient_source(w: World) -> Act:
    return lambda: merge_into(Customer(name="t"), w.keeper)


@case(ReferencesError)
def merge_into_transient_target(w: World) -> Act:
    return lambda: merge_into(w.dupe, Customer(name="t"))


@case(ReferencesError)
def merge_into_detached_source(w: World) -> Act:
    w.session.expunge(w.lonely)
    return lambda: merge_into(w.lonely, w.keeper)


@case(ReferencesError)
def merge_into_detached_target(w: World) -> Act:
    w.session.expunge(w.lonely)
    return lambda: merge_into(w.dupe, w.lonely)


@case(ReferencesError)
def merge_into_source_marked_deleted(w: World) -> Act:
    w.session.delete(w.lonely)
    return lambda: merge_into(w.lonely, w.keeper)


@case(ReferencesError)
def merge_into_source_deleted_and_flushed(w: World) -> Act:
    w.session.delete(w.lonely)
    w.session.flush()
    return lambda: merge_into(w.lonely, w.keeper)


@case(ReferencesError)
def merge_into_target_marked_deleted(w: World) -> Act:
    w.session.delete(w.lonely)
    return lambda: merge_into(w.dupe, w.lonely)


@case(ReferencesError)
def merge_into_target_deleted_and_flushed(w: World) -> Act:
    w.session.delete(w.lonely)
    w.session.flush()
    return lambda: merge_into(w.dupe, w.lonely)


# the rows' referred values are read as locked (SQLite: read, unlocked): the source's row is
# found missing there, as a source merged away by another transaction is (test_concurrency.py)
@case(ConcurrentMergeError)
def merge_into_source_row_deleted_behind_the_session(w: World) -> Act:
    w.session.execute(CUSTOMER.delete().where(CUSTOMER.c.id == w.lonely.id))
    w.session.expire(w.lonely)
    return lambda: merge_into(w.lonely, w.keeper)


@case(ReferencesError)
def merge_into_itself(w: World) -> Act:
    return lambda: merge_into(w.dupe, w.dupe)


@case(ReferencesError)
def mixin_merge_into_itself(w: World) -> Act:
    return lambda: w.dupe.merge_into(w.dupe, on_conflict="delete", delete=True)


@case(ReferencesError)
def merge_into_different_classes(w: World) -> Act:
    return lambda: merge_into(w.dupe, w.order)


@case(ReferencesError)
def merge_into_unrelated_composite_class(w: World) -> Act:
    return lambda: merge_into(w.warehouse, w.dupe)


@case(ReferencesError)
def merge_into_sibling_subclass(w: World) -> Act:
    return lambda: merge_into(w.engineer, w.manager)


@case(ReferencesError)
def merge_into_base_class_target(w: World) -> Act:
    return lambda: merge_into(w.engineer, w.employee)


@case(ReferencesError)
def merge_into_objects_of_different_sessions(w: World) -> Act:
    other = w.other_session()
    stranger = Customer(name="stranger")
    other.add(stranger)
    other.flush()
    return lambda: merge_into(w.dupe, stranger)


@case(ReferencesError)
def merge_into_objects_of_a_closed_session(w: World) -> Act:
    other = w.other_session()
    a, b = Customer(name="a"), Customer(name="b")
    other.add_all([a, b])
    other.flush()
    other.close()
    return lambda: merge_into(a, b)


@case(ReferencesError)
def merge_into_after_the_session_closed(w: World) -> Act:
    other = w.other_session()
    a, b = other.get(Customer, w.dupe.id), other.get(Customer, w.keeper.id)
    other.close()
    return lambda: merge_into(a, b, on_conflict="delete")


# merge_rows ----------------------------------------------------------------------------


@case(ArgumentError)
def merge_rows_mapped_class_for_table(w: World) -> Act:
    return lambda: merge_rows(w.connection, Customer, w.dupe.id, w.keeper.id)  # type: ignore[arg-type]


@case(ArgumentError)
def merge_rows_table_name_for_table(w: World) -> Act:
    return lambda: merge_rows(w.connection, "customer", w.dupe.id, w.keeper.id)  # type: ignore[arg-type]


@case(ArgumentError)
def merge_rows_column_for_table(w: World) -> Act:
    return lambda: merge_rows(w.connection, CUSTOMER.c.id, w.dupe.id, w.keeper.id)  # type: ignore[arg-type]


@case(ArgumentError)
def merge_rows_table_none(w: World) -> Act:
    return lambda: merge_rows(w.connection, None, w.dupe.id, w.keeper.id)  # type: ignore[arg-type]


@case(ArgumentError)
def merge_rows_engine_for_bind(w: World) -> Act:
    return lambda: merge_rows(w.db.engine, CUSTOMER, w.dupe.id, w.keeper.id)  # type: ignore[arg-type]


@case(ArgumentError)
def merge_rows_unknown_on_conflict(w: World) -> Act:
    return lambda: merge_rows(w.connection, CUSTOMER, w.dupe.id, w.keeper.id, on_conflict="x")  # type: ignore[arg-type]


@case(ArgumentError)
def merge_rows_unknown_on_self_reference(w: World) -> Act:
    return lambda: merge_rows(
        w.connection,
        CUSTOMER,
        w.dupe.id,
        w.keeper.id,
        on_self_reference="x",  # type: ignore[arg-type]
    )


@case(ArgumentError)
def merge_rows_two_values_for_one_column(w: World) -> Act:
    return lambda: merge_rows(w.connection, CUSTOMER, (w.dupe.id, 1), w.keeper.id)


@case(ArgumentError)
def merge_rows_empty_key(w: World) -> Act:
    return lambda: merge_rows(w.connection, CUSTOMER, (), w.keeper.id)


@case(ArgumentError)
def merge_rows_scalar_for_composite_key(w: World) -> Act:
    return lambda: merge_rows(w.connection, WAREHOUSE, "eu", ("eu", 2))


@case(ArgumentError)
def merge_rows_one_value_of_composite_key(w: World) -> Act:
    return lambda: merge_rows(w.connection, WAREHOUSE, ("eu",), ("eu", 2))


@case(ArgumentError)
def merge_rows_mapping_missing_a_column(w: World) -> Act:
    return lambda: merge_rows(w.connection, WAREHOUSE, {"region": "eu"}, ("eu", 2))


@case(ArgumentError)
def merge_rows_mapping_with_an_unknown_column(w: World) -> Act:
    key = {"region": "eu", "number": 1, "floor": 3}
    return lambda: merge_rows(w.connection, WAREHOUSE, key, ("eu", 2))


@case(ArgumentError)
def merge_rows_mapping_with_a_wrong_name(w: World) -> Act:
    return lambda: merge_rows(w.connection, CUSTOMER, {"ident": w.dupe.id}, w.keeper.id)


@case(RowNotFoundError)
def merge_rows_missing_source(w: World) -> Act:
    return lambda: merge_rows(w.connection, CUSTOMER, 10**6, w.keeper.id)


@case(RowNotFoundError)
def merge_rows_missing_target(w: World) -> Act:
    return lambda: merge_rows(w.connection, CUSTOMER, w.dupe.id, 10**6, delete=True)


@case(RowNotFoundError)
def merge_rows_missing_composite_target(w: World) -> Act:
    return lambda: merge_rows(w.connection, WAREHOUSE, ("eu", 1), ("us", 1))


@case(ArgumentError)
def merge_rows_none_key(w: World) -> Act:
    return lambda: merge_rows(w.connection, CUSTOMER, None, w.keeper.id)


@case(ArgumentError)
def merge_rows_str_key_for_int_column(w: World) -> Act:
    return lambda: merge_rows(w.connection, CUSTOMER, "abc", w.keeper.id)


@case(ArgumentError)
def merge_rows_fractional_key(w: World) -> Act:
    lonely = w.lonely.id  # PostgreSQL reads lonely - 0.5 as lonely: it deletes its own target
    return lambda: merge_rows(w.connection, CUSTOMER, lonely - 0.5, lonely, delete=True)


@case(ReferencesError)
def merge_rows_into_itself(w: World) -> Act:
    return lambda: merge_rows(w.connection, CUSTOMER, w.dupe.id, w.dupe.id)


@case(ReferencesError)
def merge_rows_into_itself_other_key_forms(w: World) -> Act:
    return lambda: merge_rows(w.connection, CUSTOMER, (w.dupe.id,), {"id": w.dupe.id})


@case(ReferencesError)
def merge_rows_composite_into_itself(w: World) -> Act:
    return lambda: merge_rows(w.connection, WAREHOUSE, ["eu", 1], {"number": 1, "region": "eu"})


@case(ReferencesError)
def merge_rows_table_without_primary_key(w: World) -> Act:
    return lambda: merge_rows(w.connection, customer_tag, w.dupe.id, w.keeper.id)


@case(ArgumentError)
def merge_rows_none_for_bind(w: World) -> Act:
    return lambda: merge_rows(None, CUSTOMER, w.dupe.id, w.keeper.id)  # type: ignore[arg-type]


# merge_many ------------------------------------------------------------------------------


@case(ArgumentError)
def merge_many_mapped_class_for_table(w: World) -> Act:
    return lambda: merge_many(w.connection, Customer, [(w.dupe.id, w.keeper.id)])  # type: ignore[arg-type]


@case(ArgumentError)
def merge_many_engine_for_bind(w: World) -> Act:
    return lambda: merge_many(w.db.engine, CUSTOMER, [(w.dupe.id, w.keeper.id)])  # type: ignore[arg-type]


@case(ArgumentError)
def merge_many_unknown_on_conflict(w: World) -> Act:
    pairs = [(w.dupe.id, w.keeper.id)]
    return lambda: merge_many(w.connection, CUSTOMER, pairs, on_conflict="merge")  # type: ignore[arg-type]


@case(ArgumentError)
def merge_many_unknown_on_self_reference(w: World) -> Act:
    pairs = [(w.dupe.id, w.keeper.id)]
    return lambda: merge_many(w.connection, CUSTOMER, pairs, on_self_reference="x")  # type: ignore[arg-type]


@case(ArgumentError)
def merge_many_pairs_none(w: World) -> Act:
    return lambda: merge_many(w.connection, CUSTOMER, None)  # type: ignore[arg-type]


@case(ArgumentError)
def merge_many_pair_of_three(w: World) -> Act:
    return lambda: merge_many(w.connection, CUSTOMER, [(w.dupe.id, w.keeper.id, w.lonely.id)])


@case(ArgumentError)
def merge_many_mapping_for_pairs(w: World) -> Act:
    return lambda: merge_many(w.connection, CUSTOMER, {w.dupe.id: w.keeper.id})  # type: ignore[arg-type]


@case(ArgumentError)
def merge_many_wrong_number_of_key_columns(w: World) -> Act:
    return lambda: merge_many(w.connection, WAREHOUSE, [(("eu", 1), "eu")])


@case(ReferencesError)
def merge_many_pair_into_itself(w: World) -> Act:
    pairs = [(w.lonely.id, w.keeper.id), (w.dupe.id, w.dupe.id)]
    return lambda: merge_many(w.connection, CUSTOMER, pairs)


@case(MergeCycleError)
def merge_many_cycle(w: World) -> Act:
    pairs = [(w.dupe.id, w.keeper.id), (w.keeper.id, w.lonely.id), (w.lonely.id, w.dupe.id)]
    return lambda: merge_many(w.connection, CUSTOMER, pairs, on_conflict="delete")


@case(ReferencesError)
def merge_many_source_with_two_targets(w: World) -> Act:
    pairs = [(w.dupe.id, w.keeper.id), (w.dupe.id, w.lonely.id)]
    return lambda: merge_many(w.connection, CUSTOMER, pairs, on_conflict="delete")


@case(RowNotFoundError)
def merge_many_missing_source(w: World) -> Act:
    pairs = [(w.dupe.id, w.keeper.id), (10**6, w.keeper.id)]
    return lambda: merge_many(w.connection, CUSTOMER, pairs, on_conflict="delete")


@case(RowNotFoundError)
def merge_many_missing_target(w: World) -> Act:
    pairs = [(w.dupe.id, 10**6)]
    return lambda: merge_many(w.connection, CUSTOMER, pairs, delete=True)


@case(ArgumentError)
def merge_many_none_key(w: World) -> Act:
    return lambda: merge_many(w.connection, CUSTOMER, [(None, w.keeper.id)])


@case(ReferencesError)
def merge_many_table_without_primary_key(w: World) -> Act:
    return lambda: merge_many(w.connection, customer_tag, [(w.dupe.id, w.keeper.id)])


@case(RowNotFoundError)
def merge_many_through_a_session_missing_key(w: World) -> Act:
    return lambda: merge_many(w.session, CUSTOMER, [(w.dupe.id, 10**6)])


# dependents, row_dependents, referencing_keys ------------------------------------------------


@case(ArgumentError)
def dependents_of_none(w: World) -> Act:
    return lambda: dependents(None)


@case(ArgumentError)
def dependents_of_a_class(w: World) -> Act:
    return lambda: dependents(Customer)


@case(ArgumentError)
def dependents_of_a_row(w: World) -> Act:
    row = w.session.execute(select(CUSTOMER)).first()
    return lambda: dependents(row)


@case(ReferencesError)
def dependents_of_a_transient_object(w: World) -> Act:
    return lambda: dependents(Customer(name="t"))


@case(ReferencesError)
def dependents_of_a_detached_object(w: World) -> Act:
    w.session.expunge(w.lonely)
    return lambda: dependents(w.lonely)


@case(ReferencesError)
def dependents_of_an_object_marked_deleted(w: World) -> Act:
    w.session.delete(w.lonely)
    return lambda: dependents(w.lonely).count()


@case(ReferencesError)
def dependents_of_an_object_deleted_after_the_call(w: World) -> Act:
    found = dependents(w.lonely)
    w.session.delete(w.lonely)
    w.session.flush()
    return lambda: list(found)


@case(ReferencesError)
def dependents_of_a_pending_object_without_autoflush(w: World) -> Act:
    pending = Customer(name="pending")
    w.session.add(pending)
    w.session.autoflush = False
    w.cleanup.append(lambda: setattr(w.session, "autoflush", True))
    return lambda: dependents(pending).count()


@case(ArgumentError)
def row_dependents_table_name(w: World) -> Act:
    return lambda: row_dependents(w.connection, "customer", w.dupe.id)  # type: ignore[arg-type]


@case(ArgumentError)
def row_dependents_wrong_number_of_key_columns(w: World) -> Act:
    return lambda: row_dependents(w.connection, WAREHOUSE, 1)


@case(RowNotFoundError)
def row_dependents_missing_row(w: World) -> Act:
    return lambda: row_dependents(w.connection, CUSTOMER, 10**6).count()


@case(ReferencesError)
def row_dependents_table_without_primary_key(w: World) -> Act:
    return lambda: row_dependents(w.connection, customer_tag, w.dupe.id)


@case(ArgumentError)
def row_dependents_engine_for_bind(w: World) -> Act:
    return lambda: row_dependents(w.db.engine, CUSTOMER, w.dupe.id).count()  # type: ignore[arg-type]


@case(ArgumentError)
def referencing_keys_of_none(w: World) -> Act:
    return lambda: referencing_keys(None)


@case(ArgumentError)
def referencing_keys_of_a_table_name(w: World) -> Act:
    return lambda: referencing_keys("customer")


@case(ArgumentError)
def referencing_keys_of_an_instance(w: World) -> Act:
    return lambda: referencing_keys(w.dupe)


# ReferencesSession ---------------------------------------------------------------------------


@case(ArgumentError)
def references_session_unknown_synchronize_session(w: World) -> Act:
    return lambda: ReferencesSession(w.connection, synchronize_session="auto")  # type: ignore[arg-type]


@case(ReferencesError)
def references_session_merge_into_itself(w: World) -> Act:
    other = w.other_session(ReferencesSession)
    a = other.get(Customer, w.dupe.id)
    return lambda: merge_into(a, a)


@case(MergeCycleError)
def references_session_queued_cycle(w: World) -> Act:
    other = w.other_session(ReferencesSession)
    a, b = other.get(Customer, w.dupe.id), other.get(Customer, w.keeper.id)
    merge_into(a, b)

    def act() -> None:
        try:
            merge_into(b, a)
        finally:
            other.rollback()  # drops the queue: nothing may be written

    return act


@case(ReferencesError)
def references_session_source_with_two_targets(w: World) -> Act:
    other = w.other_session(ReferencesSession)
    a, b, c = (other.get(Customer, c.id) for c in (w.dupe, w.keeper, w.lonely))
    merge_into(a, b)

    def act() -> None:
        try:
            merge_into(a, c)
        finally:
            other.rollback()

    return act


@case(ReferencesError)
def references_session_class_mismatch(w: World) -> Act:
    other = w.other_session(ReferencesSession)
    a, b = other.get(Engineer, w.engineer.id), other.get(Manager, w.manager.id)
    return lambda: merge_into(a, b)


# -- the test --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CASES))
def test_invalid_call(name: str, world: World, db: Backend, request: pytest.FixtureRequest) -> None:
    case = CASES[name]
    reason = case.bugs.get(db.name) or case.bugs.get("*")
    if reason is not None:
        request.applymarker(pytest.mark.xfail(strict=True, reason=reason))
    expected = case.expected_on.get(db.name, case.expected)
    act = case.arrange(world)
    before = snapshot(world.session)
    with pytest.raises(BaseException) as info:
        act()
    assert type(info.value) is expected, f"{name}: {info.value!r}"
    assert snapshot(world.session) == before, f"{name} changed the database"
    # usable without a rollback
    assert world.session.execute(select(func.count()).select_from(CUSTOMER)).scalar_one() > 0
    world.session.add(Group(name="after"))
    world.session.flush()


def test_every_case_has_a_distinct_arrangement() -> None:
    assert len(CASES) >= 80
    assert len({c.arrange for c in CASES.values()}) == len(CASES)


# -- what looks wrong but is accepted --------------------------------------------------------------


def test_pending_target_is_flushed_first(world: World) -> None:
    fresh = Customer(name="fresh")
    world.session.add(fresh)
    report = merge_into(world.dupe, fresh)
    assert fresh.id is not None
    assert report.rowcount == 3  # the order, the group membership, the tag
    assert world.session.execute(select(Order.customer_id)).scalar_one() == fresh.id


def test_pending_source_is_flushed_first(world: World) -> None:
    fresh = Customer(name="fresh", orders=[Order(note="pending")])
    world.session.add(fresh)
    report = merge_into(fresh, world.keeper, delete=True)
    assert report.rowcount == 1
    notes = world.session.execute(
        select(Order.note).where(Order.customer_id == world.keeper.id)
    ).scalars()
    assert list(notes) == ["pending"]


def test_empty_batch_is_a_no_op(world: World) -> None:
    before = snapshot(world.session)
    report = merge_many(world.connection, CUSTOMER, [])
    assert report.rowcount == 0 and report.pairs == []
    assert snapshot(world.session) == before


def test_repeated_pair_in_a_batch_is_one_merge(world: World) -> None:
    pairs = [(world.dupe.id, world.keeper.id)] * 3
    report = merge_many(world.connection, CUSTOMER, pairs, on_conflict="delete")
    assert report.pairs == [((world.dupe.id,), (world.keeper.id,))]
    assert report.rowcount == 2  # the order and the tag; the shared group clashed


def test_a_table_of_another_metadata_is_rows_only(world: World) -> None:
    """A Table that merely shares a name with a mapped one: its own MetaData, no references."""
    lookalike = Table("customer", MetaData(), Column("id", Integer, primary_key=True))
    report = merge_rows(world.connection, lookalike, world.lonely.id, world.keeper.id)
    assert report.keys == []
