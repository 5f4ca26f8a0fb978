"""What is compared: sa_references, the peer (sqlalchemy-utils) and hand-written SQL.

Every merge contender re-points all references from each duplicate to its
keeper and commits; none deletes the duplicates (the peer cannot).  The ORM
contenders start from the customers loaded in their session (untimed); the
Core contenders start from the list of ``(duplicate id, keeper id)`` pairs.

Hand-written SQL is the best set-based statement a person would write for
this schema, one UPDATE per referencing table:

``temp-table``
    a temporary mapping table (``src`` primary key, ``tgt``) filled with one
    ``executemany``, then ``UPDATE t SET fk = m.tgt FROM m WHERE t.fk = m.src``
    (PostgreSQL, SQLite) or ``UPDATE t JOIN m ON t.fk = m.src SET t.fk = m.tgt``
    (MariaDB).
``values``
    PostgreSQL and SQLite: the pairs inline,
    ``UPDATE t SET fk = v.tgt FROM (VALUES (17, 4), ...) v(src, tgt) WHERE t.fk = v.src``
    (integers rendered as literals: no bound-parameter limit).
``unnest``
    PostgreSQL: two array parameters,
    ``... FROM unnest(%(src)s::integer[], %(tgt)s::integer[]) v(src, tgt) ...``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, Table, select
from sqlalchemy.orm import Session

import sa_references
from sa_references import ReferencesSession

from .measure import Kind
from .schema import Models, Pair

try:
    import sqlalchemy_utils as _peer  # type: ignore[import-untyped,unused-ignore]
except ImportError:  # pragma: no cover - the peer is an optional benchmark dependency
    _peer = None

#: why the peer's rows cannot run, if they cannot
PEER_MISSING = None if _peer is not None else "sqlalchemy-utils is not installed"


def peer_merge_references(source: object, target: object) -> None:
    """``sqlalchemy_utils.merge_references(from_, to)``."""
    _peer.merge_references(source, target)


def peer_dependent_objects(obj: object) -> Any:
    """``sqlalchemy_utils.dependent_objects(obj)``: a QueryChain (iterable, ``.count()``)."""
    return _peer.dependent_objects(obj)


def peer_referencing_keys(cls: type[Any]) -> set[Any]:
    """``sqlalchemy_utils.get_referencing_foreign_keys(cls)``: a set of ForeignKey."""
    keys: set[Any] = _peer.get_referencing_foreign_keys(cls)
    return keys


#: ``(engine, models, pairs) -> action`` for the Core contenders
CoreAction = Callable[[Engine, Models, Sequence[Pair]], None]
#: ``(session, objects by id, pairs) -> None`` for the ORM contenders (commit included)
OrmAction = Callable[[Session, dict[int, Any], Sequence[Pair]], None]


@dataclass(frozen=True)
class MergeContender:
    name: str
    kind: Kind
    #: runs one merge (or Python-level statement) per pair: slow, bounded by the time budget
    loop: bool = False
    orm: OrmAction | None = None
    core: CoreAction | None = None
    #: builds the session of an ORM contender
    session_factory: Callable[[Engine], Session] = Session
    variant: str = ""
    #: why it cannot run here, if it cannot
    unavailable: str | None = None


def load_customers(session: Session, models: Models) -> dict[int, Any]:
    """Every customer, by id, in ``session`` (the objects the ORM contenders merge)."""
    customers = session.scalars(select(models.customer)).all()
    return {c.id: c for c in customers}


# -- ours ---------------------------------------------------------------------


def _merge_into_loop(synchronize: Any) -> OrmAction:
    def action(session: Session, objects: dict[int, Any], pairs: Sequence[Pair]) -> None:
        for dupe, keeper in pairs:
            sa_references.merge_into(
                objects[dupe], objects[keeper], synchronize_session=synchronize
            )
        session.commit()

    return action


def _queued(session: Session, objects: dict[int, Any], pairs: Sequence[Pair]) -> None:
    for dupe, keeper in pairs:
        objects[dupe].merge_into(objects[keeper])
    session.commit()


def _references_session(engine: Engine) -> Session:
    return ReferencesSession(engine)


def _merge_many(engine: Engine, models: Models, pairs: Sequence[Pair]) -> None:
    with engine.begin() as connection:
        sa_references.merge_many(connection, models.customer_table, pairs)


MERGE_INTO = MergeContender("merge_into loop", "ours", loop=True, orm=_merge_into_loop("evaluate"))
MERGE_INTO_NO_SYNC = MergeContender(
    "merge_into loop",
    "ours",
    loop=True,
    orm=_merge_into_loop(False),
    variant="synchronize_session=False",
)
QUEUED = MergeContender(
    "ReferencesSession",
    "ours",
    orm=_queued,
    session_factory=_references_session,
)
MERGE_MANY = MergeContender("merge_many", "ours", core=_merge_many)


# -- the peer -------------------------------------------------------------------


def _peer_loop(session: Session, objects: dict[int, Any], pairs: Sequence[Pair]) -> None:
    for dupe, keeper in pairs:
        peer_merge_references(objects[dupe], objects[keeper])
    session.commit()


PEER = MergeContender(
    "sqlalchemy-utils merge_references loop",
    "peer",
    loop=True,
    orm=_peer_loop,
    unavailable=PEER_MISSING,
)


# -- hand-written SQL -------------------------------------------------------------


def _quote(connection: Connection, name: str) -> str:
    return connection.dialect.identifier_preparer.quote(name)


def create_merge_map(connection: Connection, pairs: Sequence[Pair]) -> None:
    """The temporary mapping table ``merge_map (src PRIMARY KEY, tgt)``, filled with ``pairs``."""
    dialect = connection.dialect.name
    if dialect == "postgresql":
        create = (
            "CREATE TEMPORARY TABLE merge_map (src integer PRIMARY KEY, tgt integer NOT NULL)"
            " ON COMMIT DROP"
        )
    elif dialect == "mysql":
        create = "CREATE TEMPORARY TABLE merge_map (src INT PRIMARY KEY, tgt INT NOT NULL)"
    else:
        create = "CREATE TEMPORARY TABLE merge_map (src INTEGER PRIMARY KEY, tgt INTEGER NOT NULL)"
    connection.exec_driver_sql(create)
    insert = "INSERT INTO merge_map (src, tgt) VALUES (?, ?)"
    if connection.dialect.paramstyle in ("format", "pyformat"):
        insert = "INSERT INTO merge_map (src, tgt) VALUES (%s, %s)"
    connection.exec_driver_sql(insert, list(pairs))
    if dialect == "postgresql":
        connection.exec_driver_sql("ANALYZE merge_map")


def temp_table_update(connection: Connection, table: Table) -> str:
    """The UPDATE of ``table`` joined to ``merge_map``."""
    t = _quote(connection, table.name)
    if connection.dialect.name == "mysql":
        return (
            f"UPDATE {t} JOIN merge_map ON {t}.customer_id = merge_map.src "
            f"SET {t}.customer_id = merge_map.tgt"
        )
    return (
        f"UPDATE {t} SET customer_id = merge_map.tgt FROM merge_map "
        f"WHERE {t}.customer_id = merge_map.src"
    )


def drop_merge_map(connection: Connection) -> None:
    """Drop ``merge_map`` (on PostgreSQL it goes with the commit: ON COMMIT DROP)."""
    dialect = connection.dialect.name
    if dialect != "postgresql":
        temporary = "TEMPORARY " if dialect == "mysql" else ""
        connection.exec_driver_sql(f"DROP {temporary}TABLE merge_map")


def _temp_table(connection: Connection, models: Models, pairs: Sequence[Pair]) -> None:
    create_merge_map(connection, pairs)
    for table in models.referencing_tables:
        connection.exec_driver_sql(temp_table_update(connection, table))
    drop_merge_map(connection)


def _values(connection: Connection, models: Models, pairs: Sequence[Pair]) -> None:
    rows = ", ".join(f"({int(s)}, {int(t)})" for s, t in pairs)
    postgresql = connection.dialect.name == "postgresql"
    for table in models.referencing_tables:
        t = _quote(connection, table.name)
        if postgresql:
            statement = (
                f"UPDATE {t} SET customer_id = v.tgt FROM (VALUES {rows}) AS v(src, tgt) "
                f"WHERE {t}.customer_id = v.src"
            )
        else:  # SQLite names the columns of VALUES column1, column2
            statement = (
                f"UPDATE {t} SET customer_id = v.column2 FROM (VALUES {rows}) AS v "
                f"WHERE {t}.customer_id = v.column1"
            )
        connection.exec_driver_sql(statement)


def unnest_update(connection: Connection, table: Table) -> str:
    """The UPDATE of ``table`` from the arrays ``%(src)s`` and ``%(tgt)s``."""
    t = _quote(connection, table.name)
    return (
        f"UPDATE {t} SET customer_id = v.tgt "
        "FROM unnest(%(src)s::integer[], %(tgt)s::integer[]) AS v(src, tgt) "
        f"WHERE {t}.customer_id = v.src"
    )


def unnest_parameters(pairs: Sequence[Pair]) -> dict[str, list[int]]:
    return {"src": [s for s, _ in pairs], "tgt": [t for _, t in pairs]}


def _unnest(connection: Connection, models: Models, pairs: Sequence[Pair]) -> None:
    parameters = unnest_parameters(pairs)
    for table in models.referencing_tables:
        connection.exec_driver_sql(unnest_update(connection, table), parameters)


#: the SQL of one hand-written variant, run on a connection in a transaction
HandWritten = Callable[[Connection, Models, Sequence[Pair]], None]


def _on_engine(sql: HandWritten) -> CoreAction:
    """From the list of pairs: the SQL in a transaction of its own."""

    def action(engine: Engine, models: Models, pairs: Sequence[Pair]) -> None:
        with engine.begin() as connection:
            sql(connection, models, pairs)

    return action


def _in_session(sql: HandWritten, models: Models) -> OrmAction:
    """From the customers loaded in a Session: the SQL on its connection, then its commit
    (which expires the loaded objects, as it does for the ORM contenders)."""

    def action(session: Session, objects: dict[int, Any], pairs: Sequence[Pair]) -> None:
        sql(session.connection(), models, pairs)
        session.commit()

    return action


def hand_written(dialect: str, models: Models | None = None) -> list[MergeContender]:
    """The hand-written variants that exist for ``dialect``.

    With ``models``, each variant also runs in the ORM contenders' setting: from the
    customers loaded in a Session, committed by that Session.
    """
    variants: list[tuple[str, HandWritten]] = [("temp-table", _temp_table)]
    if dialect in ("postgresql", "sqlite"):
        variants.append(("values", _values))
    if dialect == "postgresql":
        variants.append(("unnest", _unnest))
    contenders = [
        MergeContender("hand-written SQL", "hand-written", core=_on_engine(sql), variant=name)
        for name, sql in variants
    ]
    if models is not None:
        contenders += [
            MergeContender(
                "hand-written SQL",
                "hand-written",
                orm=_in_session(sql, models),
                variant=f"{name}, in the ORM session",
            )
            for name, sql in variants
        ]
    return contenders
