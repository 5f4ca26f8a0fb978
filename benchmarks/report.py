"""Reporting: Markdown tables on stdout, ratios, the project's targets, and the JSON file."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import sqlalchemy
from sqlalchemy.engine import make_url

import sa_references

from .cases import STARTUP_GOAL, Backend, Options
from .measure import Result
from .server import SERVER

QUEUED = "ReferencesSession"
CORE_BATCH = "merge_many"
LOOP = "merge_into loop"
PEER_LOOP = "sqlalchemy-utils merge_references loop"
HAND = "hand-written SQL"

#: the project's claims, checked against the measurements
BATCH_SPEEDUP = 20.0
HAND_WRITTEN_FACTOR = 1.5
MEMORY_LIMIT = 500 * 2**20
MEMORY_N = 100_000
#: the numbers of merges the speed goals are stated for; other sizes are reported as context
GOAL_SIZES = (2_000, 10_000)


def _judged(measured: list[tuple[float, int]]) -> list[tuple[float, int]]:
    """The measurements a speed goal is judged on: those at its sizes, if any were taken."""
    at_goal = [m for m in measured if m[1] in GOAL_SIZES]
    return at_goal or measured


def _listing(measured: list[tuple[float, int]]) -> str:
    judged = _judged(measured)
    return "; ".join(
        f"{times(v)} at N={n:,}" + ("" if (v, n) in judged else " (context: not a goal size)")
        for v, n in sorted(measured, key=lambda x: x[1])
    )


# -- environment ----------------------------------------------------------------------


def _ram_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:  # pragma: no cover - not Linux
        pass
    return platform.processor() or platform.machine()


def _git_revision() -> str | None:
    root = Path(__file__).resolve().parent.parent
    try:
        revision = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return revision or None


def _version(module: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:
        return None


def command_line(argv: Sequence[str]) -> str:
    """``python -m benchmarks ...`` as run, passwords in URLs hidden."""
    words = ["python", "-m", "benchmarks"]
    for word in argv:
        with contextlib.suppress(Exception):
            if "://" in word:
                word = make_url(word).render_as_string(hide_password=True)
        words.append(shlex.quote(word))
    return " ".join(words)


def environment(backends: Sequence[Backend]) -> dict[str, Any]:
    ram = _ram_bytes()
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "sqlalchemy": sqlalchemy.__version__,
        "sqlalchemy_utils": _version("sqlalchemy-utils"),
        "sa_references": sa_references.__version__,
        "sa_references_revision": _git_revision(),
        "machine": {
            "cores": os.cpu_count(),
            "ram_bytes": ram,
            "cpu": _cpu_model(),
            "platform": platform.platform(),
        },
        "backends": {b.name: {"version": b.version, "driver": b.driver} for b in backends},
        "command": command_line(sys.argv[1:]),
    }


# -- formatting -----------------------------------------------------------------------


def seconds(value: float) -> str:
    if value >= 1:
        return f"{value:,.2f} s"
    if value >= 1e-3:
        return f"{value * 1e3:.1f} ms"
    return f"{value * 1e6:.1f} µs"


def mebibytes(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**20:,.1f} MiB"


def times(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}x" if value >= 10 else f"{value:.2f}x"


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _name(result: Result) -> str:
    if result.contender == HAND and result.variant:
        return f"{HAND} ({result.variant})"
    if result.variant and result.case != "discovery":
        return f"{result.contender} ({result.variant})"
    return result.contender


# -- ratios ---------------------------------------------------------------------------


def _find(
    results: Sequence[Result], backend: str, contender: str, n: int, variant: str = ""
) -> Result | None:
    for result in results:
        if (
            result.backend == backend
            and result.contender == contender
            and result.n == n
            and result.variant == variant
            and result.ok
        ):
            return result
    return None


def best_hand_written(
    results: Sequence[Result], backend: str, n: int, session: bool = False
) -> Result | None:
    """The fastest hand-written variant run as ``session`` says: in the ORM contenders'
    setting (objects loaded in a Session, committed by it) or on a connection of its own."""
    candidates = [
        r
        for r in results
        if r.backend == backend
        and r.n == n
        and r.kind == "hand-written"
        and r.ok
        and r.session == session
    ]
    return min(candidates, key=lambda r: r.median, default=None)


def speedup_vs_peer(results: Sequence[Result], result: Result) -> float | None:
    """Peer time / our time: above 1, ours is faster."""
    if result.kind != "ours" or not result.ok:
        return None
    peer = _find(results, result.backend, PEER_LOOP, result.n)
    return peer.median / result.median if peer else None


def server_floor(results: Sequence[Result], result: Result) -> float | None:
    """Peer time / the server's execution time of the hand-written SQL: the largest speed-up
    over the peer any client could reach (``result`` of kind "server")."""
    if result.kind != "server" or not result.ok or result.median <= 0:
        return None
    peer = _find(results, result.backend, PEER_LOOP, result.n)
    return peer.median / result.median if peer else None


def server_share(results: Sequence[Result], result: Result) -> float | None:
    """The server's execution time / the best hand-written SQL's time on a connection."""
    if result.kind != "server" or not result.ok:
        return None
    best = best_hand_written(results, result.backend, result.n, session=False)
    return result.median / best.median if best else None


def trigger_share(result: Result) -> float | None:
    """The part of the server's execution time spent in (foreign-key) triggers: PostgreSQL."""
    if result.trigger_seconds is None or not result.trigger_run_seconds:
        return None
    return result.trigger_seconds / result.trigger_run_seconds


