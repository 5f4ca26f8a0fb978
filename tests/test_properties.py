"""Generated schemas, random data, random merges, checked against a model of the result.

Each example builds a fresh schema -- 1 to 6 referencing tables on a new
``MetaData``, classes mapped on a fresh ``registry()``, every table named
``p<n>_...`` -- with single and composite foreign keys, keys to a unique
non-primary column, a self-referential key, unique constraints over foreign key
columns, association tables, tables without a primary key, tables holding two
keys to the merged table and joined inheritance; mapped association objects (a
primary key holding the foreign key, partitioned by it on PostgreSQL), Python
``onupdate`` columns, multi-tenant keys sharing a column (refused with
SharedColumnError when the tenant would change), tables without a primary key
holding NULLs and JSON, and child tables below the referencing rows whose keys
say ON DELETE CASCADE / SET NULL / NO ACTION (followed by on_conflict="delete",
listed in report.cascaded, or refused with DeleteRestrictedError) and, where
they include the re-pointed column (an order line's (order_id, customer_id)),
ON UPDATE CASCADE / NO ACTION / SET NULL (followed where enforced, else
SharedColumnError).  On servers the rows are now and then committed and another
connection renames a referred ``code`` after the session loaded (and MariaDB took
its REPEATABLE READ snapshot): the merge must use the locked row's values.  It
fills it with random rows, then runs a random sequence of merges: ``merge_into`` on ORM objects,
``merge_rows`` and ``merge_many`` on the tables, with every ``on_conflict``
strategy, ``delete``, ``dry_run`` and ``on_self_reference`` option.

After every step the whole database is compared with a Python model of what it
should contain (no row references a merged source unless an "ignore" left it
there, every other referencing row exists exactly once and points at the final
target, rows deleted as conflicts are exactly those the report lists, unrelated
rows are untouched), the report with the model's counts, and -- for ORM merges
-- every loaded attribute and collection of the identity map with a new
Session's view of the same rows.

A failure prints the schema and steps (``note``), a ``@reproduce_failure``
blob and, when the run was random, the seed: rerun the same backend with
``pytest tests/test_properties.py --hypothesis-seed=<seed> --dburi ...``, or
paste the blob decorator above the test.  ``SA_REFERENCES_EXAMPLES=<n>`` (default
50 per backend) searches longer; ``SA_REFERENCES_NO_SHRINK=1`` skips shrinking;
``--hypothesis-show-statistics`` shows what the steps did and which of the
KNOWN_BUGS (open bugs tolerated here, each pinned by a strict xfail at the end
of this file) the examples ran into.  The schema is created and dropped
outside the merge transaction (MariaDB commits implicitly on DDL); the data
lives inside a transaction rolled back after each example.
"""

from __future__ import annotations

import copy
import gc
import itertools
import os
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, event, given, note, settings
from hypothesis import strategies as st
from sqlalchemy import (
    DDL,
    JSON,
    Column,
    Engine,
    ForeignKey,
    ForeignKeyConstraint,
    Integer,
    MetaData,
    Select,
    String,
    Table,
    UniqueConstraint,
    inspect,
    select,
)
from sqlalchemy import event as sa_event
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import RelationshipProperty, Session, registry, relationship
from sqlalchemy.orm.exc import StaleDataError

from sa_references import (
    BatchReport,
    DeleteRestrictedError,
    MergeConflictError,
    MergeCycleError,
    MergeReport,
    ReferencesError,
    ReferencesSession,
    RowNotFoundError,
    SelfReferenceError,
    SharedColumnError,
    merge_into,
    merge_many,
    merge_rows,
    referencing_keys,
)
from tests.conftest import Backend
from tests.models import Customer, Order

EXAMPLES = int(os.environ.get("SA_REFERENCES_EXAMPLES", "50"))
#: SA_REFERENCES_NO_SHRINK=1 reports the first failing example as found (faster, larger)
PHASES = [p for p in Phase if not (p is Phase.shrink and os.environ.get("SA_REFERENCES_NO_SHRINK"))]

#: library bugs the property tolerates (each has a strict-xfail test below); remove once fixed
KNOWN_BUGS: dict[str, str] = {}
PAIR_SUFFIX = "_PAIR"  # class names of tables holding two keys to the merged table


def known_bug(name: str, detail: str) -> None:
    """Record that an example ran into one of KNOWN_BUGS (see --hypothesis-show-statistics)."""
    assert name in KNOWN_BUGS
    note(f"KNOWN_BUGS[{name!r}]{detail}")
    event(f"known bug: {name}")


ON_CONFLICT = ("raise", "delete", "ignore")
_prefixes = itertools.count(1)

Row = dict[str, Any]
Values = tuple[Any, ...]


# -- schema specification ------------------------------------------------------


@dataclass(frozen=True)
class RefSpec:
    """One referencing table."""

    #: plain (id, fk, val, val2) | pair (id, a fk, b fk) | assoc (fk, item_id) | assocobj
    #: (assoc, mapped: a primary key holding the foreign key) | nopk (fk, tag, doc JSON)
    #: | tenant (id, k1, ref_k2, alt_k2: two keys sharing the tenant ``k1``)
    kind: str
    #: what the key refers to: the primary key, the unique ``code`` or the subclass table
    target: str
    nullable: bool
    #: plain: none|fk|fk_val|two; pair: none|both; assoc(obj): pk; nopk: none|fk_tag
    unique: str
    #: plain: a ``touched`` column whose Python ``onupdate`` sets 1
    onupdate: bool = False
    #: a child table ``c<n>`` below the rows: its key's ON DELETE (none: no child table)
    child: str = "none"
    #: the child key's ON UPDATE, where it refers to the re-pointed column (assoc(obj), and
    #: plain with ``child_wide``)
    child_update: str = "cascade"
    #: plain: the child's key is (id, fk) -> a unique (id, fk) of the row (an order line's
    #: (order_id, customer_id) -> orders(id, customer_id)), not (id) -> id
    child_wide: bool = False
    #: assoc(obj), on PostgreSQL: partitioned by HASH of the foreign key's first column
    #: (re-pointing moves rows between partitions); other backends ignore it
    partitioned: bool = False


@dataclass(frozen=True)
class SchemaSpec:
    composite: bool  # the merged table's primary key is (k1, k2)
    code: bool  # it has a unique, nullable, non-primary ``code`` column
    self_ref: bool  # it has a self-referential ``parent`` key
    inheritance: bool  # a joined-inheritance subclass table ``sub``
    refs: tuple[RefSpec, ...]


UNIQUES = {
    "plain": ["none", "fk", "fk_val", "two"],
    "pair": ["none", "both"],
    "assoc": ["pk"],
    "assocobj": ["pk"],
    "nopk": ["none", "fk_tag"],
    "tenant": ["none"],
}
CHILD_RULES = ["none", "cascade", "cascade", "set null", "no action"]


@st.composite
def schema_specs(draw: Any) -> SchemaSpec:
    composite = draw(st.booleans())
    inheritance = not composite and draw(st.booleans())
    code = draw(st.booleans())
    self_ref = draw(st.booleans())
    targets = ["pk"] + ["code"] * code + ["sub"] * inheritance
    refs = []
    kinds = ["plain", "plain", "pair", "assoc", "assocobj", "nopk"] + ["tenant"] * composite
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(kinds))
        unique = draw(st.sampled_from(UNIQUES[kind]))
        below = kind in ("assoc", "assocobj") or (kind == "plain" and unique != "none")
        wide = kind == "plain" and draw(st.booleans())
        below = below or wide
        refs.append(
            RefSpec(
                kind=kind,
                target="pk" if kind == "tenant" else draw(st.sampled_from(targets)),
                nullable=kind not in ("assoc", "assocobj") and draw(st.booleans()),
                unique=unique,
                onupdate=kind == "plain" and draw(st.booleans()),
                child=draw(st.sampled_from(CHILD_RULES)) if below else "none",
                child_update=(
                    draw(st.sampled_from(["cascade"] * 6 + ["no action", "set null"]))
                    if below and (kind != "plain" or wide)
                    else "cascade"
                ),
                child_wide=wide,
                partitioned=kind in ("assoc", "assocobj") and draw(st.booleans()),
            )
        )
    return SchemaSpec(composite, code, self_ref, inheritance, tuple(refs))


# -- building the schema -------------------------------------------------------


@dataclass
class MKey:
    """The model's view of one referencing key (built from the Table, not the library)."""

    name: str
    table: str
    cols: tuple[str, ...]
    ref_table: str
    ref_cols: tuple[str, ...]
    uniques: tuple[tuple[str, ...], ...]
    identity: tuple[str, ...]
    #: the referential actions, upper case ("NO ACTION" when none is declared)
    ondelete: str = "NO ACTION"
    onupdate: str = "NO ACTION"
    #: positions in ``cols`` of columns another key of the row (or its primary key) holds
    shared: tuple[int, ...] = ()


@dataclass
class Schema:
    spec: SchemaSpec
    prefix: str
    metadata: MetaData
    registry: registry
    tables: dict[str, Table]  # short name -> Table
    pk: tuple[str, ...]
    classes: dict[str, Any] = field(default_factory=dict)
    keys: list[MKey] = field(default_factory=list)  # keys to main/sub, library order
    #: another connection changed committed rows: snapshots read the current rows (on
    #: MariaDB a plain read answers from the REPEATABLE READ snapshot taken before)
    current_reads: bool = False
    all_fks: list[MKey] = field(default_factory=list)  # every FK, for delete checks

    @property
    def main(self) -> Table:
        return self.tables["main"]

    def short(self, table: Table) -> str:
        return table.name[len(self.prefix) :]


def _fk_columns(
    spec: SchemaSpec, target: str, prefix: str, nullable: bool, primary_key: bool
) -> list[Column[Any]]:
    kw: dict[str, Any] = {"nullable": nullable, "primary_key": primary_key}
    if primary_key:
        kw["autoincrement"] = False
    if target == "code":
        return [Column(f"{prefix}code", String(10), **kw)]
    if target == "pk" and spec.composite:
        return [Column(f"{prefix}k1", Integer, **kw), Column(f"{prefix}k2", Integer, **kw)]
    return [Column(f"{prefix}id", Integer, **kw)]


