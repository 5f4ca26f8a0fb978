"""Injected faults: every statement of a merge and of a batch fails in turn.

A ``before_cursor_execute`` hook counts the statements a merge sends once it
has started; a second run fails the 1st, a third the 2nd, ... up to the last.
A fault is either a real database error (the statement is swapped for one that
reads a missing table: PostgreSQL then aborts the transaction, as it would on
a lock timeout or a serialization failure) or a Python exception raised
before the statement leaves (a driver or network failure).  After each fault:

- the exception reaches the caller;
- every table holds exactly the rows it held before the merge;
- the session is usable without a rollback (a query, a flush) and its loaded
  objects agree with the database;
- a database error raised by a statement about one referencing key names that
  key (``__notes__``).

The merge's SAVEPOINT is spared the usability check (on PostgreSQL nothing can
protect the statement that sets up the protection); its RELEASE SAVEPOINT (its
commit point, after whose failure SQLAlchemy sends no ROLLBACK TO SAVEPOINT by
itself) is also checked on its own.  Run with ``-s`` to see how many faults each
operation took.

The zz_trap table of the test schema adds a real error raised by the database
itself (a trigger refuses to update an armed row).
"""

from __future__ import annotations

import itertools
import re
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from sqlalchemy import event, func, inspect, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import RelationshipProperty, Session

from sa_references import (
    ReferencesSession,
    merge_into,
    merge_many,
    merge_rows,
    referencing_keys,
)
from tests.conftest import Backend
from tests.models import (
    Base,
    Coupon,
    Customer,
    Group,
    Order,
    Profile,
    Review,
    Trap,
    customer_tag,
)

CUSTOMER = Customer.__table__


def stack_frames() -> list[Any]:
    return traceback.extract_stack(limit=40)


class InjectedFault(Exception):
    """Raised by the hook in place of a statement (a driver-side failure)."""


class Injector:
    """Counts the statements sent while armed; makes the ``fail_at``-th one fail."""

    def __init__(self, engine: Any, mode: str) -> None:
        self.engine, self.mode = engine, mode
        self.armed = False
        self.fail_at: int | None = None
        self.sent: list[str] = []
        self.flushing: list[bool] = []  # per statement: sent by the ORM's flush
        event.listen(engine, "before_cursor_execute", self.hook, retval=True)

    def close(self) -> None:
        event.remove(self.engine, "before_cursor_execute", self.hook)

    def hook(
        self, conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool
    ) -> tuple[str, Any]:
        if not self.armed:
            return statement, params
        self.sent.append(statement)
        self.flushing.append(any("orm/persistence.py" in f.filename for f in stack_frames()))
        if len(self.sent) != self.fail_at:
            return statement, params
        self.armed = False  # only this one
        if self.mode == "python":
            raise InjectedFault(f"injected fault at statement {self.fail_at}: {statement[:60]}")
        empty: Any = [type(params[0])()] if many and params else type(params)()
        return "SELECT 1 FROM sa_references_missing_table", empty

    def run(self, act: Callable[[], Any], fail_at: int | None) -> BaseException | None:
        self.sent, self.fail_at, self.armed = [], fail_at, True
        try:
            act()
        except BaseException as error:
            return error
        finally:
            self.armed = False
        return None


# -- the data each fault starts from --------------------------------------------------------


@dataclass
class Shop:
    session: Session
    dupe: Customer
    dupe2: Customer
    keeper: Customer
    objects: list[Any] = field(default_factory=list)


def build_shop(session: Session) -> Shop:
    """Every statement kind a merge sends: moves, conflicts deleted, a self-reference cleared."""
    dupe, dupe2 = Customer(name="dupe", code="D"), Customer(name="dupe2", code="D2")
    keeper = Customer(name="keeper", code="K")
    vip = Group(name="vip", members=[dupe, dupe2, keeper])
    objects: list[Any] = [
        dupe,
        dupe2,
        keeper,
        vip,
        Group(name="news", members=[dupe]),
        Order(customer=dupe, note="d1"),
        Order(customer=dupe2, billing_customer=dupe, note="d2"),
        Order(customer=keeper, note="k1"),
        Review(author=dupe, stars=5),
        Review(author=dupe2, stars=4),
        Review(author=keeper, stars=5),
        Coupon(customer=dupe),
        Coupon(customer=dupe2),
        Profile(customer=dupe2, bio="p"),
        Customer(name="referred", referrer=dupe2),
    ]
    session.add_all(objects)
    session.flush()
    keeper.referrer = dupe  # the target references a source: cleared with "null"
    session.flush()
    session.execute(
        customer_tag.insert(),
        [
            {"customer_id": dupe.id, "tag": "a"},
            {"customer_id": dupe.id, "tag": "b"},
            {"customer_id": keeper.id, "tag": "b"},
        ],
    )
    for obj in objects:  # what a user would have loaded
        for prop in inspect(obj).mapper.attrs:
            getattr(obj, prop.key)
    return Shop(session, dupe, dupe2, keeper, objects)