def versus_hand_written(
    results: Sequence[Result], result: Result, session: bool | None = None
) -> float | None:
    """Our time / the best hand-written time: 1.2 means 20% slower than hand-written SQL.

    Against the hand-written SQL run in the same setting as ``result`` (an ORM session
    or a connection) unless ``session`` says which.
    """
    if result.kind != "ours" or not result.ok or result.contender in (LOOP,):
        return None
    setting = result.session if session is None else session
    best = best_hand_written(results, result.backend, result.n, setting)
    return result.median / best.median if best else None


def ratios(results: Sequence[Result]) -> list[dict[str, Any]]:
    merges = [r for r in _unique_merges(results) if r.kind == "ours" and r.ok]
    rows = []
    for result in merges:
        peer = speedup_vs_peer(results, result)
        hand = versus_hand_written(results, result)
        if peer is None and hand is None:
            continue
        rows.append(
            {
                "backend": result.backend,
                "contender": _name(result),
                "n": result.n,
                "speedup_vs_peer": peer,
                "time_vs_best_hand_written": hand,
            }
        )
    return rows


def _unique_merges(results: Sequence[Result]) -> list[Result]:
    """Each merge measurement once (the batch and scaling cases share them)."""
    seen: dict[tuple[str, str, str, int], Result] = {}
    for result in results:
        if result.unit == "merge" and result.case != "discovery":
            seen.setdefault((result.backend, result.contender, result.variant, result.n), result)
    return list(seen.values())


# -- targets --------------------------------------------------------------------------