def build_schema(spec: SchemaSpec) -> Schema:
    prefix = f"p{os.getpid() % 10000}_{next(_prefixes)}_"
    md = MetaData()
    pk = ("k1", "k2") if spec.composite else ("id",)
    main_cols: list[Any] = [Column(c, Integer, primary_key=True, autoincrement=False) for c in pk]
    if spec.code:
        main_cols.append(Column("code", String(10), unique=True, nullable=True))
    if spec.inheritance:
        main_cols.append(Column("type", String(10), nullable=False))
    if spec.self_ref:
        parents = [f"parent_{c}" for c in pk]
        main_cols += [Column(p, Integer, nullable=True) for p in parents]
        main_cols.append(ForeignKeyConstraint(parents, [f"{prefix}main.{c}" for c in pk]))
    tables = {"main": Table(f"{prefix}main", md, *main_cols)}
    if spec.inheritance:
        tables["sub"] = Table(
            f"{prefix}sub",
            md,
            Column("id", Integer, ForeignKey(f"{prefix}main.id"), primary_key=True),
            Column("level", Integer, nullable=False, default=0),
        )
    if any(r.kind in ("assoc", "assocobj") for r in spec.refs):
        tables["item"] = Table(
            f"{prefix}item", md, Column("id", Integer, primary_key=True, autoincrement=False)
        )
    for i, ref in enumerate(spec.refs):
        short = f"r{i}"
        referred_table = "sub" if ref.target == "sub" else "main"
        if ref.target == "code":
            referred = ["code"]
        elif ref.target == "sub":
            referred = ["id"]
        else:
            referred = list(pk)
        referred_names = [f"{prefix}{referred_table}.{c}" for c in referred]
        cols: list[Any] = []
        if ref.kind in ("plain", "pair", "tenant"):
            cols.append(Column("id", Integer, primary_key=True, autoincrement=False))
        fk_sets = []
        if ref.kind == "tenant":
            cols += [
                Column("k1", Integer, nullable=False),
                Column("ref_k2", Integer, nullable=ref.nullable),
                Column("alt_k2", Integer, nullable=True),
            ]
            for other in ("ref_k2", "alt_k2"):
                cols.append(ForeignKeyConstraint(["k1", other], referred_names))
        sides = {"pair": ("a_", "b_"), "tenant": ()}.get(ref.kind, ("ref_",))
        for side in sides:
            in_pk = ref.kind in ("assoc", "assocobj")
            fk = _fk_columns(spec, ref.target, side, ref.nullable, in_pk)
            cols += fk
            fk_sets.append([c.name for c in fk])
            # nullable keys to the unique code follow a rename (see rename_meanwhile;
            # MariaDB refuses ON UPDATE CASCADE from a NOT NULL column to a nullable one)
            onupdate = "CASCADE" if ref.target == "code" and ref.nullable else None
            cols.append(
                ForeignKeyConstraint([c.name for c in fk], referred_names, onupdate=onupdate)
            )
        fk_names = fk_sets[0] if fk_sets else []
        if ref.kind == "plain":
            cols += [
                Column("val", Integer, nullable=False),
                Column("val2", Integer, nullable=False),
            ]
            if ref.unique == "fk":
                cols.append(UniqueConstraint(*fk_names))
            if ref.unique in ("fk_val", "two"):
                cols.append(UniqueConstraint(*fk_names, "val"))
            if ref.unique == "two":
                cols.append(UniqueConstraint(*fk_names, "val2"))
            if ref.onupdate:
                cols.append(Column("touched", Integer, nullable=False, default=0, onupdate=1))
            if ref.child_wide:
                cols.append(UniqueConstraint("id", *fk_names))
        elif ref.kind == "pair" and ref.unique == "both":
            cols.append(UniqueConstraint(*fk_sets[0], *fk_sets[1]))
        elif ref.kind in ("assoc", "assocobj"):
            cols.append(
                Column("item_id", Integer, ForeignKey(f"{prefix}item.id"), primary_key=True)
            )
        elif ref.kind == "nopk":
            cols.append(Column("tag", Integer, nullable=True))
            cols.append(Column("doc", JSON(none_as_null=True), nullable=True))
            if ref.unique == "fk_tag":
                cols.append(UniqueConstraint(*fk_names, "tag"))
        kw = {"postgresql_partition_by": f"HASH ({fk_names[0]})"} if ref.partitioned else {}
        tables[short] = parent = Table(f"{prefix}{short}", md, *cols, **kw)
        for n in range(2) if ref.partitioned else ():
            partition = DDL(
                f"CREATE TABLE {parent.name}_p{n} PARTITION OF {parent.name} "
                f"FOR VALUES WITH (MODULUS 2, REMAINDER {n})"
            )
            sa_event.listen(parent, "after_create", partition.execute_if(dialect="postgresql"))
        if ref.child != "none":
            referred_cols = [c.name for c in parent.primary_key.columns]
            if ref.child_wide:
                referred_cols = ["id", *fk_names]
            child_cols = [f"p_{c}" for c in referred_cols]
            rules = {"no action": None}
            tables[f"c{i}"] = Table(
                f"{prefix}c{i}",
                md,
                Column("id", Integer, primary_key=True, autoincrement=False),
                *(
                    Column(c, parent.c[r].type, nullable=True)
                    for c, r in zip(child_cols, referred_cols)
                ),
                ForeignKeyConstraint(
                    child_cols,
                    [f"{parent.name}.{c}" for c in referred_cols],
                    ondelete=rules.get(ref.child, ref.child.upper()),
                    onupdate=rules.get(ref.child_update, ref.child_update.upper()),
                ),
            )
    schema = Schema(spec, prefix, md, registry(), tables, pk)
    _model_keys(schema)
    _map_classes(schema)
    return schema


def _model_keys(schema: Schema) -> None:
    keys = []
    for table in schema.metadata.tables.values():
        short = schema.short(table)
        pk = tuple(c.name for c in table.primary_key.columns)
        uniques = [pk] if pk else []
        uniques += [
            tuple(c.name for c in u.columns)
            for u in sorted(
                (u for u in table.constraints if isinstance(u, UniqueConstraint)),
                key=lambda u: tuple(c.name for c in u.columns),
            )
        ]
        identity = next(
            (u for u in uniques if all(not table.c[c].nullable for c in u)),
            tuple(c.name for c in table.columns if not isinstance(c.type, JSON)),
        )
        for fk in table.foreign_key_constraints:
            cols = tuple(c.name for c in fk.columns)
            others = [
                {c.name for c in o.columns} for o in table.foreign_key_constraints if o is not fk
            ]
            inside_pk = set(cols) <= set(pk)
            shared = tuple(
                n
                for n, c in enumerate(cols)
                if any(c in o for o in others) or (c in pk and not inside_pk)
            )
            key = MKey(
                name=f"{table.name}({', '.join(cols)})",
                table=short,
                cols=cols,
                ref_table=schema.short(fk.referred_table),
                ref_cols=tuple(e.column.name for e in fk.elements),
                uniques=tuple(u for u in uniques if set(u) & set(cols)),
                identity=identity,
                ondelete=(fk.ondelete or "NO ACTION").upper(),
                onupdate=(fk.onupdate or "NO ACTION").upper(),
                shared=shared,
            )
            schema.all_fks.append(key)
            inheritance = short == "sub" and key.ref_table == "main"
            if key.ref_table in ("main", "sub") and not inheritance:
                keys.append(key)
    keys.sort(key=lambda k: (schema.prefix + k.table, k.cols, schema.prefix + k.ref_table))
    schema.keys = keys


def _new_class(name: str, base: type = object) -> type:
    def __repr__(self: Any) -> str:
        return f"<{name} {inspect(self).identity}>"

    return type(name, (base,), {"__repr__": __repr__})


def _map_classes(schema: Schema) -> None:
    spec, reg, t = schema.spec, schema.registry, schema.tables
    main_cls = _new_class("Main")
    kw: dict[str, Any] = {}
    if spec.inheritance:
        kw = {"polymorphic_on": t["main"].c.type, "polymorphic_identity": "main"}
    main_mapper = reg.map_imperatively(main_cls, t["main"], **kw)
    classes = {"main": main_cls}
    if spec.inheritance:
        sub_cls = _new_class("Sub", main_cls)
        reg.map_imperatively(sub_cls, t["sub"], inherits=main_cls, polymorphic_identity="sub")
        classes["sub"] = sub_cls
    if "item" in t:
        classes["item"] = _new_class("Item")
        reg.map_imperatively(classes["item"], t["item"])
    if spec.self_ref:
        pk = [t["main"].c[c] for c in schema.pk]
        parents = [t["main"].c[f"parent_{c}"] for c in schema.pk]
        main_mapper.add_property(
            "parent",
            relationship(main_cls, remote_side=pk, foreign_keys=parents, back_populates="children"),
        )
        main_mapper.add_property(
            "children", relationship(main_cls, foreign_keys=parents, back_populates="parent")
        )
    for i, ref in enumerate(spec.refs):
        short = f"r{i}"
        table = t[short]
        target_cls = classes["sub" if ref.target == "sub" else "main"]
        target_mapper = inspect(target_cls)
        if ref.kind == "assoc":
            target_mapper.add_property(
                f"{short}_items",
                relationship(classes["item"], secondary=table, back_populates=f"{short}_owners"),
            )
            inspect(classes["item"]).add_property(
                f"{short}_owners",
                relationship(target_cls, secondary=table, back_populates=f"{short}_items"),
            )
            continue
        if ref.kind in ("nopk", "tenant"):
            continue  # like an association table no class maps
        suffix = PAIR_SUFFIX if ref.kind == "pair" else ""
        cls = classes[short] = _new_class(short.upper() + suffix)
        mapper = reg.map_imperatively(cls, table)
        for side in ("a", "b") if ref.kind == "pair" else ("ref",):
            fk = [c for c in table.columns if c.name.startswith(f"{side}_")]
            collection = f"{short}_{side}"
            mapper.add_property(
                side, relationship(target_cls, foreign_keys=fk, back_populates=collection)
            )
            target_mapper.add_property(
                collection,
                relationship(
                    cls,
                    foreign_keys=fk,
                    back_populates=side,
                    uselist=not (ref.kind == "plain" and ref.unique == "fk"),
                ),
            )
        if ref.kind == "assocobj":
            mapper.add_property("item", relationship(classes["item"]))
        if ref.child != "none":
            child = classes[f"c{i}"] = _new_class(f"C{i}")
            child_mapper = reg.map_imperatively(child, t[f"c{i}"])
            child_mapper.add_property("parent", relationship(cls, back_populates="children"))
            mapper.add_property("children", relationship(child, back_populates="parent"))
    reg.configure()
    schema.classes = classes


# -- the model -----------------------------------------------------------------


def vals(row: Row, cols: tuple[str, ...]) -> Values:
    return tuple(row[c] for c in cols)


class Expected(Exception):
    """What the model says the library must raise (and that nothing changes)."""

    def __init__(self, kind: type[BaseException], why: str) -> None:
        super().__init__(f"{kind.__name__}: {why}")
        self.kind = kind
        self.why = why


@dataclass
class Outcome:
    rows: dict[str, list[Row]]
    results: dict[str, tuple[int, int, int, frozenset[Values]]] = field(default_factory=dict)
    pairs: list[tuple[Values, Values]] = field(default_factory=list)
    #: per key: what ON DELETE rules did to rows below its deleted conflicts
    cascaded: dict[str, dict[tuple[str, str], int]] = field(default_factory=dict)


