"""Finding the foreign keys that reference a table (discovery).

The graph of referencing keys is computed once per :class:`MetaData` and
cached; it is rebuilt only when that MetaData changes: a table, constraint or
index attached to it, a table removed, or a mapper constructed for one of its
tables.  Changes to other MetaData objects leave it alone.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    Column,
    ForeignKeyConstraint,
    Index,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    UniqueConstraint,
    event,
    inspect,
)
from sqlalchemy.exc import ArgumentError, NoReferencedTableError
from sqlalchemy.orm import Mapper, registry
from sqlalchemy.sql import operators
from sqlalchemy.sql.elements import UnaryExpression

from ._backend import inherited_table_names
from ._compat import all_registries

AnyColumn = Column[Any]

_ORDERING = (operators.asc_op, operators.desc_op)

#: a change counter per MetaData; a cached graph is current while it is unchanged
_versions: weakref.WeakKeyDictionary[MetaData, int] = weakref.WeakKeyDictionary()


def python_type_of(column: AnyColumn) -> type | None:
    """The Python type of ``column``'s values, or None when its type does not say."""
    try:
        python_type: type = column.type.python_type
    except NotImplementedError:
        return None
    return python_type


def _changed(metadata: Any) -> None:
    if isinstance(metadata, MetaData):
        _versions[metadata] = _versions.get(metadata, 0) + 1


def _attached(_target: Any, parent: Any) -> None:
    """A table attached to a MetaData, or a constraint or index to a table."""
    _changed(parent if isinstance(parent, MetaData) else getattr(parent, "metadata", None))


def _mapper_constructed(mapper: Mapper[Any], _class: Any) -> None:
    for metadata in {getattr(t, "metadata", None) for t in mapper.tables}:
        _changed(metadata)


for _target in (Table, ForeignKeyConstraint, UniqueConstraint, PrimaryKeyConstraint, Index):
    event.listen(_target, "after_parent_attach", _attached)
event.listen(Mapper, "after_mapper_constructed", _mapper_constructed)


@dataclass(frozen=True)
class UniqueKey:
    """A unique constraint, primary key or unique index of a referencing table."""

    name: str
    columns: tuple[AnyColumn, ...]
    #: NULLs clash like any value (PostgreSQL 15 ``UNIQUE NULLS NOT DISTINCT``)
    nulls_not_distinct: bool = False


