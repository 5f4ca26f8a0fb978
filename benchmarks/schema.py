"""The benchmark schema and its data: customers, duplicates and the rows that reference them.

Schema (built fresh for every run): ``customer`` and five referencing tables,
each with an indexed foreign key to ``customer.id``.  Customers ``1..n`` are
keepers and ``n+1..2n`` duplicates; duplicate ``n+i`` is merged into keeper
``(i-1) * stride % n + 1`` (a permutation, so pairs are not in key order).
Every customer has ``rows_per_record`` referencing rows spread over the five
tables.  Each referencing row also stores, in a plain integer column no merge
reads, the customer it must reference once every duplicate is merged: the
checks compare against it.

The models use :class:`sa_references.ReferencesMixin`; unrelated mapped
classes (a chain of foreign keys among themselves, none to ``customer``) can
be added to the MetaData for the discovery case.  Those are never created in
the database: discovery only reads the MetaData.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    BigInteger,
    Connection,
    Engine,
    ForeignKey,
    ForeignKeyConstraint,
    Integer,
    MetaData,
    String,
    Table,
    case,
    cast,
    func,
    insert,
    literal,
    literal_column,
    select,
    true,
    union_all,
)
from sqlalchemy.exc import SAWarning
from sqlalchemy.orm import DeclarativeBase, mapped_column, relationship
from sqlalchemy.schema import AddConstraint, CreateTable

from sa_references import ReferencesMixin

#: the tables that reference ``customer``
REFERENCING_TABLES = ("orders", "invoices", "tickets", "addresses", "notes")

Pair = tuple[int, int]


class VerificationError(AssertionError):
    """A contender left the data in a wrong state; its time is not reported."""


@dataclass
class Models:
    """One declarative registry: ``Customer``, the referencing classes, unrelated classes."""

    base: type[DeclarativeBase]
    customer: type[Any]
    referencing: list[type[Any]]
    unrelated: list[type[Any]] = field(default_factory=list)

    @property
    def metadata(self) -> MetaData:
        return self.base.metadata

    @property
    def customer_table(self) -> Table:
        table: Table = self.customer.__table__
        return table

    @property
    def referencing_tables(self) -> list[Table]:
        return [cls.__table__ for cls in self.referencing]

    @property
    def tables(self) -> list[Table]:
        """The tables that exist in the database (unrelated ones never do)."""
        return [self.customer_table, *self.referencing_tables]

    def dispose(self) -> None:
        """Forget the mappers, so that later cases do not scan them."""
        self.base.registry.dispose()


def build_models(unrelated: int = 0) -> Models:
    """A fresh registry and MetaData with the benchmark classes (and ``unrelated`` others)."""

    class Base(ReferencesMixin, DeclarativeBase):
        metadata = MetaData()

    customer_attrs: dict[str, Any] = {
        "__tablename__": "customer",
        "id": mapped_column(Integer, primary_key=True, autoincrement=False),
        "name": mapped_column(String(40), nullable=False),
        # the keeper this customer duplicates (NULL for keepers); not a foreign key
        "canonical_id": mapped_column(Integer, nullable=True),
    }
    for name in REFERENCING_TABLES:
        customer_attrs[name] = relationship(
            _class_name(name), back_populates="customer", lazy="select"
        )
    customer = type("Customer", (Base,), customer_attrs)
    referencing = []
    for name in REFERENCING_TABLES:
        attrs: dict[str, Any] = {
            "__tablename__": name,
            "id": mapped_column(Integer, primary_key=True),
            "customer_id": mapped_column(ForeignKey("customer.id"), nullable=False, index=True),
            # the customer this row must reference after the merges; read by the checks only
            "expected_customer_id": mapped_column(Integer, nullable=False),
            "payload": mapped_column(String(40), nullable=False),
            "customer": relationship("Customer", back_populates=name),
        }
        referencing.append(type(_class_name(name), (Base,), attrs))
    others = []
    for i in range(unrelated):
        attrs = {
            "__tablename__": f"unrelated_{i}",
            "id": mapped_column(Integer, primary_key=True),
            "name": mapped_column(String(40)),
        }
        if i:
            attrs["parent_id"] = mapped_column(ForeignKey(f"unrelated_{i - 1}.id"), index=True)
        others.append(type(f"Unrelated{i}", (Base,), attrs))
    return Models(Base, customer, referencing, others)


def _class_name(table: str) -> str:
    return table.title().rstrip("s")


@dataclass
class Dataset:
    """What was loaded: ``n`` duplicate pairs over ``2n`` customers."""

    n: int
    rows_per_record: int
    stride: int
    #: (duplicate id, keeper id), in merge order
    pairs: list[Pair]
    #: referencing rows per table
    rows_per_table: dict[str, int]

    @property
    def customers(self) -> int:
        return 2 * self.n

    @property
    def referencing_rows(self) -> int:
        return sum(self.rows_per_table.values())


def _stride(n: int) -> int:
    """A step coprime with ``n``, about 0.618 n: scatters the pairs over the key range."""
    stride = max(1, round(n * 0.618))
    while math.gcd(stride, n) != 1:
        stride += 1
    return stride


def make_pairs(n: int) -> tuple[int, list[Pair]]:
    stride = _stride(n)
    return stride, [(n + i, (i - 1) * stride % n + 1) for i in range(1, n + 1)]


def spread(rows_per_record: int, tables: int = len(REFERENCING_TABLES)) -> list[int]:
    """Rows per customer in each referencing table (``10`` over 5 tables: 2 each)."""
    base, extra = divmod(rows_per_record, tables)
    return [base + (1 if i < extra else 0) for i in range(tables)]


def recreate(connection: Connection, models: Models) -> list[ForeignKeyConstraint]:
    """Drop and create the benchmark tables, without their secondary indexes.

    On PostgreSQL the foreign keys are added after the load too (one validation
    pass instead of a trigger per row); they are returned, to be added then.
    """
    models.metadata.drop_all(connection, tables=models.tables)
    deferred: list[ForeignKeyConstraint] = []
    for table in models.tables:
        if connection.dialect.name == "postgresql":
            connection.execute(CreateTable(table, include_foreign_key_constraints=[]))
            deferred += table.foreign_key_constraints
        else:
            connection.execute(CreateTable(table))
    return deferred


def load(engine: Engine, models: Models, n: int, rows_per_record: int) -> Dataset:
    """Fresh tables and data for ``n`` merges; indexes built and statistics gathered."""
    stride, pairs = make_pairs(n)
    per_table = spread(rows_per_record)
    with engine.begin() as connection:
        deferred = recreate(connection, models)
        mysql = connection.dialect.name == "mysql"
        if mysql:
            # the rows are valid by construction; the constraints stay declared
            connection.exec_driver_sql("SET SESSION foreign_key_checks = 0")
        try:
            rows_per_table = _fill(connection, models, n, stride, per_table)
        finally:
            if mysql:
                connection.exec_driver_sql("SET SESSION foreign_key_checks = 1")
        for constraint in deferred:
            connection.execute(AddConstraint(constraint))
    analyze(engine, models.tables)
    return Dataset(n, rows_per_record, stride, pairs, rows_per_table)


def _fill(
    connection: Connection, models: Models, n: int, stride: int, per_table: list[int]
) -> dict[str, int]:
    """Insert the customers and the referencing rows, then build the indexes."""
    customer = models.customer_table
    _insert_customers(connection, customer, n, stride)
    rows_per_table = {}
    for table, copies in zip(models.referencing_tables, per_table):
        rows_per_table[table.name] = copies * 2 * n
        if not copies:
            continue
        numbers = union_all(*(select(literal(k).label("k")) for k in range(copies))).subquery()
        source = select(
            customer.c.id,
            func.coalesce(customer.c.canonical_id, customer.c.id),
            case((numbers.c.k == 0, "first"), else_="more"),
        ).join(numbers, true())
        connection.execute(
            insert(table).from_select(["customer_id", "expected_customer_id", "payload"], source)
        )
    for table in models.tables:
        for index in table.indexes:
            index.create(connection)
    return rows_per_table


def _insert_customers(connection: Connection, customer: Table, n: int, stride: int) -> None:
    """Customers ``1..2n`` generated by the database (no rows travel from Python).

    ``canonical_id`` follows :func:`make_pairs`: ``(i - 1) * stride % n + 1``
    for duplicate ``n + i``.
    """
    digits = union_all(*(select(literal_column(str(d)).label("d")) for d in range(10))).subquery(
        "digits"
    )
    places = max(1, len(str(2 * n)))
    aliases = [digits.alias(f"p{i}") for i in range(places)]
    number: Any = sum(a.c.d * 10**i for i, a in enumerate(aliases)) + 1
    numbers = select(number.label("i")).select_from(aliases[0])
    for alias in aliases[1:]:
        numbers = numbers.join(alias, true())
    generated = numbers.subquery("numbers")
    i = generated.c.i
    offset = cast(i - n - 1, BigInteger)
    source = select(
        i,
        literal("customer ") + cast(i, String(20)),
        case((i > n, offset * stride % n + 1), else_=None),
    ).where(i <= 2 * n)
    with warnings.catch_warnings():
        # the cross join of the digit tables is the point; MySQL's compiler flags it
        warnings.filterwarnings("ignore", "SELECT statement has a cartesian product", SAWarning)
        connection.execute(insert(customer).from_select(["id", "name", "canonical_id"], source))


def analyze(engine: Engine, tables: list[Table]) -> None:
    """Fresh planner statistics, so every contender runs against the same plans."""
    dialect = engine.dialect.name
    with engine.connect() as connection:
        if dialect == "postgresql":
            connection = connection.execution_options(isolation_level="AUTOCOMMIT")
            connection.exec_driver_sql("ANALYZE " + ", ".join(_quoted(engine, tables)))
        elif dialect in ("mysql", "mariadb"):
            connection.exec_driver_sql("ANALYZE TABLE " + ", ".join(_quoted(engine, tables)))
            connection.commit()
        else:
            connection.exec_driver_sql("ANALYZE")
            connection.commit()


def _quoted(engine: Engine, tables: list[Table]) -> list[str]:
    quote = engine.dialect.identifier_preparer.quote
    return [quote(t.name) for t in tables]


def drop(engine: Engine, models: Models) -> None:
    with engine.begin() as connection:
        models.metadata.drop_all(connection, tables=models.tables)


def verify(engine: Engine, models: Models, data: Dataset) -> None:
    """Raise :class:`VerificationError` unless every duplicate is merged and no row is lost.

    Per referencing table: the row total is unchanged, no row references a
    duplicate, and every row references exactly the keeper expected; no
    customer was deleted.
    """
    customer = models.customer_table
    problems = []
    with engine.connect() as connection:
        customers = connection.execute(select(func.count()).select_from(customer)).scalar_one()
        if customers != data.customers:
            problems.append(f"customer: {customers} rows, expected {data.customers}")
        for table in models.referencing_tables:
            total, wrong = connection.execute(
                select(
                    func.count(),
                    func.coalesce(
                        func.sum(
                            case((table.c.customer_id != table.c.expected_customer_id, 1), else_=0)
                        ),
                        0,
                    ),
                )
            ).one()
            on_duplicate = connection.execute(
                select(func.count())
                .select_from(table.join(customer, customer.c.id == table.c.customer_id))
                .where(customer.c.canonical_id.is_not(None))
            ).scalar_one()
            expected = data.rows_per_table[table.name]
            if total != expected:
                problems.append(f"{table.name}: {total} rows, expected {expected}")
            if on_duplicate:
                problems.append(f"{table.name}: {on_duplicate} rows still reference a duplicate")
            if wrong:
                problems.append(f"{table.name}: {wrong} rows reference the wrong customer")
    if problems:
        raise VerificationError("; ".join(problems))
