"""sa_references.asyncio: merges, dry runs, dependents and queued merges, awaited.

On every backend of the run, through its async driver: SQLite with aiosqlite, PostgreSQL
with asyncpg and with psycopg's async mode, MariaDB with aiomysql.  A backend is skipped
only when its async driver is not installed.  Each test runs inside ``asyncio.run`` on its
own async engine, in a transaction rolled back afterwards.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import (
    Column,
    Engine,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    UniqueConstraint,
    event,
    func,
    select,
)
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from sa_references import (
    MergeConflictError,
    MergeCycleError,
    MergeReport,
    ReferencesError,
    ReferencesMixin,
    ReferencesSession,
    RowNotFoundError,
)
from sa_references import asyncio as aio
from sa_references.asyncio import AsyncReferencesMixin, AsyncReferencesSession
from tests.conftest import SQLITE_BACKENDS, backend_id, server_engine, sqlite_engine

# the async drivers tried on each backend, and the module each needs
DRIVERS = {
    "sqlite": [("aiosqlite", "aiosqlite")],
    "postgresql": [("asyncpg", "asyncpg"), ("psycopg_async", "psycopg")],
    "mariadb": [("aiomysql", "aiomysql")],
}


class Base(AsyncReferencesMixin, ReferencesMixin, DeclarativeBase):
    metadata = MetaData()


class Customer(Base):
    __tablename__ = "aio_customer"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(50))
    orders: Mapped[list[Order]] = relationship(back_populates="customer")


class Order(Base):
    __tablename__ = "aio_order"
    __table_args__ = (UniqueConstraint("customer_id", "note", name="uq_aio_order_note"),)
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    customer_id: Mapped[int] = mapped_column(ForeignKey("aio_customer.id"))
    note: Mapped[str] = mapped_column(String(50))
    customer: Mapped[Customer] = relationship(back_populates="orders")


tag = Table(
    "aio_tag",
    Base.metadata,
    Column("customer_id", Integer, ForeignKey("aio_customer.id"), primary_key=True),
    Column("label", String(20), primary_key=True),
)
customers = Customer.__table__
orders = Order.__table__
assert isinstance(customers, Table) and isinstance(orders, Table)


@dataclass
class AsyncBackend:
    """A backend of the run (``--dburi``, as conftest's) and one of its async drivers."""

    name: str
    driver: str
    #: a synchronous engine to the same database
    engine: Engine
    url: str
    foreign_keys: bool = True

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Each test on every backend of the run, once per async driver of that backend."""
    if "adb" in metafunc.fixturenames:
        pairs = [
            (backend, driver, module)
            for backend in metafunc.config._sa_backends  # type: ignore[attr-defined]
            for driver, module in DRIVERS[_name(backend)]
        ]
        ids = [
            f"{backend if backend in SQLITE_BACKENDS else _name(backend)}-{driver}"
            for backend, driver, _ in pairs
        ]
        metafunc.parametrize("adb", pairs, ids=ids, indirect=True, scope="module")


def _name(backend: str) -> str:
    return "sqlite" if backend in SQLITE_BACKENDS else backend_id(backend)


@pytest.fixture(scope="module")
def adb(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AsyncBackend]:
    """The backend with this module's tables created, and its async driver."""
    backend, driver, module = request.param
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"the async driver {module} is not installed")
    if backend in SQLITE_BACKENDS:
        path = str(tmp_path_factory.mktemp(backend) / "async.db")
        info = AsyncBackend(
            backend,
            driver,
            sqlite_engine(path, SQLITE_BACKENDS[backend]),
            f"sqlite+{driver}:///{path}",
            SQLITE_BACKENDS[backend],
        )
    else:
        engine = server_engine(backend)
        url = engine.url.set(drivername=f"{engine.url.get_backend_name()}+{driver}")
        info = AsyncBackend(
            backend_id(backend), driver, engine, url.render_as_string(hide_password=False)
        )
    Base.metadata.drop_all(info.engine)
    Base.metadata.create_all(info.engine)
    yield info
    Base.metadata.drop_all(info.engine)
    info.engine.dispose()


