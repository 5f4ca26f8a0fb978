"""The benchmark cases: which contenders run, at which sizes, on which data.

``single``
    N merges one by one on a plain Session: ``merge_into`` (default
    ``synchronize_session="evaluate"``, and ``False``) against the peer's
    ``merge_references``; N is the smallest ``--n``.
``batch``
    N merges at once: ``ReferencesSession`` (merges queued, applied at
    commit), ``merge_many`` (Core), hand-written set-based SQL and the peer
    loop; N is the smallest ``--n``.
``scaling``
    The batch contenders and both loops at every ``--n``; a loop whose
    predicted time per run exceeds ``--budget`` seconds is skipped for time.

    ``batch`` and ``scaling`` also take the database server's own execution
    time of the best hand-written set-based UPDATEs (PostgreSQL and MariaDB;
    kind ``server``, see :mod:`benchmarks.server`): a floor no client can beat.
``dependents``
    ``dependents(obj)`` iterated and counted against the peer's
    ``dependent_objects(obj)``, for a sample of customers.
``discovery``
    Finding the referencing keys with few and with many unrelated mapped
    tables in the MetaData: ``referencing_keys`` (cached per MetaData) against
    the peer's ``get_referencing_foreign_keys`` (scans every table on each
    call), and whole merges with each.
``startup``
    What one command line call costs on a schema the size and shape of pagila
    (:mod:`benchmarks.pagila`, created in the benchmark's database and dropped
    after): ``sa_references.cli.main(["keys", URL, "customer"])`` and ``merge
    URL customer 5 1 --dry-run`` in this process (engine, reflection, output;
    the best and the median of at least 5 runs after one warm-up, which is
    shown too), and ``python -m sa_references keys`` in a subprocess,
    interpreter start-up included, beside the start-up and imports alone, as
    context (2-3 runs).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import math
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Column, Engine, Integer, MetaData, Table, event, select
from sqlalchemy.orm import Session

import sa_references
import sa_references.cli

from . import contenders as c
from . import pagila
from . import server as s
from .measure import (
    Entry,
    Kind,
    Result,
    StatementCounter,
    measure_round_robin,
    record_failure,
)
from .schema import Dataset, Models, VerificationError, build_models, drop, load, verify

#: in the order they run: the heavy scaling case last, so that the database's
#: background work after its big runs (vacuum, purge) cannot slow the others
CASES = ("startup", "single", "batch", "dependents", "discovery", "scaling")


@dataclass
class Options:
    sizes: list[int]
    repeat: int = 3
    memory: bool = True
    #: seconds one run of a loop contender may be predicted to take before it is skipped;
    #: a merge measurement stops repeating once its runs add up to a third of it (2 runs min.)
    budget: float = 60.0
    rows_per_record: int = 10
    unrelated: list[int] = field(default_factory=lambda: [10, 300])
    #: customers sampled by the dependents case
    sample: int = 200
    #: calls per run in the discovery case
    calls: int = 2000


@dataclass
class Backend:
    name: str
    engine: Engine
    version: str
    driver: str
    dialect: str = ""

    def __post_init__(self) -> None:
        self.dialect = self.dialect or self.engine.dialect.name


@dataclass
class Context:
    backend: Backend
    options: Options
    counter: StatementCounter
    log: Callable[[str], None]
    results: list[Result] = field(default_factory=list)
    #: merge measurements by (contender, variant, n), shared by the batch and scaling cases
    merges: dict[tuple[str, str, int], Result] = field(default_factory=dict)

    @property
    def engine(self) -> Engine:
        return self.backend.engine

    def add(self, result: Result) -> Result:
        self.results.append(result)
        if result.ok:
            memory = f", peak {result.peak_bytes / 2**20:.1f} MiB" if result.peak_bytes else ""
            self.log(
                f"  {result.contender} {result.variant} N={result.n}: "
                f"{result.median:.3f} s median of {len(result.times)}, "
                f"{result.statement_count} statements{memory}"
            )
        else:
            self.log(
                f"  {result.contender} {result.variant} N={result.n}: "
                f"{result.skipped or result.error}"
            )
        return result


# -- merges -------------------------------------------------------------------------


class MergeTrial:
    """Fresh data for ``n`` merges, one contender's run, then the check."""

    def __init__(self, ctx: Context, models: Models, contender: c.MergeContender, n: int) -> None:
        self.ctx = ctx
        self.models = models
        self.contender = contender
        self.data: Dataset = load(ctx.engine, models, n, ctx.options.rows_per_record)
        self.session: Session | None = None

    def prepare(self) -> Callable[[], object]:
        contender, engine, data = self.contender, self.ctx.engine, self.data
        if contender.orm is not None:
            orm = contender.orm
            session = self.session = contender.session_factory(engine)
            objects = c.load_customers(session, self.models)
            return lambda: orm(session, objects, data.pairs)
        assert contender.core is not None
        core = contender.core
        return lambda: core(engine, self.models, data.pairs)

    def verify(self) -> None:
        verify(self.ctx.engine, self.models, self.data)

    def close(self) -> None:
        if self.session is not None:
            self.session.close()