def targets(results: Sequence[Result], backends: Sequence[Backend]) -> list[dict[str, Any]]:
    """The project's claims, each with the measured value and a verdict per backend."""
    rows: list[dict[str, Any]] = []
    merges = _unique_merges(results)

    def add(target: str, backend: str, measured: str, passed: bool | None) -> None:
        verdict = "n/a" if passed is None else "PASS" if passed else "FAIL"
        if target.startswith("context"):
            verdict = "(context)"
        rows.append(
            {"target": target, "backend": backend, "measured": measured, "verdict": verdict}
        )

    for backend in (b.name for b in backends):
        for call in (r for r in results if r.case == "startup" and r.backend == backend):
            in_process = call.variant == "in-process"
            add(
                f"one `{call.contender}` call on pagila under {STARTUP_GOAL} s"
                if in_process
                else f"context: `{call.contender.split(',')[0]}`, {call.variant}",
                backend,
                f"{seconds(call.median)} median" if call.ok else _status(call),
                (call.median < STARTUP_GOAL) if call.ok and in_process else None,
            )
        mine = [r for r in merges if r.backend == backend]
        for contender in (QUEUED, CORE_BATCH):
            speedups = [
                (s, r.n)
                for r in mine
                if r.contender == contender and (s := speedup_vs_peer(results, r)) is not None
            ]
            worst = min(_judged(speedups), default=None)
            add(
                f"{contender} at least {BATCH_SPEEDUP:.0f}x faster than the peer loop",
                backend,
                "no measurement with both" if worst is None else _listing(speedups),
                None if worst is None else worst[0] >= BATCH_SPEEDUP,
            )
        for contender, setting in (
            (QUEUED, "run in the ORM session"),
            (CORE_BATCH, "on a connection"),
        ):
            factors = [
                (f, r.n)
                for r in mine
                if r.contender == contender and (f := versus_hand_written(results, r)) is not None
            ]
            worst = max(_judged(factors), default=None)
            add(
                f"{contender} within {HAND_WRITTEN_FACTOR}x of the best hand-written SQL "
                f"({setting}, as {contender} is)",
                backend,
                "no measurement with both" if worst is None else _listing(factors),
                None if worst is None else worst[0] <= HAND_WRITTEN_FACTOR,
            )
        singles = [
            (s, r.n)
            for r in mine
            if r.contender == LOOP
            and not r.variant
            and (s := speedup_vs_peer(results, r)) is not None
        ]
        worst = min(_judged(singles), default=None)
        add(
            "merge_into loop (plain Session) no slower than the peer loop",
            backend,
            "no measurement with both" if worst is None else _listing(singles),
            None if worst is None else worst[0] >= 1.0,
        )
        apart = [
            (f, r.n)
            for r in mine
            if r.contender == QUEUED
            and (f := versus_hand_written(results, r, session=False)) is not None
        ]
        add(
            f"context: {QUEUED} vs the best hand-written SQL on a connection (no objects "
            "loaded, no session commit)",
            backend,
            "no measurement with both"
            if not apart
            else "; ".join(f"{times(f)} at N={n:,}" for f, n in sorted(apart, key=lambda x: x[1])),
            None,
        )
        for session, setting in ((True, "run in the ORM session"), (False, "on a connection")):
            ceilings = [
                (r.median / best.median, r.n)
                for r in mine
                if r.contender == PEER_LOOP
                and r.ok
                and (best := best_hand_written(results, backend, r.n, session)) is not None
            ]
            add(
                f"context: best hand-written SQL ({setting}) vs the peer loop "
                "(a ceiling for the batch speed-up)",
                backend,
                "no measurement with both"
                if not ceilings
                else "; ".join(
                    f"{times(c)} at N={n:,}" for c, n in sorted(ceilings, key=lambda x: x[1])
                ),
                None,
            )
        server = sorted((r for r in mine if r.kind == "server"), key=lambda r: r.n)
        if server:  # none on SQLite: no server
            floors = [(f, r.n) for r in server if (f := server_floor(results, r)) is not None]
            skipped = next((r.skipped or r.error for r in server if not r.ok), None)
            add(
                "context: server execution of the best set-based UPDATEs vs the peer loop "
                "(no client can be faster than this)",
                backend,
                "; ".join(f"{times(f)} at N={n:,}" for f, n in floors)
                if floors
                else skipped or "no measurement with both",
                None,
            )
        queued = next(
            (r for r in mine if r.contender == QUEUED and r.n == MEMORY_N and r.peak_bytes), None
        )
        add(
            f"{MEMORY_N:,} queued merges: peak memory < {MEMORY_LIMIT // 2**20} MiB",
            backend,
            "not measured" if queued is None else mebibytes(queued.peak_bytes),
            None if queued is None else (queued.peak_bytes or 0) < MEMORY_LIMIT,
        )
    return rows


# -- Markdown -------------------------------------------------------------------------


def _status(result: Result) -> str:
    if result.skipped:
        return result.skipped
    return f"**FAILED**: {result.error}"


def _merge_rows(
    results: Sequence[Result], selected: Sequence[Result], growth: bool
) -> list[list[str]]:
    rows = []
    previous: dict[tuple[str, str, str], Result] = {}
    for result in selected:
        ident = (result.backend, result.contender, result.variant)
        name = _name(result)
        best = best_hand_written(results, result.backend, result.n, result.session)
        if best is result:
            name += " (best)"
        if not result.ok:
            width = len(MERGE_HEADER) + (2 if growth else 0)
            row = [result.backend, name, f"{result.n:,}", _status(result)]
            rows.append(row + [""] * (width - len(row)))
            continue
        statements = result.statement_count
        row = [
            result.backend,
            name,
            f"{result.n:,}",
            seconds(result.median),
            seconds(result.per_operation),
            "-" if statements is None else f"{statements:,}",
            mebibytes(result.peak_bytes),
        ]
        if growth:
            before = previous.get(ident)
            row.append(times(result.median / before.median) if before else "-")
            row.append(
                times((result.statement_count or 0) / before.statement_count)
                if before and before.statement_count
                else "-"
            )
        if result.kind == "server":
            floor = server_floor(results, result)
            row.append("-" if floor is None else f"{times(floor)} (ceiling)")
            row.append(times(server_share(results, result)))
        else:
            row.append(times(speedup_vs_peer(results, result)))
            row.append(times(versus_hand_written(results, result)))
        row.append(str(len(result.times)))
        rows.append(row)
        previous[ident] = result
    return rows


