"""The benchmark suite at a tiny size on SQLite, so that it cannot rot.

Runs every case of ``python -m benchmarks`` in-process (a few seconds) and
checks the report and the JSON file; and checks that the result checks
really catch a merge that was not done.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import create_engine

from benchmarks import runner
from benchmarks.cases import CASES
from benchmarks.schema import VerificationError, build_models, load, verify


def test_whole_suite_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "results.json"
    code = runner.main(
        [
            *("--n", "8,16", "--repeat", "2", "--rows-per-record", "3"),
            *("--unrelated", "2,12", "--calls", "10", "--sample", "4"),
            *("--json", str(path), "--quiet"),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    for heading in (
        "Merge, single",
        "Merge, batch",
        "Scaling",
        "Dependents",
        "Discovery",
        "Targets",
    ):
        assert f"### {heading}" in out
    document = json.loads(path.read_text())
    assert document["machine"]["cores"]
    assert document["backends"]["sqlite"]["version"]
    results = document["results"]
    assert {r["case"] for r in results} == set(CASES)
    assert not [r for r in results if r["error"]]
    merges = [r for r in results if r["case"] == "scaling"]
    contenders = {r["contender"] for r in merges}
    assert {"ReferencesSession", "merge_many", "hand-written SQL"} <= contenders
    assert {r["n"] for r in merges} == {8, 16}
    # hand-written SQL runs in both settings: alone, and in the ORM contenders' session
    assert {r["session"] for r in merges if r["kind"] == "hand-written"} == {True, False}
    assert {r["session"] for r in merges if r["contender"] == "ReferencesSession"} == {True}
    assert all(r["median_seconds"] > 0 and r["statement_count"] for r in merges if not r["skipped"])
    assert any(r["peak_bytes"] for r in merges)
    assert document["ratios"] and document["targets"]


def test_unmerged_data_fails_the_check(tmp_path: Path) -> None:
    models = build_models()
    engine = create_engine(f"sqlite:///{tmp_path / 'check.db'}")
    try:
        data = load(engine, models, 4, 5)
        with pytest.raises(VerificationError, match="still reference a duplicate"):
            verify(engine, models, data)
    finally:
        engine.dispose()
        models.dispose()


def test_bad_arguments_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        runner.main(["--cases", "nonsense"])
    assert "unknown case" in capsys.readouterr().err
