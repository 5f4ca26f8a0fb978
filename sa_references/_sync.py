"""Keeping the objects already loaded in a Session in step with re-pointed rows.

After the UPDATEs of a merge ran, the identity map still holds the old
values.  :func:`synchronize` brings it in line without emitting SQL, using
only the ORM's public tools: :func:`~sqlalchemy.orm.attributes.set_committed_value`
for what can be computed, and instance expiry for what cannot.

- foreign key attributes of loaded referencing objects take the target's values;
  an object whose primary key contains the foreign key is filed under its new
  identity;
- many-to-one relationships that pointed at a source point at its target;
- loaded one-to-many and many-to-many collections move from source to target
  (both sides), rows left behind or deleted as conflicts are kept or dropped;
- what the database computes or what depends on more than the foreign key is
  expired: ``onupdate`` columns of moved rows, composites and SQL expressions
  over the re-pointed columns, relationships with criteria on the referred side,
  and (on databases that compare strings loosely) rows whose key only the
  collation can match;
- unflushed user changes are never overwritten.

One strategy per ``synchronize_session`` mode, chosen once, in the manner of
SQLAlchemy's ``orm/bulk_persistence.py``: a strategy *matches* the loaded rows the
merge moved (``"evaluate"`` and ``"expire"`` by their values in Python,
``"fetch"`` by the identities the engine read from the database) and *applies*
the move (``"evaluate"`` and ``"fetch"`` compute the new values, ``"expire"``
expires them).  ``False`` does nothing.

+---------------+------------------------+----------------------+
| mode          | matching               | applying             |
+===============+========================+======================+
| ``evaluate``  | :class:`MatchByValues` | :class:`SetValues`   |
| ``fetch``     | :class:`MatchByRows`   | :class:`SetValues`   |
| ``expire``    | :class:`MatchByValues` | :class:`ExpireValues`|
+---------------+------------------------+----------------------+
"""

from __future__ import annotations

import unicodedata
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy import Column, ColumnElement
from sqlalchemy.orm import InstanceState, Mapper, RelationshipProperty, Session
from sqlalchemy.orm.attributes import instance_state, set_committed_value
from sqlalchemy.orm.collections import collection_adapter
from sqlalchemy.orm.exc import UnmappedColumnError
from sqlalchemy.orm.interfaces import MANYTOONE, ONETOMANY
from sqlalchemy.sql import visitors

from ._compat import refile, register_altered
from ._keys import AnyColumn, ReferenceGraph, ReferencingKey
from ._loaded import loaded_states

Values = tuple[Any, ...]
SynchronizeMode = Literal["evaluate", "fetch", "expire", False]
SYNCHRONIZE_MODES: tuple[SynchronizeMode, ...] = ("evaluate", "fetch", "expire", False)
Relationship = RelationshipProperty[Any]
IdentityKey = tuple[type, tuple[Any, ...], Any]

_NOT_LOADED = object()


@dataclass
class KeyMoves:
    """What happened to the rows of one referencing key."""

    key: ReferencingKey
    #: source referred values -> target referred values
    moves: dict[Values, Values]
    #: identities of rows left on their source (ignored conflicts)
    kept: set[Values] = field(default_factory=set)
    #: identities of rows deleted as conflicts (shared by every key of the table)
    deleted: set[Values] = field(default_factory=set)
    #: identities of targets' own rows whose reference to their source was set to NULL
    nulled: set[Values] = field(default_factory=set)
    #: identity before the update -> new values of every moved row, when they were fetched
    moved: dict[Values, Values] | None = None
    #: what ON DELETE rules deleted or cleared below the rows deleted as conflicts
    #: (:class:`._ondelete.Effect`)
    cascaded: list[Any] = field(default_factory=list)


@dataclass
class SyncResult:
    touched: list[object] = field(default_factory=list)
    removed: list[object] = field(default_factory=list)


# -- reading loaded objects ------------------------------------------------------------------


def column_values(
    state: InstanceState[Any], columns: Sequence[ColumnElement[Any]]
) -> Values | None:
    """The values of ``columns`` on ``state`` (None when one is not loaded)."""
    mapper = state.mapper
    values = []
    for column in columns:
        try:
            prop = mapper.get_property_by_column(column)
        except UnmappedColumnError:
            return None
        if prop.key not in state.dict:
            return None
        values.append(state.dict[prop.key])
    return tuple(values)


_primary_key_names: weakref.WeakKeyDictionary[Mapper[Any], dict[str, int]] = (
    weakref.WeakKeyDictionary()
)


def _primary_key_positions(mapper: Mapper[Any]) -> dict[str, int]:
    """The attribute of each primary key column -> its position in identity keys."""
    found = _primary_key_names.get(mapper)
    if found is None:
        found = _primary_key_names[mapper] = {
            mapper.get_property_by_column(c).key: n for n, c in enumerate(mapper.primary_key)
        }
    return found


def row_values(state: InstanceState[Any], columns: Sequence[ColumnElement[Any]]) -> Values | None:
    """:func:`column_values`, primary key columns read from the identity key when expired."""
    mapper = state.mapper
    positions = _primary_key_positions(mapper)
    values = []
    for column in columns:
        try:
            name = mapper.get_property_by_column(column).key
        except UnmappedColumnError:
            return None
        if name in state.dict:
            values.append(state.dict[name])
        elif name in positions and state.key is not None:
            values.append(state.key[1][positions[name]])
        else:
            return None
    return tuple(values)