class Model:
    def __init__(self, schema: Schema, rows: dict[str, list[Row]], foreign_keys: bool) -> None:
        self.schema = schema
        self.rows = rows
        self.foreign_keys = foreign_keys

    # -- lookups
    def main_row(self, rows: dict[str, list[Row]], pk: Values) -> Row:
        return next(r for r in rows["main"] if vals(r, self.schema.pk) == pk)

    def is_sub(self, pk: Values) -> bool:
        return any(r["id"] == pk[0] for r in self.rows.get("sub", []))

    def alive(self) -> list[Values]:
        return sorted(vals(r, self.schema.pk) for r in self.rows["main"])

    def referred(self, rows: dict[str, list[Row]], pk: Values, key: MKey) -> Values:
        main = self.main_row(rows, pk)
        return vals(main, key.ref_cols)  # sub.id == main.id

    @staticmethod
    def refs(rows: list[Row], cols: tuple[str, ...], values: Values) -> list[Row]:
        return [r for r in rows if vals(r, cols) == values]

    # -- conflict detection
    @staticmethod
    def clashes(new: Row, others: list[Row], uniques: tuple[tuple[str, ...], ...]) -> bool:
        for u in uniques:
            if any(new[c] is None for c in u):
                continue
            if any(all(o[c] == new[c] for c in u) for o in others):
                return True
        return False

    @staticmethod
    def own_rows(table: list[Row], key: MKey, mapping: dict[Values, Values]) -> list[Row]:
        """Rows of targets that reference their own source (a self-referential key)."""
        if key.table != key.ref_table:
            return []
        return [
            r
            for r in table
            if vals(r, key.cols) in mapping and vals(r, key.ref_cols) == mapping[vals(r, key.cols)]
        ]

    def dependents(self, short: str) -> list[MKey]:
        """The keys that refer to rows of table ``short``."""
        return [fk for fk in self.schema.all_fks if fk.ref_table == short]

    def _apply_key(
        self, rows: dict[str, list[Row]], key: MKey, mapping: dict[Values, Values], on_conflict: str
    ) -> tuple[tuple[int, int, int, frozenset[Values]], dict[tuple[str, str], int]]:
        """Re-point one key's rows (greedy in identity order), as a correct merge would."""
        table = rows[key.table]
        for row in self.own_rows(table, key, mapping):
            for c in key.cols:
                row[c] = None
        moving = [r for r in table if vals(r, key.cols) in mapping]
        moving_ids = {id(r) for r in moving}
        staying = [r for r in table if id(r) not in moving_ids]
        accepted: list[Row] = []
        moved: list[tuple[Row, Row]] = []
        conflicts: list[Row] = []
        ordered = sorted(moving, key=lambda r: sort_key(vals(r, key.identity)))
        touched = "touched" in self.schema.tables[key.table].c
        for row in ordered:
            new = {**row, **dict(zip(key.cols, mapping[vals(row, key.cols)]))}
            if touched:
                new["touched"] = 1  # the column's Python onupdate
                event("onupdate column set")
            if self.clashes(new, staying + accepted, key.uniques):
                conflicts.append(row)
            else:
                accepted.append(new)
                moved.append((row, new))
        cascaded: dict[tuple[str, str], int] = {}
        if conflicts and on_conflict == "delete":
            cascaded = self._on_delete(rows, key.table, conflicts)
        identities = frozenset(vals(r, key.identity) for r in conflicts)
        conflict_ids = {id(r) for r in conflicts}
        result_rows = list(staying)
        for row in ordered:
            if id(row) in conflict_ids and on_conflict != "delete":
                result_rows.append(row)
        result_rows += accepted
        table[:] = result_rows
        self._on_update(rows, key, moved)
        deleted = len(conflicts) if on_conflict == "delete" else 0
        left = len(conflicts) if on_conflict == "ignore" else 0
        return (len(accepted), deleted, left, identities), cascaded

    def _on_delete(
        self, rows: dict[str, list[Row]], short: str, deleted: list[Row]
    ) -> dict[tuple[str, str], int]:
        """What the ON DELETE rules do below ``deleted`` rows of ``short`` (refused where
        they refuse, or where keys are not enforced and rows would be left dangling)."""
        effects: dict[tuple[str, str], int] = {}
        for dep in self.dependents(short):
            referred = {vals(r, dep.ref_cols) for r in deleted}
            hit = [c for c in rows[dep.table] if vals(c, dep.cols) in referred]
            if not hit:
                continue
            name = self.schema.tables[dep.table].fullname
            if not self.foreign_keys or dep.ondelete not in ("CASCADE", "SET NULL"):
                event(f"ON DELETE {dep.ondelete}: refused")
                raise Expected(DeleteRestrictedError, f"{dep.name} references deleted rows")
            event(f"ON DELETE {dep.ondelete}: followed")
            if dep.ondelete == "CASCADE":
                hit_ids = {id(c) for c in hit}
                rows[dep.table][:] = [c for c in rows[dep.table] if id(c) not in hit_ids]
                effects[(name, "delete")] = effects.get((name, "delete"), 0) + len(hit)
                for (table, action), count in self._on_delete(rows, dep.table, hit).items():
                    effects[(table, action)] = effects.get((table, action), 0) + count
            else:
                for c in hit:
                    c.update(dict.fromkeys(dep.cols))
                effects[(name, "set null")] = effects.get((name, "set null"), 0) + len(hit)
        return effects

    def _on_update(
        self, rows: dict[str, list[Row]], key: MKey, moved: list[tuple[Row, Row]]
    ) -> None:
        """Rows referring to a re-pointed column follow under an enforced ON UPDATE CASCADE
        (anything else was refused before the merge wrote: :meth:`_refuse_unfollowed`)."""
        for dep in self.dependents(key.table):
            if not set(dep.ref_cols) & set(key.cols):
                continue
            new_of = {vals(old, dep.ref_cols): vals(new, dep.ref_cols) for old, new in moved}
            for child in rows[dep.table]:
                values = vals(child, dep.cols)
                if values in new_of and new_of[values] != values:
                    assert self.foreign_keys and dep.onupdate == "CASCADE"
                    event("ON UPDATE CASCADE: followed")
                    child.update(zip(dep.cols, new_of[values]))

    def _refuse_shared(
        self, rows: dict[str, list[Row]], key: MKey, mapping: dict[Values, Values]
    ) -> None:
        """A column the key shares with another key or the primary key must keep its value."""
        changing = {s for s, t in mapping.items() if any(s[p] != t[p] for p in key.shared)}
        if key.shared and not changing and key.table.startswith("r"):
            event("shared column (tenant): kept")
        if changing and any(vals(r, key.cols) in changing for r in rows[key.table]):
            event("shared column (tenant): refused")
            raise Expected(SharedColumnError, f"{key.name} would change a shared column")

    def _refuse_unfollowed(
        self, rows: dict[str, list[Row]], key: MKey, mapping: dict[Values, Values]
    ) -> None:
        """Rows referring to a column the key rewrites must follow (enforced ON UPDATE
        CASCADE): refused before anything is written otherwise."""
        for dep in self.dependents(key.table):
            positions = [n for n, c in enumerate(key.cols) if c in dep.ref_cols]
            changing = {s for s, t in mapping.items() if any(s[p] != t[p] for p in positions)}
            if not changing or (dep.onupdate == "CASCADE" and self.foreign_keys):
                continue
            referred = {
                vals(r, dep.ref_cols) for r in rows[key.table] if vals(r, key.cols) in changing
            }
            if any(vals(c, dep.cols) in referred for c in rows[dep.table]):
                event(f"ON UPDATE {dep.onupdate}: refused")
                raise Expected(SharedColumnError, f"{dep.name} would not follow {key.name}")

    def merge(
        self,
        keys: list[MKey],
        pairs: dict[Values, Values],
        *,
        on_conflict: str,
        on_self_reference: str,
        dry_run: bool,
        delete: list[tuple[str, Values]],
    ) -> Outcome:
        """Merge main rows ``pairs`` (source pk -> final target pk) through ``keys``.

        Raises :class:`Expected` when the library must refuse; checks are made on
        the state before anything is written, in the library's order.
        """
        rows = self.rows
        mappings: list[tuple[MKey, dict[Values, Values]]] = []
        for key in keys:
            mapping: dict[Values, Values] = {}
            for source, target in pairs.items():
                sv, tv = self.referred(rows, source, key), self.referred(rows, target, key)
                if None in sv or sv == tv:
                    continue
                if None in tv:
                    if self.refs(rows[key.table], key.cols, sv):
                        raise Expected(ReferencesError, f"target lacks {key.ref_cols} for {key}")
                    continue
                mapping[sv] = tv
            if mapping:
                mappings.append((key, mapping))
        for key, mapping in mappings:
            self._refuse_shared(rows, key, mapping)
            self._refuse_unfollowed(rows, key, mapping)
        for key, mapping in mappings:
            if self.own_rows(rows[key.table], key, mapping) and on_self_reference == "raise":
                raise Expected(SelfReferenceError, f"a target references its source via {key.name}")
        new_rows = copy.deepcopy(rows)
        outcome = Outcome(new_rows)
        conflicts = {}
        mode = "ignore" if on_conflict == "raise" else on_conflict
        for key, mapping in mappings:
            result, cascaded = self._apply_key(new_rows, key, mapping, mode)
            if cascaded:
                outcome.cascaded[key.name] = cascaded
            if on_conflict == "raise":
                if result[3]:
                    conflicts[key.name] = result[3]
                result = (result[0], 0, 0, result[3])
            outcome.results[key.name] = result
        if conflicts and not dry_run:
            raise Expected(MergeConflictError, f"conflicts {conflicts}")
        if dry_run:
            outcome.rows = rows
            return outcome
        self._delete(new_rows, delete)
        return outcome

    def _delete(self, rows: dict[str, list[Row]], delete: list[tuple[str, Values]]) -> None:
        removed = []
        for short, pk in delete:
            cols = self.schema.pk if short == "main" else ("id",)
            (row,) = [r for r in rows[short] if vals(r, cols) == pk]
            rows[short].remove(row)
            removed.append((short, row))
        if not self.foreign_keys:
            return
        for short, row in removed:
            for fk in self.schema.all_fks:
                values = vals(row, fk.ref_cols) if fk.ref_table == short else (None,)
                if None not in values and self.refs(rows[fk.table], fk.cols, values):
                    raise Expected(IntegrityError, f"{fk.name} still references deleted {row}")


def sort_key(values: Values) -> tuple[Any, ...]:
    return tuple(
        (v is None, v if v is None or isinstance(v, (int, str)) else repr(v)) for v in values
    )


def resolve_chains(pairs: list[tuple[Values, Values]]) -> dict[Values, Values]:
    """merge_many's documented pair semantics: chains resolve, cycles and forks are refused."""
    target_of: dict[Values, Values] = {}
    for source, target in pairs:
        if source == target:
            raise Expected(ReferencesError, f"{source} into itself")
        final = target_of.get(target, target)
        if final == source:
            raise Expected(MergeCycleError, f"cycle through {source}")
        if target_of.get(source, final) != final:
            raise Expected(ReferencesError, f"{source} has two targets")
        target_of[source] = final
        for other, other_target in target_of.items():
            if other_target == source:
                target_of[other] = final
    return target_of


# -- data ----------------------------------------------------------------------


