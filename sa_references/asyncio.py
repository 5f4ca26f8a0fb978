"""The asyncio API: merges and dependents awaited, without ``run_sync``.

Like ``sqlalchemy.ext.asyncio``, every function here runs the synchronous
implementation in SQLAlchemy's greenlet bridge (what
:meth:`AsyncSession.run_sync() <sqlalchemy.ext.asyncio.AsyncSession.run_sync>` does), so the
behaviour, the reports and the errors (:mod:`sa_references.exc`) are those of the
synchronous API.  Needs SQLAlchemy's asyncio support (``SQLAlchemy[asyncio]``: greenlet) and
an async driver (aiosqlite, asyncpg, psycopg's async mode, aiomysql...).

* ORM objects: :class:`AsyncReferencesMixin` (``await dupe.awaitable_references.merge_into(
  keeper)``) or the functions :func:`merge_into` and :func:`dependents`, which work through
  the object's :class:`~sqlalchemy.ext.asyncio.AsyncSession`.
* Tables without classes: :func:`merge_rows`, :func:`merge_many` and :func:`row_dependents`
  on an :class:`~sqlalchemy.ext.asyncio.AsyncConnection` or an ``AsyncSession``.
* Queued merges: :class:`AsyncReferencesSession`, an ``AsyncSession`` over a
  :class:`~sa_references.ReferencesSession`.
* Dependents: :class:`AsyncDependents`, lazy as :class:`~sa_references.Dependents` is.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any, Generic, TypeVar

from sqlalchemy import Connection, Table
from sqlalchemy.engine import Row
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.orm import Mapper, Session

from . import _dependents, _merge
from ._compat import run_in_greenlet
from ._dependents import Dependents, KeyDependents
from ._keys import ReferencingKey
from ._options import (
    USE_SESSION_DEFAULT,
    OnConflict,
    OnSelfReference,
    SessionDefault,
    SynchronizeMode,
)
from ._report import BatchReport, MergeReport
from ._session import ReferencesSession

__all__ = [
    "AsyncDependents",
    "AsyncKeyDependents",
    "AsyncReferencesMixin",
    "AsyncReferencesSession",
    "AwaitableReferences",
    "dependents",
    "merge_into",
    "merge_many",
    "merge_rows",
    "row_dependents",
]

_T = TypeVar("_T")

AsyncBind = AsyncSession | AsyncConnection


async def _spawn(fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
    """``fn(*args, **kwargs)`` in the greenlet bridge, where its I/O is awaited."""
    return await run_in_greenlet(fn, *args, **kwargs)


def _sync_bind(bind: object) -> Session | Connection:
    """The synchronous Session or Connection an async one proxies."""
    if isinstance(bind, AsyncSession):
        return bind.sync_session
    if isinstance(bind, AsyncConnection):
        connection = bind.sync_connection
        if connection is None:
            raise ArgumentError(
                "the AsyncConnection is not started (use 'async with engine.connect()' or "
                "'async with engine.begin()')"
            )
        return connection
    raise ArgumentError(
        "expected an AsyncSession or an AsyncConnection (use engine.begin() for an "
        f"AsyncEngine; sa_references' own functions take a Session or a Connection); "
        f"got {bind!r}"
    )


# -- ORM objects -----------------------------------------------------------------


async def merge_into(
    source: object,
    target: object,
    *,
    on_conflict: OnConflict = "raise",
    delete: bool = False,
    dry_run: bool = False,
    synchronize_session: SynchronizeMode | SessionDefault = USE_SESSION_DEFAULT,
    on_self_reference: OnSelfReference = "raise",
) -> MergeReport:
    """:func:`sa_references.merge_into`, awaited: re-point every reference to ``source``
    to ``target``, through their :class:`~sqlalchemy.ext.asyncio.AsyncSession`.

    In an :class:`AsyncReferencesSession` (any ``AsyncSession`` whose
    ``sync_session_class`` is a :class:`~sa_references.ReferencesSession`) the merge is
    queued, as there, and applied at the next flush or commit; a dry run is not queued.
    The options and errors are those of :func:`sa_references.merge_into`; after an error
    the session is as it was before the call, and usable.

    E.g.::

        report = await merge_into(dupe, keeper, delete=True)
    """
    return await _spawn(
        _merge.merge_into,
        source,
        target,
        on_conflict=on_conflict,
        delete=delete,
        dry_run=dry_run,
        synchronize_session=synchronize_session,
        on_self_reference=on_self_reference,
    )


def dependents(obj: object) -> AsyncDependents[object]:
    """:func:`sa_references.dependents`, for an object of an
    :class:`~sqlalchemy.ext.asyncio.AsyncSession`: nothing runs until awaited.

    E.g.::

        print(await dependents(customer).count())
    """
    return AsyncDependents(_dependents.dependents(obj))


class AwaitableReferences:
    """``obj.awaitable_references``: :func:`merge_into` and :func:`dependents` of one
    object, as methods (see :class:`AsyncReferencesMixin`)."""

    __slots__ = ("_instance",)

    def __init__(self, instance: object) -> None:
        self._instance = instance

    async def merge_into(
        self,
        target: object,
        *,
        on_conflict: OnConflict = "raise",
        delete: bool = False,
        dry_run: bool = False,
        synchronize_session: SynchronizeMode | SessionDefault = USE_SESSION_DEFAULT,
        on_self_reference: OnSelfReference = "raise",
    ) -> MergeReport:
        """Re-point every reference to this object to ``target``; see :func:`merge_into`.

        E.g.::

            report = await dupe.awaitable_references.merge_into(keeper, dry_run=True)
        """
        return await merge_into(
            self._instance,
            target,
            on_conflict=on_conflict,
            delete=delete,
            dry_run=dry_run,
            synchronize_session=synchronize_session,
            on_self_reference=on_self_reference,
        )

    def dependents(self) -> AsyncDependents[object]:
        """The rows that reference this object (lazy; see :class:`AsyncDependents`).

        E.g.::

            print(await customer.awaitable_references.dependents().count())
        """
        return dependents(self._instance)

    def __repr__(self) -> str:
        return f"<AwaitableReferences of {self._instance!r}>"


class AsyncReferencesMixin:
    """Mixin for a declarative base: every model gets :attr:`awaitable_references`, the
    asyncio counterpart of :class:`~sa_references.ReferencesMixin`'s methods, as
    :class:`~sqlalchemy.ext.asyncio.AsyncAttrs` gives ``awaitable_attrs``.

    E.g.::

        class Base(AsyncReferencesMixin, ReferencesMixin, DeclarativeBase):
            pass


        report = await dupe.awaitable_references.merge_into(keeper, delete=True)
        count = await keeper.awaitable_references.dependents().count()

    Combined with :class:`~sa_references.ReferencesMixin` (not required), the models also
    have the synchronous ``merge_into``, which queues without any I/O in an
    :class:`AsyncReferencesSession`.
    """

    # no __slots__, as ReferencesMixin: Flask-SQLAlchemy copies a base's __dict__

    @property
    def awaitable_references(self) -> AwaitableReferences:
        """This object's merges and dependents, awaitable (see :class:`AwaitableReferences`)."""
        return AwaitableReferences(self)