OPTIONS: dict[str, Any] = {"on_conflict": "delete", "on_self_reference": "null"}


def op_merge_into(shop: Shop) -> None:
    merge_into(shop.dupe, shop.keeper, delete=True, **OPTIONS)


def op_merge_into_fetch(shop: Shop) -> None:
    merge_into(shop.dupe, shop.keeper, synchronize_session="fetch", **OPTIONS)


def op_merge_rows(shop: Shop) -> None:
    merge_rows(shop.session.connection(), CUSTOMER, shop.dupe.id, shop.keeper.id, **OPTIONS)


def op_merge_rows_delete(shop: Shop) -> None:
    connection = shop.session.connection()
    merge_rows(connection, CUSTOMER, shop.dupe2.id, shop.keeper.id, delete=True, **OPTIONS)


def _pairs(shop: Shop) -> list[tuple[int, int]]:
    return [(shop.dupe.id, shop.keeper.id), (shop.dupe2.id, shop.dupe.id)]  # a chain


def op_merge_many(shop: Shop) -> None:
    merge_many(shop.session.connection(), CUSTOMER, _pairs(shop), **OPTIONS)


def op_merge_many_delete(shop: Shop) -> None:
    merge_many(shop.session.connection(), CUSTOMER, _pairs(shop), delete=True, **OPTIONS)


#: the merges op_references_session queues
QUEUED_BY_OPERATION = 2


def op_references_session(shop: Shop) -> None:
    merge_into(shop.dupe, shop.keeper, delete=True, **OPTIONS)
    merge_into(shop.dupe2, shop.dupe, **OPTIONS)
    shop.session.flush()


@dataclass
class Operation:
    act: Callable[[Shop], None]
    session_class: type[Session] = Session
    orm: bool = True  # the session's loaded objects must agree with the database


OPERATIONS: dict[str, Operation] = {
    "merge_into": Operation(op_merge_into),
    "merge_into_fetch": Operation(op_merge_into_fetch),
    "merge_rows": Operation(op_merge_rows, orm=False),
    "merge_rows_delete": Operation(op_merge_rows_delete, orm=False),
    "merge_many": Operation(op_merge_many, orm=False),
    "merge_many_delete": Operation(op_merge_many_delete, orm=False),
    "references_session": Operation(op_references_session, ReferencesSession),
}


# -- one fault ---------------------------------------------------------------------------------


def snapshot(session: Session) -> dict[str, list[tuple[Any, ...]]]:
    return {
        t.name: sorted((tuple(r) for r in session.execute(select(t))), key=repr)
        for t in Base.metadata.sorted_tables
    }


def identity_map_problems(session: Session) -> list[str]:
    """Loaded attributes that differ from a fresh Session's view of the same rows."""
    found = []
    with Session(bind=session.connection(), join_transaction_mode="create_savepoint") as fresh:
        for state in list(session.identity_map.all_states()):
            obj = state.obj()
            loaded = [p for p in state.mapper.attrs if p.key in state.dict]
            if obj is None or not loaded:
                continue
            other = fresh.get(state.mapper.class_, state.identity)
            if other is None:
                found.append(f"{state.class_.__name__} {state.identity} is gone")
                continue
            for prop in loaded:
                mine, theirs = state.dict[prop.key], getattr(other, prop.key)
                if isinstance(prop, RelationshipProperty):
                    ids = lambda v: inspect(v).identity if v is not None else None  # noqa: E731
                    mine = sorted(map(ids, mine), key=repr) if prop.uselist else ids(mine)
                    theirs = sorted(map(ids, theirs), key=repr) if prop.uselist else ids(theirs)
                if mine != theirs:
                    found.append(f"{state.class_.__name__} {state.identity}.{prop.key}")
    return found


KEY_TABLES = {k.table.name for k in referencing_keys(Customer)}