def draw_rows(data: Any, schema: Schema) -> dict[str, list[Row]]:
    spec = schema.spec
    rows: dict[str, list[Row]] = {name: [] for name in schema.tables}
    n = data.draw(st.integers(3, 6), label="main rows")
    for i in range(1, n + 1):
        row: Row = {}
        if spec.composite:
            row.update(k1=data.draw(st.sampled_from([1, 2])), k2=i)
        else:
            row["id"] = i
        if spec.code:
            row["code"] = data.draw(st.sampled_from([f"c{i}", f"c{i}", None]))
        if spec.inheritance:
            row["type"] = data.draw(st.sampled_from(["main", "sub"]))
            if row["type"] == "sub":
                rows["sub"].append({"id": i, "level": 0})
        rows["main"].append(row)
    pks = [vals(r, schema.pk) for r in rows["main"]]
    if spec.self_ref:
        for row in rows["main"]:
            parent = data.draw(st.sampled_from([None, *pks]))
            for c, v in zip(schema.pk, parent or (None,) * len(schema.pk)):
                row[f"parent_{c}"] = v
    if "item" in rows:
        rows["item"] = [{"id": i} for i in (1, 2, 3)]
    for i, ref in enumerate(spec.refs):
        short = f"r{i}"
        table = schema.tables[short]
        if ref.target == "code":
            choices = [(r["code"],) for r in rows["main"] if r["code"] is not None]
        elif ref.target == "sub":
            choices = [(r["id"],) for r in rows["sub"]]
        else:
            choices = list(pks)
        width = 2 if ref.target == "pk" and spec.composite else 1
        if ref.nullable:
            choices.append((None,) * width)
        if not choices:
            continue
        fk = st.sampled_from(choices)
        small = st.integers(0, 1)
        if ref.kind == "tenant":
            tenant = st.sampled_from(pks).flatmap(
                lambda pk, nullable=ref.nullable: st.tuples(
                    st.just(pk[0]),
                    st.sampled_from([pk[1]] + [None] * nullable),
                    st.sampled_from([None] + [k2 for k1, k2 in pks if k1 == pk[0]]),
                )
            )
        shape = {
            "plain": st.tuples(fk, small, small, *[st.just(0)] * ref.onupdate),
            "pair": st.tuples(fk, fk),
            "assoc": st.tuples(fk, st.integers(1, 3)),
            "assocobj": st.tuples(fk, st.integers(1, 3)),
            "nopk": st.tuples(
                fk, st.sampled_from([0, 1, None]), st.sampled_from([None, {"a": 1}, [1, 2]])
            ),
            "tenant": tenant if ref.kind == "tenant" else st.nothing(),
        }[ref.kind]
        drawn = data.draw(st.lists(shape, max_size=6), label=f"{short} rows")
        names = [c.name for c in table.columns if c.foreign_keys and c.name != "item_id"]
        candidates = []
        for n_row, values in enumerate(drawn, 1):
            flat: list[Any] = []
            for v in values:
                flat.extend(v if isinstance(v, tuple) and ref.kind != "tenant" else (v,))
            if ref.kind in ("plain", "pair", "tenant"):
                flat.insert(0, n_row)
            row = dict(zip([c.name for c in table.columns], flat))
            candidates.append(row)
        assert all(len(r) == len(table.columns) for r in candidates), (names, candidates)
        uniques = [tuple(c.name for c in table.primary_key.columns)] if table.primary_key else []
        uniques += [
            tuple(c.name for c in u.columns)
            for u in table.constraints
            if isinstance(u, UniqueConstraint)
        ]
        kept: list[Row] = []
        for row in candidates:
            if not Model.clashes(row, kept, tuple(u for u in uniques if u)):
                kept.append(row)
        rows[short] = kept
        if ref.child != "none":
            child = schema.tables[f"c{i}"]
            (child_fk,) = child.foreign_key_constraints
            referred = [e.column.name for e in child_fk.elements]
            width = len(referred)
            # most parent rows get a child, so that the rules fire below a clash
            parents = [vals(r, tuple(referred)) for r in kept] + [(None,) * width]
            drawn_children = [
                p for p in parents if data.draw(st.integers(0, 3), label=f"c{i} row") > 0
            ]
            names = [c.name for c in child.columns]
            rows[f"c{i}"] = [dict(zip(names, (n, *p))) for n, p in enumerate(drawn_children, 1)]
    return rows


def insert_rows(connection: Any, schema: Schema, rows: dict[str, list[Row]]) -> None:
    main = schema.tables["main"]
    parent_cols = [f"parent_{c}" for c in schema.pk]
    plain = [{**r, **dict.fromkeys(parent_cols, None)} for r in rows["main"]]
    if schema.spec.self_ref:
        connection.execute(main.insert(), plain)
        for row in rows["main"]:
            if row[parent_cols[0]] is not None:
                where = [main.c[c] == row[c] for c in schema.pk]
                connection.execute(
                    main.update().where(*where).values({c: row[c] for c in parent_cols})
                )
    else:
        connection.execute(main.insert(), rows["main"])
    for short, table in schema.tables.items():
        if short != "main" and rows.get(short):
            connection.execute(table.insert(), rows[short])


def snapshot(connection: Any, schema: Schema) -> dict[str, list[Values]]:
    found = {}
    for short, table in sorted(schema.tables.items()):
        statement = select(table)
        if schema.current_reads and connection.dialect.name == "mysql":
            statement = statement.with_for_update(read=True)
        found[short] = sorted((tuple(r) for r in connection.execute(statement)), key=sort_key)
    return found


def _cascades_through_one_unique_key(changed: list[tuple[MKey, Row, Row]]) -> bool:
    """Whether two keys carry the rename into one row, and a unique key holds both."""
    for first, (fk, _, row) in enumerate(changed):
        for other, _, again in changed[first + 1 :]:
            spanned = set(fk.cols) | set(other.cols)
            if again is row and any(spanned <= set(u) for u in fk.uniques):
                return True
    return False


def rename_meanwhile(engine: Engine, model: Model, step: Step, data: Any) -> bool:
    """Another connection renames the ``code`` of the first pair's source or target and
    commits, after the session loaded its objects (and, on MariaDB, after the transaction
    took its REPEATABLE READ snapshot): the merge must read the referred values from the
    row it locks.  The keys to ``code`` are ON UPDATE CASCADE: the rows referring to the
    old value follow it (nothing is renamed where a child's key would not follow)."""
    schema = model.schema
    pk = data.draw(st.sampled_from(step.pairs[0]), label="renamed row")
    rows = copy.deepcopy(model.rows)
    main = model.main_row(rows, pk)
    old, new = main["code"], f"n{pk[-1]}"
    main["code"] = new
    changed: list[tuple[MKey, Row, Row]] = []
    for fk in schema.all_fks:
        if fk.ref_table == "main" and fk.ref_cols == ("code",) and old is not None:
            for row in rows[fk.table]:
                if row[fk.cols[0]] == old:
                    if fk.onupdate != "CASCADE":
                        return False  # the database refuses the rename
                    changed.append((fk, dict(row), row))
                    row[fk.cols[0]] = new
    if engine.dialect.name == "mysql" and _cascades_through_one_unique_key(changed):
        # InnoDB refuses to cascade a rename into a row through two keys that a unique
        # key of that row spans together (error 1452): the rename does not happen
        return False
    for fk, before, after in changed:
        for dep in model.dependents(fk.table):
            if not set(dep.ref_cols) & set(fk.cols):
                continue
            hit = [c for c in rows[dep.table] if vals(c, dep.cols) == vals(before, dep.ref_cols)]
            if hit and dep.onupdate != "CASCADE":
                return False
            for child in hit:
                child.update(zip(dep.cols, vals(after, dep.ref_cols)))
    main_table = schema.main
    with engine.begin() as other:
        if engine.dialect.name == "postgresql":
            other.exec_driver_sql("SET lock_timeout = '10s'")
        else:
            other.exec_driver_sql("SET SESSION innodb_lock_wait_timeout = 10")
        where = [main_table.c[c] == v for c, v in zip(schema.pk, pk)]
        other.execute(main_table.update().where(*where).values(code=new))
    model.rows.clear()
    model.rows.update(rows)
    schema.current_reads = True
    event(
        f"code renamed by another connection ({'source' if pk == step.pairs[0][0] else 'target'})"
    )
    return True


def model_snapshot(schema: Schema, rows: dict[str, list[Row]]) -> dict[str, list[Values]]:
    return {
        short: sorted(
            (tuple(r[c.name] for c in table.columns) for r in rows.get(short, [])), key=sort_key
        )
        for short, table in sorted(schema.tables.items())
    }


Summary = dict[str, tuple[int, int, int, frozenset[Values]]]


def summary(report: MergeReport | BatchReport) -> Summary:
    found = {}
    for result in report.keys:
        rows = frozenset(tuple(row) for c in result.conflicts for row in c.rows)
        if result.repointed or result.deleted or result.left or rows:
            found[result.key.name] = (result.repointed, result.deleted, result.left, rows)
    return found


def cascades(report: MergeReport | BatchReport) -> dict[str, dict[tuple[str, str], int]]:
    """Per key: what the ON DELETE rules did below the conflicts it deleted."""
    return {
        r.key.name: {(c.table, c.action): c.count for c in r.cascaded}
        for r in report.keys
        if r.cascaded
    }


def nontrivial(
    results: dict[str, tuple[int, int, int, frozenset[Values]]],
) -> dict[str, tuple[int, int, int, frozenset[Values]]]:
    return {k: v for k, v in results.items() if v[0] or v[1] or v[2] or v[3]}


# -- the identity map against a fresh Session ------------------------------------


def _identity(obj: Any) -> Any:
    if obj is None:
        return None
    state = inspect(obj)
    return (state.mapper.base_mapper.class_.__name__, state.identity)


@dataclass
class Stale:
    obj: Any
    attr: str
    memory: Any
    database: Any
    #: members of a collection in memory that are no longer in the session
    detached: list[Any] = field(default_factory=list)

    def __str__(self) -> str:
        found = f"{self.obj!r}.{self.attr}: memory {self.memory!r}, database {self.database!r}"
        return found + (f" (detached: {self.detached!r})" if self.detached else "")


def identity_map_problems(session: Session) -> list[Stale]:
    """Every loaded attribute of the identity map that differs from a fresh Session's view."""
    problems = []
    connection = session.connection()
    with Session(bind=connection, join_transaction_mode="create_savepoint") as fresh:
        if session.info.get("current_reads") and connection.dialect.name == "mysql":
            sa_event.listen(fresh, "do_orm_execute", _current_read)
        for state in list(session.identity_map.all_states()):
            obj = state.obj()
            if obj is None:
                continue
            loaded = [p for p in state.mapper.attrs if p.key in state.dict]
            if not loaded:
                continue
            other = fresh.get(state.mapper.class_, state.identity)
            if other is None:
                problems.append(Stale(obj, "<row>", "loaded", "gone"))
                continue
            for prop in loaded:
                mine, theirs = state.dict[prop.key], getattr(other, prop.key)
                detached: list[Any] = []
                if isinstance(prop, RelationshipProperty):
                    if prop.uselist:
                        # Session.delete() leaves a deleted object in collections until they
                        # expire (the ORM's rule, delete=True included): not compared
                        mine = [m for m in mine if not inspect(m).deleted]
                        detached = [_identity(m) for m in mine if inspect(m).detached]
                        mine = sorted(map(_identity, mine), key=repr)
                        theirs = sorted(map(_identity, theirs), key=repr)
                    else:
                        mine, theirs = _identity(mine), _identity(theirs)
                if mine != theirs:
                    problems.append(Stale(obj, prop.key, mine, theirs, detached))
    return problems


def _current_read(state: Any) -> None:
    """Another connection changed committed rows: read them as they are now, not from the
    REPEATABLE READ snapshot (loaded objects may hold either: the library's locking reads
    bring current values)."""
    if state.is_select and isinstance(state.statement, Select):  # not a FromStatement
        state.statement = state.statement.with_for_update(read=True)


def check_identity_map(session: Session) -> None:
    """No loaded attribute differs from the database."""
    problems = identity_map_problems(session)
    assert not problems, "identity map differs from the database:\n" + "\n".join(map(str, problems))


