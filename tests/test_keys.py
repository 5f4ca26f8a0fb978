"""referencing_keys: which foreign keys reference a class or table, and the cached graph."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import (
    Column,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    UniqueConstraint,
    func,
    inspect,
    text,
)
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, registry

from sa_references import ReferencingKey, _keys, referencing_keys
from tests.models import (
    Approval,
    Car,
    Coupon,
    Customer,
    Employee,
    Engineer,
    Group,
    Machine,
    Manager,
    Order,
    Profile,
    Review,
    Shelf,
    Trip,
    Truck,
    Vehicle,
    Warehouse,
    customer_group,
    customer_tag,
)

CUSTOMER_KEYS = [
    "coupon(customer_code)",
    "customer(referrer_id)",
    "customer_group(customer_id)",
    "customer_tag(customer_id)",
    "order(billing_customer_id)",
    "order(customer_id)",
    "profile(customer_id)",
    "review(author_id)",
    "zz_trap(customer_id)",
]


def names(keys: tuple[ReferencingKey, ...]) -> list[str]:
    return [k.name for k in keys]


def key(keys: tuple[ReferencingKey, ...], name: str) -> ReferencingKey:
    (found,) = [k for k in keys if k.name == name]
    return found


def column_names(columns: Any) -> tuple[str, ...]:
    return tuple(c.name for c in columns)


@pytest.fixture
def graph_builds(monkeypatch: pytest.MonkeyPatch) -> list[MetaData]:
    """The MetaData of every ReferenceGraph constructed during the test."""
    built: list[MetaData] = []
    original = _keys.ReferenceGraph.__init__

    def counting(self: Any, metadata: MetaData) -> None:
        built.append(metadata)
        original(self, metadata)

    monkeypatch.setattr(_keys.ReferenceGraph, "__init__", counting)
    return built


@pytest.fixture
def registries() -> Iterator[list[registry]]:
    """Registries made by a test, disposed afterwards."""
    made: list[registry] = []
    yield made
    for reg in made:
        reg.dispose()


# -- what is found -------------------------------------------------------------


def test_every_key_to_the_customer_table() -> None:
    assert names(referencing_keys(Customer)) == CUSTOMER_KEYS


def test_several_keys_from_one_table_to_the_same_target() -> None:
    keys = referencing_keys(Customer)
    by_customer = key(keys, "order(customer_id)")
    by_billing = key(keys, "order(billing_customer_id)")
    assert by_customer is not by_billing
    assert by_customer.columns == (Order.__table__.c.customer_id,)
    assert by_billing.columns == (Order.__table__.c.billing_customer_id,)
    assert by_customer.constraint is not by_billing.constraint
    for k in (by_customer, by_billing):
        assert k.table is Order.__table__
        assert k.referred_table is Customer.__table__
        assert k.referred_columns == (Customer.__table__.c.id,)


def test_composite_key_is_one_key_per_constraint() -> None:
    (shelf_key,) = referencing_keys(Warehouse)
    shelf, warehouse = Shelf.__table__, Warehouse.__table__
    assert shelf_key.name == "shelf(region, number)"
    assert shelf_key.constraint.name == "fk_shelf_wh"
    assert shelf_key.columns == (shelf.c.region, shelf.c.number)
    assert shelf_key.referred_columns == (warehouse.c.region, warehouse.c.number)


def test_composite_key_pairs_columns_as_the_constraint_does() -> None:
    md = MetaData()
    Table("box", md, Column("a", Integer, primary_key=True), Column("b", Integer, primary_key=True))
    item = Table(
        "item",
        md,
        Column("id", Integer, primary_key=True),
        Column("box_a", Integer),
        Column("box_b", Integer),
        ForeignKeyConstraint(["box_b", "box_a"], ["box.b", "box.a"]),
    )
    (k,) = referencing_keys(md.tables["box"])
    assert k.columns == (item.c.box_b, item.c.box_a)
    assert column_names(k.referred_columns) == ("b", "a")


def test_key_to_a_unique_non_primary_column() -> None:
    coupon_key = key(referencing_keys(Customer), "coupon(customer_code)")
    assert coupon_key.columns == (Coupon.__table__.c.customer_code,)
    assert coupon_key.referred_columns == (Customer.__table__.c.code,)


def test_self_referential_key() -> None:
    keys = referencing_keys(Customer)
    referrer = key(keys, "customer(referrer_id)")
    assert referrer.is_self_referential
    assert referrer.table is referrer.referred_table is Customer.__table__
    assert [k.name for k in keys if k.is_self_referential] == ["customer(referrer_id)"]


def test_association_tables_no_class_maps() -> None:
    keys = referencing_keys(Customer)
    assert key(keys, "customer_group(customer_id)").table is customer_group
    assert key(keys, "customer_tag(customer_id)").table is customer_tag
    (group_key,) = referencing_keys(Group)
    assert group_key.table is customer_group
    assert group_key.columns == (customer_group.c.group_id,)


def test_unreferenced_class_has_no_keys() -> None:
    assert referencing_keys(Order) == ()
    assert referencing_keys(Trip) == ()


# -- inheritance ---------------------------------------------------------------


def test_joined_inheritance_own_and_ancestor_tables() -> None:
    assert names(referencing_keys(Engineer)) == [
        "employee(mentor_id)",
        "machine(engineer_id)",
        "project(lead_id)",
    ]
    assert names(referencing_keys(Manager)) == [
        "approval(manager_id)",
        "employee(mentor_id)",
        "project(lead_id)",
    ]


def test_joined_inheritance_never_a_siblings_table() -> None:
    assert Approval.__table__ not in {k.table for k in referencing_keys(Engineer)}
    assert Machine.__table__ not in {k.table for k in referencing_keys(Manager)}


def test_joined_inheritance_base_sees_only_its_table() -> None:
    assert names(referencing_keys(Employee)) == ["employee(mentor_id)", "project(lead_id)"]


def test_inheritance_key_is_never_a_reference() -> None:
    subclass_tables = {Engineer.__table__, Manager.__table__}
    for target in (Employee, Engineer, Manager, Employee.__table__):
        assert not {k.table for k in referencing_keys(target)} & subclass_tables
    assert names(referencing_keys(Engineer.__table__)) == ["machine(engineer_id)"]
    assert names(referencing_keys(Manager.__table__)) == ["approval(manager_id)"]


def test_single_table_inheritance() -> None:
    for cls in (Vehicle, Car, Truck):
        (trip_key,) = referencing_keys(cls)
        assert trip_key.table is Trip.__table__
        assert trip_key.referred_table is Vehicle.__table__


def test_inheritance_mapped_imperatively_in_another_registry(registries: list[registry]) -> None:
    md = MetaData()
    Table("animal", md, Column("id", Integer, primary_key=True), Column("kind", String(10)))
    Table("dog", md, Column("id", ForeignKey("animal.id"), primary_key=True))
    Table("cat", md, Column("id", ForeignKey("animal.id"), primary_key=True))
    Table(
        "collar",
        md,
        Column("id", Integer, primary_key=True),
        Column("dog_id", ForeignKey("dog.id")),
    )

    class Animal:
        pass

    class Dog(Animal):
        pass

    class Cat(Animal):
        pass

    reg = registry(metadata=md)
    registries.append(reg)
    reg.map_imperatively(Animal, md.tables["animal"], polymorphic_on=md.tables["animal"].c.kind)
    reg.map_imperatively(Dog, md.tables["dog"], inherits=Animal, polymorphic_identity="dog")
    reg.map_imperatively(Cat, md.tables["cat"], inherits=Animal, polymorphic_identity="cat")
    assert referencing_keys(Animal) == ()
    assert names(referencing_keys(Dog)) == ["collar(dog_id)"]
    assert referencing_keys(Cat) == ()
    assert referencing_keys(md.tables["animal"]) == ()


def test_concrete_inheritance_keeps_its_keys(registries: list[registry]) -> None:
    """A concrete table's key to the parent's table is a reference, not the inheritance."""
    md = MetaData()
    Table("node", md, Column("id", Integer, primary_key=True))
    Table("leaf", md, Column("id", ForeignKey("node.id"), primary_key=True))

    class Node:
        pass

    class Leaf(Node):
        pass

    reg = registry(metadata=md)
    registries.append(reg)
    reg.map_imperatively(Node, md.tables["node"])
    reg.map_imperatively(Leaf, md.tables["leaf"], inherits=Node, concrete=True)
    assert names(referencing_keys(Node)) == ["leaf(id)"]


# -- targets ---------------------------------------------------------------------


def test_mapper_and_class_give_the_same_keys() -> None:
    for cls in (Customer, Engineer, Car, Warehouse):
        assert referencing_keys(inspect(cls)) == referencing_keys(cls)


def test_table_gives_the_same_keys_as_its_class() -> None:
    assert referencing_keys(Customer.__table__) == referencing_keys(Customer)
    assert referencing_keys(Warehouse.__table__) == referencing_keys(Warehouse)


@pytest.mark.parametrize(
    "target",
    [42, None, "customer", object(), int, Customer.__table__.c.id],
    ids=["int", "none", "str", "object", "unmapped-class", "column"],
)
def test_bad_input(target: Any) -> None:
    with pytest.raises(ArgumentError, match="expected a Table"):
        referencing_keys(target)


def test_an_instance_is_not_a_target() -> None:
    with pytest.raises(ArgumentError):
        referencing_keys(Customer(name="x"))


def test_reflected_table(db: Any) -> None:
    md = MetaData()
    with db.engine.connect() as connection:
        md.reflect(connection)
    customer = md.tables["customer"]
    keys = referencing_keys(customer)
    assert names(keys) == CUSTOMER_KEYS
    for k in keys:
        assert k.referred_table is customer
        assert k.table is md.tables[k.table.name]  # the reflected tables, not the models'
    assert column_names(key(keys, "coupon(customer_code)").referred_columns) == ("code",)
    (shelf_key,) = referencing_keys(md.tables["warehouse"])
    assert column_names(shelf_key.columns) == ("region", "number")
    assert column_names(shelf_key.referred_columns) == ("region", "number")


def test_reflected_unique_keys_and_identity(db: Any) -> None:
    md = MetaData()
    with db.engine.connect() as connection:
        md.reflect(connection)
    reflected = referencing_keys(md.tables["customer"])
    for model_key in referencing_keys(Customer):
        k = key(reflected, model_key.name)
        assert {column_names(u.columns) for u in k.unique_keys} == {
            column_names(u.columns) for u in model_key.unique_keys
        }
        assert column_names(k.identity) == column_names(model_key.identity)


def test_reflected_inheritance_key_is_an_ordinary_key(db: Any) -> None:
    """Without mappers nothing says engineer.id is an inheritance key: it is followed."""
    md = MetaData()
    with db.engine.connect() as connection:
        md.reflect(connection)
    assert names(referencing_keys(md.tables["employee"])) == [
        "employee(mentor_id)",
        "engineer(id)",
        "manager(id)",
        "project(lead_id)",
    ]


# -- unique keys and identity ------------------------------------------------------


def unique_keys(k: ReferencingKey) -> list[tuple[str, tuple[str, ...]]]:
    return [(u.name, column_names(u.columns)) for u in k.unique_keys]


def test_unique_keys_that_cover_the_key_columns() -> None:
    keys = referencing_keys(Customer)
    assert unique_keys(key(keys, "review(author_id)")) == [
        ("uq_review_author_stars", ("author_id", "stars"))
    ]
    assert unique_keys(key(keys, "customer_tag(customer_id)")) == [
        ("uq_customer_tag", ("customer_id", "tag"))
    ]
    (group_pk,) = key(keys, "customer_group(customer_id)").unique_keys
    assert column_names(group_pk.columns) == ("customer_id", "group_id")
    (profile_unique,) = key(keys, "profile(customer_id)").unique_keys
    assert column_names(profile_unique.columns) == ("customer_id",)
    (shelf_key,) = referencing_keys(Warehouse)
    assert unique_keys(shelf_key) == [("uq_shelf_label", ("region", "number", "label"))]


def test_no_unique_keys_when_none_covers_the_key_columns() -> None:
    keys = referencing_keys(Customer)
    for name in ("order(customer_id)", "order(billing_customer_id)", "customer(referrer_id)"):
        assert key(keys, name).unique_keys == ()


def test_unique_index_is_a_unique_key_partial_and_expression_ones_are_not() -> None:
    md = MetaData()
    Table("parent", md, Column("id", Integer, primary_key=True))
    child = Table(
        "child",
        md,
        Column("id", Integer, primary_key=True),
        Column("parent_id", ForeignKey("parent.id")),
        Column("slot", Integer),
        Column("name", String(10)),
    )
    Index("ix_child_slot", child.c.parent_id, child.c.slot, unique=True)
    Index(
        "ix_child_partial",
        child.c.parent_id,
        child.c.name,
        unique=True,
        postgresql_where=text("name IS NOT NULL"),
        sqlite_where=text("name IS NOT NULL"),
    )
    Index("ix_child_lower", child.c.parent_id, func.lower(child.c.name), unique=True)
    Index("ix_child_plain", child.c.parent_id, child.c.name)
    Index("ix_child_name_desc", child.c.parent_id, child.c.name.desc(), unique=True)
    (k,) = referencing_keys(md.tables["parent"])
    assert unique_keys(k) == [
        ("ix_child_name_desc", ("parent_id", "name")),
        ("ix_child_slot", ("parent_id", "slot")),
    ]


def test_unnamed_unique_index_gets_a_readable_name() -> None:
    md = MetaData()
    Table("parent", md, Column("id", Integer, primary_key=True))
    Table(
        "child",
        md,
        Column("id", Integer, primary_key=True),
        Column("parent_id", ForeignKey("parent.id"), unique=True, index=True),
    )
    (k,) = referencing_keys(md.tables["parent"])
    (unique,) = k.unique_keys
    assert column_names(unique.columns) == ("parent_id",)
    assert "None" not in unique.name and "parent_id" in unique.name


def test_identity_is_the_first_non_nullable_unique_key() -> None:
    keys = referencing_keys(Customer)
    assert column_names(key(keys, "order(customer_id)").identity) == ("id",)
    assert column_names(key(keys, "customer_group(customer_id)").identity) == (
        "customer_id",
        "group_id",
    )
    # customer_tag has no primary key: its non-nullable unique constraint identifies a row
    assert column_names(key(keys, "customer_tag(customer_id)").identity) == ("customer_id", "tag")


def test_identity_falls_back_to_every_column() -> None:
    md = MetaData()
    Table("parent", md, Column("id", Integer, primary_key=True))
    log = Table(
        "log",
        md,
        Column("parent_id", ForeignKey("parent.id")),
        Column("code", String(10)),
        UniqueConstraint("code"),  # nullable: cannot identify a row
    )
    (k,) = referencing_keys(md.tables["parent"])
    assert k.identity == tuple(log.columns)


# -- order ---------------------------------------------------------------------------


def test_keys_are_sorted_by_table_then_columns() -> None:
    for target in (Customer, Engineer, Manager, Employee):
        keys = referencing_keys(target)
        assert [k.sort_key for k in keys] == sorted(k.sort_key for k in keys)
    assert names(referencing_keys(Customer)) == sorted(CUSTOMER_KEYS)


def build_shop(table_order: list[str]) -> MetaData:
    md = MetaData()
    makers = {
        "hub": lambda: Table(
            "hub",
            md,
            Column("id", Integer, primary_key=True),
            Column("code", String(10), unique=True),
        ),
        "spoke": lambda: Table(
            "spoke",
            md,
            Column("id", Integer, primary_key=True),
            Column("b", ForeignKey("hub.id")),
            Column("a", ForeignKey("hub.id")),
        ),
        "axle": lambda: Table(
            "axle",
            md,
            Column("id", Integer, primary_key=True),
            Column("hub_id", Integer),
            # twin constraints on the same column, to different referred columns
            ForeignKeyConstraint(["hub_id"], ["hub.code"], name="fk_axle_code"),
            ForeignKeyConstraint(["hub_id"], ["hub.id"], name="fk_axle_id"),
        ),
    }
    for name in table_order:
        makers[name]()
    return md


@pytest.mark.parametrize(
    "table_order",
    [["hub", "spoke", "axle"], ["axle", "spoke", "hub"], ["spoke", "hub", "axle"]],
)
def test_order_does_not_depend_on_declaration_order(table_order: list[str]) -> None:
    keys = referencing_keys(build_shop(table_order).tables["hub"])
    assert [(k.name, column_names(k.referred_columns)) for k in keys] == [
        ("axle(hub_id)", ("code",)),
        ("axle(hub_id)", ("id",)),
        ("spoke(a)", ("id",)),
        ("spoke(b)", ("id",)),
    ]


def test_repeated_calls_give_the_same_keys() -> None:
    first = referencing_keys(Customer)
    assert referencing_keys(Customer) == first
    assert all(a is b for a, b in zip(referencing_keys(Customer), first))


# -- keys outside the MetaData ---------------------------------------------------


def test_foreign_key_to_a_table_outside_the_metadata_is_ignored() -> None:
    md = MetaData()
    Table("parent", md, Column("id", Integer, primary_key=True))
    Table(
        "child",
        md,
        Column("id", Integer, primary_key=True),
        Column("parent_id", ForeignKey("parent.id")),
        Column("elsewhere_id", ForeignKey("elsewhere.id")),
    )
    assert names(referencing_keys(md.tables["parent"])) == ["child(parent_id)"]


# -- PostgreSQL partitions and inheriting tables (#13.22) ----------------------------


def order_table(
    md: MetaData, name: str, *extra: Any, fk_name: str | None = None, **options: Any
) -> Table:
    return Table(
        name,
        md,
        Column("id", Integer, primary_key=True),
        Column("region", String(2), primary_key=True),
        Column("customer_id", Integer),
        Column("code", String(10)),
        ForeignKeyConstraint(["customer_id"], ["customer.id"], name=fk_name),
        *extra,
        **options,
    )


def partitioned_metadata(schema: str | None = None) -> MetaData:
    md = MetaData(schema=schema)
    Table("customer", md, Column("id", Integer, primary_key=True))
    order_table(md, "orders", postgresql_partition_by="LIST (region)")
    return md


def customer_keys(md: MetaData) -> list[str]:
    prefix = f"{md.schema}." if md.schema else ""
    return names(referencing_keys(md.tables[prefix + "customer"]))


def test_a_partitions_copy_of_its_parents_key_is_not_followed() -> None:
    md = partitioned_metadata()
    order_table(md, "orders_eu", postgresql_inherits="orders", fk_name="other_name")
    order_table(md, "orders_us", postgresql_inherits=("orders",))
    assert customer_keys(md) == ["orders(customer_id)"]


def test_nested_partitions_are_not_followed() -> None:
    md = partitioned_metadata()
    order_table(
        md, "orders_eu", postgresql_inherits="orders", postgresql_partition_by="LIST (region)"
    )
    order_table(md, "orders_eu_fr", postgresql_inherits="orders_eu")
    assert customer_keys(md) == ["orders(customer_id)"]


def test_partitions_in_a_schema() -> None:
    md = partitioned_metadata(schema="shop")
    order_table(md, "orders_eu", postgresql_inherits="orders")
    assert customer_keys(md) == ["shop.orders(customer_id)"]


def test_a_partition_with_a_unique_key_of_its_own_keeps_its_key() -> None:
    """Only a key of the partition's own checks its unique key before re-pointing."""
    md = partitioned_metadata()
    order_table(md, "orders_eu", UniqueConstraint("customer_id"), postgresql_inherits="orders")
    # a unique key over other columns is no concern of the customer key
    order_table(md, "orders_us", UniqueConstraint("code"), postgresql_inherits="orders")
    assert customer_keys(md) == ["orders(customer_id)", "orders_eu(customer_id)"]
    (eu_key,) = [k for k in referencing_keys(md.tables["customer"]) if k.table.name == "orders_eu"]
    assert [column_names(u.columns) for u in eu_key.unique_keys] == [("customer_id",)]