def _predict(ctx: Context, contender: c.MergeContender, n: int) -> str | None:
    """Why a loop contender is skipped at ``n`` (None: it runs)."""
    earlier = sorted(
        (
            r
            for (name, variant, size), r in ctx.merges.items()
            if name == contender.name and variant == contender.variant and size < n
        ),
        key=lambda r: r.n,
    )
    if not earlier:
        return None
    last = earlier[-1]
    if not last.ok:
        return (
            f"skipped for time: already {'skipped' if last.skipped else 'failed'} at N={last.n:,}"
        )
    exponent = 1.0
    done = [r for r in earlier if r.ok]
    if len(done) >= 2 and done[-1].median > 0 and done[-2].median > 0:
        exponent = max(
            1.0, math.log(done[-1].median / done[-2].median) / math.log(done[-1].n / done[-2].n)
        )
    predicted = last.median * (n / last.n) ** exponent
    if predicted <= ctx.options.budget:
        return None
    return (
        f"skipped for time: predicted ~{predicted:,.0f} s per run at N={n:,} "
        f"(measured {last.median:.1f} s at N={last.n:,}, growth N^{exponent:.2f}; "
        f"budget {ctx.options.budget:.0f} s)"
    )


def run_merges(
    ctx: Context,
    case: str,
    models: Models,
    contenders: Sequence[c.MergeContender],
    n: int,
    unrelated: int | None = None,
    memory: bool = True,
    server: bool = False,
) -> list[Result]:
    """Measure merge contenders at ``n``, interleaved; reuse measurements from other cases.

    With ``server``, the server's execution time of the hand-written SQL is measured with
    them (not on SQLite): after the hand-written contenders in the results.
    """
    results: list[Result] = []
    entries: list[Entry] = []
    timed: Result | None = None
    for contender in contenders:
        key = (contender.name, contender.variant, n)
        if key in ctx.merges:
            results.append(ctx.merges[key])
            continue
        result = Result(
            case,
            ctx.backend.name,
            contender.name,
            contender.kind,
            n,
            "merge",
            n,
            variant=contender.variant,
            unrelated=unrelated,
            session=contender.orm is not None,
        )
        ctx.merges[key] = result
        results.append(result)
        if contender.unavailable:
            result.skipped = contender.unavailable
        elif contender.loop:
            result.skipped = _predict(ctx, contender, n)
        if result.skipped is not None:
            continue
        traced = memory and ctx.options.memory and contender.kind != "hand-written"
        if contender.loop and n != min(ctx.options.sizes):
            traced = False  # tracing a long loop takes several times its run
        entries.append(
            Entry(
                result,
                functools.partial(MergeTrial, ctx, models, contender, n),
                traced,
            )
        )
    if server and s.applies(ctx.backend.dialect):
        result, timed = _server_entry(ctx, case, models, n, entries)
        hand = [i for i, r in enumerate(results) if r.kind == "hand-written"]
        results.insert(hand[-1] + 1 if hand else len(results), result)
    measure_round_robin(entries, ctx.counter, ctx.options.repeat, time_cap=ctx.options.budget / 3)
    if timed is not None and timed.ok and ctx.backend.dialect == "postgresql":
        try:
            _trigger_run(ctx, models, n, timed)
        except Exception as error:
            record_failure(timed, error)
    return [ctx.add(dataclasses.replace(result, case=case)) for result in results]


def _new_server_trial(ctx: Context, models: Models, n: int, timing: bool = False) -> s.ServerTrial:
    data = load(ctx.engine, models, n, ctx.options.rows_per_record)
    return s.ServerTrial(ctx.engine.connect, models, data, timing)