MERGE_HEADER = [
    "backend",
    "contender",
    "N merges",
    "median",
    "per merge",
    "statements",
    "peak memory",
    "speed-up vs peer",
    "time vs best hand-written",
    "runs",
]


def markdown(
    results: Sequence[Result], env: dict[str, Any], options: Options, backends: Sequence[Backend]
) -> str:
    machine = env["machine"]
    ram = f"{machine['ram_bytes'] / 2**30:.1f} GiB RAM" if machine["ram_bytes"] else "RAM unknown"
    lines = [
        "## Performance",
        "",
        f"Measured {env['date'][:10]} with `{env['command']}` "
        f"(the whole run took {env.get('duration_seconds', 0) / 60:.0f} min).  ",
        f"Machine: {machine['cores']} cores ({machine['cpu']}), {ram}, {machine['platform']}.  ",
        f"{env['python']}, SQLAlchemy {env['sqlalchemy']}, sqlalchemy-utils "
        f"{env['sqlalchemy_utils']} (the peer), sa_references {env['sa_references']}"
        + (f" ({env['sa_references_revision']})" if env["sa_references_revision"] else "")
        + ".  ",
        "Backends: " + "; ".join(f"{b.name} {b.version} ({b.driver})" for b in backends) + ".",
        "",
        f"Schema: `customer` and 5 referencing tables (indexed foreign keys), "
        f"{options.rows_per_record} referencing rows per customer; 2N customers, N of them "
        "duplicates, each merged into a keeper.  Every run gets fresh data and is checked "
        "(no reference to a duplicate left, every row at its keeper, row totals kept) before its "
        f"time counts; times are the median of {options.repeat} runs (two when a merge "
        f"measurement's runs exceed {options.budget / 3:.0f} s; see the runs column), the "
        "contenders of a table interleaved run by run, each timed from the objects loaded "
        "(ORM) or the pairs listed (Core) to COMMIT included.  Statements: cursor executions "
        "(`before_cursor_execute`; an executemany counts once).  Peak memory: Python heap "
        "(tracemalloc) in one extra untimed run, from loading the objects to COMMIT; "
        "not measured for hand-written SQL.  Speed-up vs peer: peer time / our time (above 1: "
        "ours is faster); time vs best hand-written: our time / fastest hand-written variant "
        "run the same way (1.50x = 50% slower): the ORM contenders against the hand-written "
        "SQL run in the same setting (the customers loaded in a Session, the SQL on its "
        "connection, then its commit, which expires the loaded objects as it does for them), "
        "`merge_many` against the SQL on a connection of its own.",
        "",
    ]
    by_case: dict[str, list[Result]] = {}
    for result in results:
        by_case.setdefault(result.case, []).append(result)
    if "startup" in by_case:
        lines += [
            "### Start-up: one command line call on a pagila-sized schema",
            "",
            "`sa_references.cli.main([...])` in this process (engine, reflection, the command, "
            "its output; after one warm-up call, shown as the first call), and `python -m "
            "sa_references` in a subprocess, interpreter start-up included, beside the "
            "interpreter start-up and imports alone (context).  Schema: "
            "`benchmarks/pagila.py` (15 tables, `payment` partitioned by month on PostgreSQL, "
            "22 foreign keys, 5 views).",
            "",
        ]
        lines += _table(
            ["backend", "call", "run", "best", "median", "runs", "statements"],
            _startup_rows(by_case["startup"]),
        )
        lines.append("")
    if "single" in by_case:
        lines += ["### Merge, single: one merge at a time on a plain Session", ""]
        lines += _table(MERGE_HEADER, _merge_rows(results, by_case["single"], growth=False))
        lines.append("")
    if "batch" in by_case:
        lines += ["### Merge, batch: N merges at once", ""]
        lines += _table(MERGE_HEADER, _merge_rows(results, by_case["batch"], growth=False))
        lines.append("")
        lines += _server_note(results, by_case["batch"])
    if "scaling" in by_case:
        lines += [
            "### Scaling with N",
            "",
            "Growth: time and statements relative to the previous N of the same contender "
            f"(N grows {_size_steps(options.sizes)}).  Loops (the peer's and `merge_into`'s) run "
            f"only while one run is predicted to take at most {options.budget:.0f} s; above "
            "that they are skipped for time.",
            "",
        ]
        header = [*MERGE_HEADER[:7], "time growth", "statement growth", *MERGE_HEADER[7:]]
        position = {b.name: i for i, b in enumerate(backends)}
        ordered = sorted(
            by_case["scaling"], key=lambda r: (position.get(r.backend, 0), _order(r), r.n)
        )
        lines += _table(header, _merge_rows(results, ordered, growth=True))
        lines.append("")
    if "dependents" in by_case:
        lines += [
            "### Dependents",
            "",
            "Per call, for a sample of customers with "
            f"{options.rows_per_record} dependents each (read-only: the same data for every run, "
            "a fresh Session per run).",
            "",
        ]
        lines += _table(
            [
                "backend",
                "call",
                "customers",
                "per call",
                "statements per call",
                "peak memory",
                "speed-up vs peer",
            ],
            _dependents_rows(by_case["dependents"]),
        )
        lines.append("")
    if "discovery" in by_case:
        lines += [
            "### Discovery: finding the referencing keys",
            "",
            "Unrelated mapped tables (a chain of foreign keys among themselves) added to the "
            "MetaData; they are not created in the database.  `referencing_keys` after a schema "
            "change: a table was added to (and removed from) the MetaData before each call.  "
            "Merge rows: a whole `merge_into` loop against the peer's loop with that MetaData.",
            "",
        ]
        lines += _table(
            [
                "backend",
                "what",
                "unrelated tables",
                "per call / merge",
                "growth vs fewest tables",
                "speed-up vs peer",
            ],
            _discovery_rows(by_case["discovery"]),
        )
        lines.append("")
    rows = targets(results, backends)
    if rows:
        lines += ["### Targets", ""]
        lines += _table(
            ["target", "backend", "measured", "verdict"],
            ([r["target"], r["backend"], r["measured"], r["verdict"]] for r in rows),
        )
        lines.append("")
    return "\n".join(lines)