Scenario = Callable[[AsyncConnection], Awaitable[None]]


def run(adb: AsyncBackend, scenario: Scenario) -> None:
    """``scenario(connection)`` in a transaction rolled back afterwards, on a new engine."""

    async def main() -> None:
        engine = create_async_engine(adb.url)
        if adb.dialect == "sqlite":
            # the pysqlite SAVEPOINT recipe of conftest.sqlite_engine, for aiosqlite
            foreign_keys = "ON" if adb.foreign_keys else "OFF"

            @event.listens_for(engine.sync_engine, "connect")
            def _connect(dbapi_connection: Any, _record: Any) -> None:
                dbapi_connection.isolation_level = None
                cursor = dbapi_connection.cursor()
                cursor.execute(f"PRAGMA foreign_keys={foreign_keys}")
                cursor.close()

            @event.listens_for(engine.sync_engine, "begin")
            def _begin(connection: Any) -> None:
                connection.exec_driver_sql("BEGIN")

        try:
            async with engine.connect() as connection:
                transaction = await connection.begin()
                try:
                    await scenario(connection)
                finally:
                    if transaction.is_active:
                        await transaction.rollback()
        finally:
            await engine.dispose()

    asyncio.run(main())


def session_on(connection: AsyncConnection, cls: type[AsyncSession] = AsyncSession) -> Any:
    return cls(bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False)


async def seed(session: AsyncSession) -> tuple[Customer, Customer]:
    """``dupe`` (id 1: orders "a" and "b", tag "x") and ``keeper`` (id 2: order "c")."""
    dupe = Customer(id=1, name="dupe", orders=[Order(id=1, note="a"), Order(id=2, note="b")])
    keeper = Customer(id=2, name="keeper", orders=[Order(id=3, note="c")])
    session.add_all([dupe, keeper])
    await session.flush()
    await session.execute(tag.insert().values(customer_id=1, label="x"))
    return dupe, keeper


async def owners(session: AsyncSession | AsyncConnection) -> dict[int, int]:
    """Each order's customer, as the database has it."""
    result = await session.execute(select(orders.c.id, orders.c.customer_id))
    return {order_id: customer_id for order_id, customer_id in result}


async def tags(session: AsyncSession | AsyncConnection) -> list[tuple[Any, ...]]:
    result = await session.execute(select(tag.c.customer_id, tag.c.label))
    return [tuple(row) for row in result]


# -- ORM objects ------------------------------------------------------------------


def test_awaitable_references_merge_into(adb: AsyncBackend) -> None:
    async def scenario(connection: AsyncConnection) -> None:
        async with session_on(connection) as session:
            dupe, keeper = await seed(session)
            loaded = list(dupe.orders)
            report = await dupe.awaitable_references.merge_into(keeper)
            assert isinstance(report, MergeReport)
            assert report.applied and not report.dry_run
            assert report.rowcount == 3  # two orders and the tag
            assert await owners(session) == {1: 2, 2: 2, 3: 2}
            assert await tags(session) == [(2, "x")]
            # loaded objects kept in step, as by the sync API ("evaluate")
            assert [order.customer_id for order in loaded] == [2, 2]
            await session.commit()

    run(adb, scenario)


def test_merge_into_function_with_delete(adb: AsyncBackend) -> None:
    async def scenario(connection: AsyncConnection) -> None:
        async with session_on(connection) as session:
            dupe, keeper = await seed(session)
            report = await aio.merge_into(dupe, keeper, delete=True, synchronize_session="fetch")
            assert report.rowcount == 3
            assert await session.get(Customer, 1) is None
            assert await session.scalar(select(func.count()).select_from(customers)) == 1
            assert await owners(session) == {1: 2, 2: 2, 3: 2}

    run(adb, scenario)


