"""SAVEPOINTs around a merge: all or nothing, on the connection its statements run on."""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator
from typing import Any

from sqlalchemy import Connection, Table
from sqlalchemy.engine import NestedTransaction
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.orm import Mapper, SessionTransaction

from ._backend import backend_of
from ._compat import savepoint_name
from ._route import Bind, connection_for


@contextlib.contextmanager
def savepoint(
    bind: Bind,
    *,
    rollback: bool = False,
    mapper: Mapper[Any] | None = None,
    table: Table | None = None,
    orm: bool = True,
) -> Iterator[Connection]:
    """A SAVEPOINT that a later rollback of the enclosing transaction still undoes.

    pysqlite starts no transaction before a SAVEPOINT, so releasing it would
    commit; a real BEGIN is issued first when the driver has none open.

    ``rollback=True`` (a dry run) rolls it back even when the block succeeds:
    the block's writes are undone, and a failure to undo them raises.

    When the RELEASE SAVEPOINT itself fails, SQLAlchemy marks the savepoint
    inactive so that its rollback emits nothing: the ROLLBACK TO SAVEPOINT is
    then sent here, or the merge's writes would stay in the caller's
    transaction (left aborted, on PostgreSQL).

    ``mapper``/``table``: for a Session, the SAVEPOINT is opened on the connection the
    session binds them to (:func:`~._route.connection_for`).
    That connection is what the block gets (``with savepoint(...) as connection``).

    ``orm=False``: the block runs Core statements only (no ORM flush), so the
    SAVEPOINT is the connection's own rather than a Session's nested transaction;
    on MySQL/MariaDB it is then never released (:func:`_unreleased_savepoint`).
    """
    connection = connection_for(bind, mapper=mapper, table=table)
    backend = backend_of(connection)
    if not orm and not rollback and backend.savepoint_style == "reused":
        with _unreleased_savepoint(connection):
            yield connection
        return
    if not orm:
        bind = connection
    if backend.begin_before_savepoint:
        driver_connection = connection.connection.driver_connection
        if getattr(driver_connection, "in_transaction", True) is False:
            connection.exec_driver_sql("BEGIN")
    nested = bind.begin_nested()
    opened: NestedTransaction | None = None
    try:
        # a Session sends its SAVEPOINT on first use: asking for its connection does
        current = connection_for(bind, mapper=mapper, table=table)
        opened = current.get_nested_transaction()
        yield current
    except BaseException:
        _undo(connection, nested, opened)
        raise
    if rollback:
        nested.rollback()
        return
    try:
        nested.commit()  # RELEASE SAVEPOINT: when it fails, the merge is rolled back too
    except BaseException:
        _undo(connection, nested, opened)
        raise


#: open unreleased savepoints per connection: the nesting level names the next one
_unreleased_depth: weakref.WeakKeyDictionary[Connection, int] = weakref.WeakKeyDictionary()


@contextlib.contextmanager
def _unreleased_savepoint(connection: Connection) -> Iterator[None]:
    """MySQL/MariaDB: a SAVEPOINT that is never released, one round trip fewer per merge.

    Setting a savepoint under a name already set replaces it there (PostgreSQL
    and SQLite would stack them), and COMMIT or ROLLBACK drops them all; so one
    name per nesting level is set again by every single merge.  A failing block
    is rolled back to it; when that fails too (a deadlock already rolled the
    whole transaction back), the block's error is the one that propagates.
    """
    depth = _unreleased_depth.get(connection, 0)
    name = f"sa_references_{depth}"
    # the driver's string: dialect.do_savepoint() compiles a clause, about 20 us more per merge
    connection.exec_driver_sql(f"SAVEPOINT {name}")
    _unreleased_depth[connection] = depth + 1
    try:
        yield
    except BaseException:
        with contextlib.suppress(DBAPIError):
            connection.dialect.do_rollback_to_savepoint(connection, name)
        raise
    finally:
        _unreleased_depth[connection] = depth


def _undo(
    connection: Connection,
    nested: NestedTransaction | SessionTransaction,
    opened: NestedTransaction | None,
) -> None:
    """Roll a failed block's SAVEPOINT back; a database error doing so is suppressed.

    When the database already rolled the whole transaction back (a MariaDB
    deadlock), ROLLBACK TO SAVEPOINT fails too: the first error is the one a
    caller can act on (retry), so it is the one that propagates.
    """
    # inactive yet still the connection's savepoint: only a failed RELEASE leaves it so
    release_failed = (
        opened is not None
        and not opened.is_active
        and connection.get_nested_transaction() is opened
    )
    with contextlib.suppress(DBAPIError):
        nested.rollback()  # after a failed RELEASE, this sends nothing
    alive = connection.in_transaction() and not connection.invalidated
    if release_failed and opened is not None and alive:
        # what NestedTransaction.rollback() would have sent, in the dialect's own form
        with contextlib.suppress(SQLAlchemyError):
            connection.dialect.do_rollback_to_savepoint(connection, savepoint_name(opened))
