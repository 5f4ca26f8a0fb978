"""One merge pipeline: multi-bind sessions, reports of queued merges, dry runs on a
ReferencesSession, and the errors every entry point must raise alike."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from sqlalchemy import (
    Column,
    ForeignKey,
    Integer,
    MetaData,
    Table,
    column,
    create_engine,
    event,
    table,
)
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import Session, registry

from sa_references import (
    BatchReport,
    ConcurrentMergeError,
    MergeReport,
    ReferencesSession,
    dependents,
    merge_into,
    merge_many,
    merge_rows,
    referencing_keys,
)
from tests.conftest import Backend
from tests.promise_schemas import (
    ENTRY_POINTS,
    ORM_ENTRY_POINTS,
    built,
    committed,
    committed_rows,
    lock_timeout,
    mapped,
    merge,
    orm_session,
    rows,
    seed,
    snapshot,
    still_usable,
)


def shop(prefix: str) -> tuple[MetaData, Table, Table]:
    md = MetaData()
    customer = Table(
        f"{prefix}_customer", md, Column("id", Integer, primary_key=True, autoincrement=False)
    )
    orders = Table(
        f"{prefix}_orders",
        md,
        Column("id", Integer, primary_key=True, autoincrement=False),
        Column("customer_id", Integer, ForeignKey(f"{prefix}_customer.id"), nullable=False),
    )
    return md, customer, orders


def shop_rows(customer: Table, orders: Table) -> dict[Table, list[dict[str, Any]]]:
    # customer 1: one order; 2: two orders; 3: two orders; 4: none
    return {
        customer: [{"id": i} for i in (1, 2, 3, 4)],
        orders: [
            {"id": 10, "customer_id": 1},
            {"id": 20, "customer_id": 2},
            {"id": 21, "customer_id": 2},
            {"id": 30, "customer_id": 3},
            {"id": 31, "customer_id": 3},
        ],
    }


# -- multi-bind -------------------------------------------------------------------------------


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_every_statement_goes_to_the_tables_bind(db: Backend, entry: str) -> None:
    md, customer, orders = shop("prp1")
    default = create_engine("sqlite://")
    sent: list[str] = []
    event.listen(default, "before_cursor_execute", lambda *args: sent.append(args[2]))
    try:
        with built(db, md) as connection:
            seed(connection, shop_rows(customer, orders))
            Customer = mapped(customer)
            session_class = ReferencesSession if entry == "session" else Session
            session = session_class(
                bind=default,
                binds={customer: connection, orders: connection, Customer: connection},
                join_transaction_mode="create_savepoint",
            )
            if entry == "merge_rows":
                report = merge_rows(session, customer, 1, 2)
            elif entry == "merge_many":
                report = merge_many(session, customer, [(1, 2), (3, 4)])
            else:
                report = merge_into(session.get(Customer, 1), session.get(Customer, 2))
                session.flush()
            assert report.rowcount >= 1
            assert sent == [], f"sent to the default bind: {sent}"
            session.commit()
            session.close()
            assert rows(connection, orders)[0] == (10, 2)
    finally:
        default.dispose()


# -- reports of queued merges -----------------------------------------------------------------


def test_batch_report_is_not_a_merge_report() -> None:
    assert not issubclass(BatchReport, MergeReport), "BatchReport and MergeReport: siblings"


def test_queued_merges_never_report_the_batch_totals_as_their_own(db: Backend) -> None:
    """A batch re-points every merge of it with one UPDATE per key, which does not count per
    merge: a merge applied with others has no counts of its own (None, keys empty) and
    names its batch, whose totals are the batch's; a merge alone keeps its own."""
    md, customer, orders = shop("prp2")
    with built(db, md) as connection:
        seed(connection, shop_rows(customer, orders))
        Customer = mapped(customer)
        session = orm_session(connection, "session")
        c1, c2, c3, c4 = (session.get(Customer, i) for i in (1, 2, 3, 4))
        one = merge_into(c1, c2)  # moves 1 order
        two = merge_into(c3, c4)  # moves 2 orders
        session.flush()
        assert one.applied and two.applied
        assert one.batch is not None and one.batch is two.batch
        assert one.batch.rowcount == 3
        assert (one.rowcount, two.rowcount, one.deleted, one.left) == (None, None, None, None)
        assert one.keys == [] and two.keys == []
        assert "applied in a batch of 2 merge(s): 3 row(s) re-pointed in all" in str(one)
        alone = merge_into(c2, c4)  # now alone in its batch
        session.flush()
        assert alone.batch is not None and alone.rowcount == alone.batch.rowcount
        assert alone.rowcount == 3  # its two orders and the one merged into it
        assert alone.keys is not alone.batch.keys  # type: ignore[union-attr]
        session.close()


