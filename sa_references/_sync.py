"""Keeping the objects already loaded in a Session in step with re-pointed rows.

After the UPDATEs of a merge ran, the identity map still holds the old
values.  :func:`synchronize` brings it in line without emitting SQL, using
only the ORM's public tools: :func:`~sqlalchemy.orm.attributes.set_committed_value`
for what can be computed, and instance expiry for what cannot.

- foreign key attributes of loaded referencing objects take the target's values;
- many-to-one relationships that pointed at a source point at its target;
- loaded one-to-many and many-to-many collections move from source to target
  (both sides), rows left behind or deleted as conflicts are kept or dropped;
- unflushed user changes are never overwritten.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy import ColumnElement
from sqlalchemy.orm import InstanceState, Mapper, RelationshipProperty, Session
from sqlalchemy.orm.attributes import instance_state, set_committed_value
from sqlalchemy.orm.collections import collection_adapter
from sqlalchemy.orm.exc import UnmappedColumnError
from sqlalchemy.orm.interfaces import MANYTOONE, ONETOMANY

from ._keys import AnyColumn, ReferenceGraph, ReferencingKey
from ._loaded import loaded_states

Values = tuple[Any, ...]
SynchronizeMode = Literal["evaluate", "fetch", "expire", False]
SYNCHRONIZE_MODES: tuple[SynchronizeMode, ...] = ("evaluate", "fetch", "expire", False)
Relationship = RelationshipProperty[Any]

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
    #: identity -> new values of every moved row, when they were fetched
    moved: dict[Values, Values] | None = None


@dataclass
class SyncResult:
    touched: list[object] = field(default_factory=list)
    removed: list[object] = field(default_factory=list)


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


def _pairs(a: Sequence[AnyColumn], b: Sequence[AnyColumn]) -> set[tuple[AnyColumn, AnyColumn]]:
    return set(zip(a, b))


class _Relationships:
    """The relationships of a mapper that follow one referencing key, by role."""

    def __init__(self, mapper: Mapper[Any], key: ReferencingKey) -> None:
        forward = _pairs(key.columns, key.referred_columns)
        backward = _pairs(key.referred_columns, key.columns)
        self.many_to_one: list[Relationship] = []
        self.one_to_many: list[Relationship] = []
        self.secondary_parent: list[Relationship] = []
        self.secondary_item: list[Relationship] = []
        try:
            self.column_attributes = [mapper.get_property_by_column(c).key for c in key.columns]
        except UnmappedColumnError:
            self.column_attributes = []
        for rel in mapper.relationships:
            if rel.lazy in ("dynamic", "write_only", "noload"):
                continue
            if rel.secondary is None:
                pairs = set(rel.local_remote_pairs or ())
                if rel.direction is MANYTOONE and pairs == forward:
                    self.many_to_one.append(rel)
                elif rel.direction is ONETOMANY and pairs == backward:
                    self.one_to_many.append(rel)
            elif rel.secondary is key.table:
                if set(rel.synchronize_pairs or ()) == backward:
                    self.secondary_parent.append(rel)
                elif set(rel.secondary_synchronize_pairs or ()) == backward:
                    self.secondary_item.append(rel)
        self.has_parent_side = bool(self.one_to_many or self.secondary_parent)


_relationship_cache: weakref.WeakKeyDictionary[
    ReferencingKey, dict[Mapper[Any], _Relationships]
] = weakref.WeakKeyDictionary()


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


def relationships(mapper: Mapper[Any], key: ReferencingKey) -> _Relationships:
    """The relationships of ``mapper`` that follow ``key`` (cached with the key)."""
    by_mapper = _relationship_cache.setdefault(key, {})
    try:
        return by_mapper[mapper]
    except KeyError:
        rels = by_mapper[mapper] = _Relationships(mapper, key)
        return rels


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


class _Synchronizer:
    def __init__(
        self,
        session: Session,
        graph: ReferenceGraph,
        pairs: Sequence[tuple[object, object]],
        key_moves: Iterable[KeyMoves],
        mode: SynchronizeMode,
        deleting: Iterable[object] = (),
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
        self.mode = mode
        self.target_of = {id(s): t for s, t in pairs}
        self.deleting = {id(obj) for obj in deleting}
        self.result = SyncResult()
        self._objects_by_values: dict[ReferencingKey, dict[Values, object]] = {}
        self._parents_by_values: dict[ReferencingKey, dict[Values, list[InstanceState[Any]]]] = {}

    # -- helpers ---------------------------------------------------------
    def objects_by_values(self, key: ReferencingKey) -> dict[Values, object]:
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

    def touch(self, obj: object) -> None:
        self.result.touched.append(obj)

    def expire(self, obj: object, attrs: Iterable[str]) -> None:
        names = list(attrs)
        if names:
            self.session.expire(obj, names)
            self.touch(obj)

    @staticmethod
    def fate(km: KeyMoves, identity: Values | None) -> str:
        if identity is None:
            return "unknown" if (km.kept or km.deleted or km.nulled) else "moved"
        if identity in km.deleted:
            return "deleted"
        if identity in km.nulled:
            return "nulled"
        if identity in km.kept:
            return "kept"
        return "moved"

    # -- objects holding referencing rows --------------------------------
    def holder(self, state: InstanceState[Any], km: KeyMoves) -> None:
        key = km.key
        mapper = state.mapper
        rels = relationships(mapper, key)
        props = rels.column_attributes
        if any(p in state.committed_state for p in props) or any(
            r.key in state.committed_state for r in rels.many_to_one
        ):
            return  # unflushed user change: never overwritten
        identity = column_values(state, key.identity)
        current = column_values(state, key.columns)
        if current is None:
            for rel in rels.many_to_one:
                value = state.dict.get(rel.key, _NOT_LOADED)
                if value is not _NOT_LOADED and value is not None:
                    current = column_values(instance_state(value), key.referred_columns)
                    break
        if identity is not None and identity in km.nulled:
            self.null(state, km)
            return
        if km.moved is not None:  # fetched: only the rows known to have moved
            if identity is None:
                if current in km.moves:
                    self.expire(state.obj(), props + [r.key for r in rels.many_to_one])
                return
            if identity in km.deleted:  # moved by an earlier key, then deleted by this one
                self.result.removed.append(state.obj())
                return
            new = km.moved.get(identity)
            if new is None:
                return
        else:
            if current is None or current not in km.moves:
                return
            new = km.moves[current]
            fate = self.fate(km, identity)
            if fate == "deleted":
                self.result.removed.append(state.obj())
                return
            if fate == "kept":
                return
            if fate == "unknown":
                self.expire(state.obj(), props + [r.key for r in rels.many_to_one])
                return
        obj = state.obj()
        if self.mode == "expire":
            self.expire(
                obj,
                [p for p in props if p in state.dict]
                + [r.key for r in rels.many_to_one if r.key in state.dict],
            )
            return
        for prop, value in zip(props, new):
            if prop in state.dict:
                set_committed_value(obj, prop, value)
        for rel in rels.many_to_one:
            if rel.key in state.dict:
                target = self.objects_by_values(key).get(new)
                if target is None or not isinstance(target, rel.mapper.class_):
                    self.session.expire(obj, [rel.key])
                else:
                    set_committed_value(obj, rel.key, target)
        self.touch(obj)

    def null(self, state: InstanceState[Any], km: KeyMoves) -> None:
        """A target's own reference to its source, set to NULL in the database."""
        rels = relationships(state.mapper, km.key)
        names = [p for p in rels.column_attributes if p in state.dict]
        names += [r.key for r in rels.many_to_one if r.key in state.dict]
        obj = state.obj()
        if self.mode == "expire":
            self.expire(obj, names)
            return
        for name in names:
            set_committed_value(obj, name, None)
        self.touch(obj)

    # -- many-to-many collections seen from the other side ---------------
    def item(self, state: InstanceState[Any], km: KeyMoves, rel: Relationship) -> None:
        if rel.key not in state.dict or rel.key in state.committed_state:
            return
        members = _members(state, rel)
        if not any(id(m) in self.target_of for m in members):
            return
        obj = state.obj()
        if self.mode == "expire":
            self.expire(obj, [rel.key])
            return
        key = km.key
        own = {sec: col for col, sec in rel.synchronize_pairs}
        item_values = {
            sec: v for sec, v in zip(own, column_values(state, list(own.values())) or ())
        }
        changed: list[Any] = []
        for member in members:
            target = self.target_of.get(id(member))
            if target is None:
                if member not in changed:
                    changed.append(member)
                continue
            source_values = column_values(instance_state(member), key.referred_columns) or ()
            row = dict(zip(key.columns, source_values)) | item_values
            identity = (
                tuple(row[c] for c in key.identity) if all(c in row for c in key.identity) else None
            )
            fate = self.fate(km, identity)
            if fate == "unknown":
                self.expire(obj, [rel.key])
                return
            if fate == "kept":
                changed.append(member)
            elif fate == "moved" and target not in changed:
                changed.append(target)
        _set_members(obj, rel, changed)
        self.touch(obj)

    # -- collections of the sources and targets --------------------------
    def parent(self, source: object, target: object, km: KeyMoves) -> None:
        key = km.key
        source_state, target_state = instance_state(source), instance_state(target)
        rels = relationships(source_state.mapper, key)
        for rel in rels.one_to_many:
            self.parent_collection(source_state, target_state, km, rel, self.holder_identity)
        for rel in rels.secondary_parent:
            self.parent_collection(
                source_state, target_state, km, rel, self.secondary_identity(km, rel, source_state)
            )

    @staticmethod
    def holder_identity(member: object, km: KeyMoves) -> Values | None:
        return column_values(instance_state(member), km.key.identity)

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

    def parent_collection(
        self,
        source_state: InstanceState[Any],
        target_state: InstanceState[Any],
        km: KeyMoves,
        rel: Relationship,
        identity_of: Any,
    ) -> None:
        in_source = rel.key in source_state.dict and rel.key not in source_state.committed_state
        in_target = rel.key in target_state.dict and rel.key not in target_state.committed_state
        source, target = source_state.obj(), target_state.obj()
        if not (in_source or in_target or id(source) in self.deleting):
            return  # the common case in bulk: neither collection loaded
        if self.mode == "expire" or not in_source:
            if in_source:
                self.expire(source, [rel.key])
            if in_target:
                self.expire(target, [rel.key])
            if (
                self.mode != "expire"
                and not km.kept
                and rel.key not in source_state.dict
                and id(source) in self.deleting
            ):
                # every row left a source about to be deleted: its collection is known to
                # be empty, so the delete needs no SELECT to find children to null out
                _set_members(source, rel, [])
                self.touch(source)
            return
        moving, staying = [], []
        for member in _members(source_state, rel):
            if km.moved is not None and rel.secondary is None:
                identity = identity_of(member, km)
                if identity in km.deleted:
                    fate = "deleted"
                elif identity in km.moved:
                    fate = "moved"
                else:
                    fate = self.fate(km, identity)
                    if fate == "moved":
                        fate = "kept"  # fetched, and not among the rows that moved
            else:
                fate = self.fate(km, identity_of(member, km))
            if fate == "unknown":
                self.expire(source, [rel.key])
                if in_target:
                    self.expire(target, [rel.key])
                return
            if fate == "moved":
                moving.append(member)
            elif fate == "kept":
                staying.append(member)
        _set_members(source, rel, staying)
        self.touch(source)
        if not in_target or not moving:
            return
        current = _members(target_state, rel)
        if rel.order_by or (not rel.uselist and current):
            self.expire(target, [rel.key])
            return
        _set_members(target, rel, current + [m for m in moving if m not in current])
        self.touch(target)

    # -- the whole pass ----------------------------------------------------
    def plan_for(
        self, mapper: Mapper[Any]
    ) -> tuple[list[KeyMoves], list[tuple[KeyMoves, Relationship]]]:
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
        if self.mode is False or not self.by_key:
            return self.result
        plans: dict[Mapper[Any], tuple[list[KeyMoves], list[tuple[KeyMoves, Relationship]]]] = {}
        classes = frozenset().union(*(self.classes_touched(km.key) for km in self.by_key.values()))
        for state in loaded_states(self.session, classes):
            if state.obj() is None:
                continue
            mapper = state.mapper
            plan = plans.get(mapper)
            if plan is None:
                plan = plans[mapper] = self.plan_for(mapper)
            if not (plan[0] or plan[1]):
                continue
            for km in plan[0]:
                self.holder(state, km)
            for km, rel in plan[1]:
                self.item(state, km, rel)
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
                self.parent(source, target, km)
        self.forget_deleted()
        return self.result

    # -- rows deleted as conflicts, still listed elsewhere -----------------
    def forget_deleted(self) -> None:
        """Rows deleted as conflicts leave every loaded collection that lists them.

        A row referencing the merged table through two keys, deleted as a clash on
        one, is still listed through the other key by an object the merge need not
        otherwise touch (the target, or a third object).
        """
        if self.mode is False or not self.result.removed:
            return
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

    def drop_member(self, parent: InstanceState[Any], rel: Relationship, member: object) -> None:
        if rel.key not in parent.dict or rel.key in parent.committed_state:
            return
        members = _members(parent, rel)
        if not any(m is member for m in members):
            return
        obj = parent.obj()
        if self.mode == "expire":
            self.expire(obj, [rel.key])
            return
        _set_members(obj, rel, [m for m in members if m is not member])
        self.touch(obj)

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


def synchronize(
    session: Session,
    graph: ReferenceGraph,
    pairs: Sequence[tuple[object, object]],
    key_moves: Iterable[KeyMoves],
    mode: SynchronizeMode,
    deleting: Iterable[object] = (),
) -> SyncResult:
    """Bring the identity map in line with re-pointed rows (see the module docstring).

    ``deleting``: the sources about to be deleted, whose unloaded collections are
    set empty when every row left them (so that the delete needs no SELECT).
    """
    return _Synchronizer(session, graph, pairs, key_moves, mode, deleting).run()