def test_a_partitions_unique_key_its_parent_has_too_is_covered() -> None:
    md = MetaData()
    Table("customer", md, Column("id", Integer, primary_key=True))
    order_table(md, "orders", UniqueConstraint("customer_id", "region", name="uq_orders"))
    order_table(
        md, "orders_eu", UniqueConstraint("region", "customer_id"), postgresql_inherits="orders"
    )
    assert customer_keys(md) == ["orders(customer_id)"]


def test_a_partitions_other_keys_are_followed() -> None:
    md = partitioned_metadata()
    Table("coupon", md, Column("id", Integer, primary_key=True))
    Table("shop", md, Column("id", Integer, primary_key=True))
    order_table(
        md,
        "orders_eu",
        Column("coupon_id", ForeignKey("coupon.id")),  # a key of its own
        ForeignKeyConstraint(["code"], ["customer.id"]),  # same table, other columns
        postgresql_inherits="orders",
    )
    assert customer_keys(md) == ["orders(customer_id)", "orders_eu(code)"]
    assert names(referencing_keys(md.tables["coupon"])) == ["orders_eu(coupon_id)"]


def test_a_key_with_other_rules_than_the_parents_is_followed() -> None:
    md = partitioned_metadata()
    Table(
        "orders_eu",
        md,
        Column("id", Integer, primary_key=True),
        Column("customer_id", ForeignKey("customer.id", ondelete="CASCADE")),
        postgresql_inherits="orders",
    )
    assert customer_keys(md) == ["orders(customer_id)", "orders_eu(customer_id)"]


