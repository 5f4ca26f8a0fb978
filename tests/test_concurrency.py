"""Concurrent merges of overlapping rows while other transactions reference them.

Several threads, each with its own connection and session, merge customers
picked from the same few (so that they collide), with every API: ``merge_into``
on a Session, ``merge_rows``, ``merge_many`` and a ``ReferencesSession``, all
with ``delete=True``.  Other threads meanwhile insert orders and group
memberships that reference customers, some of them being merged away.

Every failure must be one a caller can retry (a deadlock, a serialization
failure, a lock timeout, a foreign key or unique violation caused by a
concurrent commit, a source deleted meanwhile); the test retries them and
counts them.  At the end, following the merges that committed:

- every order (set up or inserted) exists exactly once and references the
  final target of its original customer; none was lost;
- every membership (set up or inserted) is held by the final target of its
  customer; no row references a deleted customer;
- every merged source is deleted, every remaining customer was never merged.

Bounded: a fixed number of operations per thread, a deadline, lock timeouts
of a few seconds.  PostgreSQL and MariaDB only (SQLite serialises writers).
Run with ``-s`` to see what was done and retried.  Two ways a concurrent merge
once went wrong are reproduced, deterministically, at the end: a source merged
away meanwhile must be refused (it was merged "again" without an error), and
on MariaDB a deadlock inside the merge's SAVEPOINT must surface as the
deadlock (not as "SAVEPOINT does not exist"); the main test counts neither
among the retries.
"""

from __future__ import annotations

import collections
import itertools
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from sqlalchemy import Engine, event, insert, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import ObjectDeletedError, StaleDataError

from sa_references import ReferencesError, ReferencesSession, merge_into, merge_many, merge_rows
from tests.conftest import Backend
from tests.models import Customer, Group, Order, customer_group

pytestmark = pytest.mark.backends("postgresql", "mariadb")

CUSTOMER = Customer.__table__
ORDER = Order.__table__
CUSTOMERS = 40
GROUPS = 3
MERGES_PER_THREAD = 10
INSERTS_PER_THREAD = 40
MAX_ATTEMPTS = 25
DEADLINE = 20.0  # seconds, for the whole test
LOCK_TIMEOUT = 3  # seconds
_runs = itertools.count(1)


# -- what went wrong, and whether a caller may retry it -------------------------------------

RETRYABLE = {
    "deadlock",
    "serialization failure",
    "lock timeout",
    "foreign key violation",
    "unique violation",
    "source deleted meanwhile",
    "source merged away meanwhile",
    "row gone",
}
PG_STATES = {
    "40P01": "deadlock",
    "40001": "serialization failure",
    "55P03": "lock timeout",
    "23503": "foreign key violation",
    "23505": "unique violation",
}
MYSQL_CODES = {
    1213: "deadlock",
    1205: "lock timeout",
    1451: "foreign key violation",
    1452: "foreign key violation",
    1062: "unique violation",
}


def classify(error: BaseException) -> str:
    if isinstance(error, StaleDataError):
        return "source deleted meanwhile"
    if isinstance(error, ReferencesError) and "no longer exist" in str(error):
        # the lock of the rows merged found one gone: merged away by another transaction
        # after this one picked it (test_merge_of_a_source_merged_away_meanwhile_is_refused)
        return "source merged away meanwhile"
    if isinstance(error, (ReferencesError, ObjectDeletedError)):
        return "row gone"
    if isinstance(error, DBAPIError):
        orig = error.orig
        code = orig.args[0] if orig is not None and orig.args else None
        if code in MYSQL_CODES:
            return MYSQL_CODES[code]
        state = getattr(orig, "sqlstate", None)
        if state in PG_STATES:
            return PG_STATES[state]
    # among them: a stale source merged "again" (SAWarning "0 were matched", an error under
    # this test suite) and MariaDB's 1305 "SAVEPOINT does not exist" in place of a deadlock
    return "unexpected"