def _server_note(results: Sequence[Result], selected: Sequence[Result]) -> list[str]:
    """What the server rows of a table are, and each one's numbers (none on SQLite)."""
    server = [r for r in selected if r.kind == "server"]
    if not server:
        return []
    lines = [
        f"`{SERVER}`: not a contender but the time the database server reports for executing "
        "hand-written SQL's five set-based UPDATEs, summed (PostgreSQL: `EXPLAIN (ANALYZE, "
        'TIMING OFF, FORMAT JSON)` of the `unnest` UPDATEs, "Execution Time", planning left '
        "out; MariaDB: `ANALYZE FORMAT=JSON` of the `temp-table` UPDATEs, "
        "`query_block.r_total_time_ms`, the mapping table's creation and optimization left "
        "out), in a transaction rolled back, on fresh data per run.  Row writes, index "
        "maintenance and foreign-key checks all happen there, whatever the client, so peer "
        "time / this time (the ceiling in the speed-up column) bounds any client's speed-up "
        "over the peer; its time vs best hand-written is the server's share of that SQL's "
        "time.",
        "",
    ]
    for result in server:
        if not result.ok:
            lines.append(f"- {result.backend}, N={result.n:,}: {_status(result)}")
            continue
        parts = [f"{seconds(result.median)} on the server"]
        share = trigger_share(result)
        if share is not None and result.trigger_seconds is not None:
            parts.append(
                f"{share:.0%} of it in foreign-key triggers ({seconds(result.trigger_seconds)} "
                f"of {seconds(result.trigger_run_seconds or 0.0)} in one extra run with "
                "per-node timing on, the only way PostgreSQL reports trigger time)"
            )
        floor = server_floor(results, result)
        if floor is not None:
            parts.append(f"peer loop / server = {times(floor)}")
        lines.append(f"- {result.backend}, N={result.n:,}: " + "; ".join(parts) + ".")
    lines.append("")
    return lines


def _size_steps(sizes: Sequence[int]) -> str:
    return " → ".join(f"{n:,}" for n in sorted(sizes))


def _order(result: Result) -> int:
    order = [QUEUED, CORE_BATCH, HAND, SERVER, LOOP, PEER_LOOP]
    return order.index(result.contender) if result.contender in order else len(order)