def test_a_parent_outside_the_metadata_leaves_the_key_alone() -> None:
    md = MetaData()
    Table("customer", md, Column("id", Integer, primary_key=True))
    order_table(md, "orders_eu", postgresql_inherits="orders")
    assert customer_keys(md) == ["orders_eu(customer_id)"]


def test_same_keys_on_tables_that_inherit_nothing_are_all_followed() -> None:
    md = partitioned_metadata()
    order_table(md, "orders_archive", fk_name="fk_orders_customer")
    order_table(md, "orders_copy", fk_name="fk_orders_customer", postgresql_inherits=())
    assert customer_keys(md) == [
        "orders(customer_id)",
        "orders_archive(customer_id)",
        "orders_copy(customer_id)",
    ]


def test_a_partition_added_later_is_picked_up() -> None:
    md = partitioned_metadata()
    assert customer_keys(md) == ["orders(customer_id)"]
    order_table(md, "orders_eu", postgresql_inherits="orders")
    order_table(md, "orders_us")
    assert customer_keys(md) == ["orders(customer_id)", "orders_us(customer_id)"]


def test_subclass_table_with_a_key_outside_the_metadata(registries: list[registry]) -> None:
    md = MetaData()
    Table("base", md, Column("id", Integer, primary_key=True), Column("kind", String(10)))
    Table(
        "sub",
        md,
        Column("id", ForeignKey("base.id"), primary_key=True),
        Column("elsewhere_id", ForeignKey("elsewhere.id")),
    )
    Table(
        "ref", md, Column("id", Integer, primary_key=True), Column("base_id", ForeignKey("base.id"))
    )

    class Base:
        pass

    class Sub(Base):
        pass

    reg = registry(metadata=md)
    registries.append(reg)
    reg.map_imperatively(Base, md.tables["base"], polymorphic_on=md.tables["base"].c.kind)
    reg.map_imperatively(Sub, md.tables["sub"], inherits=Base, polymorphic_identity="sub")
    assert names(referencing_keys(Sub)) == ["ref(base_id)"]