def load_some(session: Session, schema: Schema, rnd: Any) -> None:
    """Load objects and a random selection of their attributes and relationships."""
    if rnd.random() < 0.3:
        session.expire_all()
    objects: list[Any] = []
    for short, cls in schema.classes.items():
        if short != "sub" and rnd.random() < 0.8:
            objects += session.scalars(select(cls)).all()
    for obj in objects:
        for prop in inspect(obj).mapper.attrs:
            if rnd.random() < 0.6:
                getattr(obj, prop.key)


# -- running a step --------------------------------------------------------------


def key_form(schema: Schema, pk: Values, how: int) -> Any:
    """A primary key as a scalar, a tuple, a list or a mapping."""
    if how == 0 and len(pk) == 1:
        return pk[0]
    if how == 1:
        return list(pk)
    if how == 2:
        return dict(zip(schema.pk, pk))
    return tuple(pk)


@dataclass
class Step:
    kind: str
    pairs: list[tuple[Values, Values]]
    on_conflict: str
    on_self_reference: str
    delete: bool
    dry_run: bool
    sync: Any = "evaluate"
    table: str = "main"
    form: int = 3
    session_bind: bool = False


def draw_step(data: Any, model: Model, kinds: list[str]) -> Step | None:
    alive = model.alive()
    if len(alive) < 2:
        return None
    kind = data.draw(st.sampled_from(kinds), label="kind")
    # "delete" twice as often: the ON DELETE rules below clashing rows only run there
    on_conflict = data.draw(st.sampled_from((*ON_CONFLICT, "delete")), label="on_conflict")
    pair = st.sampled_from(alive).flatmap(
        lambda s: st.tuples(st.just(s), st.sampled_from([a for a in alive if a != s]))
    )
    if kind in ("many", "session"):
        # mostly one target per source; a repeated source (a fork or a duplicate) now and then
        unique = data.draw(st.integers(0, 3), label="unique sources") > 0
        pairs = data.draw(
            st.lists(pair, min_size=1, max_size=3, unique_by=(lambda p: p[0]) if unique else None),
            label="pairs",
        )
    else:
        pairs = [data.draw(pair, label="pair")]
    step = Step(
        kind=kind,
        pairs=pairs,
        on_conflict=on_conflict,
        on_self_reference=data.draw(st.sampled_from(["raise", "null"]), label="self"),
        delete=data.draw(st.booleans(), label="delete"),
        dry_run=kind != "session" and data.draw(st.integers(0, 4), label="dry") == 0,
        form=data.draw(st.integers(0, 3), label="key form"),
        session_bind=data.draw(st.booleans(), label="session bind"),
    )
    if kind in ("orm", "session"):
        # the ORM deletes the source through the session; with rows left on it by "ignore"
        # it would null them out first, which is the ORM's business, not the merge's
        step.delete = step.delete and on_conflict != "ignore"
        step.sync = data.draw(st.sampled_from(["evaluate", "fetch", "expire"]), label="sync")
    if kind == "rows" and model.schema.spec.inheritance:
        source, target = pairs[0]
        if model.is_sub(source) and model.is_sub(target) and data.draw(st.booleans()):
            step.table = "sub"
            step.delete = False  # deleting a subclass row alone breaks the hierarchy
    return step


def expected_outcome(model: Model, step: Step) -> Outcome:
    schema = model.schema
    if step.kind == "many":
        target_of = resolve_chains(step.pairs)
        missing = [k for k in {*target_of, *target_of.values()} if k not in model.alive()]
        if missing:
            raise Expected(RowNotFoundError, f"not found: {missing}")
        keys = [k for k in schema.keys if k.ref_table == "main"]
        deleted = [("main", s) for s in target_of] if step.delete else []
        outcome = model.merge(
            keys,
            target_of,
            on_conflict=step.on_conflict,
            on_self_reference=step.on_self_reference,
            dry_run=step.dry_run,
            delete=deleted,
        )
        outcome.pairs = list(target_of.items())
        return outcome
    ((source, target),) = step.pairs
    if step.kind == "rows":
        keys = [k for k in schema.keys if k.ref_table == step.table]
        short_pk = (source[0],) if step.table == "sub" else source
        deleted = [(step.table, short_pk)] if step.delete else []
    else:
        source_sub = model.is_sub(source)
        if source_sub and not model.is_sub(target):
            raise Expected(ReferencesError, "target is not of the source's class")
        tables = {"main", "sub"} if source_sub else {"main"}
        keys = [k for k in schema.keys if k.ref_table in tables]
        deleted = [("sub", source)] * source_sub + [("main", source)] if step.delete else []
    return model.merge(
        keys,
        {source: target},
        on_conflict=step.on_conflict,
        on_self_reference=step.on_self_reference,
        dry_run=step.dry_run,
        delete=deleted,
    )


@dataclass
class Queued:
    """The model of a ReferencesSession's queue after ``step``'s merge_into calls."""

    raises: list[bool]  # per call: refused when queued
    duplicate: list[bool]  # per call: the same merge queued again
    target_of: dict[Values, Values]  # source -> final target
    groups: list[list[Values]]  # sources, grouped by class, in queue order
    group_of: dict[Values, int] = field(default_factory=dict)


def expected_queue(model: Model, step: Step) -> Queued:
    queued = Queued([], [], {}, [])
    entries: list[Values] = []
    for source, target in step.pairs:
        target_of = queued.target_of
        final = target_of.get(target, target)
        refused = (model.is_sub(source) and not model.is_sub(target)) or final == source
        previous = target_of.get(source)
        refused = refused or (previous is not None and previous != final)
        queued.raises.append(refused)
        queued.duplicate.append(not refused and previous is not None)
        if refused or previous is not None:
            continue
        for other, other_target in list(target_of.items()):
            if other_target == source:
                target_of[other] = final
        target_of[source] = final
        entries.append(source)
    by_class: dict[bool, list[Values]] = {}
    for source in entries:
        by_class.setdefault(model.is_sub(source), []).append(source)
    queued.groups = list(by_class.values())
    queued.group_of = {s: i for i, group in enumerate(queued.groups) for s in group}
    return queued


def expected_flush(model: Model, step: Step, queued: Queued) -> list[Outcome]:
    """Each class's batch in turn, then the deletes; raises Expected for the whole flush."""
    schema, current, outcomes = model.schema, model, []
    for group in queued.groups:
        tables = {"main", "sub"} if model.is_sub(group[0]) else {"main"}
        keys = [k for k in schema.keys if k.ref_table in tables]
        outcomes.append(
            current.merge(
                keys,
                {s: queued.target_of[s] for s in group},
                on_conflict=step.on_conflict,
                on_self_reference=step.on_self_reference,
                dry_run=False,
                delete=[],
            )
        )
        current = Model(schema, outcomes[-1].rows, model.foreign_keys)
    if step.delete and queued.groups:
        sources = [s for group in queued.groups for s in group]
        deleted = [("sub", s) for s in sources if model.is_sub(s)] + [("main", s) for s in sources]
        rows = copy.deepcopy(current.rows)
        current._delete(rows, deleted)
        outcomes.append(Outcome(rows))
    return outcomes


def run_step(session: Session, schema: Schema, step: Step) -> MergeReport:
    options = {
        "on_conflict": step.on_conflict,
        "on_self_reference": step.on_self_reference,
        "delete": step.delete,
        "dry_run": step.dry_run,
    }
    if step.kind == "orm":
        (source, target), cls = step.pairs[0], schema.classes["main"]
        source_obj = session.get(cls, source)
        target_obj = session.get(cls, target)
        return merge_into(source_obj, target_obj, synchronize_session=step.sync, **options)
    bind: Any = session if step.session_bind else session.connection()
    if step.kind == "rows":
        ((source, target),) = step.pairs
        if step.table == "sub":
            return merge_rows(bind, schema.tables["sub"], source[0], target[0], **options)
        source_key = key_form(schema, source, step.form)
        target_key = key_form(schema, target, 3 - step.form)
        return merge_rows(bind, schema.main, source_key, target_key, **options)
    pairs = [
        (key_form(schema, s, step.form), key_form(schema, t, step.form)) for s, t in step.pairs
    ]
    return merge_many(bind, schema.main, pairs, **options)


# -- the property ------------------------------------------------------------------


@pytest.fixture(scope="module")
def prop_engine(db: Backend) -> Iterator[tuple[Engine, bool]]:
    engine = db.make_engine()
    yield engine, db.foreign_keys
    engine.dispose()


def create_schema(engine: Engine, schema: Schema) -> None:
    with engine.begin() as connection:
        schema.metadata.create_all(connection)


def drop_schema(engine: Engine, schema: Schema) -> None:
    with engine.begin() as connection:
        if engine.dialect.name == "mysql":
            connection.exec_driver_sql("SET FOREIGN_KEY_CHECKS=0")
        schema.metadata.drop_all(connection)
        if engine.dialect.name == "mysql":
            connection.exec_driver_sql("SET FOREIGN_KEY_CHECKS=1")
    schema.registry.dispose()


def check_step(session: Session, connection: Any, model: Model, step: Step, before: Any) -> Model:
    """Run ``step``, compare everything with the model; returns the new model."""
    expected = expect(lambda: expected_outcome(model, step))
    note(f"expected: {expected if isinstance(expected, Expected) else 'success'}")
    try:
        report: MergeReport | None = run_step(session, model.schema, step)
        error: BaseException | None = None
    except (ReferencesError, IntegrityError, StaleDataError) as raised:
        report, error = None, raised
    run = Run(session, connection, model, step, before, report, error)
    return run.compare(expected)


def tolerated(connection: Any, model: Model, error: BaseException) -> bool:
    """Whether ``error`` (that changed nothing) is one of KNOWN_BUGS (none open now)."""
    return False


def expect(compute: Callable[[], Outcome]) -> Outcome | Expected:
    try:
        return compute()
    except Expected as refusal:
        return refusal


@dataclass
class Run:
    """What one step did, compared with an expected outcome."""

    session: Session
    connection: Any
    model: Model
    step: Step
    before: Any
    report: MergeReport | None
    error: BaseException | None

    def compare(self, expected: Outcome | Expected) -> Model:
        session, model, step, error = self.session, self.model, self.step, self.error
        schema = model.schema
        after = snapshot(self.connection, schema)
        if error is not None:
            assert after == self.before, f"{error!r} left changes behind"
            if step.kind in ("orm", "session"):
                check_identity_map(session)
            if tolerated(self.connection, model, error):
                return model
            assert isinstance(expected, Expected), f"unexpected {error!r}\n{step}"
            assert type(error) is expected.kind or (
                expected.kind is IntegrityError and isinstance(error, IntegrityError)
            ), f"raised {error!r}, expected {expected}"
            event(f"{step.kind}: {expected.kind.__name__}")
            return model
        report = self.report
        assert report is not None
        assert not isinstance(expected, Expected), f"no error; expected {expected}\n{report}"
        assert after == model_snapshot(schema, expected.rows), "database differs from the model"
        found, wanted = summary(report), nontrivial(expected.results)
        assert found == wanted, f"report differs:\n{report}"
        assert cascades(report) == expected.cascaded, f"cascades differ:\n{report}"
        if expected.cascaded:
            event("report.cascaded listed")
        if step.kind == "many":
            assert sorted(report.pairs) == sorted(expected.pairs)  # type: ignore[attr-defined]
        if step.kind in ("orm", "session"):
            check_identity_map(session)
        else:
            session.expunge_all()
        moved = sum(r[0] + r[1] + r[2] for r in expected.results.values())
        done = "dry run" if step.dry_run else "merged"
        event(f"{step.kind}: {done}{'' if moved else ' (nothing)'}")
        return Model(schema, expected.rows, model.foreign_keys)