def test_dry_run_keeps_nothing(adb: AsyncBackend) -> None:
    async def scenario(connection: AsyncConnection) -> None:
        async with session_on(connection) as session:
            dupe, keeper = await seed(session)
            await session.execute(orders.insert().values(id=4, customer_id=2, note="a"))
            report = await dupe.awaitable_references.merge_into(keeper, dry_run=True)
            # "a" clashes: reported, not raised
            assert report.dry_run and report.rowcount == 2
            assert [c.rows for k in report.keys for c in k.conflicts] == [((1,),)]
            assert await owners(session) == {1: 1, 2: 1, 3: 2, 4: 2}
            assert [order.customer_id for order in dupe.orders] == [1, 1]
            plan = await aio.merge_into(dupe, keeper, dry_run=True, on_conflict="delete")
            assert plan.dry_run and (plan.rowcount, plan.deleted) == (2, 1)  # "a" deleted
            assert await owners(session) == {1: 1, 2: 1, 3: 2, 4: 2}

    run(adb, scenario)


def test_dependents_count_iteration_and_by_key(adb: AsyncBackend) -> None:
    async def scenario(connection: AsyncConnection) -> None:
        async with session_on(connection) as session:
            dupe, keeper = await seed(session)
            deps = dupe.awaitable_references.dependents()
            assert repr(deps).startswith("<AsyncDependents of Customer (1,)")
            assert await deps.count() == 3
            rows = await deps.all()
            assert rows == dupe.orders  # the mapped objects, by identity
            iterated = [row async for row in deps]
            assert iterated == rows
            tag_key = next(k for k in deps.keys if k.table is not orders)
            tags = await deps.by_key()[tag_key].all()
            assert [tuple(r) for r in tags] == [(1, "x")]  # the unmapped table's Row, per key
            by_key = deps.by_key()
            assert list(by_key) == list(deps.keys)
            counts = {key.name: await rows_of.count() for key, rows_of in by_key.items()}
            assert counts == {"aio_order(customer_id)": 2, "aio_tag(customer_id)": 1}
            order_key = next(k for k in by_key if k.table is orders)
            assert by_key[order_key].mapper is not None
            assert by_key[order_key].key is order_key
            assert await by_key[order_key].all() == dupe.orders
            assert [o async for o in by_key[order_key]] == dupe.orders
            # lazy, with current values: pending rows are flushed first, as by the sync API
            session.add(Order(id=9, customer=dupe, note="z"))
            assert await deps.count() == 4
            assert await aio.dependents(keeper).count() == 1
            await aio.merge_into(dupe, keeper)
            assert await deps.count() == 0
            assert await aio.dependents(keeper).count() == 5

    run(adb, scenario)


def test_errors_are_typed_and_leave_the_session_usable(adb: AsyncBackend) -> None:
    async def scenario(connection: AsyncConnection) -> None:
        async with session_on(connection) as session:
            dupe, keeper = await seed(session)
            await session.execute(orders.insert().values(id=4, customer_id=2, note="a"))
            with pytest.raises(MergeConflictError) as info:
                await dupe.awaitable_references.merge_into(keeper)
            assert info.value.conflicts[0].rows == ((1,),)
            with pytest.raises(ReferencesError, match="into itself"):
                await aio.merge_into(dupe, dupe)
            outsider = Customer(id=7, name="detached")
            with pytest.raises(ReferencesError, match="not attached to a Session"):
                await aio.merge_into(outsider, keeper)
            with pytest.raises(ReferencesError, match="not attached to a Session"):
                aio.dependents(outsider)
            # nothing of the failed merge was kept, and the session goes on
            assert await owners(session) == {1: 1, 2: 1, 3: 2, 4: 2}
            report = await dupe.awaitable_references.merge_into(keeper, on_conflict="delete")
            assert (report.rowcount, report.deleted) == (2, 1)
            await session.commit()
            assert await owners(session) == {2: 2, 3: 2, 4: 2}

    run(adb, scenario)