# -- tables without classes ----------------------------------------------------


async def merge_rows(
    bind: AsyncSession | AsyncConnection,
    table: Table,
    source: Any,
    target: Any,
    *,
    on_conflict: OnConflict = "raise",
    delete: bool = False,
    dry_run: bool = False,
    on_self_reference: OnSelfReference = "raise",
) -> MergeReport:
    """:func:`sa_references.merge_rows` on an
    :class:`~sqlalchemy.ext.asyncio.AsyncConnection` or an
    :class:`~sqlalchemy.ext.asyncio.AsyncSession`: merge the row of ``table`` keyed
    ``source`` into the one keyed ``target``, inside a SAVEPOINT; the caller commits.

    E.g.::

        async with engine.begin() as connection:
            report = await merge_rows(connection, customer_table, 17, 4)
    """
    return await _spawn(
        _merge.merge_rows,
        _sync_bind(bind),
        table,
        source,
        target,
        on_conflict=on_conflict,
        delete=delete,
        dry_run=dry_run,
        on_self_reference=on_self_reference,
    )


async def merge_many(
    bind: AsyncSession | AsyncConnection,
    table: Table,
    pairs: Iterable[tuple[Any, Any]],
    *,
    on_conflict: OnConflict = "raise",
    delete: bool = False,
    dry_run: bool = False,
    on_self_reference: OnSelfReference = "raise",
) -> BatchReport:
    """:func:`sa_references.merge_many` on an
    :class:`~sqlalchemy.ext.asyncio.AsyncConnection` or an
    :class:`~sqlalchemy.ext.asyncio.AsyncSession`: many rows of ``table`` at once, one
    set-based statement per referencing key.

    E.g.::

        async with engine.begin() as connection:
            report = await merge_many(connection, customer_table, [(17, 4), (18, 4)])
    """
    return await _spawn(
        _merge.merge_many,
        _sync_bind(bind),
        table,
        list(pairs),
        on_conflict=on_conflict,
        delete=delete,
        dry_run=dry_run,
        on_self_reference=on_self_reference,
    )


def row_dependents(
    bind: AsyncSession | AsyncConnection, table: Table, key: Any
) -> AsyncDependents[Row[Any]]:
    """:func:`sa_references.row_dependents` on an
    :class:`~sqlalchemy.ext.asyncio.AsyncConnection` or an
    :class:`~sqlalchemy.ext.asyncio.AsyncSession`: the rows that reference the row of
    ``table`` keyed ``key``; nothing runs until awaited.

    E.g.::

        deps = row_dependents(connection, customer_table, 17)
        print(await deps.count())
    """
    return AsyncDependents(_dependents.row_dependents(_sync_bind(bind), table, key))


# -- dependents ----------------------------------------------------------------