# -- the graph is computed once per MetaData --------------------------------------------


def wide_schema(tables: int = 300) -> MetaData:
    """``tables`` unrelated tables, and a hub referenced by one spoke."""
    md = MetaData()
    for i in range(tables):
        Table(
            f"t{i:03}",
            md,
            Column("id", Integer, primary_key=True),
            Column("name", String(20), unique=True),
        )
    Table("hub", md, Column("id", Integer, primary_key=True))
    Table(
        "spoke", md, Column("id", Integer, primary_key=True), Column("hub_id", ForeignKey("hub.id"))
    )
    return md


def test_graph_is_built_once_for_300_tables(graph_builds: list[MetaData]) -> None:
    md = wide_schema()
    for _ in range(3):
        for table in md.tables.values():
            referencing_keys(table)
    assert graph_builds == [md]
    assert names(referencing_keys(md.tables["hub"])) == ["spoke(hub_id)"]
    assert referencing_keys(md.tables["t150"]) == ()
    assert graph_builds == [md]


def test_graph_is_the_same_object_across_calls() -> None:
    md = wide_schema()
    graph = _keys.reference_graph(md)
    referencing_keys(md.tables["hub"])
    assert _keys.reference_graph(md) is graph


def test_cached_graph_survives_lookups_through_a_mapper(
    graph_builds: list[MetaData], registries: list[registry]
) -> None:
    md = wide_schema()

    class Hub:
        pass

    reg = registry(metadata=md)
    registries.append(reg)
    reg.map_imperatively(Hub, md.tables["hub"])
    for _ in range(100):
        assert names(referencing_keys(Hub)) == ["spoke(hub_id)"]
    assert graph_builds == [md]


