"""#13.4: ``on_conflict="delete"`` must say everything it deletes.

Deleting the source's clashing subscription makes the database apply the ON DELETE rule of
the keys that reference the subscription: CASCADE deletes its payments (and, recursively,
their notes), SET NULL clears them, NO ACTION / RESTRICT refuses.  The plan (dry run) and
the report must name what those rules delete or set NULL beyond the clashing rows, and a
refusal by the database must be predicted: ``DeleteRestrictedError``, nothing changed.

The contract proposed here: ``report.cascaded`` is a sequence of entries with ``table``
(the table's full name), ``action`` (``"delete"`` or ``"set null"``) and ``count`` (rows),
one per table and action, following CASCADE and SET NULL recursively; ``()`` when no rule
applies.  SQLite without enforced foreign keys applies no ON DELETE rule: not run there.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Column, ForeignKey, Integer, MetaData, String, Table, UniqueConstraint
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.exc import DBAPIError

from sa_references import DeleteRestrictedError, Remedy
from tests.conftest import Backend
from tests.promise_schemas import (
    ENTRY_POINTS,
    ORM_ENTRY_POINTS,
    built,
    mapped,
    merge,
    orm_session,
    rows,
    seed,
    snapshot,
    still_usable,
)


def billing(on_delete: str | None) -> tuple[MetaData, dict[str, Table]]:
    md = MetaData()
    t = {
        "customer": Table(
            "pr4_customer", md, Column("id", Integer, primary_key=True, autoincrement=False)
        ),
        "subscription": Table(
            "pr4_subscription",
            md,
            Column("id", Integer, primary_key=True, autoincrement=False),
            Column("customer_id", Integer, ForeignKey("pr4_customer.id"), nullable=False),
            Column("plan", String(10), nullable=False),
            UniqueConstraint("customer_id", "plan", name="uq_pr4_subscription_plan"),
        ),
        "payment": Table(
            "pr4_payment",
            md,
            Column("id", Integer, primary_key=True, autoincrement=False),
            Column(
                "subscription_id",
                Integer,
                ForeignKey("pr4_subscription.id", ondelete=on_delete),
                nullable=on_delete == "SET NULL",
            ),
        ),
        "note": Table(
            "pr4_payment_note",
            md,
            Column("id", Integer, primary_key=True, autoincrement=False),
            Column(
                "payment_id",
                Integer,
                ForeignKey("pr4_payment.id", ondelete="CASCADE"),
                nullable=False,
            ),
        ),
    }
    return md, t


def seed_billing(connection: Any, t: dict[str, Table]) -> None:
    seed(
        connection,
        {
            t["customer"]: [{"id": 1}, {"id": 2}],
            t["subscription"]: [
                {"id": 10, "customer_id": 1, "plan": "pro"},  # clashes with 20
                {"id": 11, "customer_id": 1, "plan": "basic"},  # moves
                {"id": 20, "customer_id": 2, "plan": "pro"},
            ],
            t["payment"]: [
                {"id": 100, "subscription_id": 10},
                {"id": 101, "subscription_id": 10},
                {"id": 200, "subscription_id": 20},
            ],
            t["note"]: [{"id": 1000, "payment_id": 100}, {"id": 2000, "payment_id": 200}],
        },
    )


def cascaded(report: Any) -> dict[tuple[str, str], int]:
    return {(c.table, c.action): c.count for c in report.cascaded}


EXPECTED_CASCADE = {
    "CASCADE": {("pr4_payment", "delete"): 2, ("pr4_payment_note", "delete"): 1},
    "SET NULL": {("pr4_payment", "set null"): 2},
}


@pytest.fixture
def enforced(db: Backend) -> Backend:
    if not db.foreign_keys:
        pytest.skip("ON DELETE rules are not applied without enforced foreign keys")
    return db


@pytest.mark.parametrize("on_delete", ["CASCADE", "SET NULL"])
@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_dry_run_names_what_on_delete_rules_remove(
    enforced: Backend, entry: str, on_delete: str
) -> None:
    md, t = billing(on_delete)
    with built(enforced, md) as connection:
        seed_billing(connection, t)
        before = snapshot(connection, md)
        cls = mapped(t["customer"])
        plan = merge(
            entry, connection, t["customer"], 1, 2, cls=cls, on_conflict="delete", dry_run=True
        )
        assert plan.deleted == 1
        assert cascaded(plan) == EXPECTED_CASCADE[on_delete]
        assert snapshot(connection, md) == before


@pytest.mark.parametrize("on_delete", ["CASCADE", "SET NULL"])
@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_report_names_what_on_delete_rules_removed(
    enforced: Backend, entry: str, on_delete: str
) -> None:
    md, t = billing(on_delete)
    with built(enforced, md) as connection:
        seed_billing(connection, t)
        report = merge(
            entry, connection, t["customer"], 1, 2, cls=mapped(t["customer"]), on_conflict="delete"
        )
        # what the database did is right: the report must say it
        assert rows(connection, t["subscription"]) == [(11, 2, "basic"), (20, 2, "pro")]
        if on_delete == "CASCADE":
            assert rows(connection, t["payment"]) == [(200, 20)]
            assert rows(connection, t["note"]) == [(2000, 200)]
        else:
            assert rows(connection, t["payment"]) == [(100, None), (101, None), (200, 20)]
        assert report.deleted == 1
        assert cascaded(report) == EXPECTED_CASCADE[on_delete]


@pytest.mark.parametrize("on_delete", ["CASCADE", "SET NULL"])
@pytest.mark.parametrize("entry", ORM_ENTRY_POINTS)
def test_loaded_objects_follow_on_delete_rules(
    enforced: Backend, entry: str, on_delete: str
) -> None:
    md, t = billing(on_delete)
    with built(enforced, md) as connection:
        seed_billing(connection, t)
        Customer, Payment, Note = mapped(t["customer"]), mapped(t["payment"]), mapped(t["note"])
        session = orm_session(connection, entry)
        p100, p101, p200 = (session.get(Payment, i) for i in (100, 101, 200))
        note = session.get(Note, 1000)
        merge(
            entry,
            connection,
            t["customer"],
            1,
            2,
            cls=Customer,
            session=session,
            on_conflict="delete",
        )
        if on_delete == "CASCADE":
            for obj in (p100, p101, note):
                state = sa_inspect(obj)
                assert state.deleted or state.detached, f"{obj} is still {state}"
        else:
            assert sa_inspect(p100).dict.get("subscription_id", None) is None
            assert sa_inspect(p101).dict.get("subscription_id", None) is None
        assert sa_inspect(p200).persistent and p200.subscription_id == 20
        session.close()


@pytest.mark.parametrize("dry_run", [True, False], ids=["dry_run", "run"])
@pytest.mark.parametrize("on_delete", ["NO ACTION", "RESTRICT"])
@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_restricted_delete_is_refused(
    enforced: Backend, entry: str, on_delete: str, dry_run: bool
) -> None:
    md, t = billing(on_delete)
    with built(enforced, md) as connection:
        seed_billing(connection, t)
        before = snapshot(connection, md)
        try:
            merge(
                entry,
                connection,
                t["customer"],
                1,
                2,
                cls=mapped(t["customer"]),
                on_conflict="delete",
                dry_run=dry_run,
            )
        except DeleteRestrictedError as error:
            assert "pr4_payment" in str(error) and "pr4_subscription" in str(error)
            assert error.remedy == Remedy("on_conflict", ("ignore",))  # the CLI's flag too
            assert str(error).endswith("(pass on_conflict='ignore')")
        except DBAPIError as error:
            pytest.fail(f"raw database error: {error.orig}")
        else:
            pytest.fail("the deletion of a restricted row was not refused")
        assert snapshot(connection, md) == before
        still_usable(connection)


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_no_rule_no_cascade_listed(enforced: Backend, entry: str) -> None:
    """The clashing row has no dependents: nothing beyond it is named."""
    md, t = billing("CASCADE")
    with built(enforced, md) as connection:
        seed_billing(connection, t)
        connection.execute(t["note"].delete())
        connection.execute(t["payment"].delete())
        report = merge(
            entry, connection, t["customer"], 1, 2, cls=mapped(t["customer"]), on_conflict="delete"
        )
        assert report.deleted == 1
        assert cascaded(report) == {}


@pytest.mark.backends("sqlite-nofk")
@pytest.mark.parametrize("on_delete", ["CASCADE", "SET NULL", "NO ACTION"])
@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_unenforced_foreign_keys_leave_nothing_dangling(
    db: Backend, entry: str, on_delete: str
) -> None:
    """Without enforced foreign keys no ON DELETE rule runs: deleting the clashing
    subscription leaves its payments referencing a row that is gone.  Required: the rule
    applied by the merge itself, or a refusal that changes nothing."""
    md, t = billing(on_delete)
    with built(db, md) as connection:
        seed_billing(connection, t)
        before = snapshot(connection, md)
        try:
            merge(
                entry,
                connection,
                t["customer"],
                1,
                2,
                cls=mapped(t["customer"]),
                on_conflict="delete",
            )
        except DeleteRestrictedError:
            assert snapshot(connection, md) == before
            return
        subscriptions = {r[0] for r in rows(connection, t["subscription"])}
        dangling = [r for r in rows(connection, t["payment"]) if r[1] not in subscriptions]
        assert all(r[1] is None for r in dangling), f"payments of a deleted row: {dangling}"