PAIRS = {
    "dependents(obj) iterated": "dependent_objects(obj) iterated",
    "dependents(obj).count()": "dependent_objects(obj).count()",
}


def _startup_rows(results: Sequence[Result]) -> list[list[str]]:
    rows = []
    for result in results:
        if not result.ok:
            rows.append([result.backend, f"`{result.contender}`", result.variant, _status(result)])
            continue
        statements = "-" if result.variant == "subprocess" else f"{result.statement_count}"
        if result.variant.endswith("first call"):  # one run only
            rows.append([result.backend, f"`{result.contender}`", result.variant, "-"])
            rows[-1] += [seconds(result.median), "1", statements]
            continue
        rows.append(
            [
                result.backend,
                f"`{result.contender}`",
                result.variant,
                seconds(min(result.times)),
                seconds(result.median),
                str(len(result.times)),
                statements,
            ]
        )
    return rows


def _dependents_rows(results: Sequence[Result]) -> list[list[str]]:
    rows = []
    for result in results:
        if not result.ok:
            rows.append([result.backend, result.contender, "", _status(result), "", "", ""])
            continue
        peer = next(
            (
                r
                for r in results
                if r.backend == result.backend
                and r.contender == PAIRS.get(result.contender)
                and r.ok
            ),
            None,
        )
        rows.append(
            [
                result.backend,
                f"`{result.contender}`",
                f"{result.operations:,}",
                seconds(result.per_operation),
                f"{(result.statement_count or 0) / result.operations:g}",
                mebibytes(result.peak_bytes),
                times(peer.median / result.median) if peer else "-",
            ]
        )
    return rows


def _discovery_rows(results: Sequence[Result]) -> list[list[str]]:
    rows = []
    for result in results:
        kind = (
            f"{result.contender} (N={result.n:,})" if result.unit == "merge" else result.contender
        )
        if not result.ok:
            rows.append([result.backend, kind, str(result.unrelated), _status(result), "", ""])
            continue
        fewest = min(
            (
                r
                for r in results
                if r.backend == result.backend and r.contender == result.contender and r.ok
            ),
            key=lambda r: r.unrelated or 0,
        )
        peer_name = {
            "referencing_keys (cached)": "get_referencing_foreign_keys",
            "referencing_keys after a schema change": "get_referencing_foreign_keys",
            LOOP: PEER_LOOP,
        }.get(result.contender)
        peer = next(
            (
                r
                for r in results
                if r.backend == result.backend
                and r.contender == peer_name
                and r.unrelated == result.unrelated
                and r.ok
            ),
            None,
        )
        rows.append(
            [
                result.backend,
                kind,
                str(result.unrelated),
                seconds(result.per_operation),
                times(result.per_operation / fewest.per_operation),
                times(peer.per_operation / result.per_operation) if peer else "-",
            ]
        )
    return rows


# -- JSON -----------------------------------------------------------------------------


def write_json(
    path: Path,
    results: Sequence[Result],
    env: dict[str, Any],
    options: Options,
    backends: Sequence[Backend],
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        **env,
        "options": asdict(options),
        "method": {
            "time": "median of the timed runs; fresh data per run; from objects loaded "
            "(ORM) or pairs listed (Core) to COMMIT included; checked before it counts",
            "statements": "cursor executions counted with before_cursor_execute",
            "memory": "tracemalloc peak (Python heap) of one extra untimed run, "
            "from loading the objects to COMMIT",
            "server": f"kind 'server' ({SERVER}): the execution time the database server "
            "reports for the best hand-written set-based UPDATEs, summed over the five tables, "
            "in a transaction rolled back; PostgreSQL: EXPLAIN (ANALYZE, TIMING OFF, FORMAT "
            "JSON) of the unnest UPDATEs, 'Execution Time' (trigger_seconds / "
            "trigger_run_seconds: time in foreign-key triggers and the execution time of one "
            "extra run with TIMING ON); MariaDB: ANALYZE FORMAT=JSON of the temp-table "
            "UPDATEs, query_block.r_total_time_ms; not on SQLite (no server)",
        },
        "results": [r.as_dict() for r in results],
        "ratios": ratios(results),
        "targets": targets(results, backends),
        "process_max_rss_bytes": _max_rss(),
    }
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")


def _max_rss() -> int | None:
    """The whole process's peak resident set (every backend and case; for reference only)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return None
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024
