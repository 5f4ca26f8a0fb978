"""``merge --pairs``: what runs is what the plan showed, batches included."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sa_references.cli import EXIT_WOULD_FAIL
from tests import test_cli
from tests.test_cli import Database, write_csv

cli, database = test_cli.cli, test_cli.database  # fixtures

pytestmark = pytest.mark.backends("sqlite", "postgresql", "mariadb")


@pytest.fixture
def memberships(database: Database) -> Iterator[Database]:
    """cli_membership: its own id, unique (customer_id, tag_id). Customers 3 and 5 both hold
    tag 2 through rows 10 (customer 5) and 20 (customer 3); customer 1 does not."""
    with database.engine.begin() as connection:
        connection.exec_driver_sql("DROP TABLE IF EXISTS cli_membership")
        connection.exec_driver_sql(
            "CREATE TABLE cli_membership (id INTEGER NOT NULL PRIMARY KEY, "
            "customer_id INTEGER NOT NULL, tag_id INTEGER NOT NULL, "
            "UNIQUE (customer_id, tag_id), "
            "FOREIGN KEY (customer_id) REFERENCES cli_customer (id))"
        )
        connection.exec_driver_sql(
            "INSERT INTO cli_membership VALUES (10, 5, 2), (20, 3, 2), (30, 1, 1)"
        )
    yield database
    with database.engine.begin() as connection:
        connection.exec_driver_sql("DROP TABLE cli_membership")


def membership_conflicts(document: dict[str, Any]) -> list[list[Any]]:
    (key,) = [k for k in document["keys"] if k["name"] == "cli_membership(customer_id)"]
    return [row for conflict in key["conflicts"] for row in conflict["rows"]]


@pytest.mark.parametrize("batch_size", ["1", "1000"])
def test_pairs_run_deletes_what_the_plan_listed(
    cli: Any,
    memberships: Database,
    tmp_path: Path,
    batch_size: str,
) -> None:
    """3 -> 1 is in the first batch, 5 -> 1 in the second: row 20 moves first, row 10 clashes."""
    db = memberships
    pairs = write_csv(tmp_path / "pairs.csv", "source,target\n3,1\n5,1\n")
    argv = ["merge", db.url, "cli_customer", "--pairs", pairs, "--on-conflict", "delete"]
    argv += ["--batch-size", batch_size, "--json"]
    before = db.snapshot(), db.rows("cli_membership")
    plan = cli(*argv, "--dry-run").json()
    assert (db.snapshot(), db.rows("cli_membership")) == before
    planned = membership_conflicts(plan)
    assert len(planned) == 1

    run = cli(*argv, stdin="y\n", tty=True)
    assert run.status == 0, run.err
    result = run.json()
    assert membership_conflicts(result) == planned
    for field in ("rowcount", "deleted", "left"):
        assert result[field] == plan[field], field
    (deleted,) = planned
    left = db.rows("cli_membership")
    assert deleted[0] not in [row[0] for row in left]
    assert len(left) == 2
    assert [row[1] for row in left] == [1, 1]

    # the plan shown before the prompt is the same
    assert f"{plan['deleted']} conflicting row" in run.err


@pytest.mark.parametrize("dry_run", [False, True], ids=["run", "plan"])
def test_conflicts_of_several_batches_are_one_entry_per_unique_key(
    cli: Any, database: Database, tmp_path: Path, dry_run: bool
) -> None:
    """3 -> 1 clashes on (1, 1) in the first batch, 5 -> 1 on (1, 2) in the second: one
    entry for cli_customer_tag's primary key, with both rows."""
    pairs = write_csv(tmp_path / "pairs.csv", "source,target\n3,1\n5,1\n")
    argv = ["merge", database.url, "cli_customer", "--pairs", pairs, "--batch-size", "1"]
    argv += ["--on-conflict", "ignore", "--json", "--dry-run" if dry_run else "--yes"]
    run = cli(*argv)
    assert run.status == 0, run.err
    (key,) = [k for k in run.json()["keys"] if k["name"] == "cli_customer_tag(customer_id)"]
    (conflict,) = key["conflicts"]
    assert sorted(conflict["rows"]) == [[3, 1], [5, 2]]
    assert key["left"] == 2


@pytest.mark.parametrize(
    "pairs_csv, options, refusal",
    [
        # 3 -> 1 clashes on cli_customer_tag (1, 1): refused under raise
        ("source,target\n3,1\n", [], "violate a unique key"),
        # 2 references 1 (referrer_id): merging 1 into 2 would make it reference itself
        ("source,target\n1,2\n", ["--on-conflict", "delete"], "--on-self-reference null"),
    ],
    ids=["conflict", "self-reference"],
)
def test_plan_of_a_refused_pairs_merge_with_delete_is_shown(
    cli: Any, database: Database, tmp_path: Path, pairs_csv: str, options: list[str], refusal: str
) -> None:
    """The plan of a merge that would be refused is shown (exit status 5), --delete included:
    rehearsing the refused batch must not try to delete sources that keep rows."""
    before = database.snapshot()
    pairs = write_csv(tmp_path / "pairs.csv", pairs_csv)
    argv = ["merge", database.url, "cli_customer", "--pairs", pairs, *options, "--delete"]
    run = cli(*argv, "--dry-run", "--json")
    assert run.status == EXIT_WOULD_FAIL, run.err
    assert refusal in run.json()["would_fail"]
    assert database.snapshot() == before
