"""``dependents``: what references a row, lazily, one query per referencing key."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, Generic, TypeVar

from sqlalchemy import Connection, Select, Table, false, func, inspect, select
from sqlalchemy.engine import Row
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import Mapper, Session, registry

from . import _statements as sql
from ._keys import AnyColumn, ReferenceGraph, ReferencingKey, reference_graph
from ._objects import describe, instance_state, referred_values
from ._pairs import fetch_row, primary_key_values
from ._route import bind_arguments_for, check_bind
from .exc import ReferencesError

Values = tuple[Any, ...]
#: what iterating a :class:`Dependents` yields: mapped objects, or rows
T = TypeVar("T")


class KeyDependents:
    """The rows that reference a row through one :class:`ReferencingKey`.

    Iterating yields ORM objects when a class maps the referencing table
    (loaded polymorphically) and the lookup runs on a Session, otherwise
    :class:`~sqlalchemy.engine.Row` objects (plain association tables,
    reflected tables).
    """

    def __init__(self, owner: Dependents[Any], key: ReferencingKey) -> None:
        self._owner = owner
        self.key = key
        self.mapper: Mapper[Any] | None = (
            owner.graph.primary_mapper(key.table, owner.registry) if owner.load_objects else None
        )

    def _where(self, statement: Select[Any]) -> Select[Any]:
        values = self._owner.values(self.key)
        if values is None:
            return statement.where(false())
        return statement.where(sql.matches(self.key.columns, values))

    def select(self) -> Select[Any]:
        """The SELECT this key's rows are loaded with."""
        entity: Any = self.mapper if self.mapper is not None else self.key.table
        return self._where(select(entity).order_by(*self.key.identity))

    def count_select(self) -> Select[Any]:
        return self._where(select(func.count()).select_from(self.key.table))

    def __iter__(self) -> Iterator[Any]:
        if self._owner.values(self.key) is None:
            return iter(())
        result = self._owner.execute(self.select(), self.key.table)
        if self.mapper is not None:
            # unique(): required by joined eager loads of collections; rows are unique anyway
            return iter(result.scalars().unique().all())
        return iter(result.all())

    def count(self) -> int:
        if self._owner.values(self.key) is None:
            return 0
        count: int = self._owner.execute(self.count_select(), self.key.table).scalar_one()
        return count

    def __repr__(self) -> str:
        return f"<KeyDependents {self.key.name}>"


class Dependents(Generic[T]):
    """The rows that reference a row, grouped by referencing key.

    Nothing runs until iterated or counted, and each time the referenced
    row's current values are used.  Iteration loads each key's rows with one
    query, keys in a deterministic order and rows by identity.

    What iteration yields is of one kind: for :func:`dependents` (an ORM
    object), the mapped objects that reference it -- rows of tables no class
    maps (plain association tables) are not among them; for
    :func:`row_dependents`, :class:`~sqlalchemy.engine.Row` objects of every
    referencing table.  :meth:`count` counts every referencing row, those of
    unmapped tables included, in one statement without loading; :meth:`by_key`
    breaks it down, and each key's rows are reachable there (a
    :class:`KeyDependents` of an unmapped table yields rows).  Whether anything
    references the row is ``count() > 0``: iteration may be empty while an
    association table still holds rows.  A key whose
    referred value is NULL (``customer.code``) references nothing and runs no
    query.

    E.g.::

        deps = dependents(customer)
        print(deps.count())
        for key, rows in deps.by_key().items():
            print(key.name, rows.count())
    """

    def __init__(
        self,
        bind: Session | Connection,
        graph: ReferenceGraph,
        keys: Sequence[ReferencingKey],
        values_of: Callable[[Sequence[AnyColumn]], Values],
        description: str,
        *,
        load_objects: bool | None = None,
        registry: registry | None = None,
    ) -> None:
        self.bind = bind
        self.graph = graph
        self.keys = tuple(keys)
        #: ORM objects for mapped referencing tables (default: when ``bind`` is a Session)
        self.load_objects = isinstance(bind, Session) if load_objects is None else load_objects
        #: the registry whose classes are preferred when several map a referencing table
        self.registry = registry
        self._values_of = values_of
        self._description = description

    def values(self, key: ReferencingKey) -> Values | None:
        """The referenced row's values for ``key`` (None: nothing can reference it)."""
        values = self._values_of(key.referred_columns)
        return None if any(v is None for v in values) else values

    def by_key(self) -> dict[ReferencingKey, KeyDependents]:
        """Per referencing key, in a deterministic order, its rows (every key, unmapped
        tables' included)."""
        return {key: KeyDependents(self, key) for key in self.keys}

    def __iter__(self) -> Iterator[T]:
        for rows in self.by_key().values():
            if self.load_objects and rows.mapper is None:
                continue  # an unmapped table's rows: by_key() has them, count() counts them
            yield from rows

    def execute(self, statement: Select[Any], table: Table) -> Any:
        """Run a lookup about ``table``'s rows; on a Session, pending changes are flushed
        first (autoflush), and the statement goes where the Session binds ``table``.

        SQLAlchemy 2.0 autoflushes only before ORM statements; a count over
        plain tables must see pending rows too.  A count's tables are inside scalar
        subqueries, where a ``get_bind()`` that routes by table (Flask-SQLAlchemy's
        ``__bind_key__``) would not look.
        """
        if isinstance(self.bind, Session):
            if self.bind.autoflush:
                self.bind.flush()
            return self.bind.execute(statement, bind_arguments=bind_arguments_for(table))
        return self.bind.execute(statement)

    def count(self) -> int:
        """Every referencing row, all keys, in one statement."""
        counts = [
            rows.count_select().scalar_subquery()
            for key, rows in self.by_key().items()
            if self.values(key) is not None
        ]
        if not counts:
            return 0
        row = self.execute(select(*counts), self.keys[0].table).one()
        return sum(int(c) for c in row)

    def __repr__(self) -> str:
        return f"<Dependents of {self._description}: {len(self.keys)} key(s)>"