# -- tables without classes ---------------------------------------------------------


def test_core_functions_on_a_connection(adb: AsyncBackend) -> None:
    async def scenario(connection: AsyncConnection) -> None:
        await connection.execute(customers.insert(), [{"id": i, "name": "c"} for i in (1, 2, 3)])
        await connection.execute(
            orders.insert(), [{"id": i, "customer_id": i, "note": "n"} for i in (1, 2, 3)]
        )
        deps = aio.row_dependents(connection, customers, 1)
        assert await deps.count() == 1
        assert [tuple(row) for row in await deps.all()] == [(1, 1, "n")]
        assert [tuple(row) async for row in deps] == [(1, 1, "n")]
        report = await aio.merge_rows(connection, customers, 1, 2, on_conflict="ignore")
        assert report.rowcount == 0 and report.source == (1,) and report.target == (2,)
        plan = await aio.merge_rows(connection, customers, 1, 2, on_conflict="delete", dry_run=True)
        assert plan.dry_run and (plan.rowcount, plan.deleted) == (0, 1)
        assert await owners(connection) == {1: 1, 2: 2, 3: 3}
        batch = await aio.merge_many(connection, customers, [(1, 3), (2, 3)], on_conflict="delete")
        assert (batch.rowcount, batch.deleted) == (0, 2)  # both clash with customer 3's "n"
        assert await owners(connection) == {3: 3}
        assert await aio.row_dependents(connection, customers, (3,)).count() == 1
        with pytest.raises(RowNotFoundError):
            await aio.merge_rows(connection, customers, 1, 404)
        with pytest.raises(RowNotFoundError):
            await aio.row_dependents(connection, customers, 404).count()
        with pytest.raises(MergeCycleError):
            await aio.merge_many(connection, customers, iter([(1, 2), (2, 1)]))
        # the connection goes on
        assert await connection.scalar(select(func.count()).select_from(customers)) == 3

    run(adb, scenario)


def test_core_functions_on_a_session(adb: AsyncBackend) -> None:
    async def scenario(connection: AsyncConnection) -> None:
        async with session_on(connection) as session:
            await seed(session)
            assert await aio.row_dependents(session, customers, 1).count() == 3
            report = await aio.merge_rows(session, customers, {"id": 1}, {"id": 2}, delete=True)
            assert report.rowcount == 3
            batch = await aio.merge_many(session, customers, [], dry_run=True)
            assert batch.rowcount == 0
            assert await owners(session) == {1: 2, 2: 2, 3: 2}
            assert await aio.row_dependents(session, customers, 2).count() == 4

    run(adb, scenario)


def test_core_functions_refuse_other_binds(adb: AsyncBackend) -> None:
    async def scenario(connection: AsyncConnection) -> None:
        with adb.engine.connect() as sync_connection:
            with pytest.raises(ArgumentError, match="AsyncSession or an AsyncConnection"):
                await aio.merge_rows(sync_connection, customers, 1, 2)  # type: ignore[arg-type]
            with pytest.raises(ArgumentError, match="AsyncSession or an AsyncConnection"):
                aio.row_dependents(sync_connection, customers, 1)  # type: ignore[arg-type]
        with pytest.raises(ArgumentError, match="AsyncSession or an AsyncConnection"):
            await aio.merge_many(connection.engine, customers, [(1, 2)])  # type: ignore[arg-type]
        with pytest.raises(ArgumentError, match="not started"):
            await aio.merge_rows(connection.engine.connect(), customers, 1, 2)
        with pytest.raises(ArgumentError, match="expected a Table"):
            await aio.merge_rows(connection, Customer, 1, 2)  # type: ignore[arg-type]

    run(adb, scenario)


# -- queued merges ------------------------------------------------------------------


