"""Backends for the test suite.

Plain ``pytest`` runs on SQLite, twice: with ``PRAGMA foreign_keys=ON`` and
with foreign keys off.  ``--dburi URL`` (repeatable) or the environment
variable ``SA_REFERENCES_TEST_DBURIS`` (URLs separated by spaces) add
servers; a URL that was given but cannot be reached stops the run with an
error, never a skip.

Each test runs in a transaction rolled back afterwards: the Session joins
the connection's transaction with ``join_transaction_mode="create_savepoint"``;
on SQLite the pysqlite recipe (driver autocommit + our own BEGIN) makes
SAVEPOINT work.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from tests import models

ENV_VAR = "SA_REFERENCES_TEST_DBURIS"
SQLITE_BACKENDS = {"sqlite": True, "sqlite-nofk": False}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--dburi",
        action="append",
        default=[],
        help=f"database URL to test against (repeatable; also ${ENV_VAR})",
    )


def _server_urls(config: pytest.Config) -> list[str]:
    urls = list(config.getoption("dburi"))
    urls += os.environ.get(ENV_VAR, "").split()
    return list(dict.fromkeys(urls))


def backend_id(url: str) -> str:
    u = make_url(url)
    name = u.get_backend_name()
    return "mariadb" if name == "mysql" else name


def sqlite_engine(path: str = ":memory:", foreign_keys: bool = True, **kw: Any) -> Engine:
    """A SQLite engine with the pysqlite savepoint recipe from SQLAlchemy's docs."""
    from sqlalchemy.pool import StaticPool

    if path == ":memory:":
        kw.setdefault("poolclass", StaticPool)
    engine = create_engine(f"sqlite:///{path}", **kw)

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        dbapi_connection.execute(f"PRAGMA foreign_keys={'ON' if foreign_keys else 'OFF'}")

    @event.listens_for(engine, "begin")
    def _begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN")

    return engine


def server_engine(url: str, **kw: Any) -> Engine:
    return create_engine(url, **kw)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "backends(*names): run only on these backends (sqlite, postgresql, ...)"
    )
    urls = _server_urls(config)
    config._sa_backends = list(SQLITE_BACKENDS) + urls  # type: ignore[attr-defined]
    for url in urls:
        try:
            engine = create_engine(url)
            with engine.connect() as connection:
                connection.exec_driver_sql("SELECT 1")
            engine.dispose()
        except Exception as error:  # any failure to reach a given server is fatal
            raise pytest.UsageError(f"database URL {url!r} cannot be reached: {error}") from None


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" in metafunc.fixturenames:
        backends = metafunc.config._sa_backends  # type: ignore[attr-defined]
        marker = metafunc.definition.get_closest_marker("backends")
        if marker is not None:
            backends = [b for b in backends if _id(b) in marker.args]
        metafunc.parametrize("backend", backends, ids=[_id(b) for b in backends], scope="session")


def _id(backend: str) -> str:
    return backend if backend in SQLITE_BACKENDS else backend_id(backend)


@dataclass
class Backend:
    name: str
    url: str
    engine: Engine
    foreign_keys: bool = True
    statements: list[str] = field(default_factory=list)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @property
    def can(self) -> Any:
        """What the backend can do (sa_references' own description of it): tests that
        depend on a capability ask for it, not for a backend's name."""
        from sa_references._backend import backend_of

        return backend_of(self.engine.dialect)

    def make_engine(self, **kw: Any) -> Engine:
        """A new engine to the same database (for tests that need their own)."""
        if self.dialect == "sqlite":
            return sqlite_engine(self.url, self.foreign_keys, **kw)
        return server_engine(self.url, **kw)


_engines: dict[str, Backend] = {}


@pytest.fixture(scope="session")
def db(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    """The backend with the test schema created."""
    if backend in SQLITE_BACKENDS:
        path = str(tmp_path_factory.mktemp(backend) / "test.db")
        engine = sqlite_engine(path, SQLITE_BACKENDS[backend])
        info = Backend(backend, path, engine, SQLITE_BACKENDS[backend])
    else:
        engine = server_engine(backend)
        info = Backend(backend_id(backend), backend, engine)
    models.drop_all(engine)
    models.create_all(engine)

    @event.listens_for(engine, "before_cursor_execute")
    def _record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        info.statements.append(statement)

    yield info
    models.drop_all(engine)
    engine.dispose()


@pytest.fixture
def engine(db: Backend) -> Engine:
    return db.engine


@pytest.fixture
def session(db: Backend) -> Iterator[Session]:
    """A Session in a transaction that is rolled back after the test."""
    with db.engine.connect() as connection:
        transaction = connection.begin()
        with Session(bind=connection, join_transaction_mode="create_savepoint") as s:
            yield s
        if transaction.is_active:
            transaction.rollback()


class StatementLog:
    def __init__(self, statements: list[str]) -> None:
        self.all = statements

    @property
    def sql(self) -> list[str]:
        """Statements other than SAVEPOINT handling."""
        skip = ("SAVEPOINT", "RELEASE", "ROLLBACK TO", "BEGIN")
        return [s for s in self.all if not s.lstrip().upper().startswith(skip)]

    def count(self, verb: str) -> int:
        return sum(1 for s in self.sql if s.lstrip().upper().startswith(verb.upper()))

    @property
    def updated(self) -> list[str]:
        """The table of every UPDATE sent, in order: also those of a PostgreSQL statement that
        re-points several keys at once (``WITH u0 AS (UPDATE t0 SET ...), ...``)."""
        found = (re.findall(r"\bUPDATE\s+(\S+)\s+SET\b", s) for s in self.sql)
        return [table.strip('"`') for tables in found for table in tables]


@pytest.fixture
def statements(db: Backend) -> Any:
    """``with statements() as log:`` records the SQL sent inside the block."""

    @contextmanager
    def record() -> Iterator[StatementLog]:
        start = len(db.statements)
        captured: list[str] = []
        log = StatementLog(captured)
        try:
            yield log
        finally:
            captured.extend(db.statements[start:])

    return record


@dataclass
class TwoBinds:
    """A default bind that must stay unused, and the test database's connection."""

    default: Engine
    sent_to_default: list[str]
    connection: Connection


@pytest.fixture
def two_binds(db: Backend) -> Iterator[TwoBinds]:
    """For a Session ``bind=two_binds.default, binds={Base: two_binds.connection}``: the
    statements sent to the default bind are recorded; the connection's work is rolled back."""
    default = create_engine("sqlite://")
    sent: list[str] = []
    event.listen(default, "before_cursor_execute", lambda *args: sent.append(args[2]))
    with db.engine.connect() as connection:
        transaction = connection.begin()
        try:
            yield TwoBinds(default, sent, connection)
        finally:
            transaction.rollback()
            default.dispose()