def check_session_step(
    session: Session, connection: Any, model: Model, step: Step, before: Any
) -> Model:
    """merge_into on a ReferencesSession queues; the flush applies each class's batch."""
    schema, cls = model.schema, model.schema.classes["main"]
    queued = expected_queue(model, step)
    reports: list[MergeReport | None] = []
    # every object is loaded before the first merge is queued: a load autoflushes the queue
    objects = [(session.get(cls, s), session.get(cls, t)) for s, t in step.pairs]
    for (source, target), (source_obj, target_obj), refused in zip(
        step.pairs, objects, queued.raises
    ):
        try:
            reports.append(
                merge_into(
                    source_obj,
                    target_obj,
                    on_conflict=step.on_conflict,  # type: ignore[arg-type]
                    on_self_reference=step.on_self_reference,  # type: ignore[arg-type]
                    delete=step.delete,
                    synchronize_session=step.sync,
                )
            )
        except ReferencesError:
            assert refused, f"refused to queue {source} -> {target}"
            reports.append(None)
        else:
            assert not refused, f"queued {source} -> {target}, expected a refusal"
    assert snapshot(connection, schema) == before, "queueing wrote to the database"
    expected = expect_flush(model, step, queued)
    note(f"expected flush: {expected if isinstance(expected, Expected) else 'success'}")
    try:
        session.flush()
        error: BaseException | None = None
    except (ReferencesError, IntegrityError, StaleDataError) as raised:
        error = raised
    flush = Flush(session, connection, model, step, before, queued, reports, error)
    return flush.compare(expected)


def expect_flush(model: Model, step: Step, queued: Queued) -> list[Outcome] | Expected:
    try:
        return expected_flush(model, step, queued)
    except Expected as refusal:
        return refusal


@dataclass
class Flush:
    """What a ReferencesSession's flush did, compared with an expected outcome."""

    session: Session
    connection: Any
    model: Model
    step: Step
    before: Any
    queued: Queued
    reports: list[MergeReport | None]
    error: BaseException | None

    def compare(self, outcomes: list[Outcome] | Expected) -> Model:
        session, model, step, error, queued = (
            self.session,
            self.model,
            self.step,
            self.error,
            self.queued,
        )
        schema = model.schema
        after = snapshot(self.connection, schema)
        if error is not None and isinstance(session, ReferencesSession):
            # the queue came back whole: nothing of it ran; dropped to go on without it
            assert session.queued_merges == len(queued.target_of), "the queue did not come back"
            session.discard_queued_merges()
        if error is not None:
            assert after == self.before, f"{error!r} left changes behind"
            check_identity_map(session)
            if tolerated(self.connection, model, error):
                return model
            assert isinstance(outcomes, Expected), f"unexpected {error!r}\n{step}"
            assert type(error) is outcomes.kind or (
                outcomes.kind is IntegrityError and isinstance(error, IntegrityError)
            ), f"raised {error!r}, expected {outcomes}"
            event(f"{step.kind}: {outcomes.kind.__name__}")
            return model
        assert not isinstance(outcomes, Expected), f"no error; expected {outcomes}"
        final = outcomes[-1].rows if outcomes else model.rows
        assert after == model_snapshot(schema, final), "database differs from the model"
        first: dict[Values, MergeReport] = {}
        for (source, _), report, duplicate in zip(step.pairs, self.reports, queued.duplicate):
            if report is None:
                continue
            if duplicate:  # the same merge queued again: the first call's report
                assert report is first[source], f"{source} queued twice: another report"
                continue
            first[source] = report
            assert report.applied
            group = queued.group_of[source]
            wanted = nontrivial(outcomes[group].results)
            alone = len(queued.groups[group]) == 1
            # a merge has counts of its own only when alone in its batch; the batch's
            # totals are on report.batch either way
            assert report.counted == alone, f"counted is {report.counted}:\n{report}"
            assert report.batch is not None, f"no batch report:\n{report}"
            assert summary(report.batch) == wanted, f"batch report differs:\n{report.batch}"
            assert cascades(report.batch) == outcomes[group].cascaded, f"{report.batch}"
            if alone:
                assert summary(report) == wanted, f"report differs:\n{report}"
            else:
                assert (report.rowcount, report.deleted, report.left) == (None,) * 3
                assert report.keys == [], f"counts of a batch on one merge:\n{report}"
        check_identity_map(session)
        merges, batches = len(queued.target_of), len(queued.groups)
        event(f"session: flushed {merges} merge(s) in {batches} batch(es)")
        return Model(schema, final, model.foreign_keys)


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    print_blob=True,
    phases=PHASES,
    database=None,  # nothing written to the work tree: the printed blob or seed reproduces
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(spec=schema_specs(), data=st.data())
def test_random_merges_match_the_model(
    prop_engine: tuple[Engine, bool], spec: SchemaSpec, data: Any
) -> None:
    engine, foreign_keys = prop_engine
    schema = build_schema(spec)
    note(f"schema: {spec}")
    queueing = data.draw(st.booleans(), label="queueing")
    session_class = ReferencesSession if queueing else Session
    kinds = ["session" if queueing else "orm", "rows", "many"]
    # servers: the rows committed, and another connection renames a referred value
    concurrent = engine.dialect.name != "sqlite" and spec.code
    concurrent = concurrent and data.draw(st.booleans(), label="concurrent")
    if concurrent:
        event("rows committed, for another connection")
    create_schema(engine, schema)
    try:
        rows = draw_rows(data, schema)
        note(f"rows: {rows} ({'committed' if concurrent else 'in the transaction'})")
        if concurrent:
            with engine.begin() as connection:
                insert_rows(connection, schema, rows)
        with engine.connect() as connection:
            transaction = connection.begin()
            session = session_class(bind=connection, join_transaction_mode="create_savepoint")
            try:
                if not concurrent:
                    insert_rows(connection, schema, rows)
                model = Model(schema, copy.deepcopy(rows), foreign_keys)
                assert snapshot(connection, schema) == model_snapshot(schema, rows)
                for number in range(data.draw(st.integers(1, 4), label="steps")):
                    step = draw_step(data, model, kinds)
                    if step is None:
                        break
                    note(f"step {number}: {step}")
                    if step.kind in ("orm", "session"):
                        load_some(session, schema, data.draw(st.randoms(use_true_random=False)))
                        check_identity_map(session)
                    if concurrent and number == 0 and rename_meanwhile(engine, model, step, data):
                        note(f"renamed: {model.rows['main']}")
                        # what the rename changed is stale in memory, the ORM's business
                        # (the merge must not use it: it reads the rows it locks)
                        session.expire_all()
                        session.info["current_reads"] = True
                        if engine.dialect.name == "mysql":
                            # the session loads rows as they are now, as the fresh one
                            # that checks it does: a plain read on MariaDB answers from
                            # the snapshot, and objects would hold either
                            sa_event.listen(session, "do_orm_execute", _current_read)
                    before = snapshot(connection, schema)
                    check = check_session_step if step.kind == "session" else check_step
                    model = check(session, connection, model, step, before)
            finally:
                session.close()
                transaction.rollback()
    finally:
        drop_schema(engine, schema)


# -- discovery agrees with the model's reading of the schema -------------------------


@settings(max_examples=50, deadline=None, database=None)
@given(spec=schema_specs())
def test_discovery_matches_the_schema(spec: SchemaSpec) -> None:
    schema = build_schema(spec)
    try:
        found = [k.name for k in referencing_keys(schema.classes["main"])]
        assert found == [k.name for k in schema.keys if k.ref_table == "main"]
        if spec.inheritance:
            found = [k.name for k in referencing_keys(schema.classes["sub"])]
            assert found == [k.name for k in schema.keys]  # own table and the ancestor's
        for key in referencing_keys(schema.main):
            (mine,) = [k for k in schema.keys if k.name == key.name]
            assert tuple(c.name for c in key.identity) == mine.identity
            assert {tuple(c.name for c in u.columns) for u in key.unique_keys} == set(mine.uniques)
    finally:
        schema.registry.dispose()


def _graph_of_throwaway_schema() -> Callable[[], Any]:
    spec = SchemaSpec(False, False, True, False, (RefSpec("plain", "pk", True, "fk"),))
    schema = build_schema(spec)
    referencing_keys(schema.main)
    ref = weakref.ref(schema.metadata)
    schema.registry.dispose()
    return ref


def test_generated_schemas_are_not_kept_alive() -> None:
    ref = _graph_of_throwaway_schema()
    gc.collect()
    assert ref() is None


# -- the bugs the property found, one deterministic reproduction each ------------------------------
# (the fixed ones stay as regression tests; the open ones are strict xfails)


@contextmanager
def scratch(
    prop_engine: tuple[Engine, bool], spec: SchemaSpec, rows: dict[str, list[Row]]
) -> Iterator[tuple[Schema, Any, Session]]:
    """``spec``'s schema holding ``rows``, in a transaction rolled back (and dropped) after."""
    engine, _ = prop_engine
    schema = build_schema(spec)
    create_schema(engine, schema)
    try:
        with engine.connect() as connection:
            transaction = connection.begin()
            session = Session(bind=connection, join_transaction_mode="create_savepoint")
            try:
                full = {name: [] for name in schema.tables} | rows
                insert_rows(connection, schema, full)
                yield schema, connection, session
            finally:
                session.close()
                transaction.rollback()
    finally:
        drop_schema(engine, schema)


PAIR = SchemaSpec(False, False, False, False, (RefSpec("pair", "pk", True, "both"),))
TWO_UNIQUES = SchemaSpec(False, False, False, False, (RefSpec("plain", "pk", False, "two"),))
MAIN_123 = [{"id": 1}, {"id": 2}, {"id": 3}]


def pair_row(ident: int, a: int, b: int) -> Row:
    return {"id": ident, "a_id": a, "b_id": b}


@pytest.mark.parametrize("on_conflict", ["raise", "delete"])
def test_clash_between_two_keys_of_one_table(
    prop_engine: tuple[Engine, bool], on_conflict: str
) -> None:
    """r0 (a, b) is unique: merging 1 into 2 makes (1, 1) the (2, 2) that already exists.

    The clash only exists once key a's UPDATE made (1, 1) into (2, 1): key b's conflicts
    must be read after it (they were planned up front, and b's UPDATE hit the constraint)."""
    rows = {
        "main": MAIN_123,
        "r0": [{"id": 1, "a_id": 1, "b_id": 1}, {"id": 2, "a_id": 2, "b_id": 2}],
    }
    with scratch(prop_engine, PAIR, rows) as (schema, connection, _):
        r0 = schema.tables["r0"]
        before = snapshot(connection, schema)
        if on_conflict == "raise":
            with pytest.raises(MergeConflictError):
                merge_rows(connection, schema.main, 1, 2)
            assert snapshot(connection, schema) == before
        else:
            report = merge_rows(connection, schema.main, 1, 2, on_conflict="delete")
            assert report.deleted == 1
            assert connection.execute(select(r0)).all() == [(2, 2, 2)]


