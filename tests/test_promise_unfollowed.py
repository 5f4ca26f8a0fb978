"""Found while attacking: a foreign key the database holds but the MetaData lacks.

The MetaData the merge follows declares ``customer`` and ``orders``; the database also
holds ``invoice.customer_id -> customer.id`` (another application's table, a table left
out of the models).  The merge re-points the orders and leaves the invoices on the
duplicate; with ``delete=True`` the duplicate's deletion then cascades the invoices away
(ON DELETE CASCADE), fails with a raw IntegrityError (NO ACTION), or leaves them dangling
(SQLite without enforced foreign keys).  ``UnfollowedReferenceError`` exists for this case
and is raised nowhere: required, before anything is written.
"""

from __future__ import annotations

import pytest
from sqlalchemy import Column, ForeignKey, Integer, MetaData, Table

from sa_references import UnfollowedReferenceError, unfollowed_references
from tests.conftest import Backend
from tests.promise_schemas import (
    ENTRY_POINTS,
    built,
    mapped,
    merge,
    seed,
    snapshot,
    still_usable,
)


def schemas(on_delete: str | None) -> tuple[MetaData, MetaData]:
    """(everything the database holds, what the application declares)."""
    full = MetaData()
    Table("pru_customer", full, Column("id", Integer, primary_key=True, autoincrement=False))
    Table(
        "pru_orders",
        full,
        Column("id", Integer, primary_key=True, autoincrement=False),
        Column("customer_id", Integer, ForeignKey("pru_customer.id"), nullable=False),
    )
    Table(
        "pru_invoice",
        full,
        Column("id", Integer, primary_key=True, autoincrement=False),
        Column(
            "customer_id",
            Integer,
            ForeignKey("pru_customer.id", ondelete=on_delete),
            nullable=False,
        ),
    )
    declared = MetaData()
    for name in ("pru_customer", "pru_orders"):
        full.tables[name].to_metadata(declared)
    return full, declared


@pytest.mark.parametrize("on_delete", ["CASCADE", None], ids=["cascade", "no_action"])
@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize("dry_run", [False, True], ids=["run", "dry_run"])
def test_deleting_a_source_the_database_still_references_is_refused(
    db: Backend, entry: str, on_delete: str | None, dry_run: bool
) -> None:
    """``delete=True`` with a foreign key the merge does not follow: refused, naming it,
    before anything is written (the dry run predicts it)."""
    full, declared = schemas(on_delete)
    with built(db, full) as connection:
        seed(connection, ROWS(full))
        before = snapshot(connection, full)
        customer = declared.tables["pru_customer"]
        with pytest.raises(UnfollowedReferenceError) as info:
            merge(
                entry,
                connection,
                customer,
                1,
                2,
                cls=mapped(customer),
                delete=True,
                dry_run=dry_run,
            )
        assert "pru_invoice" in str(info.value)
        assert snapshot(connection, full) == before, "the invoice was lost or left behind"
        still_usable(connection)


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_a_merge_that_keeps_its_source_leaves_unfollowed_rows_on_it(
    db: Backend, entry: str
) -> None:
    """Without ``delete=True`` nothing is lost: the rows the merge does not follow stay on
    the source, which stays; ``unfollowed_references`` names the key beforehand."""
    full, declared = schemas("CASCADE")
    with built(db, full) as connection:
        seed(connection, ROWS(full))
        customer = declared.tables["pru_customer"]
        (found,) = unfollowed_references(connection, declared)
        assert (found.table, found.columns, found.referred_table) == (
            "pru_invoice",
            ("customer_id",),
            "pru_customer",
        )
        merge(entry, connection, customer, 1, 2, cls=mapped(customer))
        rows = snapshot(connection, full)
        assert rows["pru_orders"] == [(1, 2)]
        assert rows["pru_invoice"] == [(1, 1)]  # still on the source, not lost
        assert sorted(rows["pru_customer"]) == [(1,), (2,)]


def ROWS(full: MetaData) -> dict[Table, list[dict[str, int]]]:
    return {
        full.tables["pru_customer"]: [{"id": 1}, {"id": 2}],
        full.tables["pru_orders"]: [{"id": 1, "customer_id": 1}],
        full.tables["pru_invoice"]: [{"id": 1, "customer_id": 1}],
    }