def _members(state: InstanceState[Any], rel: Relationship) -> list[Any]:
    value = state.dict[rel.key]
    if not rel.uselist:
        return [] if value is None else [value]
    adapter = collection_adapter(value)
    return list(adapter) if adapter is not None else list(value)


def _set_members(obj: object, rel: Relationship, members: list[Any]) -> None:
    if rel.uselist:
        set_committed_value(obj, rel.key, members)
    else:
        set_committed_value(obj, rel.key, members[0] if members else None)


def _loaded(state: InstanceState[Any], names: Iterable[str]) -> list[str]:
    return [name for name in names if name in state.dict]


def _lists(parent: InstanceState[Any], rel: Relationship, member: object) -> bool:
    """Whether ``parent``'s loaded, unchanged collection ``rel`` holds ``member``."""
    if rel.key not in parent.dict or rel.key in parent.committed_state:
        return False
    return any(m is member for m in _members(parent, rel))


def _unflushed(state: InstanceState[Any], names: Iterable[str]) -> bool:
    return any(name in state.committed_state for name in names)


# -- the mapped attributes that follow one key -----------------------------------------------


def _pairs(a: Sequence[AnyColumn], b: Sequence[AnyColumn]) -> set[tuple[AnyColumn, AnyColumn]]:
    return set(zip(a, b))


def _columns_in(expression: Any) -> list[AnyColumn]:
    return [e for e in visitors.iterate(expression) if isinstance(e, Column)]


def has_referred_criteria(rel: Relationship, key: ReferencingKey, referred: Mapper[Any]) -> bool:
    """Whether ``rel`` joins on more of the referred row than ``key``'s columns.

    ``Customer.tier == 'vip'`` in a join to orders: the source's orders are the vip
    customer's, the target's are not, so members cannot be moved by the key alone.
    Criteria on the referencing rows (``Order.status == 'open'``) move with them.
    On a self-referential key both sides are one table: any criterion counts.
    """
    join_columns = {*key.columns, *key.referred_columns}
    referred_tables = {key.referred_table, *referred.tables}
    self_referential = key.table in referred_tables
    for condition in (rel.primaryjoin, rel.secondaryjoin):
        if condition is None:
            continue
        for column in _columns_in(condition):
            if column in join_columns:
                continue
            if self_referential or column.table in referred_tables:
                return True
    return False


def _derived_attributes(mapper: Mapper[Any], key: ReferencingKey) -> list[str]:
    """Composites over ``key``'s columns and SQL expressions that read them."""
    columns = set(key.columns)
    found = [
        composite.key
        for composite in mapper.composites
        if any(c in columns for prop in composite.props for c in getattr(prop, "columns", ()))
    ]
    for prop in mapper.column_attrs:
        expression = prop.expression
        if all(isinstance(c, Column) for c in prop.columns):
            continue  # a plain column (or the columns of one joined-inheritance row)
        if any(c in columns for c in _columns_in(expression)):
            found.append(prop.key)
    return found


def _set_on_update(mapper: Mapper[Any], key: ReferencingKey) -> list[str]:
    """Attributes of ``key.table``'s columns that an UPDATE of the row sets anew."""
    names = []
    for column in key.table.columns:
        if column.onupdate is None and column.server_onupdate is None:
            continue
        try:
            names.append(mapper.get_property_by_column(column).key)
        except UnmappedColumnError:
            continue
    return names


_ROLES = ("many_to_one", "one_to_many", "secondary_parent", "secondary_item")


def _role(
    rel: Relationship,
    key: ReferencingKey,
    forward: set[tuple[AnyColumn, AnyColumn]],
    backward: set[tuple[AnyColumn, AnyColumn]],
) -> str | None:
    """How ``rel`` follows ``key``: one of :data:`_ROLES`, or None (it does not, or it is
    never loaded: dynamic, write-only, noload)."""
    if rel.lazy in ("dynamic", "write_only", "noload"):
        return None
    if rel.secondary is None:
        pairs = set(rel.local_remote_pairs or ())
        if rel.direction is MANYTOONE and pairs == forward:
            return "many_to_one"
        if rel.direction is ONETOMANY and pairs == backward:
            return "one_to_many"
        return None
    if rel.secondary is not key.table:
        return None
    if set(rel.synchronize_pairs or ()) == backward:
        return "secondary_parent"
    if set(rel.secondary_synchronize_pairs or ()) == backward:
        return "secondary_item"
    return None


