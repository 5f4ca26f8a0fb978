"""The objects of some classes in a Session's identity map, without scanning all of it.

Synchronizing after a merge looks at the loaded objects of the few classes that
can hold a referencing key.  Scanning the whole identity map for them on every
merge made a loop of single merges quadratic (20,000 loaded customers, 10,000
merges: 200 million identity keys looked at, none of them relevant).

The first pass of a Session scans its identity map once; the second builds the
index by one scan, and from then on it is kept up to date by the
session's object lifecycle events: ``loaded_as_persistent``,
``pending_to_persistent``, ``detached_to_persistent`` and
``deleted_to_persistent`` into the identity map, ``persistent_to_detached``,
``persistent_to_deleted`` and ``persistent_to_transient`` out of it, and a weak
reference per object for those the garbage collector takes.  It counts what it
holds: when the count and the identity map's size disagree, something entered
unseen (rows of a query executed before the index existed, whose loader does
not look for listeners again) and the index is built afresh.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import InstanceState, Session
from sqlalchemy.orm.attributes import instance_state

#: the session events through which a state enters the identity map
ENTERING_EVENTS = (
    "loaded_as_persistent",
    "pending_to_persistent",
    "detached_to_persistent",
    "deleted_to_persistent",
)
#: ... and those through which it leaves (the garbage collector aside)
LEAVING_EVENTS = ("persistent_to_detached", "persistent_to_deleted", "persistent_to_transient")


class _Ref(weakref.ReferenceType[Any]):
    """A weak reference to a loaded object that knows which entry of the index it is."""

    __slots__ = ("cls", "state_id")
    cls: type
    state_id: int

    def __new__(
        cls, obj: object, callback: Callable[[_Ref], None], identity_class: type, state_id: int
    ) -> _Ref:
        ref = super().__new__(cls, obj, callback)
        ref.cls, ref.state_id = identity_class, state_id
        return ref

    def __init__(
        self, obj: object, callback: Callable[[_Ref], None], identity_class: type, state_id: int
    ) -> None:
        super().__init__(obj, callback)  # type: ignore[call-arg]


class LoadedObjects:
    """Weak references to the objects of one session's identity map, by identity class."""

    def __init__(self, session: Session) -> None:
        #: identity class -> id(state) -> weak reference to the object
        self._by_class: dict[type, dict[int, _Ref]] = {}
        #: id(state) -> identity class, for every object counted
        self._class_of: dict[int, type] = {}
        self.rebuild(session)
        for name in ENTERING_EVENTS:  # raw: the states themselves
            event.listen(session, name, self._entered, raw=True)
        for name in LEAVING_EVENTS:
            event.listen(session, name, self._left, raw=True)

    def rebuild(self, session: Session) -> None:
        self._by_class = {}
        self._class_of = {}
        for state in session.identity_map.all_states():
            self._add(state)

    def _add(self, state: InstanceState[Any]) -> None:
        key, obj = state.key, state.obj()
        if key is None or obj is None or id(state) in self._class_of:
            return
        state_id, cls = id(state), key[0]
        refs = self._by_class.get(cls)
        if refs is None:
            refs = self._by_class[cls] = {}
        refs[state_id] = _Ref(obj, self._collected, cls, state_id)
        self._class_of[state_id] = cls

    def _collected(self, ref: _Ref) -> None:
        refs = self._by_class.get(ref.cls)
        if refs is not None and refs.get(ref.state_id) is ref:
            del refs[ref.state_id]
            del self._class_of[ref.state_id]

    def _remove(self, state: InstanceState[Any]) -> None:
        cls = self._class_of.pop(id(state), None)
        if cls is not None:
            del self._by_class[cls][id(state)]

    def _entered(self, session: Session, state: InstanceState[Any]) -> None:
        self._add(state)

    def _left(self, session: Session, state: InstanceState[Any]) -> None:
        self._remove(state)

    def states(self, session: Session, classes: Iterable[type]) -> list[InstanceState[Any]]:
        """The states of ``classes`` now in ``session``'s identity map."""
        identity_map = session.identity_map
        if len(self._class_of) != len(identity_map):
            self.rebuild(session)  # something entered (or left) unseen
        found = []
        for cls in classes:
            for ref in list(self._by_class.get(cls, {}).values()):
                obj = ref()
                if obj is not None:
                    state = instance_state(obj)
                    if identity_map.contains_state(state):
                        found.append(state)
        return found


def loaded_states(session: Session, classes: Iterable[type]) -> list[InstanceState[Any]]:
    """The states of ``classes`` (identity classes) in ``session``'s identity map.

    The first call for a session scans its identity map, which is cheapest for a
    session that synchronizes once (a batch applied at flush); the second starts
    the index, which later calls read instead of scanning (a loop of merges).
    """
    index: LoadedObjects | int | None = getattr(session, "_sa_references_loaded", None)
    if isinstance(index, LoadedObjects):
        return index.states(session, classes)
    if index is None:
        session._sa_references_loaded = 1  # type: ignore[attr-defined]
        wanted = frozenset(classes)
        return [
            state
            for state in session.identity_map.all_states()
            if state.key is not None and state.key[0] in wanted and state.obj() is not None
        ]
    index = LoadedObjects(session)
    session._sa_references_loaded = index  # type: ignore[attr-defined]
    return index.states(session, classes)