def test_dependents_on_300_tables_build_the_graph_once(
    graph_builds: list[MetaData], registries: list[registry]
) -> None:
    from sqlalchemy.orm import Session

    from sa_references import dependents
    from tests.conftest import sqlite_engine

    md = wide_schema()

    class Hub:
        pass

    class Spoke:
        pass

    reg = registry(metadata=md)
    registries.append(reg)
    reg.map_imperatively(Hub, md.tables["hub"])
    reg.map_imperatively(Spoke, md.tables["spoke"])
    engine = sqlite_engine()
    md.create_all(engine)
    try:
        with Session(engine) as session:
            hub = Hub()
            session.add(hub)
            session.flush()
            for _ in range(5):
                spoke = Spoke()
                spoke.hub_id = hub.id  # type: ignore[attr-defined]
                session.add(spoke)
                assert dependents(hub).count() == len(list(dependents(hub)))
            assert dependents(hub).count() == 5
    finally:
        engine.dispose()
    assert graph_builds == [md]


def test_new_referencing_table_is_picked_up(graph_builds: list[MetaData]) -> None:
    md = wide_schema()
    assert names(referencing_keys(md.tables["hub"])) == ["spoke(hub_id)"]
    Table(
        "rim", md, Column("id", Integer, primary_key=True), Column("hub_id", ForeignKey("hub.id"))
    )
    assert names(referencing_keys(md.tables["hub"])) == ["rim(hub_id)", "spoke(hub_id)"]
    assert graph_builds == [md, md]


