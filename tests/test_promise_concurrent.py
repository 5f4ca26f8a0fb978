"""Another transaction changes the rows being merged: #13.3 (the duplicate's referred value
renamed meanwhile), #13.17 (the target deleted meanwhile, REPEATABLE READ), a source merged
away meanwhile (the Core entry points), and the target's referred value renamed onto a
clashing row meanwhile.

Servers only (SQLite has no concurrent writers).  The other transaction commits before the
merge takes its locks, so nothing waits and nothing can deadlock.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import (
    Column,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    UniqueConstraint,
    select,
)
from sqlalchemy import inspect as sa_inspect

from sa_references import ConcurrentMergeError, RowNotFoundError, merge_many, merge_rows
from tests.conftest import Backend
from tests.promise_schemas import (
    ENTRY_POINTS,
    ORM_ENTRY_POINTS,
    committed,
    committed_rows,
    mapped,
    merge,
    orm_session,
    rows,
    snapshot,
    still_usable,
)

pytestmark = pytest.mark.backends("postgresql", "mariadb")


# -- #13.3: the referred value renamed by another transaction ----------------------------------


def coupons() -> tuple[MetaData, Table, Table]:
    md = MetaData()
    customer = Table(
        "pr3_customer",
        md,
        Column("id", Integer, primary_key=True, autoincrement=False),
        Column("code", String(10), unique=True, nullable=False),
    )
    coupon = Table(
        "pr3_coupon",
        md,
        Column("id", Integer, primary_key=True, autoincrement=False),
        Column(
            "customer_code",
            String(10),
            ForeignKey("pr3_customer.code", onupdate="CASCADE", ondelete="CASCADE"),
            nullable=False,
        ),
    )
    return md, customer, coupon


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_referred_value_renamed_meanwhile(db: Backend, entry: str) -> None:
    md, customer, coupon = coupons()
    data = {
        customer: [{"id": 1, "code": "OLD"}, {"id": 2, "code": "KEEP"}],
        coupon: [{"id": 1, "customer_code": "OLD"}],
    }
    with committed(db, md, data), db.engine.connect() as connection:
        connection.begin()
        Customer, Coupon = mapped(customer), mapped(coupon)
        session = loaded = None
        if entry in ORM_ENTRY_POINTS:
            session = orm_session(connection, entry)
            held = [session.get(Customer, 1), session.get(Customer, 2)]  # noqa: F841 (kept)
            loaded = session.get(Coupon, 1)
        else:  # read before the rename: on MariaDB that takes the REPEATABLE READ snapshot
            connection.execute(select(customer)).all()
        with db.engine.begin() as other:  # committed before the merge locks anything
            other.execute(customer.update().where(customer.c.id == 1).values(code="NEW"))
        merge(entry, connection, customer, 1, 2, cls=Customer, session=session, delete=True)
        assert rows(connection, coupon) == [(1, "KEEP")], "the coupon was lost"
        assert rows(connection, customer, "id") == [(2,)]
        if loaded is not None:  # the loaded coupon is in step (or expired, then reloaded)
            assert sa_inspect(loaded).persistent
            assert loaded.customer_code == "KEEP"
            session.close()
        connection.rollback()


# -- #13.17: the target deleted by another transaction after the snapshot -----------------------


def orders_schema() -> tuple[MetaData, Table, Table]:
    md = MetaData()
    customer = Table(
        "pr17_customer", md, Column("id", Integer, primary_key=True, autoincrement=False)
    )
    orders = Table(
        "pr17_orders",
        md,
        Column("id", Integer, primary_key=True, autoincrement=False),
        Column("customer_id", Integer, ForeignKey("pr17_customer.id"), nullable=False),
    )
    return md, customer, orders


@pytest.mark.parametrize("isolation", ["REPEATABLE READ", "READ COMMITTED"])
@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_target_deleted_meanwhile(db: Backend, entry: str, isolation: str) -> None:
    """Under REPEATABLE READ the snapshot still has the target: ConcurrentMergeError, on every
    entry point.  Under READ COMMITTED the ORM entry points hold the loaded target (gone
    meanwhile: ConcurrentMergeError); the Core ones only have its key, which matches no row
    when they first read it: RowNotFoundError."""
    md, customer, orders = orders_schema()
    data = {customer: [{"id": 1}, {"id": 2}, {"id": 3}], orders: [{"id": 1, "customer_id": 1}]}
    with committed(db, md, data):
        engine = db.engine.execution_options(isolation_level=isolation)
        with engine.connect() as connection:
            connection.begin()
            Customer = mapped(customer)
            session = None
            if entry in ORM_ENTRY_POINTS:
                session = orm_session(connection, entry)
                held = [session.get(Customer, 1), session.get(Customer, 2)]  # noqa: F841
            else:  # takes the snapshot under REPEATABLE READ
                connection.execute(select(customer)).all()
            with db.engine.begin() as other:
                other.execute(customer.delete().where(customer.c.id == 2))
            before = snapshot(connection, md)
            error: Any = None
            try:
                merge(entry, connection, customer, 1, 2, cls=Customer, session=session)
            except Exception as raised:
                error = raised
            concurrent = isolation == "REPEATABLE READ" or entry in ORM_ENTRY_POINTS
            expected = ConcurrentMergeError if concurrent else RowNotFoundError
            assert type(error) is expected, f"{type(error).__name__}: {error}"
            assert "pr17_customer" in str(error) and "(2,)" in str(error), str(error)
            if concurrent and isolation == "REPEATABLE READ" and db.name == "postgresql":
                assert error.__cause__ is not None  # the serialization failure, chained
            assert snapshot(connection, md) == before
            still_usable(connection)
            if session is not None:
                session.close()
            connection.rollback()
        assert committed_rows(db, orders) == [(1, 1)]


# -- a source merged away by another transaction, for the Core entry points --------------------

CORE_ENTRY_POINTS = ("merge_rows", "merge_many")


@pytest.mark.parametrize("isolation", ["REPEATABLE READ", "READ COMMITTED"])
@pytest.mark.parametrize("entry", CORE_ENTRY_POINTS)
def test_source_merged_away_meanwhile(db: Backend, entry: str, isolation: str) -> None:
    """Another transaction merges the source away (and deletes it) after this one's snapshot:
    under REPEATABLE READ the snapshot still has the source, its lock finds it gone:
    ConcurrentMergeError (retryable).  Under READ COMMITTED the merge's first read of the
    source is its lock, which finds no row: RowNotFoundError, as for a wrong key."""
    md, customer, orders = orders_schema()
    data = {customer: [{"id": 1}, {"id": 2}, {"id": 3}], orders: [{"id": 1, "customer_id": 1}]}
    with committed(db, md, data):
        engine = db.engine.execution_options(isolation_level=isolation)
        with engine.connect() as connection:
            connection.begin()
            connection.execute(select(customer)).all()  # takes the REPEATABLE READ snapshot
            with db.engine.begin() as other:
                merge_rows(other, customer, 1, 3, delete=True)
            before = snapshot(connection, md)
            expected = ConcurrentMergeError if isolation == "REPEATABLE READ" else RowNotFoundError
            with pytest.raises(expected) as raised:
                merge(entry, connection, customer, 1, 2, delete=True)
            assert type(raised.value) is expected
            assert "pr17_customer" in str(raised.value) and "(1,)" in str(raised.value)
            assert snapshot(connection, md) == before
            still_usable(connection)
            # the retry the error asks for: the source is gone, the merge is refused for good
            connection.rollback()
            connection.begin()
            with pytest.raises(RowNotFoundError) as again:
                merge(entry, connection, customer, 1, 2, delete=True)
            assert type(again.value) is RowNotFoundError
            connection.rollback()
        assert committed_rows(db, orders) == [(1, 3)]
        assert committed_rows(db, customer) == [(2,), (3,)]


@pytest.mark.parametrize("isolation", ["REPEATABLE READ", "READ COMMITTED"])
@pytest.mark.parametrize("entry", CORE_ENTRY_POINTS)
def test_key_without_a_row_is_not_a_concurrent_merge(
    db: Backend, entry: str, isolation: str
) -> None:
    """A source that never had a row is a mistake, not a race: RowNotFoundError, never the
    retryable ConcurrentMergeError, at every isolation level."""
    md, customer, orders = orders_schema()
    data = {customer: [{"id": 1}, {"id": 2}], orders: [{"id": 1, "customer_id": 1}]}
    with committed(db, md, data):
        engine = db.engine.execution_options(isolation_level=isolation)
        with engine.connect() as connection:
            connection.begin()
            connection.execute(select(customer)).all()
            with pytest.raises(RowNotFoundError) as raised:
                merge(entry, connection, customer, 9, 2)
            assert type(raised.value) is RowNotFoundError
            still_usable(connection)
            connection.rollback()


# -- the target's referred value renamed meanwhile, onto a clashing row --------------------------


def slotted_coupons() -> tuple[MetaData, Table, Table]:
    md = MetaData()
    customer = Table(
        "prc_customer",
        md,
        Column("id", Integer, primary_key=True, autoincrement=False),
        Column("code", String(10), unique=True, nullable=False),
    )
    coupon = Table(
        "prc_coupon",
        md,
        Column("id", Integer, primary_key=True, autoincrement=False),
        Column("slot", Integer, nullable=False),
        Column(
            "customer_code",
            String(10),
            ForeignKey("prc_customer.code", onupdate="CASCADE", ondelete="CASCADE"),
            nullable=False,
        ),
        UniqueConstraint("slot", "customer_code", name="prc_coupon_slot"),
    )
    return md, customer, coupon


@pytest.mark.parametrize("on_conflict", ["ignore", "delete", "raise"])
@pytest.mark.parametrize("isolation", ["REPEATABLE READ", "READ COMMITTED"])
@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_target_renamed_onto_a_clash_meanwhile(
    db: Backend, entry: str, isolation: str, on_conflict: str
) -> None:
    """Another transaction renames the target's code after this one's snapshot (its coupon
    follows, ON UPDATE CASCADE): the source's coupon of the same slot clashes with it under the
    new code.  The conflict check must see the current rows (on InnoDB a plain read, even in a
    subquery, answers from the snapshot, where the clash is not yet): the clash is ignored,
    deleted or refused as asked, never a raw "Duplicate entry".  PostgreSQL REPEATABLE READ
    cannot lock a row changed after its snapshot: ConcurrentMergeError, nothing changed."""
    md, customer, coupon = slotted_coupons()
    data = {
        customer: [{"id": 1, "code": "OLD"}, {"id": 2, "code": "KEEP"}],
        coupon: [
            {"id": 1, "slot": 1, "customer_code": "OLD"},
            {"id": 2, "slot": 1, "customer_code": "KEEP"},
            {"id": 3, "slot": 2, "customer_code": "OLD"},
        ],
    }
    with committed(db, md, data):
        engine = db.engine.execution_options(isolation_level=isolation)
        with engine.connect() as connection:
            connection.begin()
            Customer = mapped(customer)
            session = None
            if entry in ORM_ENTRY_POINTS:
                session = orm_session(connection, entry)
                held = [session.get(Customer, 1), session.get(Customer, 2)]  # noqa: F841
            connection.execute(select(coupon)).all()  # takes the REPEATABLE READ snapshot
            with db.engine.begin() as other:
                other.execute(customer.update().where(customer.c.id == 2).values(code="NEW"))
            before = snapshot(connection, md)
            refused = db.name == "postgresql" and isolation == "REPEATABLE READ"
            error: Any = None
            try:
                merge(
                    entry,
                    connection,
                    customer,
                    1,
                    2,
                    cls=Customer,
                    session=session,
                    on_conflict=on_conflict,
                )
            except Exception as raised:
                error = raised
            if refused:
                assert type(error) is ConcurrentMergeError, f"{type(error).__name__}: {error}"
                assert snapshot(connection, md) == before
            elif on_conflict == "raise":
                assert type(error).__name__ == "MergeConflictError", f"{error!r}"
                assert snapshot(connection, md) == before
            else:
                assert error is None, f"{type(error).__name__}: {error}"
            still_usable(connection)
            if session is not None:
                if error is None:
                    session.commit()  # releases the session's SAVEPOINT
                session.close()
            if error is None:  # committed, read afresh (InnoDB's snapshot predates the rename)
                connection.commit()
            else:
                connection.rollback()
        expected = [(1, 1, "OLD"), (2, 1, "NEW"), (3, 2, "OLD")]  # as before, renamed
        if error is None:
            expected = [(2, 1, "NEW"), (3, 2, "NEW")]
            if on_conflict == "ignore":
                expected.insert(0, (1, 1, "OLD"))
        assert committed_rows(db, coupon) == expected


@pytest.mark.parametrize("on_conflict", ["ignore", "delete", "raise"])
@pytest.mark.parametrize("isolation", ["REPEATABLE READ", "READ COMMITTED"])
def test_target_renamed_onto_a_clash_meanwhile_in_a_batch(
    db: Backend, isolation: str, on_conflict: str
) -> None:
    """test_target_renamed_onto_a_clash_meanwhile for a batch of two merges (the set-based
    conflict check, ranked): the clash the rename made is found there too."""
    md, customer, coupon = slotted_coupons()
    data = {
        customer: [{"id": 1, "code": "OLD"}, {"id": 2, "code": "KEEP"}, {"id": 3, "code": "O3"}],
        coupon: [
            {"id": 1, "slot": 1, "customer_code": "OLD"},
            {"id": 2, "slot": 1, "customer_code": "KEEP"},
            {"id": 3, "slot": 2, "customer_code": "OLD"},
            {"id": 4, "slot": 3, "customer_code": "O3"},
        ],
    }
    with committed(db, md, data):
        engine = db.engine.execution_options(isolation_level=isolation)
        with engine.connect() as connection:
            connection.begin()
            connection.execute(select(coupon)).all()  # takes the REPEATABLE READ snapshot
            with db.engine.begin() as other:
                other.execute(customer.update().where(customer.c.id == 2).values(code="NEW"))
            error: Any = None
            try:
                merge_many(connection, customer, [(1, 2), (3, 2)], on_conflict=on_conflict)
            except Exception as raised:
                error = raised
            if db.name == "postgresql" and isolation == "REPEATABLE READ":
                assert type(error) is ConcurrentMergeError, f"{type(error).__name__}: {error}"
            elif on_conflict == "raise":
                assert type(error).__name__ == "MergeConflictError", f"{error!r}"
            else:
                assert error is None, f"{type(error).__name__}: {error}"
            still_usable(connection)
            if error is None:
                connection.commit()
            else:
                connection.rollback()
        expected = [(1, 1, "OLD"), (2, 1, "NEW"), (3, 2, "OLD"), (4, 3, "O3")]
        if error is None:
            expected = [(2, 1, "NEW"), (3, 2, "NEW"), (4, 3, "NEW")]
            if on_conflict == "ignore":
                expected.insert(0, (1, 1, "OLD"))
        assert committed_rows(db, coupon) == expected
