"""The objects of some classes in a Session's identity map, without scanning all of it.

Synchronizing after a merge looks at the loaded objects of the few classes that
can hold a referencing key.  Scanning the whole identity map for them on every
merge made a loop of single merges quadratic (20,000 loaded customers, 10,000
merges: 200 million identity keys looked at, none of them relevant).

The index is built once per Session by one scan and then kept up to date by
the session's object lifecycle events, which cover every way into the identity
map: ``loaded_as_persistent``, ``pending_to_persistent``,
``detached_to_persistent`` and ``deleted_to_persistent``.  It holds states
weakly and is only ever a superset: a state that left the session is filtered
out when read (``identity_map.contains_state``), and the index is rebuilt when
such leftovers outnumber the objects actually loaded.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
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


class LoadedObjects:
    """The states of one session's identity map, by identity class (``identity_key[0]``)."""

    def __init__(self, session: Session) -> None:
        self._by_class: dict[type, weakref.WeakSet[InstanceState[Any]]] = {}
        self.rebuild(session)
        for name in ENTERING_EVENTS:
            event.listen(session, name, self._entered)

    def rebuild(self, session: Session) -> None:
        self._by_class = {}
        for state in session.identity_map.all_states():
            self._add(state)

    def _add(self, state: InstanceState[Any]) -> None:
        key = state.key
        if key is not None:
            states = self._by_class.get(key[0])
            if states is None:
                states = self._by_class[key[0]] = weakref.WeakSet()
            states.add(state)

    def _entered(self, session: Session, obj: object) -> None:
        self._add(instance_state(obj))

    def states(self, session: Session, classes: Iterable[type]) -> list[InstanceState[Any]]:
        """The states of ``classes`` now in ``session``'s identity map."""
        identity_map = session.identity_map
        if sum(len(s) for s in self._by_class.values()) > 2 * len(identity_map) + 1024:
            self.rebuild(session)  # mostly states that left the session: start afresh
        found = []
        for cls in classes:
            states = self._by_class.get(cls)
            if states:
                found += [s for s in list(states) if identity_map.contains_state(s)]
        return found


_loaded: weakref.WeakKeyDictionary[Session, LoadedObjects] = weakref.WeakKeyDictionary()


def loaded_states(session: Session, classes: Iterable[type]) -> list[InstanceState[Any]]:
    """The states of ``classes`` (identity classes) in ``session``'s identity map.

    The first call for a session scans its identity map and starts following its
    lifecycle events; later calls only look at the states of ``classes``.
    """
    index = _loaded.get(session)
    if index is None:
        index = _loaded[session] = LoadedObjects(session)
    return index.states(session, classes)