class KeyAttributes:
    """The attributes of a mapper that follow one referencing key, by role."""

    def __init__(self, mapper: Mapper[Any], key: ReferencingKey) -> None:
        forward = _pairs(key.columns, key.referred_columns)
        backward = _pairs(key.referred_columns, key.columns)
        by_role: dict[str, list[Relationship]] = {role: [] for role in _ROLES}
        for rel in mapper.relationships:
            role = _role(rel, key, forward, backward)
            if role is not None:
                by_role[role].append(rel)
        self.many_to_one = by_role["many_to_one"]
        self.one_to_many = by_role["one_to_many"]
        self.secondary_parent = by_role["secondary_parent"]
        self.secondary_item = by_role["secondary_item"]
        try:
            self.column_attributes = [mapper.get_property_by_column(c).key for c in key.columns]
        except UnmappedColumnError:
            self.column_attributes = []
        self.has_parent_side = bool(self.one_to_many or self.secondary_parent)
        #: relationships whose members the key alone does not decide: expired, not computed
        self.inexact = frozenset(
            rel.key
            for rels, referred in (
                (self.many_to_one, None),  # the referred side is the related class
                (self.one_to_many, mapper),
                (self.secondary_parent, mapper),
                (self.secondary_item, None),
            )
            for rel in rels
            if has_referred_criteria(rel, key, referred or rel.mapper)
        )
        #: what a re-pointed row's new values do not tell: expired
        self.derived = _derived_attributes(mapper, key)
        self.set_on_update = _set_on_update(mapper, key) if self.column_attributes else []
        primary_key = [mapper.get_property_by_column(c).key for c in mapper.primary_key]
        #: the primary key's attributes, when it contains the foreign key (identity changes)
        self.identity_attributes = (
            primary_key if set(primary_key) & set(self.column_attributes) else []
        )

    @property
    def reference(self) -> list[str]:
        """The foreign key's attributes and the many-to-one relationships over them."""
        return self.column_attributes + [r.key for r in self.many_to_one]

    @property
    def stale_when_moved(self) -> list[str]:
        """Attributes of a re-pointed row that only a load can tell."""
        return self.derived + self.set_on_update


_relationship_cache: weakref.WeakKeyDictionary[ReferencingKey, dict[Mapper[Any], KeyAttributes]] = (
    weakref.WeakKeyDictionary()
)


_classes_touched: weakref.WeakKeyDictionary[ReferencingKey, frozenset[type]] = (
    weakref.WeakKeyDictionary()
)


def identity_classes(mappers: Iterable[Mapper[Any]]) -> frozenset[type]:
    """The classes identity keys of ``mappers``' objects can name.

    ``identity_key[0]`` is the base mapper's class, a concrete mapper's own class,
    or that of an intermediate mapper without a polymorphic identity: any class on
    the way to the root will do.
    """
    return frozenset(m.class_ for mapper in mappers for m in mapper.iterate_to_root())


def relationships(mapper: Mapper[Any], key: ReferencingKey) -> KeyAttributes:
    """The attributes of ``mapper`` that follow ``key`` (cached with the key)."""
    by_mapper = _relationship_cache.setdefault(key, {})
    try:
        return by_mapper[mapper]
    except KeyError:
        rels = by_mapper[mapper] = KeyAttributes(mapper, key)
        return rels


# -- loose string comparison -------------------------------------------------------------------


def fold(value: Any) -> Any:
    """``value`` as a case-, accent- and trailing-space-insensitive collation compares it.

    A superset heuristic: two strings such a collation finds equal fold equal (for
    MariaDB's and MySQL's ``*_general_ci`` / ``*_ai_ci`` and PAD SPACE collations).
    """
    if not isinstance(value, str):
        return value
    decomposed = unicodedata.normalize("NFKD", value)
    bare = "".join(c for c in decomposed if not unicodedata.combining(c))
    return bare.casefold().rstrip(" ")


def folded(values: Values) -> Values:
    return tuple(fold(v) for v in values)


# -- outcomes of matching one loaded referencing row -----------------------------------------