@dataclass
class Ledger:
    """What the threads did, shared under a lock."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    merged: dict[int, int] = field(default_factory=dict)  # source -> target, committed
    orders: dict[int, int] = field(default_factory=dict)  # order id -> customer at insert
    memberships: set[tuple[int, int]] = field(default_factory=set)  # (customer, group)
    retries: collections.Counter[str] = field(default_factory=collections.Counter)
    done: collections.Counter[str] = field(default_factory=collections.Counter)
    unexpected: list[str] = field(default_factory=list)

    def resolve(self, customer: int) -> int:
        seen = set()
        while customer in self.merged:
            assert customer not in seen, f"merge cycle through {customer}"
            seen.add(customer)
            customer = self.merged[customer]
        return customer

    def merge_committed(self, pairs: list[tuple[int, int]], how: str) -> None:
        with self.lock:
            for source, target in pairs:
                assert source not in self.merged, f"{source} merged twice"
                self.merged[source] = target
            self.done[how] += 1


# -- the workers -----------------------------------------------------------------------------


@dataclass
class World:
    engine: Engine
    prefix: str
    customers: list[int]
    groups: list[int]
    ledger: Ledger
    stop_at: float

    def alive(self) -> list[int]:
        with self.engine.connect() as connection:
            rows = connection.execute(
                select(CUSTOMER.c.id)
                .where(CUSTOMER.c.name.like(f"{self.prefix}%"))
                .order_by(CUSTOMER.c.id)
            )
            return [r for (r,) in rows]


def retrying(world: World, what: str, attempt: Callable[[random.Random], bool]) -> None:
    """Run ``attempt`` until it reports done, retrying the errors a caller may retry."""
    rnd = random.Random(hash((what, threading.get_ident())))
    for _ in range(MAX_ATTEMPTS):
        if time.monotonic() > world.stop_at:
            return
        try:
            if attempt(rnd):
                return
        except Exception as error:
            kind = classify(error)
            with world.ledger.lock:
                if kind not in RETRYABLE:
                    chain, cause = [], error.__context__
                    while cause is not None:
                        chain.append(repr(cause)[:150])
                        cause = cause.__context__
                    world.ledger.unexpected.append(f"{what}: {kind}: {error!r} <- {chain}")
                    return
                world.ledger.retries[f"{what}: {kind}"] += 1
            time.sleep(rnd.uniform(0, 0.02))


def pick(world: World, rnd: random.Random, count: int) -> list[int] | None:
    """``count`` customers among the lowest few alive ones: the threads collide on purpose."""
    alive = world.alive()
    window = alive[: max(count + 2, 5)]
    if len(window) < count:
        return None
    return rnd.sample(window, count)


def merge_orm(world: World, rnd: random.Random) -> bool:
    chosen = pick(world, rnd, 2)
    if chosen is None:
        return True
    source_id, target_id = chosen
    with Session(world.engine) as session:
        source, target = session.get(Customer, source_id), session.get(Customer, target_id)
        if source is None or target is None:
            return False  # merged away meanwhile: pick again
        source.orders, target.groups  # noqa: B018  (loaded, so the sync has work to do)
        merge_into(source, target, on_conflict="delete", delete=True)
        session.commit()
    world.ledger.merge_committed([(source_id, target_id)], "merge_into")
    return True


def merge_core(world: World, rnd: random.Random) -> bool:
    chosen = pick(world, rnd, 2)
    if chosen is None:
        return True
    with world.engine.begin() as connection:
        merge_rows(connection, CUSTOMER, chosen[0], chosen[1], on_conflict="delete", delete=True)
    world.ledger.merge_committed([(chosen[0], chosen[1])], "merge_rows")
    return True


def merge_batch(world: World, rnd: random.Random) -> bool:
    chosen = pick(world, rnd, 3)
    if chosen is None:
        return True
    pairs = [(chosen[0], chosen[2]), (chosen[1], chosen[0])]  # a chain: both end at chosen[2]
    with world.engine.begin() as connection:
        report = merge_many(connection, CUSTOMER, pairs, on_conflict="delete", delete=True)
    world.ledger.merge_committed([(s[0], t[0]) for s, t in report.pairs], "merge_many")
    return True


def merge_queued(world: World, rnd: random.Random) -> bool:
    chosen = pick(world, rnd, 3)
    if chosen is None:
        return True
    with ReferencesSession(world.engine) as session:
        objects = [session.get(Customer, c) for c in chosen]
        if any(o is None for o in objects):
            return False
        merge_into(objects[0], objects[2], on_conflict="delete", delete=True)
        merge_into(objects[1], objects[2], on_conflict="delete", delete=True)
        session.commit()
    world.ledger.merge_committed(
        [(chosen[0], chosen[2]), (chosen[1], chosen[2])], "ReferencesSession"
    )
    return True


def insert_references(world: World, rnd: random.Random, number: list[int]) -> bool:
    # mostly a customer alive a moment ago, sometimes any: perhaps merged away, then refused
    alive = world.alive() if rnd.random() < 0.8 else []
    customer = rnd.choice(alive or world.customers)
    group = rnd.choice(world.groups)
    number[0] += 1
    with world.engine.begin() as connection:
        note = f"{world.prefix}ins-{threading.get_ident()}-{number[0]}"
        result = connection.execute(insert(ORDER).values(customer_id=customer, note=note))
        order_id = result.inserted_primary_key[0]
        membership = rnd.random() < 0.5
        if membership:
            exists = connection.execute(
                select(customer_group.c.customer_id).where(
                    customer_group.c.customer_id == customer, customer_group.c.group_id == group
                )
            ).first()
            membership = exists is None
        if membership:
            connection.execute(insert(customer_group).values(customer_id=customer, group_id=group))
    with world.ledger.lock:
        world.ledger.orders[order_id] = customer
        if membership:
            world.ledger.memberships.add((customer, group))
        world.ledger.done["insert"] += 1
    return True


def merger(world: World, merge: Callable[[World, random.Random], bool]) -> Callable[[], None]:
    def run() -> None:
        for _ in range(MERGES_PER_THREAD):
            retrying(world, merge.__name__, lambda rnd: merge(world, rnd))

    return run


def inserter(world: World) -> Callable[[], None]:
    def run() -> None:
        number = [0]
        for _ in range(INSERTS_PER_THREAD):
            retrying(world, "insert", lambda rnd: insert_references(world, rnd, number))

    return run


# -- setup, run, check -------------------------------------------------------------------------


@pytest.fixture
def world(db: Backend) -> Iterator[World]:
    engine = db.make_engine(pool_size=12, max_overflow=4)

    @event.listens_for(engine, "connect")
    def _timeouts(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        if engine.dialect.name == "postgresql":
            cursor.execute(f"SET lock_timeout = '{LOCK_TIMEOUT}s'")
        else:
            cursor.execute(f"SET SESSION innodb_lock_wait_timeout = {LOCK_TIMEOUT}")
        cursor.close()
        dbapi_connection.commit()

    prefix = f"cc{next(_runs)}-"
    ledger = Ledger()
    with Session(engine) as session:
        customers = [Customer(name=f"{prefix}{i}") for i in range(CUSTOMERS)]
        groups = [Group(name=f"{prefix}g{i}") for i in range(GROUPS)]
        rnd = random.Random(7)
        for customer in customers:
            customer.orders = [Order(note=f"{prefix}setup") for _ in range(2)]
            customer.groups = rnd.sample(groups, 2)
        session.add_all(customers + groups)
        session.commit()
        for customer in customers:
            for order in customer.orders:
                ledger.orders[order.id] = customer.id
            for group in customer.groups:
                ledger.memberships.add((customer.id, group.id))
        ids, group_ids = [c.id for c in customers], [g.id for g in groups]
    yield World(engine, prefix, ids, group_ids, ledger, time.monotonic() + DEADLINE)
    with engine.begin() as connection:  # committed rows: leave the shared schema as found
        mine = select(CUSTOMER.c.id).where(CUSTOMER.c.name.like(f"{prefix}%"))
        connection.execute(customer_group.delete().where(customer_group.c.customer_id.in_(mine)))
        connection.execute(customer_group.delete().where(customer_group.c.group_id.in_(group_ids)))
        connection.execute(ORDER.delete().where(ORDER.c.note.like(f"{prefix}%")))
        connection.execute(CUSTOMER.delete().where(CUSTOMER.c.name.like(f"{prefix}%")))
        connection.execute(Group.__table__.delete().where(Group.__table__.c.id.in_(group_ids)))
    engine.dispose()


def test_concurrent_merges_lose_nothing(world: World, db: Backend) -> None:
    started = time.monotonic()
    jobs = [
        merger(world, merge_orm),
        merger(world, merge_orm),
        merger(world, merge_core),
        merger(world, merge_batch),
        merger(world, merge_queued),
        inserter(world),
        inserter(world),
    ]
    threads = [threading.Thread(target=job, daemon=True) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=DEADLINE + 2 * LOCK_TIMEOUT + 5)
    elapsed = time.monotonic() - started
    assert not any(t.is_alive() for t in threads), "a worker did not stop"
    ledger = world.ledger
    print(
        f"\n{db.name}: {elapsed:.1f}s, done {dict(ledger.done)}, "
        f"{len(ledger.merged)} customers merged away, retried {dict(ledger.retries)}"
    )
    assert ledger.unexpected == [], "errors a caller cannot retry:\n" + "\n".join(ledger.unexpected)
    assert sum(ledger.done.values()) - ledger.done["insert"] >= 5, "too few merges to mean much"
    assert ledger.done["insert"] >= 20

    with world.engine.connect() as connection:
        alive = set(world.alive())
        orders = dict(
            connection.execute(
                select(ORDER.c.id, ORDER.c.customer_id).where(ORDER.c.note.like(f"{world.prefix}%"))
            ).all()
        )
        memberships = set(
            connection.execute(
                select(customer_group.c.customer_id, customer_group.c.group_id).where(
                    customer_group.c.group_id.in_(world.groups)
                )
            ).all()
        )
    # no order lost, none duplicated, each at the final target of its customer
    assert sorted(orders) == sorted(ledger.orders)
    wrong = {o: (c, orders[o]) for o, c in ledger.orders.items() if orders[o] != ledger.resolve(c)}
    assert wrong == {}, "orders not at the final target of their customer"
    # memberships: each one's customer's final target holds it
    missing = {(c, g) for c, g in ledger.memberships if (ledger.resolve(c), g) not in memberships}
    assert missing == set(), "memberships lost"
    # nothing references a deleted customer; merged sources are gone, the rest never merged
    assert set(orders.values()) <= alive
    assert {c for c, _ in memberships} <= alive
    assert not (set(ledger.merged) & alive)
    assert alive == {ledger.resolve(c) for c in world.customers}


# -- the two ways a concurrent merge went wrong, made deterministic ---------------------------


@pytest.fixture
def pair_of_customers(db: Backend) -> Iterator[tuple[Engine, dict[str, int]]]:
    engine = db.make_engine()
    prefix = f"cc{next(_runs)}-"
    with Session(engine) as session:
        people = {n: Customer(name=f"{prefix}{n}") for n in ("source", "target", "other", "heavy")}
        people["source"].orders = [Order(note=f"{prefix}source")]
        people["heavy"].orders = [Order(note=f"{prefix}heavy") for _ in range(300)]
        session.add_all(people.values())
        session.commit()
        ids = {n: c.id for n, c in people.items()}
        ids["order"] = people["source"].orders[0].id
    yield engine, ids
    with engine.begin() as connection:
        connection.execute(ORDER.delete().where(ORDER.c.note.like(f"{prefix}%")))
        connection.execute(CUSTOMER.delete().where(CUSTOMER.c.name.like(f"{prefix}%")))
    engine.dispose()


def test_merge_of_a_source_merged_away_meanwhile_is_refused(
    pair_of_customers: tuple[Engine, dict[str, int]],
) -> None:
    """A source merged away and deleted by another transaction after it was loaded: the lock
    finds no row, the merge is refused (it once went on from the stale identity map: nothing
    re-pointed, no error)."""
    engine, ids = pair_of_customers
    with Session(engine) as session:
        source = session.get(Customer, ids["source"])
        target = session.get(Customer, ids["target"])
        assert source is not None and target is not None
        session.commit()  # nothing held: another transaction may now merge the source
        source.name, target.name  # noqa: B018  (loaded again, before the other merge)
        with engine.begin() as other:
            merge_rows(other, CUSTOMER, ids["source"], ids["other"], delete=True)
        with pytest.raises(ReferencesError, match="no longer exist"):
            merge_into(source, target)


def _waiting_on_orders(engine: Engine) -> int:
    """Connections stuck for a second in an UPDATE of ``order`` (the merge, waiting)."""
    with engine.connect() as connection:
        return connection.exec_driver_sql(
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST "
            "WHERE info LIKE 'UPDATE `order`%%' AND time >= 1"
        ).scalar_one()


@pytest.mark.backends("mariadb")
@pytest.mark.parametrize("api", ["merge_many", "merge_into"])
def test_a_deadlocked_merge_raises_the_deadlock(
    pair_of_customers: tuple[Engine, dict[str, int]], api: str
) -> None:
    """The merge waits for an order row another transaction holds, which then asks for the
    source row the merge locked: InnoDB picks the merge (it changed fewer rows) as victim and
    rolls its whole transaction back; the failing ROLLBACK TO SAVEPOINT (1305) that follows
    must not replace the deadlock (1213) a caller's retry recognises."""
    engine, ids = pair_of_customers
    outcome: list[BaseException | None] = []

    def merge() -> None:
        try:
            if api == "merge_many":
                with engine.begin() as connection:
                    merge_many(connection, CUSTOMER, [(ids["source"], ids["target"])])
            else:
                with Session(engine) as session:
                    source = session.get(Customer, ids["source"])
                    target = session.get(Customer, ids["target"])
                    merge_into(source, target)
                    session.commit()
            outcome.append(None)
        except BaseException as error:
            outcome.append(error)

    with engine.connect() as blocker:
        blocker.begin()
        blocker.execute(  # heavier than the merge: InnoDB rolls the merge back, not this
            ORDER.update().where(ORDER.c.customer_id == ids["heavy"]).values(note="heavier")
        )
        blocker.execute(ORDER.update().where(ORDER.c.id == ids["order"]).values(note="held"))
        thread = threading.Thread(target=merge, daemon=True)
        thread.start()
        for _ in range(60):
            if _waiting_on_orders(engine) or outcome:
                break
            time.sleep(0.1)
        assert _waiting_on_orders(engine) == 1, f"the merge should wait for the order: {outcome}"
        blocker.execute(
            select(CUSTOMER.c.id).where(CUSTOMER.c.id == ids["source"]).with_for_update()
        )
        blocker.rollback()
        thread.join(10)
    assert outcome and isinstance(outcome[0], DBAPIError), outcome
    assert classify(outcome[0]) == "deadlock", repr(outcome[0])
