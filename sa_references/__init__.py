"""Merge duplicate rows and see what depends on a row, for SQLAlchemy 2.x.

``dupe.merge_into(keeper)`` (:func:`merge_into`) re-points every foreign key
that references ``dupe`` to ``keeper``, atomically, with unique-key conflicts
found before anything is written and loaded objects kept in step;
``obj.dependents()`` (:func:`dependents`) lists what references a row.
:class:`ReferencesSession` and :func:`merge_many` merge many rows with one
statement per referencing key; :func:`merge_rows` and :func:`row_dependents`
work on tables without classes; the ``sa-references`` command line works on a
database without models.  Errors are in :mod:`sa_references.exc`.

The documentation is the Sphinx site in ``docs/`` of the source tree
(``sphinx-build -b html docs docs/_build/html``): a guide to merging,
conflicts, loaded objects, transactions and concurrency, batching, the command
line and errors, and the API reference generated from the docstrings.
"""

from . import exc as exc
from ._catalog import CatalogForeignKey, check_references, unfollowed_references
from ._dependents import Dependents, KeyDependents, dependents, row_dependents
from ._keys import ReferencingKey, UniqueKey, referencing_keys
from ._merge import merge_into, merge_many, merge_rows
from ._mixin import ReferencesMixin
from ._options import USE_SESSION_DEFAULT
from ._report import BatchReport, Cascade, Conflict, KeyResult, MergeReport
from ._session import ReferencesSession
from .exc import (
    ConcurrentMergeError,
    DeleteRestrictedError,
    MergeConflictError,
    MergeCycleError,
    ReferencesError,
    Remedy,
    RowNotFoundError,
    SelfReferenceError,
    SessionStateError,
    SharedColumnError,
    UnfollowedReferenceError,
    UnsafeMergeError,
)

__all__ = [
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

__version__ = "0.1.0"