def dependents(obj: object) -> Dependents[object]:
    """The mapped objects that reference ``obj``, through ``object_session(obj)``
    (rows of unmapped tables: per key, in :meth:`Dependents.by_key`).

    E.g.::

        for referrer in dependents(customer):
            print(referrer)
    """
    state = instance_state(obj, "obj")
    session = state.session
    if session is None:
        raise ReferencesError(f"{describe(state)} is not attached to a Session")
    mapper = state.mapper
    tables = [t for t in mapper.tables if isinstance(t, Table)]
    if not tables:
        raise ArgumentError(f"{mapper} maps no Table")
    graph = reference_graph(tables[0].metadata)

    def values_of(columns: Sequence[AnyColumn]) -> Values:
        current = inspect(obj)
        if current.session is session and obj in session.deleted:
            raise ReferencesError(f"{describe(current)} is marked for deletion")
        if current.pending:
            if not session.autoflush:
                raise ReferencesError(f"{describe(current)} is pending and autoflush is off")
            session.flush()
        if not current.persistent or current.session is not session:
            raise ReferencesError(f"{describe(current)} is no longer in its Session")
        return referred_values(obj, columns)

    keys = graph.keys_for_mapper(mapper)
    return Dependents(session, graph, keys, values_of, describe(state), registry=mapper.registry)


def row_dependents(bind: Session | Connection, table: Table, key: Any) -> Dependents[Row[Any]]:
    """The rows that reference the row of ``table`` with primary key ``key``.

    For any :class:`~sqlalchemy.schema.Table`, reflected ones too; iteration
    yields :class:`~sqlalchemy.engine.Row` objects.  ``key`` is a scalar, a
    sequence (composite keys) or a mapping of column name to value.  The
    referenced row is read once, at the first count or iteration
    (:class:`ReferencesError` when it does not exist); on a Session the
    statements go through it, so pending changes are flushed first.

    E.g.::

        deps = row_dependents(connection, metadata.tables["customer"], 17)
        print({k.name: rows.count() for k, rows in deps.by_key().items()})
    """
    check_bind(bind)
    if not isinstance(table, Table):
        raise ArgumentError(f"expected a Table; got {table!r}")
    primary_key = primary_key_values(table, key)
    graph = reference_graph(table.metadata)
    row: dict[AnyColumn, Any] = {}

    def values_of(columns: Sequence[AnyColumn]) -> Values:
        if not row:
            row.update(fetch_row(bind, table, primary_key, "referenced"))
        return tuple(row[c] for c in columns)

    description = f"{table.fullname} {primary_key!r}"
    keys = graph.keys_for_tables([table])
    return Dependents(bind, graph, keys, values_of, description, load_objects=False)