def test_queued_merges_in_an_async_references_session(adb: AsyncBackend) -> None:
    async def scenario(connection: AsyncConnection) -> None:
        async with session_on(connection, AsyncReferencesSession) as session:
            assert isinstance(session.sync_session, ReferencesSession)
            dupe, keeper = await seed(session)
            third = Customer(id=3, name="third", orders=[Order(id=4, note="d")])
            session.add(third)
            await session.flush()
            # queueing needs no I/O: the sync method works in the event loop
            queued = dupe.merge_into(keeper, delete=True)
            assert not queued.applied and session.queued_merges == 1
            awaited = await third.awaitable_references.merge_into(keeper)
            assert not awaited.applied and session.queued_merges == 2
            plan = await aio.merge_into(keeper, third, dry_run=True)  # after the queue: 5 rows
            assert plan.dry_run and plan.applied and plan.rowcount == 5
            assert session.queued_merges == 2
            assert await owners(connection) == {1: 1, 2: 1, 3: 2, 4: 3}
            await session.commit()
            assert queued.applied and awaited.applied and session.queued_merges == 0
            assert queued.batch is not None and queued.batch.rowcount == 4
            assert await owners(session) == {1: 2, 2: 2, 3: 2, 4: 2}
            assert await session.get(Customer, 1) is None

    run(adb, scenario)


def test_failed_queue_leaves_the_session_usable(adb: AsyncBackend) -> None:
    async def scenario(connection: AsyncConnection) -> None:
        async with session_on(connection, AsyncReferencesSession) as session:
            dupe, keeper = await seed(session)
            await session.execute(orders.insert().values(id=4, customer_id=2, note="a"))
            dupe.merge_into(keeper, delete=True)
            with pytest.raises(MergeConflictError):
                await session.flush()
            # nothing of it kept; the queue came back whole, with the source's deletion
            assert session.queued_merges == 1
            assert await owners(connection) == {1: 1, 2: 1, 3: 2, 4: 2}
            session.discard_queued_merges()
            assert session.queued_merges == 0
            await session.commit()
            assert await session.get(Customer, 1) is dupe
            assert await aio.dependents(dupe).count() == 3

    run(adb, scenario)


def test_async_session_over_references_session(adb: AsyncBackend) -> None:
    """A plain AsyncSession with ``sync_session_class=ReferencesSession`` queues too; the
    queue is its ``sync_session``'s."""

    async def scenario(connection: AsyncConnection) -> None:
        session = AsyncSession(
            bind=connection,
            sync_session_class=ReferencesSession,
            join_transaction_mode="create_savepoint",
            synchronize_session="expire",
        )
        async with session:
            dupe, keeper = await seed(session)
            report = await aio.merge_into(dupe, keeper)
            sync_session = session.sync_session
            assert isinstance(sync_session, ReferencesSession)
            assert sync_session.queued_merges == 1 and not report.applied
            await session.commit()
            assert report.applied and report.rowcount == 3

    run(adb, scenario)


def test_async_references_session_options(adb: AsyncBackend) -> None:
    class Mine(ReferencesSession):
        pass

    async def scenario(connection: AsyncConnection) -> None:
        maker = async_sessionmaker(
            bind=connection,
            class_=AsyncReferencesSession,
            sync_session_class=Mine,
            join_transaction_mode="create_savepoint",
            synchronize_session=False,
        )
        async with maker() as session:
            assert type(session.sync_session) is Mine
            assert session.sync_session.synchronize_session is False
        with pytest.raises(ArgumentError, match="sync_session_class must be ReferencesSession"):
            AsyncReferencesSession(connection, sync_session_class=ReferencesMixin)  # type: ignore[arg-type]
        from sqlalchemy.orm import Session

        with pytest.raises(ArgumentError, match="sync_session_class must be ReferencesSession"):
            AsyncReferencesSession(connection, sync_session_class=Session)

    run(adb, scenario)


def test_accessor_repr() -> None:
    assert "AwaitableReferences of" in repr(Customer(id=1, name="x").awaitable_references)