class Outcome:
    """What matching found for one loaded row: unchanged, deleted, or not known."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<{self.name}>"


UNCHANGED = Outcome("unchanged")
DELETED = Outcome("deleted")
UNKNOWN = Outcome("unknown")  # it may have moved: expire what depends on it
#: a row that moved: the values it now refers to
Moved = Values


def row_fate(km: KeyMoves, identity: Values | None) -> str:
    """``moved``, ``kept``, ``deleted``, ``nulled`` or ``unknown`` (identity not loaded)."""
    if identity is None:
        return "unknown" if (km.kept or km.deleted or km.nulled) else "moved"
    if identity in km.deleted:
        return "deleted"
    if identity in km.nulled:
        return "nulled"
    if identity in km.kept:
        return "kept"
    return "moved"


# -- the pass shared by every mode -------------------------------------------------------------


Plan = tuple[list[KeyMoves], list[tuple[KeyMoves, Relationship]]]


class Synchronization:
    """One synchronization after a merge: the steps every mode shares.

    Subclasses say how loaded rows are matched (:meth:`match_row`, :meth:`member_fate`)
    and how a move is applied to them (:meth:`repoint`, :meth:`clear`,
    :meth:`sync_item`, :meth:`move_members`, :meth:`drop_member`).
    """

    def __init__(
        self,
        session: Session,
        graph: ReferenceGraph,
        pairs: Sequence[tuple[object, object]],
        key_moves: Iterable[KeyMoves],
        deleting: Iterable[object] = (),
        inexact_string_comparison: bool = False,
    ) -> None:
        self.session = session
        self.graph = graph
        self.pairs = pairs
        self.by_key = {km.key: km for km in key_moves}
        deleted: dict[Any, set[Values]] = {}
        for km in self.by_key.values():  # a row deleted through one key is gone for all
            deleted.setdefault(km.key.table, set()).update(km.deleted)
        for km in self.by_key.values():
            km.deleted = deleted[km.key.table]
        self.target_of = {id(s): t for s, t in pairs}
        self.deleting = {id(obj) for obj in deleting}
        self.loose_strings = inexact_string_comparison
        self.result = SyncResult()
        #: per key, id(state) -> identity before the move, of the rows this pass re-pointed
        self.repointed: dict[ReferencingKey, dict[int, Values | None]] = {}
        self._objects_by_values: dict[ReferencingKey, dict[Values, object]] = {}
        self._parents_by_values: dict[ReferencingKey, dict[Values, list[InstanceState[Any]]]] = {}
        self._folded_moves: dict[ReferencingKey, set[Values]] = {}

    # -- hooks of the modes -----------------------------------------------------------------
    def match_row(
        self, state: InstanceState[Any], km: KeyMoves, identity: Values | None
    ) -> Outcome | Moved:
        raise NotImplementedError

    def member_fate(self, km: KeyMoves, identity: Values | None, rel: Relationship) -> str:
        raise NotImplementedError

    def repoint(self, state: InstanceState[Any], km: KeyMoves, new: Values) -> None:
        raise NotImplementedError

    def clear(self, state: InstanceState[Any], km: KeyMoves) -> None:
        raise NotImplementedError

    def sync_item(
        self, state: InstanceState[Any], km: KeyMoves, rel: Relationship, members: list[Any]
    ) -> None:
        raise NotImplementedError

    def move_members(
        self,
        source_state: InstanceState[Any],
        target_state: InstanceState[Any],
        km: KeyMoves,
        rel: Relationship,
        identity_of: Any,
        in_source: bool,
        in_target: bool,
    ) -> None:
        raise NotImplementedError

    def drop_member(self, parent: InstanceState[Any], rel: Relationship, member: object) -> None:
        raise NotImplementedError

    # -- small shared steps -----------------------------------------------------------------
    def touch(self, obj: object) -> None:
        self.result.touched.append(obj)

    def expire(self, state: InstanceState[Any], names: Iterable[str]) -> None:
        """Expire those of ``names`` that are loaded."""
        loaded = _loaded(state, names)
        if loaded:
            obj = state.obj()
            self.session.expire(obj, loaded)
            self.touch(obj)

    def objects_by_values(self, key: ReferencingKey) -> dict[Values, object]:
        """The merged sources and targets by their values of ``key``'s referred columns."""
        try:
            return self._objects_by_values[key]
        except KeyError:
            found: dict[Values, object] = {}
            for source, target in self.pairs:
                for obj in (source, target):
                    values = column_values(instance_state(obj), key.referred_columns)
                    if values is not None:
                        found[values] = obj
            self._objects_by_values[key] = found
            return found

    def loosely_moved(self, km: KeyMoves, values: Values) -> bool:
        """Whether the database may have matched ``values`` to a source (collation)."""
        if not self.loose_strings or not any(isinstance(v, str) for v in values):
            return False
        sources = self._folded_moves.get(km.key)
        if sources is None:
            sources = self._folded_moves[km.key] = {folded(s) for s in km.moves}
        return folded(values) in sources

    def referred_values(self, state: InstanceState[Any], km: KeyMoves) -> Values | None:
        """What the loaded row refers to: its foreign key, or its many-to-one's values."""
        key = km.key
        current = row_values(state, key.columns)
        if current is not None:
            return current
        for rel in relationships(state.mapper, key).many_to_one:
            value = state.dict.get(rel.key, _NOT_LOADED)
            if value is not _NOT_LOADED and value is not None:
                return column_values(instance_state(value), key.referred_columns)
        return None

    def new_identity(
        self, state: InstanceState[Any], rels: KeyAttributes, new: Values
    ) -> IdentityKey | None:
        """The identity key of a re-pointed row whose primary key holds the foreign key."""
        if not rels.identity_attributes or state.key is None:
            return None
        values = dict(zip(rels.column_attributes, new))
        primary_key = [
            values.get(name, old) for name, old in zip(rels.identity_attributes, state.key[1])
        ]
        key: Any = state.mapper.identity_key_from_primary_key(
            tuple(primary_key), identity_token=state.identity_token
        )
        return tuple(key)

    # -- objects holding referencing rows ------------------------------------------------------
    def sync_holder(self, state: InstanceState[Any], km: KeyMoves) -> None:
        rels = relationships(state.mapper, km.key)
        if _unflushed(state, rels.reference):
            return  # unflushed user change: never overwritten
        identity = row_values(state, km.key.identity)
        if identity is not None and identity in km.nulled:
            self.clear(state, km)
            self.expire(state, rels.stale_when_moved)
            return
        outcome = self.match_row(state, km, identity)
        if outcome is UNCHANGED:
            return
        if outcome is DELETED:
            self.result.removed.append(state.obj())
        elif outcome is UNKNOWN:
            self.expire(state, rels.reference + rels.stale_when_moved)
        elif isinstance(outcome, tuple):
            self.repointed.setdefault(km.key, {})[id(state)] = identity
            new_key = self.new_identity(state, rels, outcome)
            if new_key is not None:
                refile(self.session, state, new_key)
            self.repoint(state, km, outcome)
            self.expire(state, rels.stale_when_moved)

    def identity_before(self, member: object, km: KeyMoves) -> Values | None:
        """A loaded referencing row's identity as it was before this merge."""
        state = instance_state(member)
        moved = self.repointed.get(km.key)
        if moved is not None and id(state) in moved:
            return moved[id(state)]
        return row_values(state, km.key.identity)

    # -- many-to-many collections seen from the other side ------------------------------------
    def sync_item_collection(
        self, state: InstanceState[Any], km: KeyMoves, rel: Relationship
    ) -> None:
        if rel.key not in state.dict or rel.key in state.committed_state:
            return
        members = _members(state, rel)
        if not any(id(m) in self.target_of for m in members):
            return
        if rel.key in relationships(state.mapper, km.key).inexact:
            self.expire(state, [rel.key])
            return
        self.sync_item(state, km, rel, members)

    def item_row_identity(
        self, state: InstanceState[Any], km: KeyMoves, rel: Relationship, member: object
    ) -> Values | None:
        """The identity of the association row that lists ``member`` on ``state``."""
        key = km.key
        own = {sec: col for col, sec in rel.synchronize_pairs}
        item_values = dict(zip(own, column_values(state, list(own.values())) or ()))
        source_values = column_values(instance_state(member), key.referred_columns) or ()
        row = dict(zip(key.columns, source_values)) | item_values
        if not all(c in row for c in key.identity):
            return None
        return tuple(row[c] for c in key.identity)

    # -- collections of the sources and targets ------------------------------------------------
    def sync_parent(self, source: object, target: object, km: KeyMoves) -> None:
        source_state, target_state = instance_state(source), instance_state(target)
        rels = relationships(source_state.mapper, km.key)
        for rel in rels.one_to_many:
            self.sync_parent_collection(source_state, target_state, km, rel, self.identity_before)
        for rel in rels.secondary_parent:
            identity_of = self.secondary_identity(km, rel, source_state)
            self.sync_parent_collection(source_state, target_state, km, rel, identity_of)

    @staticmethod
    def secondary_identity(
        km: KeyMoves, rel: Relationship, source_state: InstanceState[Any]
    ) -> Any:
        key = km.key
        source_values = dict(
            zip(key.columns, column_values(source_state, key.referred_columns) or ())
        )

        def identity(member: object, _km: KeyMoves) -> Values | None:
            other = {sec: col for col, sec in rel.secondary_synchronize_pairs or ()}
            values = column_values(instance_state(member), list(other.values()))
            if values is None:
                return None
            row = source_values | dict(zip(other, values))
            if not all(c in row for c in key.identity):
                return None
            return tuple(row[c] for c in key.identity)

        return identity

    def sync_parent_collection(
        self,
        source_state: InstanceState[Any],
        target_state: InstanceState[Any],
        km: KeyMoves,
        rel: Relationship,
        identity_of: Any,
    ) -> None:
        in_source = rel.key in source_state.dict and rel.key not in source_state.committed_state
        in_target = rel.key in target_state.dict and rel.key not in target_state.committed_state
        if not (in_source or in_target or id(source_state.obj()) in self.deleting):
            return  # the common case in bulk: neither collection loaded
        if rel.key in relationships(source_state.mapper, km.key).inexact:
            self.expire_collections(source_state, target_state, rel, in_source, in_target)
            return
        self.move_members(source_state, target_state, km, rel, identity_of, in_source, in_target)

    def expire_collections(
        self,
        source_state: InstanceState[Any],
        target_state: InstanceState[Any],
        rel: Relationship,
        in_source: bool,
        in_target: bool,
    ) -> None:
        if in_source:
            self.expire(source_state, [rel.key])
        if in_target:
            self.expire(target_state, [rel.key])

    def expire_derived_of_pairs(self) -> None:
        """SQL expressions of the sources and targets that read the re-pointed rows."""
        cache: dict[Mapper[Any], list[str]] = {}
        for pair in self.pairs:
            for obj in pair:
                state = instance_state(obj)
                names = cache.get(state.mapper)
                if names is None:
                    names = cache[state.mapper] = [
                        name
                        for km in self.by_key.values()
                        for name in relationships(state.mapper, km.key).derived
                    ]
                if names:
                    self.expire(state, names)

    # -- the whole pass ------------------------------------------------------------------------
    def plan_for(self, mapper: Mapper[Any]) -> Plan:
        """What to look at on objects of ``mapper``: keys they hold, collections they keep."""
        held = [self.by_key[k] for k in self.graph.keys_held_by(mapper) if k in self.by_key]
        items = [
            (km, rel)
            for km in self.by_key.values()
            for rel in relationships(mapper, km.key).secondary_item
        ]
        return held, items

    def classes_touched(self, key: ReferencingKey) -> frozenset[type]:
        """Identity-key classes of the objects that can hold ``key`` or list its rows."""
        found = _classes_touched.get(key)
        if found is None:
            mappers = set(self.graph.mappers_by_table.get(key.table, ()))
            mappers.update(m for m in self.graph.mappers if relationships(m, key).secondary_item)
            found = _classes_touched[key] = identity_classes(mappers)
        return found

    def run(self) -> SyncResult:
        if not self.by_key:
            return self.result
        self.sync_loaded_rows()
        self.sync_parents()
        self.expire_derived_of_pairs()
        self.forget_deleted()
        register_altered(self.session, self.result.touched)
        return self.result

    def sync_loaded_rows(self) -> None:
        """Every loaded object that holds a re-pointed key or lists its rows."""
        plans: dict[Mapper[Any], Plan] = {}
        classes = frozenset().union(*(self.classes_touched(km.key) for km in self.by_key.values()))
        for state in loaded_states(self.session, classes):
            if state.obj() is None:
                continue
            mapper = state.mapper
            plan = plans.get(mapper)
            if plan is None:
                plan = plans[mapper] = self.plan_for(mapper)
            held, items = plan
            for km in held:
                self.sync_holder(state, km)
            for km, rel in items:
                self.sync_item_collection(state, km, rel)

    def sync_parents(self) -> None:
        """The collections of the sources and targets."""
        parents: dict[Mapper[Any], tuple[list[KeyMoves], frozenset[str]]] = {}
        for source, target in self.pairs:
            source_state = instance_state(source)
            source_mapper = source_state.mapper
            found = parents.get(source_mapper)
            if found is None:
                keys, listed = self.parent_plan_for(source_mapper)
                found = parents[source_mapper] = (keys, frozenset(listed))
            keys, names = found
            if id(source) not in self.deleting:
                loaded, target_loaded = source_state.dict, instance_state(target).dict
                if names.isdisjoint(loaded) and names.isdisjoint(target_loaded):
                    continue  # no collection of either is loaded: nothing to bring in step
            for km in keys:
                self.sync_parent(source, target, km)

    def parent_plan_for(self, mapper: Mapper[Any]) -> tuple[list[KeyMoves], list[str]]:
        """The keys whose rows ``mapper``'s objects list, and the names of those collections."""
        keys = [
            km
            for km in self.by_key.values()
            if km.key.referred_table in mapper.tables
            and relationships(mapper, km.key).has_parent_side
        ]
        names = [
            rel.key
            for km in keys
            for rel in (
                *relationships(mapper, km.key).one_to_many,
                *relationships(mapper, km.key).secondary_parent,
            )
        ]
        return keys, names

    # -- rows deleted as conflicts, still listed elsewhere -------------------------------------
    def forget_deleted(self) -> None:
        """Rows deleted as conflicts leave every loaded collection that lists them.

        A row referencing the merged table through two keys, deleted as a clash on
        one, is still listed through the other key by an object the merge need not
        otherwise touch (the target, or a third object).
        """
        done: set[int] = set()
        for obj in self.result.removed:
            if id(obj) in done:
                continue
            done.add(id(obj))
            state = instance_state(obj)
            for key in self.graph.keys_held_by(state.mapper):
                values = column_values(state, key.columns)
                if values is None or None in values:
                    continue
                for parent, rel in self.collections_listing(key, values):
                    if _lists(parent, rel, obj):
                        self.drop_member(parent, rel, obj)

    def collections_listing(
        self, key: ReferencingKey, values: Values
    ) -> list[tuple[InstanceState[Any], Relationship]]:
        """The loaded one-to-many collections of ``key`` on the objects ``values`` refers to."""
        parents: dict[int, InstanceState[Any]] = {}
        scanned = []
        for mapper in self.graph.mappers_by_table.get(key.referred_table, ()):
            if not relationships(mapper, key).one_to_many:
                continue
            primary_key = list(mapper.primary_key)
            if set(primary_key) == set(key.referred_columns):  # found by identity, no scan
                ident = tuple(values[key.referred_columns.index(c)] for c in primary_key)
                obj = self.session.identity_map.get(mapper.identity_key_from_primary_key(ident))
                if obj is not None:
                    parents[id(obj)] = instance_state(obj)
            else:
                scanned.append(mapper)
        if scanned:
            for state in self.loaded_by_values(key, scanned).get(values, ()):
                parents[id(state)] = state
        return [
            (parent, rel)
            for parent in parents.values()
            for rel in relationships(parent.mapper, key).one_to_many
        ]

    def loaded_by_values(
        self, key: ReferencingKey, mappers: list[Mapper[Any]]
    ) -> dict[Values, list[InstanceState[Any]]]:
        """The loaded objects of ``mappers`` by their values of ``key``'s referred columns."""
        index = self._parents_by_values.get(key)
        if index is None:
            index = self._parents_by_values[key] = {}
            for state in loaded_states(self.session, identity_classes(mappers)):
                found = column_values(state, key.referred_columns)
                if found is not None:
                    index.setdefault(found, []).append(state)
        return index