def about_a_key(statement: str) -> str | None:
    """The referencing table a statement of the library reads or writes, if any."""
    upper = statement.lstrip().upper()
    if upper.startswith(("SAVEPOINT", "RELEASE", "ROLLBACK", "BEGIN", "CREATE", "DROP", "INSERT")):
        return None  # transaction control, the mapping tables of a batch
    if "FOR UPDATE" in upper:
        return None  # locking the rows merged
    tokens = re.findall(r"[A-Za-z_][A-Za-z0-9_]*", statement)
    for table in sorted(KEY_TABLES - {"customer"}):
        if table in tokens:
            return table
    condition = statement.partition(" WHERE ")[2]
    if tokens[:2] == ["UPDATE", "customer"] or "referrer_id" in condition:
        return "customer"  # the self-referential key
    return None


@dataclass
class Fault:
    k: int
    statement: str
    error: BaseException | None
    unchanged: bool | None  # None: the database could not be read
    usable: str | None  # None, or what failed
    named: bool | None  # None when the statement is not about one key

    @property
    def releasing(self) -> bool:
        """The merge's own RELEASE SAVEPOINT: its commit point, checked on its own."""
        return self.statement.lstrip().upper().startswith("RELEASE SAVEPOINT")

    @property
    def opening(self) -> bool:
        """The SAVEPOINT itself: on PostgreSQL nothing can protect the statement that protects."""
        return self.statement.lstrip().upper().startswith("SAVEPOINT")


def inject(db: Backend, name: str, mode: str) -> tuple[int, list[Fault]]:
    """Run ``name`` once clean, then once per statement with that statement failing."""
    operation = OPERATIONS[name]
    injector = Injector(db.engine, mode)
    faults = []
    try:
        with db.engine.connect() as connection:
            transaction = connection.begin()
            try:
                total = None
                # two clean runs first: what is read once per engine (the backend's
                # capabilities, the catalog before deletes) is cached by the first, and
                # the second counts the statements every later run sends
                for k in itertools.chain([0], itertools.count(0)):
                    if total is not None and k > total:
                        break
                    session = operation.session_class(
                        bind=connection, join_transaction_mode="create_savepoint"
                    )
                    try:
                        shop = build_shop(session)
                        before = snapshot(session)
                        error = injector.run(lambda s=shop: operation.act(s), k or None)
                        if k == 0:
                            assert error is None, f"{name} fails without a fault: {error!r}"
                            total = len(injector.sent)
                            continue
                        faults.append(
                            check(
                                session,
                                k,
                                injector.sent[-1],
                                error,
                                before,
                                orm=operation.orm,
                                flushing=injector.flushing[-1],
                            )
                        )
                    finally:
                        session.close()
            finally:
                transaction.rollback()
    finally:
        injector.close()
    assert total is not None and len(faults) == total
    return total, faults


def check(
    session: Session,
    k: int,
    statement: str,
    error: BaseException | None,
    before: Any,
    *,
    orm: bool,
    flushing: bool,
) -> Fault:
    usable: str | None = None
    # a ReferencesSession keeps its whole queue after a failed apply (nothing of it ran, nor
    # its deletions): the next flush, an autoflush too, applies it again, so the database
    # is read without one, and the session goes on after rollback() dropped the queue
    queued = isinstance(session, ReferencesSession)
    try:
        with session.no_autoflush:
            unchanged = snapshot(session) == before
    except DBAPIError as failure:
        unchanged, usable = None, f"cannot read: {str(failure.orig)[:80]}"
    if usable is None:
        try:
            with session.no_autoflush:
                problems = identity_map_problems(session) if orm else []
            if problems:
                usable = f"identity map differs: {problems[:3]}"
            elif queued and session.queued_merges != QUEUED_BY_OPERATION:
                usable = f"the queue holds {session.queued_merges} merge(s)"
            else:
                if queued:
                    session.rollback()  # the shop built in the session goes with it
                count = session.execute(select(func.count()).select_from(CUSTOMER)).scalar()
                assert queued or count
                session.add(Group(name="after the fault"))
                session.flush()
        except Exception as failure:
            usable = f"{type(failure).__name__}: {str(failure)[:120]}"
    table = None if flushing else about_a_key(statement)
    named = None
    if table is not None and isinstance(error, DBAPIError):
        notes = "".join(getattr(error, "__notes__", []))
        named = f"{table}(" in notes
    return Fault(k, statement, error, unchanged, usable, named)