@dataclass(frozen=True, eq=False)
class ReferencingKey:
    """One foreign key constraint that references a table.

    ``columns`` are the referencing columns of :attr:`table`,
    ``referred_columns`` the columns they point at, pairwise.  A composite
    foreign key is one key.
    """

    constraint: ForeignKeyConstraint
    table: Table
    columns: tuple[AnyColumn, ...]
    referred_table: Table
    referred_columns: tuple[AnyColumn, ...]
    unique_keys: tuple[UniqueKey, ...] = field(repr=False)
    identity: tuple[AnyColumn, ...] = field(repr=False)
    #: positions in :attr:`columns` of the columns this key shares with another foreign
    #: key of its table (or with its primary key, unless the key lies wholly inside it),
    #: each with what it is shared with: re-pointing must leave them unchanged
    shared: tuple[tuple[int, str], ...] = field(default=(), repr=False)
    #: statements and lookups built for this key, kept with it (see _statements.cached)
    cache: dict[Any, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def name(self) -> str:
        """``table(col, ...)``, as shown in reports and errors."""
        return f"{self.table.fullname}({', '.join(c.name for c in self.columns)})"

    @property
    def is_self_referential(self) -> bool:
        return self.table is self.referred_table

    @property
    def identity_overlaps_columns(self) -> bool:
        """Whether re-pointing changes a row's identity (its primary key holds the key)."""
        return not set(self.identity).isdisjoint(self.columns)

    @property
    def sort_key(self) -> tuple[str, tuple[str, ...], str, tuple[str, ...], str]:
        """Referencing table and columns first; a total order even for twin constraints."""
        return (
            self.table.fullname,
            tuple(c.name for c in self.columns),
            self.referred_table.fullname,
            tuple(c.name for c in self.referred_columns),
            _name(self.constraint.name, ""),
        )

    def __repr__(self) -> str:
        return f"<ReferencingKey {self.name} -> {self.referred_table.fullname}>"


def _name(name: Any, fallback: str) -> str:
    return str(name) if isinstance(name, str) and name else fallback


def _index_columns(index: Index) -> tuple[AnyColumn, ...] | None:
    """The plain columns an index is over; None when one is an expression (``lower(name)``)."""
    columns: list[AnyColumn] = []
    for expression in index.expressions:
        if isinstance(expression, UnaryExpression) and expression.modifier in _ORDERING:
            expression = expression.element  # name DESC orders the index, it is still on name
        if not isinstance(expression, Column):
            return None
        columns.append(expression)
    return tuple(columns)


def _nulls_not_distinct(item: UniqueConstraint | Index) -> bool:
    """Declared (``postgresql_nulls_not_distinct=True``) or reflected so."""
    options = item.dialect_options
    return "postgresql" in options and bool(options["postgresql"].get("nulls_not_distinct"))


def _unique_keys(table: Table) -> tuple[UniqueKey, ...]:
    keys: list[UniqueKey] = []
    if table.primary_key.columns:
        keys.append(
            UniqueKey(
                _name(table.primary_key.name, f"{table.name} primary key"),
                tuple(table.primary_key.columns),
            )
        )
    for constraint in sorted(
        (c for c in table.constraints if isinstance(c, UniqueConstraint)),
        key=lambda c: (tuple(col.name for col in c.columns), _name(c.name, "")),
    ):
        keys.append(
            UniqueKey(
                _name(
                    constraint.name,
                    f"unique ({', '.join(c.name for c in constraint.columns)})",
                ),
                tuple(constraint.columns),
                _nulls_not_distinct(constraint),
            )
        )
    for index in sorted(
        table.indexes, key=lambda i: (_name(i.name, ""), tuple(c.name for c in i.columns))
    ):
        partial = any(opts.get("where") is not None for opts in index.dialect_options.values())
        columns = _index_columns(index)
        if not index.unique or partial or columns is None:
            continue  # partial and expression indexes cannot be checked up front
        fallback = f"unique index ({', '.join(c.name for c in columns)})"
        keys.append(UniqueKey(_name(index.name, fallback), columns, _nulls_not_distinct(index)))
    return tuple(keys)


def _identity(table: Table, unique_keys: Sequence[UniqueKey]) -> tuple[AnyColumn, ...]:
    """The columns that tell a table's rows apart: a unique key without NULLs, else (a
    table without one) every column whose values compare, order and hash (not JSON,
    arrays or pickles: rows that differ only there clash, move and stay alike)."""
    for key in unique_keys:
        if all(not c.nullable for c in key.columns):
            return key.columns
    return tuple(c for c in table.columns if _comparable(c))


def _comparable(column: AnyColumn) -> bool:
    column_type = column.type
    impl = getattr(column_type, "impl_instance", None)  # a TypeDecorator's own type
    return bool(getattr(column_type, "hashable", True) and getattr(impl, "hashable", True))


def _inheritance_constraints(mappers: Iterable[Mapper[Any]]) -> set[ForeignKeyConstraint]:
    """Foreign keys that join a joined-inheritance subclass table to its parent.

    They carry the row's own identity, not a reference, and are never re-pointed.
    """
    found: set[ForeignKeyConstraint] = set()
    for mapper in mappers:
        parent = mapper.inherits
        if parent is None or mapper.concrete or mapper.local_table is parent.local_table:
            continue  # concrete tables hold no inheritance key: their keys are references
        local = mapper.local_table
        if not isinstance(local, Table):
            continue
        pk = set(local.primary_key.columns)
        for fk in local.foreign_key_constraints:
            try:
                referred = fk.referred_table
            except NoReferencedTableError:
                continue  # points outside the MetaData
            if referred in parent.tables and set(fk.columns) <= pk:
                found.add(fk)
    return found


#: what makes two foreign keys the same reference: referred table, column pairs by name
#: and the ON DELETE / ON UPDATE rules
_KeyShape = tuple[Table, frozenset[tuple[str, str]], str, str]


def _key_shape(fk: ForeignKeyConstraint) -> _KeyShape | None:
    try:
        referred = fk.referred_table
        pairs = frozenset((e.parent.name, e.column.name) for e in fk.elements)
    except NoReferencedTableError:
        return None
    return referred, pairs, (fk.ondelete or "").upper(), (fk.onupdate or "").upper()


#: a unique key by its column names, and whether NULLs clash
_UniqueShape = tuple[frozenset[str], bool]


def _unique_shapes(keys: Iterable[UniqueKey]) -> set[_UniqueShape]:
    return {(frozenset(c.name for c in u.columns), u.nulls_not_distinct) for u in keys}


def _inherited_copies(metadata: MetaData) -> set[ForeignKeyConstraint]:
    """Foreign keys of a partition (or an inheriting table) that are copies of a key of
    the table it inherits from, when both tables are in ``metadata``.

    PostgreSQL gives each partition a copy of its partitioned table's keys, and
    reflection lists them; but the partitioned table's rows *are* its partitions' rows
    (an UPDATE or SELECT of it reaches them), so following the copies too would count,
    list and check every row twice.  A copy is the same reference (:func:`_key_shape`);
    it is kept when its table holds a unique key over its columns that the parent lacks,
    since only a key of its own checks that one before re-pointing.
    """
    found: set[ForeignKeyConstraint] = set()
    #: per parent: the shapes of its keys, and of its unique keys
    parent_shapes: dict[Table, tuple[set[_KeyShape | None], set[_UniqueShape]]] = {}

    def is_copy(shape: _KeyShape, own: set[_UniqueShape], parent: Table) -> bool:
        if parent not in parent_shapes:
            parent_shapes[parent] = (
                {_key_shape(other) for other in parent.foreign_key_constraints},
                _unique_shapes(_unique_keys(parent)),
            )
        keys, unique = parent_shapes[parent]
        return shape in keys and own <= unique

    for table in metadata.tables.values():
        prefix = f"{table.schema}." if table.schema else ""
        parents = [
            parent
            for name in inherited_table_names(table)
            if (parent := metadata.tables.get(prefix + name)) is not None
        ]
        if not parents:
            continue
        unique_keys = _unique_keys(table)
        for fk in table.foreign_key_constraints:
            shape = _key_shape(fk)
            if shape is None:
                continue
            columns = {c.name for c in fk.columns}
            own = _unique_shapes(u for u in unique_keys if columns & {c.name for c in u.columns})
            if any(is_copy(shape, own, parent) for parent in parents):
                found.add(fk)
    return found


def _shared_columns(table: Table, fk: ForeignKeyConstraint) -> tuple[tuple[int, str], ...]:
    """See :attr:`ReferencingKey.shared`: rewriting such a column would silently change
    what another key of the row references (multi-tenant ``tenant_id``), or move the row
    itself (its primary key) while the key keeps columns outside it."""
    primary = set(table.primary_key.columns)
    inside_primary = set(fk.columns) <= primary
    shared = []
    for position, column in enumerate(fk.columns):
        others = [
            f"{table.fullname}({', '.join(c.name for c in other.columns)})"
            for other in table.foreign_key_constraints
            if other is not fk and column in set(other.columns)
        ]
        if column in primary and not inside_primary:
            others.append(f"the primary key of {table.fullname}")
        if others:
            shared.append((position, " and ".join(sorted(set(others)))))
    return tuple(shared)


class ReferenceGraph:
    """Every referencing key of one :class:`MetaData`, indexed by referred table."""

    def __init__(self, metadata: MetaData) -> None:
        self.metadata = metadata
        self.version = _versions.get(metadata, 0)
        self.table_count = len(metadata.tables)
        self.mappers = sorted(
            (
                m
                for reg in all_registries()
                for m in reg.mappers
                if any(getattr(t, "metadata", None) is metadata for t in m.tables)
            ),
            key=lambda m: (m.class_.__module__, m.class_.__qualname__),
        )
        skip = _inheritance_constraints(self.mappers) | _inherited_copies(metadata)
        by_referred: dict[Table, list[ReferencingKey]] = {}
        for table in metadata.tables.values():
            unique_keys = _unique_keys(table)
            identity = _identity(table, unique_keys)
            for fk in table.foreign_key_constraints:
                if fk in skip:
                    continue
                try:
                    referred = fk.referred_table
                    elements = fk.elements
                    pairs = [(e.parent, e.column) for e in elements]
                except NoReferencedTableError:
                    continue  # points outside this MetaData
                by_referred.setdefault(referred, []).append(
                    ReferencingKey(
                        constraint=fk,
                        table=table,
                        columns=tuple(p for p, _ in pairs),
                        referred_table=referred,
                        referred_columns=tuple(c for _, c in pairs),
                        unique_keys=tuple(
                            u for u in unique_keys if set(u.columns) & set(fk.columns)
                        ),
                        identity=identity,
                        shared=_shared_columns(table, fk),
                    )
                )
        self.by_referred = {
            t: sorted(keys, key=lambda k: k.sort_key) for t, keys in by_referred.items()
        }
        self.mappers_by_table: dict[Table, list[Mapper[Any]]] = {}
        for mapper in self.mappers:
            for mapped in mapper.tables:
                if isinstance(mapped, Table):
                    self.mappers_by_table.setdefault(mapped, []).append(mapper)
        self._for_mapper: dict[Mapper[Any], tuple[ReferencingKey, ...]] = {}
        self._held_by_mapper: dict[Mapper[Any], tuple[ReferencingKey, ...]] = {}

    @property
    def is_current(self) -> bool:
        unchanged = self.version == _versions.get(self.metadata, 0)
        return unchanged and self.table_count == len(self.metadata.tables)

    def keys_for_tables(self, tables: Iterable[Table]) -> tuple[ReferencingKey, ...]:
        keys = [k for t in tables for k in self.by_referred.get(t, ())]
        return tuple(sorted(keys, key=lambda k: k.sort_key))

    def keys_for_mapper(self, mapper: Mapper[Any]) -> tuple[ReferencingKey, ...]:
        """Keys that reference a row of ``mapper`` (its own and its ancestors' tables)."""
        try:
            return self._for_mapper[mapper]
        except KeyError:
            keys = self.keys_for_tables(t for t in mapper.tables if isinstance(t, Table))
            self._for_mapper[mapper] = keys
            return keys

    def keys_held_by(self, mapper: Mapper[Any]) -> tuple[ReferencingKey, ...]:
        """Keys whose referencing table is one of ``mapper``'s tables."""
        try:
            return self._held_by_mapper[mapper]
        except KeyError:
            tables = set(mapper.tables)
            keys = tuple(k for ks in self.by_referred.values() for k in ks if k.table in tables)
            self._held_by_mapper[mapper] = keys
            return keys

    def primary_mapper(self, table: Table, prefer: registry | None = None) -> Mapper[Any] | None:
        """The mapper that loads rows of ``table``: the base-most one mapping it locally.

        When classes of several registries map ``table`` (an automap base over
        tables that declarative classes map too), one of the ``prefer``
        registry wins, then the first by module and name.
        """
        candidates = [
            m
            for m in self.mappers_by_table.get(table, ())
            if m.local_table is table
            and (m.inherits is None or m.inherits.local_table is not table)
        ]
        for mapper in candidates:
            if mapper.registry is prefer:
                return mapper
        return candidates[0] if candidates else None


_GRAPH = "sa_references.graph"


def reference_graph(metadata: MetaData) -> ReferenceGraph:
    """The cached :class:`ReferenceGraph` of ``metadata``.

    Kept in ``metadata.info``, so it lives exactly as long as the MetaData.
    """
    graph = metadata.info.get(_GRAPH)
    if not isinstance(graph, ReferenceGraph) or not graph.is_current:
        graph = metadata.info[_GRAPH] = ReferenceGraph(metadata)
    return graph


def _resolve_target(target: Any) -> tuple[MetaData, list[Table], Mapper[Any] | None]:
    if isinstance(target, Table):
        return target.metadata, [target], None
    mapper = inspect(target, raiseerr=False)
    if isinstance(mapper, Mapper):
        tables = [t for t in mapper.tables if isinstance(t, Table)]
        if not tables:
            raise ArgumentError(f"{mapper} maps no Table")
        return tables[0].metadata, tables, mapper
    raise ArgumentError(f"expected a Table, a mapped class or a Mapper, got {target!r}")


def referencing_keys(target: Any) -> tuple[ReferencingKey, ...]:
    """Every foreign key that references ``target``, in a deterministic order.

    ``target`` is a :class:`~sqlalchemy.schema.Table` (reflected ones too), a
    mapped class or a :class:`~sqlalchemy.orm.Mapper`; for a mapped class of a
    joined-inheritance hierarchy the keys to its own table and every ancestor
    table are returned, never those to a sibling's table.

    E.g.::

        for key in referencing_keys(Customer):
            print(key.name, "->", key.referred_table.name)
    """
    metadata, tables, mapper = _resolve_target(target)
    graph = reference_graph(metadata)
    if mapper is not None:
        return graph.keys_for_mapper(mapper)
    return graph.keys_for_tables(tables)