# -- matching: which loaded rows moved ------------------------------------------------------


class MatchByValues(Synchronization):
    """``evaluate`` and ``expire``: a loaded row moved when it referred to a source."""

    def match_row(
        self, state: InstanceState[Any], km: KeyMoves, identity: Values | None
    ) -> Outcome | Moved:
        current = self.referred_values(state, km)
        if current is None:
            return UNCHANGED
        new = km.moves.get(current)
        fate = row_fate(km, identity)
        if fate == "deleted" and (new is not None or self.loosely_moved(km, current)):
            return DELETED
        if new is None:
            loose = fate != "kept" and self.loosely_moved(km, current)
            return UNKNOWN if loose else UNCHANGED
        if fate == "kept":
            return UNCHANGED
        if fate == "unknown":
            return UNKNOWN
        return new

    def member_fate(self, km: KeyMoves, identity: Values | None, rel: Relationship) -> str:
        return row_fate(km, identity)


class MatchByRows(Synchronization):
    """``fetch``: a loaded row moved when the engine read its identity among the moved."""

    def match_row(
        self, state: InstanceState[Any], km: KeyMoves, identity: Values | None
    ) -> Outcome | Moved:
        moved = km.moved or {}
        if identity is None:  # not loaded: did it refer to a source?
            current = self.referred_values(state, km)
            if current is not None and (current in km.moves or self.loosely_moved(km, current)):
                return UNKNOWN
            return UNCHANGED
        if identity in km.deleted:  # moved by an earlier key, then deleted by this one
            return DELETED
        new = moved.get(identity)
        return UNCHANGED if new is None else new

    def member_fate(self, km: KeyMoves, identity: Values | None, rel: Relationship) -> str:
        if km.moved is None or rel.secondary is not None:  # association rows: not fetched
            return row_fate(km, identity)
        if identity in km.deleted:
            return "deleted"
        if identity in km.moved:
            return "moved"
        fate = row_fate(km, identity)
        return "kept" if fate == "moved" else fate  # fetched, and not among the rows that moved


