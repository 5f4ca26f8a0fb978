"""The public surface is pinned: implementation modules are private."""

from __future__ import annotations

import sqlalchemy.exc

import sa_references


def test_all_is_pinned_and_sorted() -> None:
    assert sa_references.__all__ == [
        "BatchReport",
        "Conflict",
        "Dependents",
        "KeyDependents",
        "KeyResult",
        "MergeConflictError",
        "MergeReport",
        "ReferencesError",
        "ReferencesMixin",
        "ReferencesSession",
        "ReferencingKey",
        "UniqueKey",
        "dependents",
        "merge_into",
        "merge_many",
        "merge_rows",
        "referencing_keys",
        "row_dependents",
    ]
    assert sa_references.__all__ == sorted(sa_references.__all__)
    for name in sa_references.__all__:
        assert getattr(sa_references, name).__module__.startswith("sa_references._")


def test_exceptions_subclass_sqlalchemy() -> None:
    assert issubclass(sa_references.ReferencesError, sqlalchemy.exc.InvalidRequestError)
    assert issubclass(sa_references.MergeConflictError, sa_references.ReferencesError)


def test_py_typed_ships() -> None:
    from importlib.resources import files

    assert files("sa_references").joinpath("py.typed").is_file()


def test_merge_into_docstring_disowns_session_merge() -> None:
    assert "Session.merge()" in (sa_references.merge_into.__doc__ or "")
    assert "Session.merge()" in (sa_references.ReferencesMixin.merge_into.__doc__ or "")