def test_new_foreign_key_on_an_existing_table_is_picked_up() -> None:
    md = wide_schema()
    assert referencing_keys(md.tables["hub"])
    t007 = md.tables["t007"]
    t007.append_column(Column("hub_id", Integer))
    t007.append_constraint(ForeignKeyConstraint(["hub_id"], ["hub.id"]))
    assert names(referencing_keys(md.tables["hub"])) == ["spoke(hub_id)", "t007(hub_id)"]
    md.tables["t008"].append_column(Column("hub_ref", ForeignKey("hub.id")))
    assert names(referencing_keys(md.tables["hub"])) == [
        "spoke(hub_id)",
        "t007(hub_id)",
        "t008(hub_ref)",
    ]


def test_new_unique_constraint_is_picked_up() -> None:
    md = wide_schema()
    spoke = md.tables["spoke"]
    (before,) = referencing_keys(md.tables["hub"])
    assert before.unique_keys == ()
    spoke.append_constraint(UniqueConstraint("hub_id", name="uq_spoke_hub"))
    (after,) = referencing_keys(md.tables["hub"])
    assert unique_keys(after) == [("uq_spoke_hub", ("hub_id",))]


def test_removed_table_is_dropped() -> None:
    md = wide_schema()
    assert referencing_keys(md.tables["hub"])
    md.remove(md.tables["spoke"])
    assert referencing_keys(md.tables["hub"]) == ()