# -- applying: what a move does to loaded objects ---------------------------------------------


class SetValues(Synchronization):
    """``evaluate`` and ``fetch``: the new values are computed and set as committed."""

    def repoint(self, state: InstanceState[Any], km: KeyMoves, new: Values) -> None:
        rels = relationships(state.mapper, km.key)
        obj = state.obj()
        for name, value in zip(rels.column_attributes, new):
            if name in state.dict:
                set_committed_value(obj, name, value)
        for rel in rels.many_to_one:
            if rel.key not in state.dict:
                continue
            target = self.objects_by_values(km.key).get(new)
            if (
                rel.key in rels.inexact
                or target is None
                or not isinstance(target, rel.mapper.class_)
            ):
                self.session.expire(obj, [rel.key])
            else:
                set_committed_value(obj, rel.key, target)
        self.touch(obj)

    def clear(self, state: InstanceState[Any], km: KeyMoves) -> None:
        """A target's own reference to its source, set to NULL in the database."""
        obj = state.obj()
        for name in _loaded(state, relationships(state.mapper, km.key).reference):
            set_committed_value(obj, name, None)
        self.touch(obj)

    def sync_item(
        self, state: InstanceState[Any], km: KeyMoves, rel: Relationship, members: list[Any]
    ) -> None:
        changed: list[Any] = []
        for member in members:
            target = self.target_of.get(id(member))
            if target is None:
                if member not in changed:
                    changed.append(member)
                continue
            fate = self.member_fate(km, self.item_row_identity(state, km, rel, member), rel)
            if fate == "unknown":
                self.expire(state, [rel.key])
                return
            if fate == "kept":
                changed.append(member)
            elif fate == "moved" and target not in changed:
                changed.append(target)
        obj = state.obj()
        _set_members(obj, rel, changed)
        self.touch(obj)

    def move_members(
        self,
        source_state: InstanceState[Any],
        target_state: InstanceState[Any],
        km: KeyMoves,
        rel: Relationship,
        identity_of: Any,
        in_source: bool,
        in_target: bool,
    ) -> None:
        source = source_state.obj()
        if not in_source:
            self.expire_collections(source_state, target_state, rel, False, in_target)
            if not km.kept and rel.key not in source_state.dict and id(source) in self.deleting:
                # every row left a source about to be deleted: its collection is known to
                # be empty, so the delete needs no SELECT to find children to null out
                _set_members(source, rel, [])
                self.touch(source)
            return
        moving, staying = [], []
        for member in _members(source_state, rel):
            fate = self.member_fate(km, identity_of(member, km), rel)
            if fate == "unknown":
                self.expire_collections(source_state, target_state, rel, True, in_target)
                return
            if fate == "moved":
                moving.append(member)
            elif fate == "kept":
                staying.append(member)
        _set_members(source, rel, staying)
        self.touch(source)
        if in_target and moving:
            self.add_members(target_state, rel, moving)

    def add_members(
        self, target_state: InstanceState[Any], rel: Relationship, moving: list[Any]
    ) -> None:
        """The rows that moved join the target's loaded collection (unless ordered)."""
        current = _members(target_state, rel)
        if rel.order_by or (not rel.uselist and current):
            self.expire(target_state, [rel.key])
            return
        target = target_state.obj()
        _set_members(target, rel, current + [m for m in moving if m not in current])
        self.touch(target)

    def drop_member(self, parent: InstanceState[Any], rel: Relationship, member: object) -> None:
        obj = parent.obj()
        _set_members(obj, rel, [m for m in _members(parent, rel) if m is not member])
        self.touch(obj)


