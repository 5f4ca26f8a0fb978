"""The command line's commands called from Python: typed arguments, results returned,
nothing printed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sa_references import command
from sa_references.cli import EXIT_WOULD_FAIL
from sa_references.command import (
    CommandError,
    Declined,
    DependentsResult,
    KeysResult,
    MergeOptions,
    MergeResult,
    PairsResult,
    dependents,
    keys,
    merge,
    merge_pairs,
    result_json,
)
from sa_references.exc import MergeConflictError
from tests import test_cli
from tests.test_cli import Database, write_csv

database = test_cli.database  # fixtures
cli = test_cli.cli

pytestmark = pytest.mark.backends("sqlite", "postgresql", "mariadb")


def test_commands_return_results(database: Database, capsys: pytest.CaptureFixture[str]) -> None:
    found = keys(database.url, "cli_customer")
    assert isinstance(found, KeysResult)
    assert found.table.name == "cli_customer"
    assert [k.name for k in found.keys] == [
        "cli_customer(referrer_id)",
        "cli_customer_tag(customer_id)",
        "cli_order(customer_id)",
    ]

    rows = dependents(database.url, "cli_customer", 3, limit=1)
    assert isinstance(rows, DependentsResult)
    assert (rows.key, rows.count) == ((3,), 5)
    assert {s.key.name: s.count for s in rows.samples}["cli_order(customer_id)"] == 2
    assert all(len(s.rows) <= 1 for s in rows.samples)

    before = database.snapshot()
    plan = merge(database.url, "cli_customer", "3", "1", MergeOptions(dry_run=True))
    assert isinstance(plan, MergeResult)
    assert (plan.dry_run, plan.committed, plan.rowcount) == (True, False, 4)
    assert [row for c in plan.conflicts for row in c.rows] == [(3, 1)]
    assert isinstance(plan.refusal, MergeConflictError)
    with pytest.raises(MergeConflictError):
        plan.refuse()
    assert database.snapshot() == before

    shown: list[MergeResult] = []

    def decline(candidate: MergeResult) -> bool:
        shown.append(candidate)
        return False

    options = MergeOptions(on_conflict="delete", delete=True)
    with pytest.raises(Declined):
        merge(database.url, "cli_customer", (3,), {"id": 1}, options, confirm=decline)
    assert shown[0].dry_run and shown[0].deleted == 1
    assert database.snapshot() == before

    done = merge(database.url, "cli_customer", 3, 1, options, confirm=lambda plan: True)
    assert (done.dry_run, done.committed) == (False, True)
    assert (done.source, done.target, done.rowcount, done.deleted) == ((3,), (1,), 4, 1)
    assert result_json(done)["source"] == {"id": 3}
    assert database.customer_of_orders()[2] == 1
    assert capsys.readouterr() == ("", "")  # nothing printed


def test_merge_pairs_from_python(database: Database, tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    options = MergeOptions(delete=True)
    result = merge_pairs(
        database.url,
        "cli_customer",
        [(5, 6), ("4", "2")],
        options,
        batch_size=1,
        progress=lambda phase, done, total: calls.append((phase, done, total)),
    )
    assert isinstance(result, PairsResult)
    assert (result.pairs, result.batches, result.committed, result.origin) == (2, 2, True, "pairs")
    assert calls == [("merged", 1, 2), ("merged", 2, 2)]  # not planned: no confirm
    assert [row[0] for row in database.rows("cli_customer")] == [1, 2, 3, 6]

    path = Path(write_csv(tmp_path / "pairs.csv", "source,target\n3,1\n"))
    plan: Any = merge_pairs(
        database.url, "cli_customer", path, MergeOptions(on_conflict="delete", dry_run=True)
    )
    assert (plan.dry_run, plan.origin, plan.deleted, plan.resolved) == (
        True,
        str(path),
        1,
        (((3,), (1,)),),
    )


def test_a_run_that_differs_from_its_plan_is_refused(database: Database) -> None:
    """The database changes while the plan is shown: the merge changes nothing."""

    def meanwhile(plan: MergeResult) -> bool:
        with database.engine.begin() as connection:
            connection.exec_driver_sql("INSERT INTO cli_order VALUES (6, 5, 'MUG', 'STD')")
        return True

    before = database.snapshot()
    with pytest.raises(CommandError, match=r"changed after the plan .*cli_order\(customer_id\)"):
        merge(database.url, "cli_customer", 5, 6, confirm=meanwhile)
    after = database.snapshot()
    assert after["cli_order"] == [*before["cli_order"], (6, 5, "MUG", "STD")]
    assert {k: v for k, v in after.items() if k != "cli_order"} == {
        k: v for k, v in before.items() if k != "cli_order"
    }


def test_result_json_is_what_json_output_writes(cli: Any, database: Database) -> None:
    """``result_json`` of each command's result is the document ``--json`` prints."""
    import json

    url = database.url
    calls = [
        (keys(url, "cli_customer"), ["keys", url, "cli_customer"]),
        (dependents(url, "cli_customer", "3"), ["dependents", url, "cli_customer", "3"]),
        (
            merge(url, "cli_customer", "3", "1", MergeOptions(dry_run=True)),
            ["merge", url, "cli_customer", "3", "1", "--dry-run"],
        ),
    ]
    for result, argv in calls:
        run = cli(*argv, "--json")
        would_fail = getattr(result, "refusal", None) is not None  # the conflict of 3 -> 1
        assert run.status == (EXIT_WOULD_FAIL if would_fail else 0), (argv, run.err)
        assert json.loads(run.out) == json.loads(json.dumps(result_json(result), default=str))


def test_command_module_is_the_public_surface() -> None:
    assert command.__all__ == sorted(command.__all__, key=lambda n: (not n.isupper(), n))
    for name in command.__all__:
        if not name.isupper():  # constants aside
            assert getattr(command, name).__doc__, f"{name} has no docstring"
