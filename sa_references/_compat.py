"""Everything sa_references takes from Python or SQLAlchemy beyond their public API.

Each private name of SQLAlchemy the library relies on is read here, and only
here (``tests/test_compat.py`` fails when one appears in another module), each
behind a small function saying which versions it is written for and what it
falls back to.  A new SQLAlchemy release that moves one of them is then one
function to change.
"""

from __future__ import annotations

import sys
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from sqlalchemy import event
from sqlalchemy.engine import NestedTransaction
from sqlalchemy.orm import Mapper, Session, registry
from sqlalchemy.orm.attributes import instance_state
from sqlalchemy.orm.state import InstanceState
from sqlalchemy.sql.compiler import Compiled

#: ``typing.Self`` (Python 3.11+), else typing_extensions', a dependency of SQLAlchemy itself
if sys.version_info >= (3, 11):
    from typing import Self as Self
else:
    from typing_extensions import Self as Self

_R = TypeVar("_R")

__all__ = [
    "add_note",
    "all_registries",
    "insert_parameter_order",
    "pending_deletions",
    "refile",
    "register_altered",
    "run_in_greenlet",
    "savepoint_name",
]


def add_note(error: BaseException, note: str) -> None:
    """``error.add_note(note)``, on Python 3.10 too.

    Python 3.11+ (PEP 678): :meth:`BaseException.add_note`, printed with the
    traceback.  Python 3.10 has no notes: the note is appended to the error's
    ``__notes__`` list exactly as 3.11 does, so code reading ``__notes__``
    finds it on every version, but 3.10's :mod:`traceback` (and pytest there)
    does not print it.
    """
    if sys.version_info >= (3, 11):
        error.add_note(note)
        return
    notes = getattr(error, "__notes__", None)
    if not isinstance(notes, list):
        notes = []
        error.__notes__ = notes  # type: ignore[attr-defined]
    notes.append(note)


#: registries seen by the fallback of :func:`all_registries`
_seen_registries: weakref.WeakSet[registry] = weakref.WeakSet()


def _remember_registry(mapper: Mapper[Any], class_: type) -> None:
    _seen_registries.add(mapper.registry)


def _registries_seen() -> Iterable[registry]:
    """The fallback of :func:`all_registries`: registries of mappers constructed since import."""
    return set(_seen_registries)


try:  # SQLAlchemy 2.0 and 2.1
    from sqlalchemy.orm.mapper import _all_registries
except ImportError:  # pragma: no cover - a SQLAlchemy without it
    _all_registries = None  # type: ignore[assignment]
    event.listen(Mapper, "instrument_class", _remember_registry)


def all_registries() -> Iterable[registry]:
    """Every live :class:`~sqlalchemy.orm.registry` (the ORM has no public list of them).

    SQLAlchemy 2.0 and 2.1: ``sqlalchemy.orm.mapper._all_registries()``.
    Elsewhere (the name gone): the registries of the mappers constructed
    after sa_references was imported, tracked by the ``instrument_class``
    mapper event; classes mapped before that import are then not seen.
    """
    if _all_registries is not None:
        return _all_registries()
    return _registries_seen()  # pragma: no cover - a SQLAlchemy without _all_registries


def pending_deletions(session: Session) -> Mapping[InstanceState[Any], Any] | None:
    """The states ``session.delete()`` marked, not yet flushed, without building a set.

    SQLAlchemy 2.0 and 2.1 keep them in the dict ``Session._deleted``
    (:attr:`Session.deleted <sqlalchemy.orm.Session.deleted>` builds a new
    set of the objects on each access).  Returns ``None`` when the session has
    no such dict: the caller then falls back to ``session.deleted``.
    """
    pending = getattr(session, "_deleted", None)
    return pending if isinstance(pending, dict) else None


def savepoint_name(transaction: NestedTransaction) -> str:
    """The name of the SAVEPOINT a :class:`~sqlalchemy.engine.NestedTransaction` set.

    SQLAlchemy 2.0 and 2.1 store it in ``NestedTransaction._savepoint``; there
    is no public accessor.  There is no fallback: without the name the
    savepoint cannot be rolled back by hand, so a SQLAlchemy without that
    attribute raises :class:`NotImplementedError` rather than keep a failed
    merge's writes.
    """
    name = getattr(transaction, "_savepoint", None)
    if not isinstance(name, str):  # pragma: no cover - a SQLAlchemy without _savepoint
        raise NotImplementedError(
            "sa_references cannot find the name of a NestedTransaction's SAVEPOINT "
            "on this version of SQLAlchemy"
        )
    return name


def insert_parameter_order(compiled: Compiled) -> Sequence[str]:
    """The bound parameter names of a compiled positional statement, in placeholder order.

    SQLAlchemy 2.0 and 2.1: ``SQLCompiler.positiontup`` (set for positional
    dialects, an attribute without documentation).  Fallback: the keys of
    :attr:`Compiled.params <sqlalchemy.engine.Compiled.params>`, which follow the
    order in which the compiler visited the bound parameters, the placeholder
    order of a plain INSERT.
    """
    order = getattr(compiled, "positiontup", None)
    if order is not None:
        return tuple(order)
    return tuple(compiled.params)  # pragma: no cover - a compiler without positiontup


def refile(session: Session, state: InstanceState[Any], new_key: tuple[Any, ...]) -> None:
    """File ``state`` under ``new_key`` in ``session``'s identity map.

    SQLAlchemy 2.0 and 2.1 internals: what ``Session._register_persistent`` does when a flush
    changes a primary key (``identity_map.safe_discard``/``replace``, ``state.key``,
    and the transaction's ``_key_switches`` through which a rollback files the
    object under its old key again).  No public API re-keys a persistent object.
    """
    old_key = state.key
    if old_key == new_key:
        return
    identity_map = session.identity_map
    identity_map.safe_discard(state)
    transaction = session._transaction
    if transaction is not None:
        switches = transaction._key_switches
        original = switches[state][0] if state in switches else old_key
        switches[state] = (original, new_key)
    state.key = new_key
    identity_map.replace(state)


def register_altered(session: Session, objects: Iterable[object]) -> None:
    """Have a rollback of the current transaction expire ``objects`` (changed in memory).

    SQLAlchemy 2.0 and 2.1 internal: ``Session._register_altered``, which the ORM's own bulk
    UPDATE calls for the objects it synchronized; a rolled-back SAVEPOINT expires
    only the objects its transaction saw altered.
    """
    session._register_altered({id(s): s for s in map(instance_state, objects)}.values())


async def run_in_greenlet(fn: Callable[..., _R], *args: Any, **kwargs: Any) -> _R:
    """``fn(*args, **kwargs)`` awaited, its database I/O done by the async driver.

    SQLAlchemy 2.0 and 2.1: ``sqlalchemy.util.concurrency.greenlet_spawn``, the bridge
    ``AsyncSession.run_sync()`` and ``AsyncAttrs`` use (not documented as public API);
    ``_require_await=False``: a call that does no I/O (a queued merge) is fine.
    """
    from sqlalchemy.util.concurrency import greenlet_spawn

    return await greenlet_spawn(fn, *args, _require_await=False, **kwargs)