class ExpireValues(Synchronization):
    """``expire``: what a move changed is expired, to be loaded on next access."""

    def repoint(self, state: InstanceState[Any], km: KeyMoves, new: Values) -> None:
        self.expire(state, relationships(state.mapper, km.key).reference)

    def clear(self, state: InstanceState[Any], km: KeyMoves) -> None:
        self.expire(state, relationships(state.mapper, km.key).reference)

    def sync_item(
        self, state: InstanceState[Any], km: KeyMoves, rel: Relationship, members: list[Any]
    ) -> None:
        self.expire(state, [rel.key])

    def move_members(
        self,
        source_state: InstanceState[Any],
        target_state: InstanceState[Any],
        km: KeyMoves,
        rel: Relationship,
        identity_of: Any,
        in_source: bool,
        in_target: bool,
    ) -> None:
        self.expire_collections(source_state, target_state, rel, in_source, in_target)

    def drop_member(self, parent: InstanceState[Any], rel: Relationship, member: object) -> None:
        self.expire(parent, [rel.key])


# -- the modes ----------------------------------------------------------------------------------


class Evaluate(MatchByValues, SetValues):
    """Rows matched by their loaded values; new values computed."""


class Fetch(MatchByRows, SetValues):
    """Rows matched by the identities the engine fetched; new values computed."""


