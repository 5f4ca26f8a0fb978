"""The benchmark suite at a tiny size on SQLite, so that it cannot rot.

Runs every case of ``python -m benchmarks`` in-process (a few seconds) and
checks the report and the JSON file; and checks that the result checks
really catch a merge that was not done.  The server-time rows (PostgreSQL and
MariaDB only) are checked with synthetic results, and for real on each server
given with ``--dburi``: in a scratch database beside the test database (its
name plus ``_bench``, created when missing and dropped afterwards), since the
benchmark drops and recreates a ``customer`` table of its own.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, make_url, text

from benchmarks import report, runner
from benchmarks.cases import CASES, Backend, Options
from benchmarks.measure import Kind, Result
from benchmarks.schema import VerificationError, build_models, load, verify
from benchmarks.server import SERVER
from tests.conftest import Backend as SuiteBackend


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
        "Start-up",
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
    # SQLite has no server: no server measurement, no server row, no error
    assert not [r for r in results if r["kind"] == "server"]
    assert SERVER not in out
    assert not [t for t in document["targets"] if "server execution" in t["target"]]


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


@contextlib.contextmanager
def scratch_url(db: SuiteBackend) -> Iterator[str]:
    """A database beside the test database on the same server, created for the run when
    missing and then dropped again (the test command leaves nothing behind)."""
    url = make_url(db.url)
    name = f"{url.database}_bench"
    admin = db.make_engine(isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        if db.dialect == "postgresql":
            known = "SELECT 1 FROM pg_database WHERE datname = :name"
            created = connection.execute(text(known), {"name": name}).first() is None
            if created:
                connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
        else:
            known = "SELECT 1 FROM information_schema.schemata WHERE schema_name = :name"
            created = connection.execute(text(known), {"name": name}).first() is None
            if created:
                connection.exec_driver_sql(f"CREATE DATABASE `{name}`")
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        if created:
            with admin.connect() as connection:
                if db.dialect == "postgresql":
                    connection.exec_driver_sql(f'DROP DATABASE "{name}" WITH (FORCE)')
                else:
                    connection.exec_driver_sql(f"DROP DATABASE `{name}`")
        admin.dispose()


def test_server_time(db: SuiteBackend, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The server's own time of the set-based UPDATEs, and the ceiling it sets: measured on
    PostgreSQL and MariaDB; SQLite, with no server, gets neither row."""
    if db.dialect == "sqlite":
        path = tmp_path / "results.json"
        args = ["--cases", "batch", "--n", "8", "--repeat", "1", "--rows-per-record", "3"]
        code = runner.main([*args, "--no-memory", "--json", str(path), "--quiet"])
        assert code == 0, capsys.readouterr().out
        document = json.loads(path.read_text())
        assert document["results"] and not [r for r in document["results"] if r["kind"] == "server"]
        assert not [t for t in document["targets"] if t["target"].startswith("context: server")]
        assert SERVER not in capsys.readouterr().out
        return
    path = tmp_path / "results.json"
    with scratch_url(db) as scratch:
        code = runner.main(
            [
                *("--no-sqlite", "--dburi", scratch, "--cases", "batch,scaling", "--n", "8,16"),
                *("--repeat", "2", "--rows-per-record", "3", "--no-memory"),
                *("--json", str(path), "--quiet"),
            ]
        )
    out = capsys.readouterr().out
    assert code == 0, out
    document = json.loads(path.read_text())
    server = [r for r in document["results"] if r["kind"] == "server"]
    assert {(r["case"], r["n"]) for r in server} >= {("batch", 8), ("scaling", 8), ("scaling", 16)}
    for result in server:
        assert result["median_seconds"] > 0, result
        assert result["statement_count"] == 5
        if result["backend"] == "postgresql":
            assert 0 < result["trigger_seconds"] < result["trigger_run_seconds"]
    assert SERVER in out
    if any(r["backend"] == "postgresql" for r in server):
        assert "foreign-key triggers" in out
    rows = [t for t in document["targets"] if t["target"].startswith("context: server")]
    assert {t["backend"] for t in rows} == {r["backend"] for r in server}
    assert all("x at N=8" in t["measured"] for t in rows)
    # not taken for a contender
    assert all(r["contender"] != SERVER for r in document["ratios"])