# -- the tests -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fault_runs() -> dict[tuple[str, str, str], tuple[int, list[Fault]]]:
    """One pass per backend, operation and mode, shared by the checks below."""
    return {}


def faults_for(
    db: Backend, runs: dict[tuple[str, str, str], Any], name: str, mode: str
) -> list[Fault]:
    key = (db.name, name, mode)
    if key not in runs:
        runs[key] = inject(db, name, mode)
        total, _ = runs[key]
        print(f"{db.name} {name} {mode}: {total} statements, {total} faults injected")
    return list(runs[key][1])


OPS = list(OPERATIONS)
#: merges with no ORM flush inside: on MariaDB their SAVEPOINT is never released
UNRELEASED_ON_MYSQL = (
    "merge_into_fetch",
    "merge_rows",
    "merge_rows_delete",
    "merge_many",
    "merge_many_delete",
)
MODES = ["database", "python"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", OPS)
def test_every_fault_reaches_the_caller(db: Backend, fault_runs: Any, name: str, mode: str) -> None:
    faults = faults_for(db, fault_runs, name, mode)
    assert len(faults) >= 10
    swallowed = [f"#{f.k} {f.statement[:70]}" for f in faults if f.error is None]
    assert not swallowed, f"a failed statement went unnoticed: {swallowed}"
    wrong = [f for f in faults if not isinstance(f.error, (DBAPIError, InjectedFault))]
    assert not wrong, f"other errors than the fault: {[repr(f.error) for f in wrong][:3]}"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", OPS)
def test_every_fault_leaves_the_database_unchanged(
    db: Backend, fault_runs: Any, name: str, mode: str
) -> None:
    faults = faults_for(db, fault_runs, name, mode)
    changed = [f"#{f.k} {f.statement[:70]}" for f in faults if f.unchanged is False]
    assert not changed, f"{len(changed)} fault(s) left changes behind: {changed}"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", OPS)
def test_every_fault_leaves_the_session_usable(
    db: Backend, fault_runs: Any, name: str, mode: str
) -> None:
    faults = faults_for(db, fault_runs, name, mode)
    unusable = [
        f"#{f.k} {f.statement[:60]}: {f.usable}" for f in faults if f.usable and not f.opening
    ]
    assert not unusable, f"{len(unusable)} fault(s) left the session unusable: {unusable}"


@pytest.mark.parametrize("name", OPS)
def test_a_failed_write_names_its_key(db: Backend, fault_runs: Any, name: str) -> None:
    faults = faults_for(db, fault_runs, name, "database")
    writes = [f for f in faults if f.named is not None and f.statement.lstrip()[:6] != "SELECT"]
    assert writes, "no write about a key failed"
    unnamed = [f"#{f.k} {f.statement[:70]}" for f in writes if not f.named]
    assert not unnamed, f"a failed write does not name its key: {unnamed}"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", OPS)
def test_a_failing_release_undoes_the_merge(
    db: Backend, fault_runs: Any, name: str, mode: str
) -> None:
    """SQLAlchemy sends no ROLLBACK TO SAVEPOINT after a failed RELEASE: the merge must.

    On MariaDB a merge with no ORM flush inside never releases its SAVEPOINT."""
    faults = faults_for(db, fault_runs, name, mode)
    releases = [f for f in faults if f.releasing]
    if db.can.savepoint_style == "reused" and name in UNRELEASED_ON_MYSQL:
        assert releases == []
        return
    assert releases
    assert [f.unchanged for f in releases] == [True] * len(releases)
    assert [f.usable for f in releases] == [None] * len(releases)


@pytest.mark.parametrize("name", ["merge_into", "merge_rows"])
def test_a_failed_rollback_after_a_failed_release_keeps_the_release_error(
    db: Backend, session: Session, name: str
) -> None:
    """When the whole transaction is gone (a MariaDB deadlock rolls it back), the ROLLBACK TO
    SAVEPOINT sent after a failed RELEASE fails too: the RELEASE's error is the one raised.
    (On MariaDB, which sends no RELEASE here, the last UPDATE fails in its place.)"""
    shop = build_shop(session)
    failed: list[str] = []
    last = "UPDATE zz_trap" if db.can.savepoint_style == "reused" else "RELEASE"

    def hook(
        conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool
    ) -> tuple[str, Any]:
        verb = statement.lstrip().upper()
        for prefix, table in ((last.upper(), "release_failed"), ("ROLLBACK TO", "rollback_failed")):
            if verb.startswith(prefix):
                failed.append(prefix)
                return f"SELECT 1 FROM sa_references_{table}", type(params)()
        return statement, params

    engine = session.get_bind()
    event.listen(engine, "before_cursor_execute", hook, retval=True)
    try:
        with pytest.raises(DBAPIError) as info:
            if name == "merge_into":
                merge_into(shop.dupe, shop.keeper, **OPTIONS)
            else:
                merge_rows(session.connection(), CUSTOMER, shop.dupe.id, shop.keeper.id, **OPTIONS)
    finally:
        event.remove(engine, "before_cursor_execute", hook)
    assert failed == [last.upper(), "ROLLBACK TO"]
    assert "sa_references_release_failed" in str(info.value)


@pytest.mark.parametrize("name", ["merge_into", "merge_many"])
def test_a_failed_read_names_its_key(db: Backend, fault_runs: Any, name: str) -> None:
    faults = faults_for(db, fault_runs, name, "database")
    reads = [f for f in faults if f.named is not None and f.statement.lstrip()[:6] == "SELECT"]
    assert reads, "no read about a key failed"
    unnamed = [f"#{f.k} {f.statement[:70]}" for f in reads if not f.named]
    assert not unnamed, f"a failed read does not name its key: {unnamed}"


# -- a real error, raised by the database ----------------------------------------------------------


@pytest.fixture
def trapped(session: Session) -> Iterator[Shop]:
    shop = build_shop(session)
    session.add_all([Trap(customer_id=shop.dupe.id, armed=True), Trap(customer_id=shop.dupe2.id)])
    session.flush()
    yield shop


TRAPPED = {
    "merge_into": lambda s: merge_into(s.dupe, s.keeper, delete=True, **OPTIONS),
    "merge_into_fetch": lambda s: merge_into(
        s.dupe, s.keeper, synchronize_session="fetch", **OPTIONS
    ),
    "merge_rows": lambda s: merge_rows(
        s.session.connection(), CUSTOMER, s.dupe.id, s.keeper.id, delete=True, **OPTIONS
    ),
    "merge_many": lambda s: merge_many(s.session.connection(), CUSTOMER, _pairs(s), **OPTIONS),
    "merge_many_session": lambda s: merge_many(s.session, CUSTOMER, _pairs(s), **OPTIONS),
}


@pytest.mark.parametrize("name", list(TRAPPED))
def test_trigger_error_rolls_back_and_names_the_key(trapped: Shop, name: str) -> None:
    session = trapped.session
    before = snapshot(session)
    orders = list(trapped.dupe.orders)
    with pytest.raises(DBAPIError) as info:
        TRAPPED[name](trapped)
    assert "zz_trap is armed" in str(info.value)
    assert "zz_trap(customer_id)" in "".join(getattr(info.value, "__notes__", []))
    assert snapshot(session) == before
    assert identity_map_problems(session) == []
    assert [o.customer for o in orders] == [trapped.dupe] * len(orders)
    session.add(Order(customer=trapped.keeper, note="after"))
    session.flush()


def test_trigger_error_in_a_references_session(db: Backend) -> None:
    with db.engine.connect() as connection:
        transaction = connection.begin()
        session = ReferencesSession(bind=connection, join_transaction_mode="create_savepoint")
        try:
            shop = build_shop(session)
            session.add(Trap(customer_id=shop.dupe2.id, armed=True))
            session.flush()
            before = snapshot(session)
            merge_into(shop.dupe, shop.keeper, **OPTIONS)
            merge_into(shop.dupe2, shop.keeper, **OPTIONS)
            with pytest.raises(DBAPIError) as info:
                session.flush()
            assert "zz_trap(customer_id)" in "".join(getattr(info.value, "__notes__", []))
            with session.no_autoflush:
                assert snapshot(session) == before
                assert identity_map_problems(session) == []
            # the queue came back whole: nothing of it ran, and it is never applied in part
            assert session.queued_merges == 2
            with pytest.raises(DBAPIError):
                session.flush()
            with session.no_autoflush:
                assert snapshot(session) == before
            session.add(Order(customer=shop.keeper, note="after"))
            session.rollback()  # drops the queue
            assert session.queued_merges == 0
            session.add(Group(name="after the fault"))
            session.flush()
        finally:
            session.close()
            transaction.rollback()