def test_dry_run_counts_what_the_merge_does(prop_engine: tuple[Engine, bool]) -> None:
    """Key a deletes (1, 1) as a clash with (2, 1); key b then has one row left to move."""
    rows = {
        "main": MAIN_123,
        "r0": [{"id": 1, "a_id": 1, "b_id": 1}, {"id": 2, "a_id": 2, "b_id": 1}],
    }
    with scratch(prop_engine, PAIR, rows) as (schema, connection, _):
        planned = merge_rows(connection, schema.main, 1, 2, on_conflict="delete", dry_run=True)
        done = merge_rows(connection, schema.main, 1, 2, on_conflict="delete")
        assert summary(planned) == summary(done)


@pytest.mark.parametrize("on_conflict", ON_CONFLICT)
@pytest.mark.parametrize("api", ["orm", "orm-references-session", "rows", "rows-session"])
def test_dry_run_reports_the_merge_and_changes_nothing(
    prop_engine: tuple[Engine, bool], api: str, on_conflict: str
) -> None:
    """Merging 1 into 2, key a finds (1, 1) clashing with (2, 1); key b then moves what key a
    left: (2, 1) alone once (1, 1) is deleted, both when it stays.  A dry run reports exactly
    what the merge does ("raise": what "ignore" does, conflicts left in place, none counted as
    left), writes nothing, and leaves the loaded objects as they were (not even expired)."""
    rows = {"main": MAIN_123, "r0": [pair_row(1, 1, 1), pair_row(2, 2, 1)]}
    with scratch(prop_engine, PAIR, rows) as (schema, connection, plain):
        session = plain
        if api == "orm-references-session":
            session = ReferencesSession(bind=connection, join_transaction_mode="create_savepoint")
        try:
            main, link = schema.classes["main"], schema.classes["r0"]
            links = session.scalars(select(link).order_by(link.id)).all()
            source, target = session.get(main, 1), session.get(main, 2)
            for obj in (source, target):
                obj.r0_a, obj.r0_b  # noqa: B018

            def merge(strategy: str, dry_run: bool = False) -> MergeReport:
                options: dict[str, Any] = {"on_conflict": strategy, "dry_run": dry_run}
                if api.startswith("orm"):
                    report = merge_into(source, target, **options)
                    session.flush()  # a ReferencesSession applies the merge it queued
                    return report
                bind = session if api == "rows-session" else connection
                return merge_rows(bind, schema.main, 1, 2, **options)

            before = snapshot(connection, schema)
            planned = merge(on_conflict, dry_run=True)
            assert snapshot(connection, schema) == before
            for obj in (*links, source, target):
                state = inspect(obj)
                assert not state.expired_attributes and not state.modified, obj
            assert [(r.a_id, r.b_id) for r in links] == [(1, 1), (2, 1)]
            assert [inspect(r).identity for r in target.r0_b] == []
            assert identity_map_problems(session) == []
            a_key, b_key = (f"{schema.tables['r0'].name}({c})" for c in ("a_id", "b_id"))
            assert (planned.rowcount, planned.deleted, planned.left) == {
                "delete": (1, 1, 0),
                "ignore": (2, 0, 1),
                "raise": (2, 0, 0),
            }[on_conflict]
            assert [row for c in planned.conflicts for row in c.rows] == [(1,)]
            assert planned[a_key].repointed == 0 and planned[b_key].conflicts == []
            if on_conflict == "raise":
                with pytest.raises(MergeConflictError):
                    merge("raise")
                assert snapshot(connection, schema) == before
                done = merge("ignore")
                wanted = {k: (n, d, 0, c) for k, (n, d, _, c) in summary(done).items()}
            else:
                done = merge(on_conflict)
                wanted = summary(done)
            assert summary(planned) == wanted
        finally:
            if session is not plain:
                session.close()


def test_batch_dry_run_counts_what_the_batch_does(prop_engine: tuple[Engine, bool]) -> None:
    """test_dry_run_counts_what_the_merge_does, for merge_many."""
    rows = {"main": MAIN_123, "r0": [pair_row(1, 1, 1), pair_row(2, 2, 1)]}
    with scratch(prop_engine, PAIR, rows) as (schema, connection, _):
        planned = merge_many(connection, schema.main, [(1, 2)], on_conflict="delete", dry_run=True)
        done = merge_many(connection, schema.main, [(1, 2)], on_conflict="delete")
        assert summary(planned) == summary(done)


def test_batch_keeps_a_row_whose_rival_was_refused(prop_engine: tuple[Engine, bool]) -> None:
    """Unique (ref, val) and (ref, val2); 1 and 2 merge into 3.  Row 10 moves first; row 11
    clashes with it on val2; row 12 clashes with nothing that moves -- only with row 11 on
    val, which stays behind -- so row 12 moves too."""
    rows = {
        "main": MAIN_123,
        "r0": [
            {"id": 10, "ref_id": 1, "val": 0, "val2": 1},
            {"id": 11, "ref_id": 2, "val": 1, "val2": 1},
            {"id": 12, "ref_id": 1, "val": 1, "val2": 0},
        ],
    }
    with scratch(prop_engine, TWO_UNIQUES, rows) as (schema, connection, _):
        r0 = schema.tables["r0"]
        report = merge_many(connection, schema.main, [(1, 3), (2, 3)], on_conflict="delete")
        assert sorted(connection.execute(select(r0.c.id, r0.c.ref_id)).all()) == [(10, 3), (12, 3)]
        assert report.deleted == 1


@pytest.mark.parametrize("on_conflict", ON_CONFLICT)
def test_batch_ranks_over_every_unique_key_at_once(
    prop_engine: tuple[Engine, bool], on_conflict: str
) -> None:
    """Unique (ref, val) and (ref, val2); 1 and 2 merge into 3, one row at a time by id:
    10 moves; 11 clashes with it on val2; 12 only with 11 (on val), so it moves; 13 clashes
    with 12 on val2; 14 only with 13, so it moves; 15 clashes with 9, already at 3; 16 only
    with 15, so it moves.  Every strategy, and a dry run, agree on which rows clash."""
    rows = {
        "main": MAIN_123,
        "r0": [
            {"id": 9, "ref_id": 3, "val": 5, "val2": 5},
            {"id": 10, "ref_id": 1, "val": 0, "val2": 0},
            {"id": 11, "ref_id": 2, "val": 1, "val2": 0},
            {"id": 12, "ref_id": 1, "val": 1, "val2": 1},
            {"id": 13, "ref_id": 2, "val": 2, "val2": 1},
            {"id": 14, "ref_id": 1, "val": 2, "val2": 2},
            {"id": 15, "ref_id": 1, "val": 5, "val2": 7},
            {"id": 16, "ref_id": 2, "val": 6, "val2": 7},
        ],
    }
    pairs = [(1, 3), (2, 3)]
    options: dict[str, Any] = {"on_conflict": on_conflict}
    moved = [(9, 3), (10, 3), (12, 3), (14, 3), (16, 3)]
    refused = {(11,), (13,), (15,)}
    with scratch(prop_engine, TWO_UNIQUES, rows) as (schema, connection, _):
        r0 = schema.tables["r0"]
        before = snapshot(connection, schema)
        planned = merge_many(connection, schema.main, pairs, dry_run=True, **options)
        assert {row for c in planned.conflicts for row in c.rows} == refused
        if on_conflict == "raise":
            with pytest.raises(MergeConflictError) as info:
                merge_many(connection, schema.main, pairs)
            assert {row for c in info.value.conflicts for row in c.rows} == refused
            assert snapshot(connection, schema) == before
            return
        done = merge_many(connection, schema.main, pairs, **options)
        assert summary(done) == summary(planned)
        assert (done.rowcount, done.deleted, done.left) == (
            (4, 3, 0) if on_conflict == "delete" else (4, 0, 3)
        )
        left = [] if on_conflict == "delete" else [(11, 2), (13, 2), (15, 1)]
        found = sorted(connection.execute(select(r0.c.id, r0.c.ref_id)).all())
        assert found == sorted(moved + left)


def test_batch_delete_is_atomic(prop_engine: tuple[Engine, bool]) -> None:
    """A row left on a source by "ignore" makes deleting the sources fail: all or nothing
    (the DELETE once ran in a second SAVEPOINT, after the re-pointing was released)."""
    _, foreign_keys = prop_engine  # without enforced foreign keys the DELETE cannot fail
    spec = SchemaSpec(False, False, False, False, (RefSpec("plain", "pk", False, "fk_val"),))
    rows = {
        "main": MAIN_123,
        "r0": [
            {"id": 1, "ref_id": 1, "val": 0, "val2": 0},  # clashes with 3: left on 1
            {"id": 2, "ref_id": 1, "val": 1, "val2": 0},  # moves
            {"id": 3, "ref_id": 2, "val": 0, "val2": 0},
        ],
    }
    with scratch(prop_engine, spec, rows) as (schema, connection, _):
        before = snapshot(connection, schema)
        try:
            merge_many(connection, schema.main, [(1, 2)], on_conflict="ignore", delete=True)
        except IntegrityError:
            assert snapshot(connection, schema) == before
        else:
            assert not foreign_keys


@pytest.mark.parametrize("mode", ["evaluate", "fetch"])
def test_row_deleted_through_one_key_leaves_the_other_collection(
    prop_engine: tuple[Engine, bool], mode: str
) -> None:
    """(1, 1) is deleted as a clash with (2, 1) on key a; key b must not carry it to 2 (nor,
    with "fetch", leave it in 1's collection, where deleting 1 then failed: StaleDataError)."""
    rows = {
        "main": MAIN_123,
        "r0": [{"id": 1, "a_id": 1, "b_id": 1}, {"id": 2, "a_id": 2, "b_id": 1}],
    }
    with scratch(prop_engine, PAIR, rows) as (schema, _, session):
        main = schema.classes["main"]
        source, target = session.get(main, 1), session.get(main, 2)
        for obj in (source, target):
            obj.r0_a, obj.r0_b  # noqa: B018
        merge_into(source, target, on_conflict="delete", delete=True, synchronize_session=mode)
        assert [inspect(link).identity for link in target.r0_b] == [(2,)]
        assert identity_map_problems(session) == []


@pytest.mark.parametrize(
    "mode",
    [
        "evaluate",
        "fetch",
        "expire",
    ],
)
@pytest.mark.parametrize("session_class", [Session, ReferencesSession])
def test_row_moved_by_one_key_then_deleted_by_another_leaves_the_collection(
    prop_engine: tuple[Engine, bool], session_class: type[Session], mode: str
) -> None:
    """Merging 1 into 2, key a moves (1, 1) and (1, 2) to (2, 1) and (2, 2); key b then makes
    (2, 1) the (2, 2) that exists: (1, 1) is deleted and must leave 2's collection of a."""
    rows = {"main": MAIN_123, "r0": [pair_row(1, 1, 1), pair_row(2, 1, 2)]}
    with scratch(prop_engine, PAIR, rows) as (schema, connection, plain):
        session = plain
        if session_class is ReferencesSession:
            session = ReferencesSession(bind=connection, join_transaction_mode="create_savepoint")
        try:
            main = schema.classes["main"]
            source, target = session.get(main, 1), session.get(main, 2)
            for obj in (source, target):
                obj.r0_a, obj.r0_b  # noqa: B018
            report = merge_into(source, target, on_conflict="delete", synchronize_session=mode)
            session.flush()
            assert report.deleted == 1
            assert [inspect(link).identity for link in target.r0_a] == [(2,)]
            assert identity_map_problems(session) == []
        finally:
            if session is not plain:
                session.close()


