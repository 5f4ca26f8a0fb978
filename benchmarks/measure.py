"""Timing, statement counting and peak memory of one contender.

Protocol for every measurement (:func:`measure`):

1. ``repeat`` timed runs (fewer when they add up to more than the time
   cap: at least two), interleaved between the contenders compared (run 1
   of each, then run 2 of each...).  Each run gets fresh data (untimed), then the
   contender's untimed preparation (loading the ORM objects it works on),
   then the timed action (everything up to and including COMMIT), then the
   check of the result: a run whose result is wrong raises
   :class:`~benchmarks.schema.VerificationError` and no time is reported.
2. One more run, with fresh data too, for memory only: ``tracemalloc``
   traces the preparation and the action, and its peak is reported (the
   Python heap, driver result buffers included as far as they are Python
   objects; libpq's and libsqlite's own C buffers are not).  That run is
   not timed, since tracing slows Python code down several times.

Statements are cursor executions, counted with a ``before_cursor_execute``
listener during the timed action: an ``executemany`` counts once, and so do
SAVEPOINT, RELEASE and BEGIN when SQLAlchemy or the library sends them as
statements; COMMIT is a driver call and is not counted.
"""

from __future__ import annotations

import gc
import statistics
import time
import tracemalloc
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

from sqlalchemy import Engine, event

from .schema import VerificationError

#: "server": not a contender but the database server's own reported execution time of
#: the hand-written SQL (see :mod:`benchmarks.server`)
Kind = Literal["ours", "peer", "hand-written", "server"]


class Trial(Protocol):
    """One run of a contender on fresh data."""

    def prepare(self) -> Callable[[], object]:
        """Untimed set-up (e.g. load objects); returns the action to time.

        An action that returns a float has timed itself: that many seconds are
        reported instead of its whole duration (to leave out per-call set-up).
        """

    def verify(self) -> None:
        """Raise :class:`~benchmarks.schema.VerificationError` if the result is wrong."""

    def close(self) -> None:
        """Release sessions and connections (untimed; called even on error)."""


@dataclass
class Result:
    """The measurement of one contender, in one case, on one backend, at one size."""

    case: str
    backend: str
    contender: str
    kind: Kind
    n: int
    #: what one operation is ("merge", "call") and how many one run performs
    unit: str = "merge"
    operations: int = 0
    times: list[float] = field(default_factory=list)
    statements: list[int] = field(default_factory=list)
    peak_bytes: int | None = None
    skipped: str | None = None
    error: str | None = None
    variant: str = ""
    #: unrelated tables in the MetaData (discovery case)
    unrelated: int | None = None
    #: the run starts from objects loaded in a Session and ends with its commit (which
    #: expires them); otherwise from a list of pairs, on a connection of its own
    session: bool = False
    #: kind "server" on PostgreSQL, from one extra run with per-node timing on (the only way
    #: it reports trigger time): seconds in foreign-key triggers, and that run's execution time
    trigger_seconds: float | None = None
    trigger_run_seconds: float | None = None

    @property
    def ok(self) -> bool:
        return bool(self.times) and self.skipped is None and self.error is None

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def per_operation(self) -> float:
        return self.median / max(1, self.operations)

    @property
    def statement_count(self) -> int | None:
        return int(statistics.median(self.statements)) if self.statements else None

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if self.ok:
            data["median_seconds"] = self.median
            data["per_operation_seconds"] = self.per_operation
            data["statement_count"] = self.statement_count
        return data


class StatementCounter:
    """Counts cursor executions on an engine while :meth:`counting` is active."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.active = False
        self.count = 0
        event.listen(engine, "before_cursor_execute", self._executed)

    def _executed(self, *_args: Any) -> None:
        if self.active:
            self.count += 1

    @contextmanager
    def counting(self) -> Iterator[None]:
        self.count = 0
        self.active = True
        try:
            yield
        finally:
            self.active = False

    def remove(self) -> None:
        event.remove(self.engine, "before_cursor_execute", self._executed)


def run_once(result: Result, new_trial: Callable[[], Trial], counter: StatementCounter) -> None:
    """One timed run on fresh data, checked before its time is added to ``result``."""
    trial = new_trial()
    try:
        action = trial.prepare()
        gc.collect()
        with counter.counting():
            start = time.perf_counter()
            own = action()
            elapsed = time.perf_counter() - start
        if isinstance(own, float):
            elapsed = own
        statements = counter.count
    finally:
        trial.close()
    trial.verify()
    result.times.append(elapsed)
    result.statements.append(statements)


@dataclass
class Entry:
    """One contender of a :func:`measure_round_robin` group."""

    result: Result
    new_trial: Callable[[], Trial]
    memory: bool = True


def record_failure(result: Result, error: Exception) -> None:
    """A wrong result or an exception replaces the measurement: no time is reported."""
    result.times.clear()
    result.statements.clear()
    if isinstance(error, VerificationError):
        result.error = f"wrong result: {error}"
    else:
        result.error = f"{type(error).__name__}: {error}".splitlines()[0][:300]


def measure_round_robin(
    entries: Sequence[Entry],
    counter: StatementCounter,
    repeat: int,
    time_cap: float = float("inf"),
) -> None:
    """Measure several contenders, interleaved: run 1 of each, then run 2 of each, ...

    Interleaving spreads slow drifts of the machine or the database server
    (caches, background vacuum or purge after a big run) over every
    contender instead of charging them to whichever runs last.  A contender
    stops repeating (after at least two runs) once its runs add up to more
    than ``time_cap`` seconds.  Memory runs come after all timed runs.  A
    contender that fails is recorded as failed and left out of later rounds.
    """
    for _ in range(repeat):
        for entry in entries:
            result = entry.result
            enough = len(result.times) >= min(2, repeat) and sum(result.times) > time_cap
            if result.error or enough:
                continue
            try:
                run_once(result, entry.new_trial, counter)
            except Exception as error:
                record_failure(result, error)
    for entry in entries:
        if entry.memory and not entry.result.error:
            try:
                entry.result.peak_bytes = peak_memory(entry.new_trial)
            except Exception as error:
                record_failure(entry.result, error)


def measure(
    result: Result,
    new_trial: Callable[[], Trial],
    counter: StatementCounter,
    repeat: int,
    memory: bool,
) -> Result:
    """Fill ``result`` with ``repeat`` timed runs and, if ``memory``, one traced run."""
    measure_round_robin([Entry(result, new_trial, memory)], counter, repeat)
    return result


def peak_memory(new_trial: Callable[[], Trial]) -> int:
    """Peak Python heap (tracemalloc) of one prepared and run trial, checked afterwards."""
    trial = new_trial()
    gc.collect()
    tracemalloc.start()
    try:
        action = trial.prepare()
        action()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        trial.close()
    trial.verify()
    return peak