def test_queued_report_says_it_is_not_applied_yet(db: Backend) -> None:
    md, customer, orders = shop("prp3")
    with built(db, md) as connection:
        seed(connection, shop_rows(customer, orders))
        Customer = mapped(customer)
        session = orm_session(connection, "session")
        report = merge_into(session.get(Customer, 1), session.get(Customer, 2))
        text = str(report)
        assert not report.applied
        assert "re-pointed 0" not in text, text
        assert "queued" in text or "not applied" in text, text
        session.close()


# -- a dry run on a ReferencesSession ---------------------------------------------------------


@pytest.mark.parametrize("pair", ["unrelated", "chained"])
def test_dry_run_keeps_the_queue(db: Backend, pair: str) -> None:
    md, customer, orders = shop("prp4")
    with built(db, md) as connection:
        seed(connection, shop_rows(customer, orders))
        Customer = mapped(customer)
        session = orm_session(connection, "session")
        c1, c2, c3, c4 = (session.get(Customer, i) for i in (1, 2, 3, 4))
        merge_into(c1, c2)  # queued
        before = snapshot(connection, md)
        if pair == "unrelated":
            plan = merge_into(c3, c4, dry_run=True)
            expected = 2
        else:  # as if 1 -> 2 had been applied: 2 then holds 3 orders
            plan = merge_into(c2, c4, dry_run=True)
            expected = 3
        assert session.queued_merges == 1, "the queue is gone"
        assert snapshot(connection, md) == before, "the dry run moved rows"
        assert plan.dry_run and plan.rowcount == expected
        session.close()


# -- errors -----------------------------------------------------------------------------------


@pytest.mark.backends("postgresql", "mariadb")
@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_source_merged_away_by_another_transaction(
    db: Backend, request: pytest.FixtureRequest, entry: str
) -> None:
    """The second merge waits for the first one's locks; once the first commits, the
    source is gone: ConcurrentMergeError (retryable), nothing changed."""
    md, customer, orders = shop("prp5")
    outcome: dict[str, Any] = {}
    with committed(db, md, shop_rows(customer, orders)):
        Customer = mapped(customer)
        first = db.engine.connect()
        second = db.engine.connect()
        try:
            first.begin()
            merge_rows(first, customer, 1, 2, delete=True)  # holds the locks of 1 and 2
            second.begin()
            lock_timeout(second, 20)
            session = orm_session(second, entry) if entry in ORM_ENTRY_POINTS else None
            held: list[Any] = []
            if session is not None:  # loaded before the first merge commits
                held = [session.get(Customer, 1), session.get(Customer, 3)]

            def run() -> None:
                try:
                    outcome["report"] = merge(
                        entry, second, customer, 1, 3, cls=Customer, session=session
                    )
                except BaseException as error:
                    outcome["error"] = error

            worker = threading.Thread(target=run, daemon=True)
            worker.start()
            time.sleep(0.5)
            assert worker.is_alive(), f"the second merge did not wait: {outcome}"
            first.commit()
            worker.join(15)
            assert not worker.is_alive(), "the second merge is still waiting"
            error = outcome.get("error")
            assert isinstance(error, ConcurrentMergeError), f"{type(error).__name__}: {error}"
            still_usable(second)
            second.rollback()
            # nothing of the second merge was kept: the first merge's result, as committed
            assert committed_rows(db, orders) == [(10, 2), (20, 2), (21, 2), (30, 3), (31, 3)]
            del held
        finally:
            if session is not None:
                session.close()
            second.close()
            first.close()


def no_table_class(db: Backend, connection: Any, customer: Table) -> type:
    """A class mapped to a lightweight ``table()`` (a TableClause): it maps no Table."""
    cls = type("Unmappable", (), {})
    clause = table(customer.name, column("id", Integer))
    registry().map_imperatively(cls, clause, primary_key=[clause.c.id])
    return cls


@pytest.mark.parametrize(
    "call",
    [
        "referencing_keys",
        "dependents",
        "merge_into",
        "merge_into_dry_run",
        "session_merge_into",
        "session_merge_into_dry_run",
    ],
)
def test_class_mapping_no_table_is_an_argument_error(
    db: Backend, request: pytest.FixtureRequest, call: str
) -> None:
    md, customer, orders = shop("prp6")
    with built(db, md) as connection:
        seed(connection, shop_rows(customer, orders))
        cls = no_table_class(db, connection, customer)
        if call == "referencing_keys":
            with pytest.raises(ArgumentError):
                referencing_keys(cls)
            return
        session = orm_session(connection, "session" if call.startswith("session") else "x")
        a, b = session.get(cls, 1), session.get(cls, 2)
        before = snapshot(connection, md)
        with pytest.raises(ArgumentError):
            if call == "dependents":
                dependents(a).count()
            else:
                merge_into(a, b, dry_run=call.endswith("dry_run"))
                session.flush()
        session.rollback()
        session.close()
        assert snapshot(connection, md) == before
        still_usable(connection)
