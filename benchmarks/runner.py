"""Command line: pick the backends and cases, run them in this process, report.

``python -m benchmarks [--dburi URL ...] [--n 2000,10000,100000] [--repeat 3]
[--cases single,batch,...] [--json PATH]``

SQLite (a temporary file, ``PRAGMA foreign_keys=ON``) always runs unless
``--no-sqlite``; each ``--dburi`` adds a server.  The suite drops and creates
the tables ``customer``, ``orders``, ``invoices``, ``tickets``, ``addresses``
and ``notes`` in the database a URL names, and drops them at the end (the
``startup`` case likewise creates and drops a pagila-like schema, see
:mod:`benchmarks.pagila`): give it a scratch database.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import make_url

from . import cases, report
from .cases import CASES, Backend, Context, Options
from .measure import Result, StatementCounter
from .schema import build_models, drop

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "latest.json"


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(part.replace("_", "")) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of integers: {text!r}") from None
    if not sizes or any(n < 1 for n in sizes):
        raise argparse.ArgumentTypeError(f"sizes must be positive: {text!r}")
    return sizes


def _cases(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [name for name in names if name not in CASES]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown case(s) {', '.join(unknown)}; choose from {', '.join(CASES)}"
        )
    return [case for case in CASES if case in names]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="sa_references against sqlalchemy-utils and hand-written SQL.",
    )
    p.add_argument(
        "--dburi",
        action="append",
        default=[],
        metavar="URL",
        help="a PostgreSQL or MariaDB/MySQL scratch database to run on as well (repeatable)",
    )
    p.add_argument("--no-sqlite", action="store_true", help="skip the SQLite temp-file run")
    p.add_argument(
        "--n",
        type=_sizes,
        action="extend",
        metavar="N[,N...]",
        help="numbers of merges (repeatable or comma-separated; default 2000,10000,100000); "
        "single, batch, dependents and discovery run at the smallest",
    )
    p.add_argument("--repeat", type=int, default=3, help="timed runs per measurement (median)")
    p.add_argument(
        "--cases",
        type=_cases,
        default=list(CASES),
        metavar="NAME[,NAME...]",
        help=f"a subset of {','.join(CASES)}",
    )
    p.add_argument(
        "--json", type=Path, default=DEFAULT_JSON, help="default benchmarks/results/latest.json"
    )
    p.add_argument(
        "--budget",
        type=float,
        default=60.0,
        help="seconds one run of a loop (peer or merge_into) may be predicted to take; "
        "larger N are skipped for time; a merge measurement also stops repeating once its "
        "runs add up to a third of it, after two runs (default 60)",
    )
    p.add_argument("--rows-per-record", type=int, default=10, help="referencing rows per customer")
    p.add_argument(
        "--unrelated",
        type=_sizes,
        default=[10, 300],
        metavar="N[,N...]",
        help="unrelated tables in the MetaData for the discovery case (default 10,300)",
    )
    p.add_argument(
        "--calls", type=int, default=2000, help="calls per run in the discovery case (default 2000)"
    )
    p.add_argument(
        "--sample",
        type=int,
        default=200,
        help="customers whose dependents are listed per run (default 200)",
    )
    p.add_argument(
        "--no-memory", action="store_true", help="skip the extra tracemalloc run per measurement"
    )
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return p


def sqlite_backend(directory: str) -> Backend:
    engine = create_engine(f"sqlite:///{directory}/bench.db")

    @event.listens_for(engine, "connect")
    def _foreign_keys(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    return Backend("sqlite", engine, sqlite3.sqlite_version, f"pysqlite {sys.version.split()[0]}")


def server_backend(url: str) -> Backend:
    engine = create_engine(url)
    with engine.connect() as connection:
        if engine.dialect.name == "postgresql":
            version = str(connection.exec_driver_sql("SHOW server_version").scalar_one())
            name = "postgresql"
        else:
            version = str(connection.exec_driver_sql("SELECT VERSION()").scalar_one())
            name = "mariadb" if "mariadb" in version.lower() else engine.dialect.name
    driver = engine.dialect.driver
    module = type(engine.dialect).import_dbapi().__name__.split(".")[0]
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        driver += " " + importlib.metadata.version(module)
    return Backend(name, engine, version.split()[0].split("-")[0], driver)


def _logger(quiet: bool) -> Callable[[str], None]:
    started = time.perf_counter()

    def log(message: str) -> None:
        if not quiet:
            print(f"[{time.perf_counter() - started:7.1f}s] {message}", file=sys.stderr, flush=True)

    return log


def run(
    args: argparse.Namespace, backends: Sequence[Backend], log: Callable[[str], None]
) -> list[Result]:
    options = Options(
        sizes=sorted(set(args.n or [2_000, 10_000, 100_000])),
        repeat=args.repeat,
        memory=not args.no_memory,
        budget=args.budget,
        rows_per_record=args.rows_per_record,
        unrelated=sorted(set(args.unrelated)),
        sample=args.sample,
        calls=args.calls,
    )
    args.options = options
    results: list[Result] = []
    for backend in backends:
        counter = StatementCounter(backend.engine)
        ctx = Context(backend, options, counter, log)
        try:
            for name in args.cases:
                log(f"{backend.name} {backend.version}: {name}")
                cases.RUNNERS[name](ctx)
        finally:
            counter.remove()
            results += ctx.results
    return results


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.repeat < 1:
        parser().error("--repeat must be at least 1")
    log = _logger(args.quiet)
    directory = tempfile.mkdtemp(prefix="sa_references_bench_")
    backends: list[Backend] = []
    results: list[Result] = []
    try:
        if not args.no_sqlite:
            backends.append(sqlite_backend(directory))
        for url in dict.fromkeys(args.dburi):
            try:
                backends.append(server_backend(url))
            except Exception as error:
                safe = make_url(url).render_as_string(hide_password=True)
                print(f"cannot reach {safe}: {error}", file=sys.stderr)
                return 2
        if not backends:
            parser().error("nothing to run: --no-sqlite and no --dburi")
        started = time.perf_counter()
        results = run(args, backends, log)
        env = report.environment(backends)
        env["duration_seconds"] = round(time.perf_counter() - started, 1)
        print(report.markdown(results, env, args.options, backends))
        report.write_json(args.json, results, env, args.options, backends)
        log(f"results written to {args.json}")
    finally:
        models = build_models()
        for backend in backends:
            try:
                drop(backend.engine, models)
            finally:
                backend.engine.dispose()
        models.dispose()
        shutil.rmtree(directory, ignore_errors=True)
    failed = [r for r in results if r.error]
    for result in failed:
        print(
            f"FAILED: {result.backend} {result.case} {report._name(result)}: {result.error}",
            file=sys.stderr,
        )
    return 1 if failed else 0