def test_new_mapper_is_picked_up(registries: list[registry]) -> None:
    """Mapping a subclass turns its table's key to the parent into an inheritance key."""
    md = MetaData()
    Table("base", md, Column("id", Integer, primary_key=True), Column("kind", String(10)))
    Table("sub", md, Column("id", ForeignKey("base.id"), primary_key=True))
    assert names(referencing_keys(md.tables["base"])) == ["sub(id)"]

    class Base:
        pass

    class Sub(Base):
        pass

    reg = registry(metadata=md)
    registries.append(reg)
    reg.map_imperatively(Base, md.tables["base"], polymorphic_on=md.tables["base"].c.kind)
    assert names(referencing_keys(md.tables["base"])) == ["sub(id)"]
    reg.map_imperatively(Sub, md.tables["sub"], inherits=Base, polymorphic_identity="sub")
    assert referencing_keys(md.tables["base"]) == ()


def test_declarative_class_is_picked_up() -> None:
    md = MetaData()
    Table("hub", md, Column("id", Integer, primary_key=True))
    assert referencing_keys(md.tables["hub"]) == ()

    class Base(DeclarativeBase):
        metadata = md

    class Spoke(Base):
        __tablename__ = "spoke"
        id: Mapped[int] = mapped_column(primary_key=True)
        hub_id: Mapped[int] = mapped_column(ForeignKey("hub.id"))

    try:
        (k,) = referencing_keys(md.tables["hub"])
        assert k.table is Spoke.__table__
    finally:
        Base.registry.dispose()


