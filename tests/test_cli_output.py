"""Writing the result fails after the merge committed: said so, with its own exit status."""

from __future__ import annotations

import errno
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sa_references.cli import EXIT_BROKEN_PIPE, EXIT_COMMITTED_OUTPUT_FAILED, main
from tests import test_cli
from tests.test_cli import Database, FakeStdin, commands, write_csv

database = test_cli.database  # fixture

pytestmark = pytest.mark.backends("sqlite", "postgresql", "mariadb")


class FailingStdout(io.StringIO):
    """A stdout whose writes fail (a full disk, a closed pipe)."""

    def __init__(self, error: OSError) -> None:
        super().__init__()
        self.error = error

    def write(self, text: str) -> int:
        raise self.error

    def flush(self) -> None:
        raise self.error


def run_failing(
    monkeypatch: pytest.MonkeyPatch, error: OSError, argv: list[str]
) -> tuple[int, str]:
    monkeypatch.setattr(sys, "stdin", FakeStdin("", False))
    monkeypatch.setattr(sys, "stdout", FailingStdout(error))
    stderr = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    status = main(argv)
    monkeypatch.undo()
    return status, stderr.getvalue()


ERRORS = [
    OSError(errno.ENOSPC, "No space left on device"),
    BrokenPipeError(errno.EPIPE, "Broken pipe"),
]


@pytest.mark.parametrize("error", ERRORS, ids=["full disk", "broken pipe"])
@pytest.mark.parametrize("json", [False, True], ids=["text", "json"])
def test_merge_committed_but_output_failed(
    monkeypatch: pytest.MonkeyPatch,
    database: Database,
    error: OSError,
    json: bool,
) -> None:
    argv = ["merge", database.url, "cli_customer", "5", "6", "--yes", *(["--json"] * json)]
    status, err = run_failing(monkeypatch, error, argv)
    assert status == EXIT_COMMITTED_OUTPUT_FAILED == 4
    (line,) = err.splitlines()
    assert line.startswith("sa-references: error: ")
    assert "the merge was committed" in line
    assert "nothing changed" not in line
    assert database.customer_of_orders()[5] == 6  # committed


def test_pairs_committed_but_output_failed(
    monkeypatch: pytest.MonkeyPatch,
    database: Database,
    tmp_path: Path,
) -> None:
    pairs = write_csv(tmp_path / "pairs.csv", "source,target\n5,6\n")
    argv = ["merge", database.url, "cli_customer", "--pairs", pairs, "--yes"]
    status, err = run_failing(monkeypatch, OSError(errno.ENOSPC, "No space left"), argv)
    assert status == 4
    assert "the merge was committed" in err
    assert database.customer_of_orders()[5] == 6


def test_output_failure_without_a_change_is_an_error(
    monkeypatch: pytest.MonkeyPatch,
    database: Database,
) -> None:
    before = database.snapshot()
    argv = ["merge", database.url, "cli_customer", "5", "6", "--dry-run"]
    status, err = run_failing(monkeypatch, OSError(errno.ENOSPC, "No space left"), argv)
    assert status == 1
    (line,) = err.splitlines()
    assert "committed" not in line
    assert database.snapshot() == before
    status, err = run_failing(
        monkeypatch,
        BrokenPipeError(errno.EPIPE, "Broken pipe"),
        ["keys", database.url, "cli_customer"],
    )
    assert (status, err) == (EXIT_BROKEN_PIPE, "")  # as Unix tools: silent


@pytest.mark.parametrize("command", ["keys", "dependents", "dry run"])
def test_a_closed_pipe_is_silent_when_nothing_changed(command: str, database: Database) -> None:
    args = {
        "keys": ["keys", database.url, "cli_customer"],
        "dependents": ["dependents", database.url, "cli_customer", "3"],
        "dry run": ["merge", database.url, "cli_customer", "5", "6", "--dry-run"],
    }[command]
    before = database.snapshot()
    result = closed_pipe_run([*commands()["python -m"], *args])
    assert (result.returncode, result.stderr) == (EXIT_BROKEN_PIPE, "")
    assert database.snapshot() == before


def closed_pipe_run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    """Run with stdout a pipe whose reading end is closed before the process starts."""
    read, write = os.pipe()
    os.close(read)
    try:
        return subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            check=False,
            timeout=120,
        )
    finally:
        os.close(write)


@pytest.mark.parametrize("how", ["python -m", "console script"])
def test_merge_into_a_closed_pipe(how: str, database: Database) -> None:
    argv = [*commands()[how], "merge", database.url, "cli_customer", "5", "6", "--yes"]
    result = closed_pipe_run(argv)
    assert result.returncode == 4, result.stderr
    (line,) = result.stderr.splitlines()  # no "Exception ignored" at shutdown
    assert "the merge was committed" in line
    assert database.customer_of_orders()[5] == 6
