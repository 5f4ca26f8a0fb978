"""``dependents``: what references a row, lazily, one query per referencing key."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from sqlalchemy import Select, func, inspect, select
from sqlalchemy.orm import Mapper, Session

from . import _statements as sql
from ._errors import ReferencesError
from ._keys import ReferenceGraph, ReferencingKey, reference_graph
from ._merge import instance_state, referred_values

Values = tuple[Any, ...]


class KeyDependents:
    """The rows that reference an object through one :class:`ReferencingKey`.

    Iterating yields ORM objects when a class maps the referencing table
    (loaded polymorphically), or :class:`~sqlalchemy.engine.Row` objects for
    tables no class maps, such as plain association tables.
    """

    def __init__(self, owner: Dependents, key: ReferencingKey) -> None:
        self._owner = owner
        self.key = key
        self.mapper: Mapper[Any] | None = owner.graph.primary_mapper(key.table)

    def _criteria(self) -> Any:
        values = self._owner.values(self.key)
        return None if values is None else sql.matches(self.key.columns, values)

    def select(self) -> Select[Any]:
        """The SELECT this key's rows are loaded with."""
        criteria = self._criteria()
        entity: Any = self.mapper if self.mapper is not None else self.key.table
        statement = select(entity).order_by(*self.key.identity)
        return statement.where(criteria) if criteria is not None else statement.where(False)

    def count_select(self) -> Select[tuple[int]]:
        criteria = self._criteria()
        statement = select(func.count()).select_from(self.key.table)
        return statement.where(criteria) if criteria is not None else statement.where(False)

    def __iter__(self) -> Iterator[Any]:
        if self._criteria() is None:
            return iter(())
        result = self._owner.session.execute(self.select())
        if self.mapper is not None:
            return iter(result.scalars().all())
        return iter(result.all())

    def count(self) -> int:
        if self._criteria() is None:
            return 0
        return int(self._owner.session.execute(self.count_select()).scalar_one())

    def __repr__(self) -> str:
        return f"<KeyDependents {self.key.name}>"


class Dependents:
    """The rows that reference an object, grouped by referencing key.

    Nothing runs until iterated or counted.  Iteration loads each key's rows
    with one query, keys in a deterministic order; :meth:`count` counts every
    key in one statement without loading; :meth:`by_key` breaks it down.

    E.g.::

        deps = dependents(customer)
        print(deps.count())
        for key, rows in deps.by_key().items():
            print(key.name, rows.count())
    """

    def __init__(self, obj: object) -> None:
        state = instance_state(obj, "obj")
        session = state.session
        if session is None:
            raise ReferencesError(f"{obj!r} is not attached to a Session")
        self.obj = obj
        self.session: Session = session
        self.graph: ReferenceGraph = reference_graph(state.mapper.local_table.metadata)
        self.keys = self.graph.keys_for_mapper(state.mapper)
        self._values: dict[ReferencingKey, Values | None] = {}

    def values(self, key: ReferencingKey) -> Values | None:
        if key not in self._values:
            state = inspect(self.obj)
            if state.pending:
                if not self.session.autoflush:
                    raise ReferencesError(f"{self.obj!r} is pending and autoflush is off")
                self.session.flush()
            if state.deleted or state.detached:
                raise ReferencesError(f"{self.obj!r} is no longer persistent")
            values = referred_values(self.obj, key.referred_columns)
            self._values[key] = None if any(v is None for v in values) else values
        return self._values[key]

    def by_key(self) -> dict[ReferencingKey, KeyDependents]:
        return {key: KeyDependents(self, key) for key in self.keys}

    def __iter__(self) -> Iterator[Any]:
        for rows in self.by_key().values():
            yield from rows

    def count(self) -> int:
        """Every referencing row, all keys, in one statement."""
        counts = [rows.count_select().scalar_subquery() for rows in self.by_key().values()]
        if not counts:
            return 0
        row = self.session.execute(select(*counts)).one()
        return sum(int(c) for c in row)

    def __repr__(self) -> str:
        return f"<Dependents of {self.obj!r}: {len(self.keys)} key(s)>"


def dependents(obj: object) -> Dependents:
    """The rows that reference ``obj``, through ``object_session(obj)``.

    E.g.::

        for row in dependents(customer):
            print(row)
    """
    return Dependents(obj)