def _server_entry(
    ctx: Context, case: str, models: Models, n: int, entries: list[Entry]
) -> tuple[Result, Result | None]:
    """The server-time result at ``n`` (reused if measured), and it again if it is to run."""
    variant = s.VARIANTS[ctx.backend.dialect]
    key = (s.SERVER, variant, n)
    if key in ctx.merges:
        return ctx.merges[key], None
    result = Result(case, ctx.backend.name, s.SERVER, "server", n, "merge", n, variant=variant)
    ctx.merges[key] = result
    result.skipped = s.unavailable(ctx.backend.name, ctx.backend.dialect)
    if result.skipped is not None:
        return result, None
    # self-timed: the action returns the server's reported time, not the wall clock
    entries.append(Entry(result, functools.partial(_new_server_trial, ctx, models, n), False))
    return result, result


def _trigger_run(ctx: Context, models: Models, n: int, result: Result) -> None:
    """PostgreSQL: one more run with per-node timing on, for the time in the triggers."""
    trial = _new_server_trial(ctx, models, n, timing=True)
    try:
        trial.prepare()()
    finally:
        trial.close()
    trial.verify()
    assert trial.reported is not None
    result.trigger_seconds = trial.reported.triggers
    result.trigger_run_seconds = trial.reported.execution


def single(ctx: Context) -> None:
    n = min(ctx.options.sizes)
    models = build_models()
    try:
        run_merges(ctx, "single", models, [c.MERGE_INTO, c.MERGE_INTO_NO_SYNC, c.PEER], n)
    finally:
        models.dispose()


def batch_contenders(dialect: str, models: Models) -> list[c.MergeContender]:
    return [c.QUEUED, c.MERGE_MANY, *c.hand_written(dialect, models), c.PEER]


def batch(ctx: Context) -> None:
    n = min(ctx.options.sizes)
    models = build_models()
    try:
        contenders = batch_contenders(ctx.backend.dialect, models)
        run_merges(ctx, "batch", models, contenders, n, server=True)
    finally:
        models.dispose()


def scaling(ctx: Context) -> None:
    models = build_models()
    try:
        for n in sorted(ctx.options.sizes):
            contenders = [*batch_contenders(ctx.backend.dialect, models), c.MERGE_INTO]
            run_merges(ctx, "scaling", models, contenders, n, server=True)
    finally:
        models.dispose()


# -- dependents ---------------------------------------------------------------------


class DependentsTrial:
    """One fresh Session; each sampled customer's dependents listed or counted."""

    def __init__(
        self,
        ctx: Context,
        models: Models,
        data: Dataset,
        ids: Sequence[int],
        call: Callable[[Any], int],
    ) -> None:
        self.ctx, self.models, self.data, self.ids, self.call = ctx, models, data, ids, call
        self.session = Session(ctx.engine)
        self.found: list[int] = []

    def prepare(self) -> Callable[[], object]:
        customer = self.models.customer
        objects = self.session.scalars(select(customer).where(customer.id.in_(self.ids))).all()

        def action() -> None:
            self.found = [self.call(obj) for obj in objects]

        return action

    def verify(self) -> None:
        wrong = [n for n in self.found if n != self.data.rows_per_record]
        if wrong or len(self.found) != len(self.ids):
            raise VerificationError(
                f"{len(wrong)} of {len(self.found)} customers have a wrong number of dependents "
                f"(first: {wrong[:3]}, expected {self.data.rows_per_record})"
            )

    def close(self) -> None:
        self.session.close()


def _listed(rows: Any, customer: Any) -> int:
    items = list(rows)
    if any(item.customer_id != customer.id for item in items):
        raise VerificationError(f"a dependent of {customer!r} references another customer")
    return len(items)


def _ours_list(obj: Any) -> int:
    return _listed(sa_references.dependents(obj), obj)


def _ours_count(obj: Any) -> int:
    return sa_references.dependents(obj).count()


def _peer_list(obj: Any) -> int:
    return _listed(c.peer_dependent_objects(obj), obj)


def _peer_count(obj: Any) -> int:
    count: int = c.peer_dependent_objects(obj).count()
    return count


