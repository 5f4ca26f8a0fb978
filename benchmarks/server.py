"""The database server's own execution time of the best hand-written set-based UPDATEs.

A floor for every client: whatever a library does, the server still has to run
UPDATEs like these (read the rows, write them, maintain the index, check the
foreign key), so peer loop time / this time bounds any speed-up over the peer.
The time is the one the server reports, not a wall clock:

PostgreSQL
    ``EXPLAIN (ANALYZE, TIMING OFF, FORMAT JSON)`` of the ``unnest`` UPDATE of
    each referencing table (the SQL of the hand-written ``unnest`` variant),
    ``"Execution Time"`` summed over the five tables.  It includes the
    foreign-key check triggers (fired at the end of each statement) and leaves
    out ``"Planning Time"``.  PostgreSQL reports a trigger's ``"Time"`` only
    with per-node timing on, so the time in foreign-key triggers comes from one
    extra run with ``TIMING ON`` (which slows the plan nodes down a little, so
    its share of that run's execution time is, if anything, an underestimate).
MariaDB
    ``ANALYZE FORMAT=JSON`` of the UPDATE of each referencing table joined to
    the temporary mapping table (the SQL of the hand-written ``temp-table``
    variant; creating and filling the mapping table is not counted),
    ``query_block.r_total_time_ms`` summed over the five tables: the time of
    executing the statement (the join, the row writes with their index
    maintenance and InnoDB's foreign-key checks, which InnoDB runs inside each
    row update, so there is no separate trigger time).  The separate
    ``query_optimization.r_total_time_ms`` (about 0.1 ms, like PostgreSQL's
    planning time) is left out.
MySQL
    not measured: its ``EXPLAIN ANALYZE`` reports per-iterator times, not the
    time of the whole statement.

Everything runs in one transaction that is rolled back.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, case, func, select

from . import contenders as c
from .schema import Dataset, Models, Pair, VerificationError

#: the contender name of the measurement (kind "server")
SERVER = "server execution of the set-based UPDATEs"

#: the hand-written variant whose SQL is measured, per dialect
VARIANTS = {"postgresql": "unnest", "mysql": "temp-table"}


def applies(dialect: str) -> bool:
    """Whether the backend has a server whose execution time is measured (not SQLite)."""
    return dialect in VARIANTS


def unavailable(backend: str, dialect: str) -> str | None:
    """Why the server time cannot be measured on this server, if it cannot."""
    if dialect == "mysql" and backend != "mariadb":
        return (
            "not measured on MySQL: its EXPLAIN ANALYZE reports per-iterator times, not the "
            "execution time of a whole UPDATE (MariaDB's ANALYZE FORMAT=JSON does)"
        )
    return None


@dataclass
class ServerTime:
    """What the server reported for the five UPDATEs, in seconds."""

    execution: float
    #: in foreign-key (and other) triggers; PostgreSQL with timing on only
    triggers: float | None = None
    statements: int = 0


def _document(value: Any) -> Any:
    return json.loads(value) if isinstance(value, (str, bytes)) else value


def _postgresql(
    connection: Connection, models: Models, pairs: Sequence[Pair], timing: bool
) -> ServerTime:
    parameters = c.unnest_parameters(pairs)
    option = "ON" if timing else "OFF"
    execution, triggers = 0.0, 0.0
    for table in models.referencing_tables:
        statement = c.unnest_update(connection, table)
        plan = _document(
            connection.exec_driver_sql(
                f"EXPLAIN (ANALYZE, TIMING {option}, FORMAT JSON) {statement}", parameters
            ).scalar_one()
        )[0]
        execution += float(plan["Execution Time"])
        triggers += sum(float(t.get("Time", 0.0)) for t in plan.get("Triggers", []))
    return ServerTime(
        execution / 1e3, triggers / 1e3 if timing else None, len(models.referencing_tables)
    )


def _mariadb(connection: Connection, models: Models) -> ServerTime:
    """The UPDATEs against ``merge_map``, which the caller has created and filled."""
    execution = 0.0
    for table in models.referencing_tables:
        statement = c.temp_table_update(connection, table)
        document = _document(
            connection.exec_driver_sql(f"ANALYZE FORMAT=JSON {statement}").scalar_one()
        )
        execution += float(document["query_block"]["r_total_time_ms"])
    return ServerTime(execution / 1e3, None, len(models.referencing_tables))


class ServerTrial:
    """Fresh data; the five UPDATEs explained and run in a transaction, checked, rolled back.

    Its action returns the server's reported execution time, which
    :func:`~benchmarks.measure.run_once` records instead of the wall clock.
    """

    def __init__(self, connect: Any, models: Models, data: Dataset, timing: bool = False) -> None:
        self.connect, self.models, self.data, self.timing = connect, models, data, timing
        self.connection: Connection | None = None
        self.reported: ServerTime | None = None
        self.problems: list[str] = []

    def prepare(self) -> Any:
        connection = self.connection = self.connect()
        connection.begin()
        mysql = connection.dialect.name == "mysql"
        if mysql:
            c.create_merge_map(connection, self.data.pairs)  # not counted

        def action() -> float:
            if mysql:
                self.reported = _mariadb(connection, self.models)
            else:
                self.reported = _postgresql(connection, self.models, self.data.pairs, self.timing)
            return self.reported.execution

        return action

    def verify(self) -> None:
        if self.problems:
            raise VerificationError("; ".join(self.problems))

    def close(self) -> None:
        connection = self.connection
        if connection is None:
            return
        try:
            if self.reported is not None:
                self.problems = _check(connection, self.models)
        finally:
            connection.rollback()
            if connection.dialect.name == "mysql":
                connection.exec_driver_sql("DROP TEMPORARY TABLE IF EXISTS merge_map")
            connection.close()


def _check(connection: Connection, models: Models) -> list[str]:
    """Inside the transaction: every referencing row at its keeper (the UPDATEs did the work)."""
    problems = []
    for table in models.referencing_tables:
        wrong = connection.execute(
            select(
                func.coalesce(
                    func.sum(
                        case((table.c.customer_id != table.c.expected_customer_id, 1), else_=0)
                    ),
                    0,
                )
            )
        ).scalar_one()
        if wrong:
            problems.append(f"{table.name}: {wrong} rows reference the wrong customer")
    return problems