class AsyncKeyDependents:
    """:class:`~sa_references.KeyDependents`, awaited: the rows that reference a row
    through one :class:`~sa_references.ReferencingKey`."""

    __slots__ = ("sync",)

    def __init__(self, sync: KeyDependents) -> None:
        #: the synchronous :class:`~sa_references.KeyDependents` (for use in ``run_sync``)
        self.sync = sync

    @property
    def key(self) -> ReferencingKey:
        """The referencing key."""
        return self.sync.key

    @property
    def mapper(self) -> Mapper[Any] | None:
        """The class loaded for the referencing table (None: rows are loaded)."""
        return self.sync.mapper

    async def count(self) -> int:
        """How many rows reference the row through this key."""
        return await _spawn(self.sync.count)

    async def all(self) -> list[Any]:
        """The rows (ORM objects or :class:`~sqlalchemy.engine.Row` objects), by identity."""
        return await _spawn(list, self.sync)

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._rows()

    async def _rows(self) -> AsyncIterator[Any]:
        for row in await self.all():
            yield row

    def __repr__(self) -> str:
        return f"<AsyncKeyDependents {self.key.name}>"


class AsyncDependents(Generic[_T]):
    """:class:`~sa_references.Dependents`, awaited: the rows that reference a row (for an
    ORM object, the mapped objects; rows of unmapped tables are per key in :meth:`by_key`).

    Lazy as the synchronous one: nothing runs until awaited or iterated with
    ``async for`` (one query per referencing key, a key's rows loaded when the iteration
    reaches it), and each time with the referenced row's current values.

    E.g.::

        deps = dependents(customer)
        print(await deps.count())
        for key, rows in deps.by_key().items():
            print(key.name, await rows.count())
        async for row in deps:
            print(row)
    """

    __slots__ = ("sync",)

    def __init__(self, sync: Dependents[_T]) -> None:
        #: the synchronous :class:`~sa_references.Dependents` (for use in ``run_sync``)
        self.sync = sync

    @property
    def keys(self) -> tuple[ReferencingKey, ...]:
        """The referencing keys, in the order rows are iterated."""
        return self.sync.keys

    async def count(self) -> int:
        """Every referencing row, all keys, in one statement."""
        return await _spawn(self.sync.count)

    async def all(self) -> list[_T]:
        """What iterating the synchronous one yields, key by key."""
        return await _spawn(list, self.sync)

    def by_key(self) -> dict[ReferencingKey, AsyncKeyDependents]:
        """The rows by referencing key (runs nothing)."""
        return {key: AsyncKeyDependents(rows) for key, rows in self.sync.by_key().items()}

    def __aiter__(self) -> AsyncIterator[_T]:
        return self._rows()

    async def _rows(self) -> AsyncIterator[_T]:
        for rows in self.by_key().values():
            if self.sync.load_objects and rows.mapper is None:
                continue  # as the synchronous iteration: by_key() has an unmapped table's rows
            async for row in rows:
                yield row

    def __repr__(self) -> str:
        return f"<Async{repr(self.sync)[1:]}"


# -- queued merges -------------------------------------------------------------


class AsyncReferencesSession(AsyncSession):
    """An :class:`~sqlalchemy.ext.asyncio.AsyncSession` over a
    :class:`~sa_references.ReferencesSession`: merges queue, and are applied set-based at
    the next flush (``await session.flush()``, the autoflush of a query, or
    ``await session.commit()``).

    ``sync_session_class`` defaults to :class:`~sa_references.ReferencesSession` and must be
    one (or a subclass); ``synchronize_session`` and the other keyword arguments go to it,
    as for any ``AsyncSession``.  Works with
    ``async_sessionmaker(engine, class_=AsyncReferencesSession)``.

    Queueing needs no I/O: ``dupe.merge_into(keeper)`` of
    :class:`~sa_references.ReferencesMixin` queues without awaiting, as
    ``await merge_into(dupe, keeper)`` does; a dry run (``dry_run=True``) runs at once, and
    must be awaited.

    E.g.::

        async with AsyncReferencesSession(engine) as session:
            for dupe, keeper in pairs:
                dupe.merge_into(keeper, delete=True)  # queued
            print(session.queued_merges)
            await session.commit()  # one UPDATE per referencing key
    """

    sync_session_class: type[Session] = ReferencesSession
    sync_session: ReferencesSession

    def __init__(
        self,
        bind: Any = None,
        *,
        binds: Any = None,
        sync_session_class: type[Session] | None = None,
        **kw: Any,
    ) -> None:
        chosen = sync_session_class or self.sync_session_class
        if not (isinstance(chosen, type) and issubclass(chosen, ReferencesSession)):
            raise ArgumentError(
                f"sync_session_class must be ReferencesSession or a subclass; got {chosen!r}"
            )
        super().__init__(bind, binds=binds, sync_session_class=sync_session_class, **kw)

    @property
    def queued_merges(self) -> int:
        """How many merges wait for the next flush (the sync session's
        :attr:`~sa_references.ReferencesSession.queued_merges`)."""
        return self.sync_session.queued_merges

    def discard_queued_merges(self) -> None:
        """Drop the queued merges, and the deletions of their sources, without rolling back
        (the sync session's :meth:`~sa_references.ReferencesSession.discard_queued_merges`;
        no I/O)."""
        self.sync_session.discard_queued_merges()