def dependents(ctx: Context) -> None:
    n = min(ctx.options.sizes)
    models = build_models()
    try:
        data = load(ctx.engine, models, n, ctx.options.rows_per_record)
        step = max(1, data.customers // ctx.options.sample)
        ids = list(range(1, data.customers + 1, step))[: ctx.options.sample]
        calls: list[tuple[str, Kind, Callable[[Any], int]]] = [
            ("dependents(obj) iterated", "ours", _ours_list),
            ("dependents(obj).count()", "ours", _ours_count),
            ("dependent_objects(obj) iterated", "peer", _peer_list),
            ("dependent_objects(obj).count()", "peer", _peer_count),
        ]
        results, entries = [], []
        for name, kind, call in calls:
            result = Result("dependents", ctx.backend.name, name, kind, n, "call", len(ids))
            results.append(result)
            if kind == "peer" and c.PEER_MISSING:
                result.skipped = c.PEER_MISSING
                continue
            entries.append(
                Entry(
                    result,
                    functools.partial(DependentsTrial, ctx, models, data, ids, call),
                    ctx.options.memory,
                )
            )
        measure_round_robin(entries, ctx.counter, ctx.options.repeat)
        for result in results:
            ctx.add(result)
    finally:
        models.dispose()


# -- discovery ----------------------------------------------------------------------


class CallsTrial:
    """``calls`` calls of a discovery function on a MetaData; no database.

    With ``invalidate``, the MetaData is changed before each call (a table is
    added, then removed) and only the calls are timed: the cost of rebuilding
    the cache.
    """

    def __init__(
        self,
        call: Callable[[], set[Any]],
        calls: int,
        expected: set[Any],
        invalidate: MetaData | None = None,
    ) -> None:
        self.call, self.calls, self.expected, self.invalidate = call, calls, expected, invalidate
        self.seen: list[set[Any]] = []

    def prepare(self) -> Callable[[], object]:
        def action() -> float | None:
            if self.invalidate is None:
                self.seen = [self.call() for _ in range(self.calls)]
                return None
            elapsed = 0.0
            for _ in range(self.calls):
                probe = Table("discovery_probe", self.invalidate, Column("id", Integer))
                self.invalidate.remove(probe)
                start = time.perf_counter()
                self.seen.append(self.call())
                elapsed += time.perf_counter() - start
            return elapsed

        return action

    def verify(self) -> None:
        if len(self.seen) != self.calls or any(found != self.expected for found in self.seen):
            raise VerificationError("a call found other keys than the five expected")

    def close(self) -> None:
        pass


def discovery(ctx: Context) -> None:
    n = min(ctx.options.sizes)
    calls = ctx.options.calls
    for unrelated in ctx.options.unrelated:
        models = build_models(unrelated)
        try:
            customer = models.customer
            expected = {fk for t in models.referencing_tables for fk in t.foreign_key_constraints}

            def ours(customer: Any = customer) -> set[Any]:
                return {k.constraint for k in sa_references.referencing_keys(customer)}

            def peer(customer: Any = customer) -> set[Any]:
                return {fk.constraint for fk in c.peer_referencing_keys(customer)}

            key_calls: list[tuple[str, Kind, Callable[[], set[Any]], int, MetaData | None]] = [
                ("referencing_keys (cached)", "ours", ours, calls, None),
                (
                    "referencing_keys after a schema change",
                    "ours",
                    ours,
                    max(1, calls // 20),
                    models.metadata,
                ),
                ("get_referencing_foreign_keys", "peer", peer, calls, None),
            ]
            results, entries = [], []
            for name, kind, call, count, invalidate in key_calls:
                result = Result(
                    "discovery",
                    ctx.backend.name,
                    name,
                    kind,
                    0,
                    "call",
                    count,
                    variant=f"{unrelated} unrelated tables",
                    unrelated=unrelated,
                )
                results.append(result)
                if kind == "peer" and c.PEER_MISSING:
                    result.skipped = c.PEER_MISSING
                    continue
                entries.append(
                    Entry(
                        result,
                        functools.partial(CallsTrial, call, count, expected, invalidate),
                        memory=False,
                    )
                )
            measure_round_robin(entries, ctx.counter, ctx.options.repeat)
            for result in results:
                ctx.add(result)
            tagged = [
                dataclasses.replace(contender, variant=f"{unrelated} unrelated tables")
                for contender in (c.MERGE_INTO, c.PEER)
            ]
            run_merges(ctx, "discovery", models, tagged, n, unrelated=unrelated, memory=False)
        finally:
            models.dispose()


# -- startup ------------------------------------------------------------------------

#: the start-up goal: one in-process ``keys`` or ``merge --dry-run`` on pagila
STARTUP_GOAL = 0.3


@dataclass
class StartupCall:
    name: str
    argv: list[str]
    #: what the output must show
    expected: Sequence[str]
    subprocess: bool = False


def startup_calls(url: str) -> list[StartupCall]:
    keys = ["payment(customer_id) -> customer(customer_id)", "rental(customer_id)"]
    merge = ["Would re-point 5 rows"]
    return [
        StartupCall("keys", ["keys", url, "customer"], keys),
        StartupCall("merge --dry-run", ["merge", url, "customer", "5", "1", "--dry-run"], merge),
        StartupCall("keys, subprocess", ["keys", url, "customer"], keys, subprocess=True),
        StartupCall("import sa_references.cli, subprocess", [], [], subprocess=True),
    ]


#: the interpreter's start-up and the imports alone, as a subprocess
IMPORT_ONLY = ["-c", "import sa_references.cli"]


class _Statements:
    """Cursor executions of every engine (the command line makes its own)."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, *_args: Any) -> None:
        self.count += 1


def _run_call(call: StartupCall) -> tuple[float, int]:
    """One timed call: seconds and statements; VerificationError when its output is wrong."""
    statements = _Statements()
    out = io.StringIO()
    if call.subprocess:
        start = time.perf_counter()
        command = ["-m", "sa_references", *call.argv] if call.argv else IMPORT_ONLY
        done = subprocess.run(
            [sys.executable, *command],
            capture_output=True,
            text=True,
            check=False,
        )
        elapsed = time.perf_counter() - start
        status, text, errors = done.returncode, done.stdout, done.stderr
    else:
        event.listen(Engine, "before_cursor_execute", statements)
        error_out = io.StringIO()
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(error_out):
                start = time.perf_counter()
                status = sa_references.cli.main(call.argv)
                elapsed = time.perf_counter() - start
        finally:
            event.remove(Engine, "before_cursor_execute", statements)
        text, errors = out.getvalue(), error_out.getvalue()
    missing = [e for e in call.expected if e not in text]
    if status != 0 or missing:
        raise VerificationError(f"exit status {status}, missing {missing}: {errors.strip()[:200]}")
    return elapsed, statements.count


def startup(ctx: Context) -> None:
    url = ctx.engine.url.render_as_string(hide_password=False)
    pagila.drop(ctx.engine)
    models = build_models()
    try:
        drop(ctx.engine, models)  # the other cases' tables are no part of pagila
    finally:
        models.dispose()
    pagila.create(ctx.engine)
    try:
        results = []
        calls = startup_calls(url)
        first: list[Result] = []
        for call in calls:
            result = Result("startup", ctx.backend.name, call.name, "ours", 0, "call", 1)
            result.variant = "subprocess" if call.subprocess else "in-process"
            results.append(result)
            if call.subprocess:  # each is a cold start
                continue
            try:
                # warm-up: the dialect's imports, its first connection, cold caches
                elapsed, statements = _run_call(call)
            except Exception as error:
                record_failure(result, error)
                continue
            cold = Result("startup", ctx.backend.name, call.name, "ours", 0, "call", 1)
            cold.variant = "in-process, first call"
            cold.times, cold.statements = [elapsed], [statements]
            first.append(cold)
        repeat = max(5, ctx.options.repeat)
        #: a subprocess takes ten times as long, and varies less than it costs
        spawned = max(2, min(3, ctx.options.repeat))
        for run in range(repeat):
            for call, result in zip(calls, results):
                if result.error or (call.subprocess and run >= spawned):
                    continue
                try:
                    elapsed, statements = _run_call(call)
                except Exception as error:
                    record_failure(result, error)
                    continue
                result.times.append(elapsed)
                result.statements.append(statements)
        for result in [*results, *first]:
            ctx.add(result)
    finally:
        pagila.drop(ctx.engine)


RUNNERS: dict[str, Callable[[Context], None]] = {
    "startup": startup,
    "single": single,
    "batch": batch,
    "scaling": scaling,
    "dependents": dependents,
    "discovery": discovery,
}