@pytest.mark.parametrize("mode", ["evaluate", "fetch", "expire"])
@pytest.mark.parametrize("holder", [2, 3], ids=["target", "third"])
def test_row_deleted_as_a_conflict_leaves_the_other_keys_collection(
    prop_engine: tuple[Engine, bool], holder: int, mode: str
) -> None:
    """Merging 1 into 2, key b makes (holder, 1) the (holder, 2) that exists: (holder, 1) is
    deleted and must leave holder's collection of key a (which does not move it)."""
    rows = {"main": MAIN_123, "r0": [pair_row(1, holder, 1), pair_row(2, holder, 2)]}
    with scratch(prop_engine, PAIR, rows) as (schema, _, session):
        main = schema.classes["main"]
        objects = {n: session.get(main, n) for n in (1, 2, 3)}
        for obj in objects.values():
            obj.r0_a, obj.r0_b  # noqa: B018
        report = merge_into(objects[1], objects[2], on_conflict="delete", synchronize_session=mode)
        assert report.deleted == 1
        assert [inspect(link).identity for link in objects[holder].r0_a] == [(2,)]
        assert identity_map_problems(session) == []


@pytest.mark.parametrize("mode", ["evaluate", "fetch"])
def test_source_collection_drops_the_target_whose_reference_was_cleared(
    session: Session, mode: str
) -> None:
    """on_self_reference="null": the target's reference is cleared, in memory too, and the
    target leaves the source's loaded collection."""
    dupe, keeper = Customer(name="dupe"), Customer(name="keeper")
    session.add_all([dupe, keeper])
    session.flush()
    keeper.referrer = dupe
    session.flush()
    assert dupe.referrals == [keeper]  # loaded
    merge_into(dupe, keeper, on_self_reference="null", synchronize_session=mode)
    assert keeper.referrer is None
    assert dupe.referrals == []


@pytest.mark.parametrize("mode", ["evaluate", "fetch", "expire"])
def test_references_session_clears_the_targets_reference_in_memory(db: Backend, mode: str) -> None:
    """The same in a ReferencesSession, whatever the synchronize_session mode."""
    with db.engine.connect() as connection:
        transaction = connection.begin()
        session = ReferencesSession(bind=connection, join_transaction_mode="create_savepoint")
        try:
            dupe, keeper = Customer(name="dupe"), Customer(name="keeper")
            session.add_all([dupe, keeper])
            session.flush()
            keeper.referrer = dupe
            session.flush()
            merge_into(dupe, keeper, on_self_reference="null", synchronize_session=mode)
            session.flush()
            assert keeper.referrer_id is None and keeper.referrer is None
        finally:
            session.close()
            transaction.rollback()


def test_every_queued_report_is_filled_in(db: Backend) -> None:
    """The same merge queued twice: the second call returns the first call's report."""
    with db.engine.connect() as connection:
        transaction = connection.begin()
        session = ReferencesSession(bind=connection, join_transaction_mode="create_savepoint")
        try:
            dupe, keeper = Customer(name="dupe"), Customer(name="keeper")
            session.add_all([dupe, keeper, Order(customer=dupe)])
            session.flush()
            first = merge_into(dupe, keeper)
            again = merge_into(dupe, keeper)
            session.flush()
            assert again is first
            assert first.applied and first.rowcount == 1
        finally:
            session.close()
            transaction.rollback()


@pytest.mark.parametrize("onupdate", [1, lambda: 1], ids=["value", "callable"])
def test_onupdate_columns_of_keys_re_pointed_together(
    prop_engine: tuple[Engine, bool], onupdate: Any
) -> None:
    """On PostgreSQL consecutive single-pair keys of distinct tables are re-pointed by one
    statement of data-modifying CTEs; SQLAlchemy gives no Python ``onupdate`` value to an
    UPDATE inside a CTE (it bound NULL): such keys run their own UPDATE."""
    engine, _ = prop_engine
    prefix = f"p{os.getpid() % 10000}_{next(_prefixes)}_"
    md = MetaData()
    main = Table(f"{prefix}main", md, Column("id", Integer, primary_key=True, autoincrement=False))
    tables = [
        Table(
            f"{prefix}r{n}",
            md,
            Column("id", Integer, primary_key=True, autoincrement=False),
            Column("ref_id", Integer, ForeignKey(main.c.id), nullable=False),
            Column("touched", Integer, nullable=False, default=0, onupdate=onupdate),
        )
        for n in range(2)
    ]
    with engine.begin() as connection:
        md.create_all(connection)
    try:
        with engine.connect() as connection, connection.begin():
            connection.execute(main.insert(), [{"id": 1}, {"id": 2}])
            for table in tables:
                connection.execute(table.insert(), [{"id": 1, "ref_id": 1}])
            assert merge_rows(connection, main, 1, 2).rowcount == 2
            for table in tables:
                assert connection.execute(select(table)).all() == [(1, 2, 1)]
    finally:
        with engine.begin() as connection:
            md.drop_all(connection)


@pytest.mark.parametrize("session_class", [Session, ReferencesSession])
def test_rows_alike_moved_with_fetch_are_each_counted(
    prop_engine: tuple[Engine, bool], session_class: type[Session]
) -> None:
    """A table without primary key: two identical rows are one identity, two rows.  With
    synchronize_session="fetch" the count came from the identities fetched (1): it is the
    UPDATE's own."""
    spec = SchemaSpec(False, False, False, False, (RefSpec("nopk", "pk", True, "none"),))
    rows = {"main": MAIN_123, "r0": [{"ref_id": 1, "tag": 0, "doc": None}] * 2}
    with scratch(prop_engine, spec, rows) as (schema, connection, plain):
        session = plain
        if session_class is ReferencesSession:
            session = ReferencesSession(bind=connection, join_transaction_mode="create_savepoint")
        try:
            main = schema.classes["main"]
            source, target = session.get(main, 1), session.get(main, 2)
            report = merge_into(source, target, synchronize_session="fetch")
            session.flush()
            assert report.rowcount == 2
            r0 = schema.tables["r0"]
            assert connection.execute(select(r0)).all() == [(2, 0, None), (2, 0, None)]
        finally:
            if session is not plain:
                session.close()


@pytest.mark.parametrize("dry_run", [False, True])
def test_row_with_a_null_beside_a_kept_row_moves(
    prop_engine: tuple[Engine, bool], dry_run: bool
) -> None:
    """No primary key, unique (ref, tag): merging 1 into 2, (1, 1) clashes with (2, 1) and
    stays; (1, NULL) clashes with nothing and moves.  The UPDATE excluded the kept rows
    with ``NOT (identity IN (...))``, which is NULL, not true, for a row holding a NULL: it
    stayed too (and was counted as neither moved nor left)."""
    spec = SchemaSpec(False, False, False, False, (RefSpec("nopk", "pk", True, "fk_tag"),))
    r0_rows = [{"ref_id": 1, "tag": 1}, {"ref_id": 1, "tag": None}, {"ref_id": 2, "tag": 1}]
    rows = {"main": MAIN_123, "r0": [{**r, "doc": None} for r in r0_rows]}
    with scratch(prop_engine, spec, rows) as (schema, connection, _):
        report = merge_rows(connection, schema.main, 1, 2, on_conflict="ignore", dry_run=dry_run)
        assert (report.rowcount, report.left) == (1, 1)
        r0 = schema.tables["r0"]
        found = sorted(connection.execute(select(r0.c.ref_id, r0.c.tag)).all(), key=sort_key)
        moved = [(1, 1), (2, 1), (2, None)]
        assert found == (sorted(rows_of(r0_rows), key=sort_key) if dry_run else moved)


def rows_of(rows: list[Row]) -> list[Values]:
    return [(r["ref_id"], r["tag"]) for r in rows]


@pytest.mark.backends("postgresql", "mariadb")
def test_rows_renamed_onto_the_source_meanwhile_are_counted(
    prop_engine: tuple[Engine, bool],
) -> None:
    """Servers: another connection renames the source's code (ON UPDATE CASCADE carries the
    referencing row) after the merge's transaction read; the target has no code, so the
    merge must be refused.  On MariaDB the count of the source's rows answered from the
    REPEATABLE READ snapshot (the row still held the old code): nothing was refused, and
    deleting the source failed with a raw IntegrityError."""
    engine, _ = prop_engine
    spec = SchemaSpec(False, True, False, False, (RefSpec("plain", "code", True, "none"),))
    schema = build_schema(spec)
    create_schema(engine, schema)
    try:
        rows = {
            "main": [{"id": 1, "code": "c1"}, {"id": 2, "code": None}],
            "r0": [{"id": 1, "ref_code": "c1", "val": 0, "val2": 0}],
        }
        with engine.begin() as connection:
            insert_rows(connection, schema, rows)
        main = schema.main
        with engine.connect() as connection, connection.begin():
            connection.execute(select(schema.tables["r0"])).all()  # the snapshot (MariaDB)
            with engine.begin() as other:
                other.execute(main.update().where(main.c.id == 1).values(code="n1"))
            with pytest.raises(ReferencesError, match="target's code is"):
                merge_rows(connection, main, 1, 2, delete=True)
    finally:
        drop_schema(engine, schema)


@pytest.mark.backends("postgresql", "mariadb")
@pytest.mark.parametrize("on_conflict", ON_CONFLICT)
def test_conflicts_of_rows_renamed_onto_the_source_meanwhile(
    prop_engine: tuple[Engine, bool], request: pytest.FixtureRequest, on_conflict: str
) -> None:
    """Unique (ref_code, val): another connection renames the source's code c1 to n1 (ON
    UPDATE CASCADE carries its row) after the merge's transaction read; merging 1 and 3
    into 2 (a batch: one pair alone is read right), that row clashes with the target's
    (c2, 0).  Found by the property test; fixed with locking conflict reads (#13.17)."""
    engine, _ = prop_engine
    spec = SchemaSpec(False, True, False, False, (RefSpec("plain", "code", True, "fk_val"),))
    schema = build_schema(spec)
    create_schema(engine, schema)
    try:
        rows = {
            "main": [{"id": 1, "code": "c1"}, {"id": 2, "code": "c2"}, {"id": 3, "code": "c3"}],
            "r0": [
                {"id": 1, "ref_code": "c1", "val": 0, "val2": 0},
                {"id": 2, "ref_code": "c2", "val": 0, "val2": 0},
            ],
        }
        with engine.begin() as connection:
            insert_rows(connection, schema, rows)
        main, r0 = schema.main, schema.tables["r0"]
        with engine.connect() as connection, connection.begin():
            connection.execute(select(r0)).all()  # the snapshot (MariaDB)
            with engine.begin() as other:
                other.execute(main.update().where(main.c.id == 1).values(code="n1"))
            pairs = [(1, 2), (3, 2)]
            if on_conflict == "raise":
                with pytest.raises(MergeConflictError):
                    merge_many(connection, main, pairs)
                return
            report = merge_many(connection, main, pairs, on_conflict=on_conflict)
            assert (report.rowcount, report.deleted, report.left) == (
                (0, 1, 0) if on_conflict == "delete" else (0, 0, 1)
            )
    finally:
        drop_schema(engine, schema)