class Expire(MatchByValues, ExpireValues):
    """Rows matched by their loaded values; what they hold expired."""


STRATEGIES: dict[SynchronizeMode, type[Synchronization]] = {
    "evaluate": Evaluate,
    "fetch": Fetch,
    "expire": Expire,
}


def synchronize(
    session: Session,
    graph: ReferenceGraph,
    pairs: Sequence[tuple[object, object]],
    key_moves: Iterable[KeyMoves],
    mode: SynchronizeMode,
    deleting: Iterable[object] = (),
    *,
    inexact_string_comparison: bool = False,
) -> SyncResult:
    """Bring the identity map in line with re-pointed rows (see the module docstring).

    ``deleting``: the sources about to be deleted, whose unloaded collections are
    set empty when every row left them (so that the delete needs no SELECT).
    ``inexact_string_comparison``: the database may find string keys equal that
    Python does not (MariaDB/MySQL case-insensitive and PAD SPACE collations); loaded
    rows whose key only such a comparison matches to a source are expired.
    """
    strategy = STRATEGIES.get(mode)
    if strategy is None:  # False: memory is left alone
        return SyncResult()
    key_moves = list(key_moves)
    run = strategy(session, graph, pairs, key_moves, deleting, inexact_string_comparison)
    result = run.run()
    follow_cascades(session, graph, key_moves, result)
    follow_update_cascades(session, graph, key_moves, result)
    return result


def follow_cascades(
    session: Session, graph: ReferenceGraph, key_moves: Sequence[KeyMoves], result: SyncResult
) -> None:
    """Loaded rows that an ON DELETE rule deleted leave the session (``result.removed``:
    the caller expunges them); those it cleared are expired.  Where there were too many to
    read their identities, every loaded row of the table is expired."""
    for km in key_moves:
        for effect in km.cascaded:
            key = effect.key
            classes = identity_classes(graph.mappers_by_table.get(key.table, ()))
            if not classes:
                continue
            known = None if effect.identities is None else set(effect.identities)
            for state in loaded_states(session, classes):
                obj = state.obj()
                if obj is None:
                    continue
                if known is not None and row_values(state, key.identity) not in known:
                    continue
                if effect.action == "delete" and known is not None:
                    result.removed.append(obj)
                else:
                    session.expire(obj)
                    result.touched.append(obj)


#: how deep ON UPDATE CASCADE is followed (a self-referential one could go on for ever)
MAX_UPDATE_CASCADE_DEPTH = 16


def follow_update_cascades(
    session: Session, graph: ReferenceGraph, key_moves: Sequence[KeyMoves], result: SyncResult
) -> None:
    """Loaded rows that an ON UPDATE CASCADE carried along with the re-pointed rows
    (``order_line(order_id, customer_id) -> orders(id, customer_id)``) have the carried
    columns expired: which of them the database rewrote is not known here (a line of an
    order left on its source keeps the old value)."""
    for km in key_moves:
        if not _carried_by_cascade(graph, km.key):
            continue
        changed: dict[AnyColumn, set[Any]] = {}
        for source, target in km.moves.items():
            for position, column in enumerate(km.key.columns):
                if source[position] != target[position]:
                    changed.setdefault(column, set()).add(source[position])
        _expire_carried(session, graph, km.key.table, changed, result, depth=0)


def _carried_by_cascade(graph: ReferenceGraph, key: ReferencingKey) -> bool:
    """Whether an ON UPDATE CASCADE key refers to a column ``key`` rewrites."""
    columns = set(key.columns)
    return any(
        (other.constraint.onupdate or "").upper() == "CASCADE"
        and not columns.isdisjoint(other.referred_columns)
        for other in graph.keys_for_tables([key.table])
    )


def _expire_carried(
    session: Session,
    graph: ReferenceGraph,
    table: Any,
    changed: dict[AnyColumn, set[Any]],
    result: SyncResult,
    depth: int,
) -> None:
    if not changed or depth >= MAX_UPDATE_CASCADE_DEPTH:
        return
    for dependent in graph.keys_for_tables([table]):
        if (dependent.constraint.onupdate or "").upper() != "CASCADE":
            continue  # anything else was refused before the merge wrote (see _onupdate)
        carried = {
            column: changed[referred]
            for column, referred in zip(dependent.columns, dependent.referred_columns)
            if referred in changed
        }
        if not carried:
            continue
        classes = identity_classes(graph.mappers_by_table.get(dependent.table, ()))
        for state in loaded_states(session, classes) if classes else ():
            names = _holding(state, carried)
            obj = state.obj()
            if names and obj is not None:
                session.expire(obj, names)
                result.touched.append(obj)
        _expire_carried(session, graph, dependent.table, carried, result, depth + 1)


def _holding(state: InstanceState[Any], carried: dict[AnyColumn, set[Any]]) -> list[str]:
    """The attributes of ``state`` that hold one of the carried (old) values."""
    names = []
    for column, values in carried.items():
        try:
            name = state.mapper.get_property_by_column(column).key
        except UnmappedColumnError:
            continue
        if name in state.dict and state.dict[name] in values:
            names.append(name)
    return names