def _result(backend: str, contender: str, kind: Kind, n: int, median: float, **kw: Any) -> Result:
    return Result(
        "batch", backend, contender, kind, n, "merge", n, times=[median], statements=[5], **kw
    )


def _backend(name: str, dialect: str) -> Backend:
    return Backend(name, create_engine("sqlite://"), "1", "driver", dialect=dialect)


def test_server_rows_from_synthetic_results() -> None:
    peer = report.PEER_LOOP
    results = [
        _result("postgresql", report.HAND, "hand-written", 2000, 0.150, variant="unnest"),
        _result(
            "postgresql",
            SERVER,
            "server",
            2000,
            0.133,
            variant="unnest",
            trigger_seconds=0.055,
            trigger_run_seconds=0.140,
        ),
        _result("postgresql", peer, "peer", 2000, 1.96),
        _result("postgresql", SERVER, "server", 10000, 0.700, variant="unnest"),
        _result("postgresql", peer, "peer", 10000, 10.5),
        _result("mariadb", SERVER, "server", 2000, 0.100, variant="temp-table"),
        _result("mariadb", peer, "peer", 2000, 1.5),
        _result("mysql", SERVER, "server", 2000, 0.0, variant="temp-table"),
        _result("sqlite", report.HAND, "hand-written", 2000, 0.05, variant="values"),
        _result("sqlite", peer, "peer", 2000, 1.0),
    ]
    results[7].times.clear()
    results[7].skipped = "not measured on MySQL"
    backends = [
        _backend("postgresql", "postgresql"),
        _backend("mariadb", "mysql"),
        _backend("mysql", "mysql"),
        _backend("sqlite", "sqlite"),
    ]
    try:
        rows = {
            r["backend"]: r
            for r in report.targets(results, backends)
            if r["target"].startswith("context: server execution")
        }
        assert rows["postgresql"]["measured"] == "14.7x at N=2,000; 15.0x at N=10,000"
        assert rows["postgresql"]["verdict"] == "(context)"
        assert rows["mariadb"]["measured"] == "15.0x at N=2,000"
        assert rows["mysql"]["measured"] == "not measured on MySQL"
        assert "sqlite" not in rows
        # a server measurement is neither ours nor hand-written
        assert report.best_hand_written(results, "postgresql", 2000) is results[0]
        assert not [r for r in report.ratios(results) if r["contender"].startswith(SERVER)]
        assert report.speedup_vs_peer(results, results[1]) is None
        env = {
            "date": "2024-01-01T00:00:00",
            "command": "python -m benchmarks",
            "machine": {"cores": 1, "cpu": "cpu", "ram_bytes": None, "platform": "linux"},
            "python": "CPython 3",
            "sqlalchemy": "2",
            "sqlalchemy_utils": "0.41",
            "sa_references": "0.1",
            "sa_references_revision": None,
        }
        text = report.markdown(results, env, Options(sizes=[2000, 10000]), backends)
        assert f"| postgresql | {SERVER} (unnest) | 2,000 | 133.0 ms |" in text
        assert "14.7x (ceiling) | 0.89x |" in text
        assert "postgresql, N=2,000: 133.0 ms on the server; 39% of it in foreign-key triggers" in (
            text
        )
        assert "mariadb, N=2,000: 100.0 ms on the server; peer loop / server = 15.0x." in text
        assert "mysql, N=2,000: not measured on MySQL" in text
        assert "sqlite, N=" not in text
    finally:
        for backend in backends:
            backend.engine.dispose()