def test_changes_to_another_metadata_do_not_rebuild(graph_builds: list[MetaData]) -> None:
    md = wide_schema()
    referencing_keys(md.tables["hub"])
    other = MetaData()
    Table("other", other, Column("id", Integer, primary_key=True))
    Table(
        "other_ref",
        other,
        Column("id", Integer, primary_key=True),
        Column("o", ForeignKey("other.id")),
    )
    referencing_keys(md.tables["hub"])
    assert graph_builds == [md]


def test_queries_and_merges_do_not_rebuild_the_graph(
    session: Any, graph_builds: list[MetaData]
) -> None:
    """Aliases, counts and ORM loads create no schema objects that would look like changes."""
    from sa_references import dependents

    ada, bob = Customer(name="ada", code="A"), Customer(name="bob", code="B")
    session.add_all([ada, bob, Order(customer=ada), Profile(customer=ada), Profile(customer=bob)])
    session.add_all([Review(author=ada, stars=5), Review(author=bob, stars=5)])
    session.flush()
    referencing_keys(Customer)
    graph_builds.clear()
    for _ in range(3):
        dependents(ada).count()
        list(dependents(ada))
        for rows in dependents(ada).by_key().values():
            rows.count()
        report = ada.merge_into(bob, dry_run=True)  # conflict checks use table aliases
        assert report.conflicts
        referencing_keys(Customer)
    assert graph_builds == []
