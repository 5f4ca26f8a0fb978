"""Helpers for the ``test_promise_*`` files: each test builds its own schema.

A test declares its tables in a fresh :class:`~sqlalchemy.MetaData` (names prefixed
``pr``, unique to these files), creates them with :func:`built`, works on one
connection in a transaction that is rolled back, and the tables are dropped at the
end.  :func:`merge` runs one merge through any of the four entry points, so that a
test can be parametrized over them; :func:`snapshot` reads every table of a
MetaData straight from the database, to assert that a refusal changed nothing.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, MetaData, Table, select, text
from sqlalchemy.orm import Session, registry

from sa_references import ReferencesSession, merge_into, merge_many, merge_rows
from tests.conftest import Backend

#: every public way to merge
ENTRY_POINTS = ("merge_into", "merge_rows", "merge_many", "session")
ORM_ENTRY_POINTS = ("merge_into", "session")
SERVERS = ("postgresql", "mariadb")


@contextmanager
def built(
    db: Backend, metadata: MetaData, engine: Engine | None = None, **execution_options: Any
) -> Iterator[Connection]:
    """Create ``metadata``'s tables, yield a connection in a transaction (rolled back
    afterwards), then drop the tables.  ``engine`` defaults to the backend's."""
    engine = db.engine if engine is None else engine
    if execution_options:
        engine = engine.execution_options(**execution_options)
    metadata.drop_all(engine)
    metadata.create_all(engine)
    try:
        with engine.connect() as connection:
            transaction = connection.begin()
            try:
                yield connection
            finally:
                if transaction.is_active:
                    transaction.rollback()
    finally:
        metadata.drop_all(engine)


def seed(connection: Connection, rows: dict[Table, Sequence[dict[str, Any]]]) -> None:
    """Insert rows, table by table, in the order given."""
    for table, values in rows.items():
        if values:
            connection.execute(table.insert(), list(values))


def snapshot(connection: Connection, metadata: MetaData) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table of ``metadata``, straight from the database."""
    return {
        t.name: sorted((tuple(r) for r in connection.execute(select(t))), key=repr)
        for t in metadata.sorted_tables
    }


def rows(connection: Connection, table: Table, *columns: str) -> list[tuple[Any, ...]]:
    """The rows of ``table`` (or of some of its columns), sorted (by repr when values of
    different types, NULL among them, cannot be compared)."""
    cols = [table.c[c] for c in columns] if columns else list(table.c)
    found = [tuple(r) for r in connection.execute(select(*cols))]
    try:
        return sorted(found)
    except TypeError:
        return sorted(found, key=repr)


def still_usable(connection: Connection) -> None:
    """The connection's transaction can still run a statement (PostgreSQL aborts it
    on an error the library did not roll back to its SAVEPOINT)."""
    assert connection.execute(text("SELECT 1")).scalar_one() == 1


def mapped(table: Table, name: str | None = None, **properties: Any) -> type:
    """A class mapped imperatively to ``table`` (a registry of its own)."""
    cls = type(name or table.name.title().replace("_", ""), (), {})
    registry().map_imperatively(cls, table, properties=properties)
    return cls


def orm_session(connection: Connection, entry: str, **kw: Any) -> Session:
    cls = ReferencesSession if entry == "session" else Session
    return cls(bind=connection, join_transaction_mode="create_savepoint", **kw)


def merge(
    entry: str,
    connection: Connection,
    table: Table,
    source: Any,
    target: Any,
    *,
    cls: type | None = None,
    session: Session | None = None,
    **options: Any,
) -> Any:
    """One merge of ``source`` into ``target`` (primary keys) through ``entry``.

    ``merge_into`` / ``session`` need ``cls`` (mapped to ``table``); they load both
    objects in ``session`` (or a new one, committed and closed afterwards) and flush.  The report
    is returned; for ``session`` it is the queued merge's report, applied by the flush.
    """
    if entry == "merge_rows":
        return merge_rows(connection, table, source, target, **options)
    if entry == "merge_many":
        return merge_many(connection, table, [(source, target)], **options)
    assert cls is not None, "the ORM entry points need a mapped class"
    own = session is None
    s = orm_session(connection, entry) if session is None else session
    try:
        dupe, keeper = s.get(cls, source), s.get(cls, target)
        assert dupe is not None and keeper is not None
        report = merge_into(dupe, keeper, **options)
        if own:
            s.commit()  # releases the session's SAVEPOINT into the connection's transaction
        else:
            s.flush()
        return report
    finally:
        if own:
            s.close()


def mark_bugs(
    request: pytest.FixtureRequest,
    db: Backend,
    bugs: dict[tuple[str, str], str],
    *parts: str,
) -> None:
    """Apply a strict xfail when (backend, *parts) or ("*", *parts) is in ``bugs``."""
    reason = bugs.get((db.name, *parts)) or bugs.get(("*", *parts))
    if reason is not None:
        request.applymarker(pytest.mark.xfail(strict=True, reason=reason))


@contextmanager
def committed(
    db: Backend, metadata: MetaData, data: dict[Table, Sequence[dict[str, Any]]]
) -> Iterator[None]:
    """Create ``metadata``'s tables with ``data`` committed (for tests that use several
    connections), and drop them afterwards: close every connection before the block ends."""
    metadata.drop_all(db.engine)
    metadata.create_all(db.engine)
    try:
        with db.engine.begin() as connection:
            seed(connection, data)
        yield
    finally:
        metadata.drop_all(db.engine)


def committed_rows(db: Backend, table: Table) -> list[tuple[Any, ...]]:
    """``rows`` as committed, read on a new connection."""
    with db.engine.connect() as connection:
        return rows(connection, table)


def lock_timeout(connection: Connection, seconds: int) -> None:
    """Bound how long ``connection`` waits for a row lock (servers)."""
    if connection.dialect.name == "postgresql":
        connection.execute(text(f"SET lock_timeout = '{seconds}s'"))
    elif connection.dialect.name in ("mysql", "mariadb"):
        connection.execute(text(f"SET SESSION innodb_lock_wait_timeout = {seconds}"))
