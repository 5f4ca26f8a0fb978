"""The public surface is pinned: implementation modules are private."""

from __future__ import annotations

import sqlalchemy.exc

import sa_references


def test_all_is_pinned_and_sorted() -> None:
    assert sa_references.__all__ == [
        "USE_SESSION_DEFAULT",
        "BatchReport",
        "Cascade",
        "CatalogForeignKey",
        "ConcurrentMergeError",
        "Conflict",
        "DeleteRestrictedError",
        "Dependents",
        "KeyDependents",
        "KeyResult",
        "MergeConflictError",
        "MergeCycleError",
        "MergeReport",
        "ReferencesError",
        "ReferencesMixin",
        "ReferencesSession",
        "ReferencingKey",
        "Remedy",
        "RowNotFoundError",
        "SelfReferenceError",
        "SessionStateError",
        "SharedColumnError",
        "UnfollowedReferenceError",
        "UniqueKey",
        "UnsafeMergeError",
        "check_references",
        "dependents",
        "merge_into",
        "merge_many",
        "merge_rows",
        "referencing_keys",
        "row_dependents",
        "unfollowed_references",
    ]
    # sorted as ruff's RUF022 keeps it: constants, then classes, then functions
    kind = lambda n: 0 if n.isupper() else 1 if n[0].isupper() else 2  # noqa: E731
    assert sa_references.__all__ == sorted(sa_references.__all__, key=lambda n: (kind(n), n))
    for name in sa_references.__all__:
        if name == "USE_SESSION_DEFAULT":  # an enum member: its module is its class's
            continue
        module = getattr(sa_references, name).__module__
        assert module == "sa_references.exc" or module.startswith("sa_references._")


def test_asyncio_all_is_pinned_and_sorted() -> None:
    from sa_references import asyncio

    assert asyncio.__all__ == [
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
    kind = lambda n: 0 if n.isupper() else 1 if n[0].isupper() else 2  # noqa: E731
    assert asyncio.__all__ == sorted(asyncio.__all__, key=lambda n: (kind(n), n))
    for name in asyncio.__all__:
        assert getattr(asyncio, name).__module__ == "sa_references.asyncio", name
    # the asyncio API stays out of the top-level namespace, whose functions are the sync ones
    for name in asyncio.__all__:
        assert getattr(sa_references, name, None) is not getattr(asyncio, name), name


def test_exceptions_subclass_sqlalchemy() -> None:
    assert issubclass(sa_references.ReferencesError, sqlalchemy.exc.InvalidRequestError)
    assert issubclass(sa_references.MergeConflictError, sa_references.ReferencesError)


def test_exception_hierarchy_is_public_and_drawn() -> None:
    from sa_references import exc

    assert exc.__all__ == sorted(exc.__all__)
    parents = {
        "MergeConflictError": "ReferencesError",
        "SelfReferenceError": "ReferencesError",
        "RowNotFoundError": "ReferencesError",
        "ConcurrentMergeError": "RowNotFoundError",
        "MergeCycleError": "ReferencesError",
        "UnsafeMergeError": "ReferencesError",
        "SharedColumnError": "UnsafeMergeError",
        "UnfollowedReferenceError": "UnsafeMergeError",
        "DeleteRestrictedError": "UnsafeMergeError",
        "SessionStateError": "ReferencesError",
    }
    # Remedy: the type of ReferencesError.remedy, not an exception
    assert set(parents) | {"ReferencesError", "Remedy"} == set(exc.__all__)
    for name, parent in parents.items():
        cls = getattr(exc, name)
        assert cls.__bases__ == (getattr(exc, parent),)
        assert getattr(sa_references, name) is cls
        assert name in (exc.__doc__ or "")  # the drawing in the docstring lists it


def test_py_typed_ships() -> None:
    from importlib.resources import files

    assert files("sa_references").joinpath("py.typed").is_file()


def test_merge_into_docstring_disowns_session_merge() -> None:
    assert "Session.merge()" in (sa_references.merge_into.__doc__ or "")
    assert "Session.merge()" in (sa_references.ReferencesMixin.merge_into.__doc__ or "")


def test_errors_copy_and_pickle_as_they_are() -> None:
    """Frameworks copy, pickle and re-raise exceptions: every error survives it whole."""
    import copy
    import pickle

    from sqlalchemy import Column, ForeignKey, Integer, MetaData, Table

    from sa_references import exc
    from sa_references._keys import referencing_keys
    from sa_references._report import Conflict

    md = MetaData()
    parent = Table("p", md, Column("id", Integer, primary_key=True))
    Table("c", md, Column("id", Integer, primary_key=True), Column("p_id", ForeignKey("p.id")))
    (key,) = referencing_keys(parent)
    errors: list[exc.ReferencesError] = [
        exc.MergeConflictError([Conflict(key, "c primary key", ((1,),))]),
        exc.SelfReferenceError("loops", key="c(p_id)", rows=[(2,)], purpose="to clear it"),
        exc.RowNotFoundError("gone", table="p", keys=[(9,)], role="target"),
        exc.ConcurrentMergeError("gone meanwhile", table="p", keys=[(9,)]),
        exc.SharedColumnError("shared"),
        exc.ReferencesError("plain"),
    ]
    for error in errors:
        for again in (copy.copy(error), pickle.loads(pickle.dumps(error))):
            assert type(again) is type(error)
            assert str(again) == str(error)
            assert again.reason == error.reason and again.remedy == error.remedy
    loaded = pickle.loads(pickle.dumps(errors[1]))
    assert isinstance(loaded, exc.SelfReferenceError)
    assert (loaded.key, loaded.rows) == ("c(p_id)", ((2,),))
    conflict_error = pickle.loads(pickle.dumps(errors[0]))
    assert isinstance(conflict_error, exc.MergeConflictError)
    assert conflict_error.conflicts[0].rows == ((1,),)
