"""Where a merge's statements go: the one routing function of the package.

A merge's statements all run on one :class:`~sqlalchemy.engine.Connection`:
the one its SAVEPOINT is opened on, so the SAVEPOINT protects every one of
them.  For a Core connection that is the connection itself; for a Session it
is the connection the Session binds the merged class (or table) to, whether
through ``bind=``, ``binds=`` per table, per mapper or per base class, or a
``get_bind()`` override.  Foreign keys never cross databases, so the tables
referencing the merged one live behind the same connection.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Table
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import Mapper, Session

Bind = Session | Connection


def check_bind(bind: object) -> None:
    if not isinstance(bind, (Session, Connection)):
        raise ArgumentError(
            f"expected a Session or a Connection (use engine.begin() for an Engine); got {bind!r}"
        )


def connection_for(
    bind: Bind, *, mapper: Mapper[Any] | None = None, table: Table | None = None
) -> Connection:
    """The connection ``bind`` runs statements about ``mapper`` (or ``table``) on."""
    if not isinstance(bind, Session):
        return bind
    if mapper is not None:
        return bind.connection(bind_arguments={"mapper": mapper})
    if table is not None:
        return bind.connection(bind_arguments=bind_arguments_for(table))
    return bind.connection()


def bind_arguments_for(table: Table) -> dict[str, Any]:
    """The ``bind_arguments`` that make a Session route a statement by ``table``: the
    table itself is the clause, which ``Session.get_bind()`` finds in ``binds=`` and
    overrides that route by table read directly (Flask-SQLAlchemy's ``__bind_key__``)."""
    return {"clause": table}
