"""SQLAlchemy internals and version-dependent Python are used in ``_compat.py`` only."""

from __future__ import annotations

import ast
import re
import types
from pathlib import Path

import pytest
from sqlalchemy import Integer, MetaData, String, create_engine
from sqlalchemy.orm import Session

import sa_references
from sa_references import _compat

PACKAGE = Path(sa_references.__file__).resolve().parent

#: private names of SQLAlchemy (and a Python 3.11+ method) that only _compat.py may use
CONFINED = {
    "_all_registries": r"(?<![\w])_all_registries\b",
    "Session._deleted": r"(?<![\w])_deleted\b",
    "NestedTransaction._savepoint": r"(?<![\w])_savepoint\b",
    "compiled.positiontup": r"positiontup",
    "BaseException.add_note (3.11+)": r"\.add_note\(",
    "sqlalchemy.util.concurrency.greenlet_spawn": r"greenlet_spawn",
}


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p.name != "_compat.py")


@pytest.mark.parametrize("name", sorted(CONFINED))
def test_internal_name_only_in_compat(name: str) -> None:
    pattern = re.compile(CONFINED[name])
    found = [
        f"{path.name}:{number}: {line.strip()}"
        for path in modules()
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert not found, f"{name} used outside _compat.py:\n" + "\n".join(found)
    assert pattern.search((PACKAGE / "_compat.py").read_text())


def test_no_private_sqlalchemy_import_outside_compat() -> None:
    found = []
    for path in modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sqlalchemy"):
                found += [
                    f"{path.name}:{node.lineno}: {node.module}.{alias.name}"
                    for alias in node.names
                    if alias.name.startswith("_")
                ]
    assert not found, "private SQLAlchemy names imported outside _compat.py:\n" + "\n".join(found)


def test_every_helper_says_which_versions() -> None:
    for name in _compat.__all__:
        doc = getattr(_compat, name).__doc__ or ""
        assert re.search(r"(SQLAlchemy|Python) [23]\.\d+", doc), name


def test_add_note_on_this_python() -> None:
    error = ValueError("boom")
    _compat.add_note(error, "first")
    _compat.add_note(error, "second")
    assert error.__notes__ == ["first", "second"]  # type: ignore[attr-defined]


def test_add_note_as_on_python_310(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_compat, "sys", types.SimpleNamespace(version_info=(3, 10, 13)))
    error = ValueError("boom")
    _compat.add_note(error, "first")
    _compat.add_note(error, "second")
    assert error.__notes__ == ["first", "second"]  # type: ignore[attr-defined]


def test_all_registries_finds_the_test_models() -> None:
    from tests.models import Base

    assert Base.registry in set(_compat.all_registries())


def test_pending_deletions_and_savepoint_name() -> None:
    from tests.models import Base, Customer

    engine = create_engine("sqlite://")
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        customer = Customer(name="ada")
        session.add(customer)
        session.flush()
        assert not _compat.pending_deletions(session)
        session.delete(customer)
        pending = _compat.pending_deletions(session)
        assert pending is not None
        assert {state.obj() for state in pending} == {customer}
    with engine.connect() as connection, connection.begin():
        nested = connection.begin_nested()
        assert isinstance(_compat.savepoint_name(nested), str)
        nested.rollback()


def test_insert_parameter_order() -> None:
    from sqlalchemy import Column, Table

    table = Table("t", MetaData(), Column("a", Integer), Column("b", String))
    dialect = create_engine("sqlite://").dialect
    compiled = table.insert().compile(dialect=dialect)
    assert list(_compat.insert_parameter_order(compiled)) == ["a", "b"]
