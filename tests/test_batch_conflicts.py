"""A batch's conflict ranking beyond what the property's generated schemas cover."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Column, ForeignKey, Integer, MetaData, Table, UniqueConstraint, select

from sa_references import merge_many, merge_rows
from tests.conftest import Backend


@pytest.fixture
def node(db: Backend) -> Iterator[Table]:
    """A tree whose children have unique names under their parent."""
    metadata = MetaData()
    table = Table(
        "batch_rank_node",
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=False),
        Column("parent_id", ForeignKey("batch_rank_node.id"), nullable=True),
        Column("name", Integer, nullable=False),
        UniqueConstraint("parent_id", "name", name="uq_batch_rank_node_name"),
    )
    metadata.create_all(db.engine)
    try:
        yield table
    finally:
        metadata.drop_all(db.engine)


@pytest.mark.parametrize("api", ["merge_many", "merge_rows"])
def test_target_cleared_of_its_source_ranks_with_no_one(db: Backend, node: Table, api: str) -> None:
    """1 and 5 merge into 2, whose parent is 1 (cleared, on_self_reference="null").  Node 7,
    5's child, would end as 2's child named 5, as 2 itself would if it moved: but 2 does
    not move, so 7 moves (a batch once ranked 2 first and deleted 7)."""
    options: dict[str, Any] = {"on_conflict": "delete", "on_self_reference": "null"}
    with db.engine.connect() as connection:
        transaction = connection.begin()
        try:
            connection.execute(node.insert(), [{"id": 1, "name": 0}, {"id": 5, "name": 1}])
            children = [{"id": 2, "parent_id": 1, "name": 5}, {"id": 7, "parent_id": 5, "name": 5}]
            connection.execute(node.insert(), children)
            if api == "merge_many":
                report = merge_many(connection, node, [(1, 2), (5, 2)], **options)
                assert (report.rowcount, report.deleted) == (1, 0)
            else:
                for source in (1, 5):
                    merge_rows(connection, node, source, 2, **options)
            found = connection.execute(select(node).order_by(node.c.id)).all()
            assert found == [(1, None, 0), (2, None, 5), (5, None, 1), (7, 2, 5)]
        finally:
            transaction.rollback()
