"""Merge duplicate rows and see what depends on a row, for SQLAlchemy 2.x.

``merge_into(source, target)`` re-points every foreign key that references
``source`` to ``target``: one UPDATE per referencing key, inside a SAVEPOINT,
with conflicts on unique keys of the referencing tables found before anything
is written, and the objects already loaded in the Session kept in step.
``dependents(obj)`` lists, lazily, the rows that reference ``obj``.

Discovery
=========

Every foreign key constraint of the object's :class:`~sqlalchemy.MetaData`
that references one of the object's tables is followed: several keys from one
table, composite keys (one UPDATE per constraint), keys to unique non-primary
columns, self-referential keys, association tables no class maps, joined
inheritance (keys to the object's own table and each ancestor table, never a
sibling's) and single-table inheritance.  The graph is computed once per
MetaData and rebuilt only when tables, constraints or mappers are added.
:func:`referencing_keys` lists it for a class or a (reflected) Table.

Conflicts
=========

When a referencing table has a primary key, unique constraint or unique index
over the foreign key columns, re-pointing can clash (both customers are in
group "vip").  ``on_conflict="raise"`` (default) raises
:class:`MergeConflictError` before writing anything; ``"delete"`` deletes the
source's clashing rows; ``"ignore"`` leaves them on the source.  Partial and
expression unique indexes cannot be checked up front: a clash there surfaces
as the database's IntegrityError, with the merge rolled back.

Loaded objects
==============

With ``synchronize_session="evaluate"`` (default) foreign key attributes,
many-to-one relationships and loaded collections (both sides of backrefs,
one-to-many and many-to-many) are updated in memory without SQL; what cannot
be computed is expired.  ``"fetch"`` reads the identities of the moved rows
(RETURNING where the dialect has it); ``"expire"`` expires what changed;
``False`` leaves memory stale.  Unflushed changes are never overwritten.

Transactions
============

A merge runs inside ``Session.begin_nested()``: a database error on any
statement undoes the merge's earlier statements and leaves the session
usable.  On pysqlite a real ``BEGIN`` is issued first when the driver has no
transaction open, so that ``session.rollback()`` still undoes the merge.

Concurrency
===========

On PostgreSQL and MariaDB a merge first locks the source and target rows
(``SELECT ... ORDER BY pk FOR UPDATE``, always in primary key order, so that
merges of overlapping rows queue behind each other rather than deadlock), and
holds the locks until the transaction ends.  A concurrent INSERT of a row
that references a source waits for the merging transaction; if the source was
deleted it then fails on its foreign key, as it would against any deleted
row.  Deadlocks and serialization failures that remain (other locks the
application holds) surface as the driver's ``OperationalError`` /
``DBAPIError``: roll back and retry the whole transaction.  SQLite locks the
whole database for writes and needs no row locks.
"""

from . import exc as exc
from ._dependents import Dependents, KeyDependents, dependents, row_dependents
from ._keys import ReferencingKey, UniqueKey, referencing_keys
from ._merge import merge_into, merge_many, merge_rows
from ._mixin import ReferencesMixin
from ._report import BatchReport, Conflict, KeyResult, MergeReport
from ._session import ReferencesSession
from .exc import (
    ConcurrentMergeError,
    DeleteRestrictedError,
    MergeConflictError,
    MergeCycleError,
    ReferencesError,
    RowNotFoundError,
    SelfReferenceError,
    SessionStateError,
    SharedColumnError,
    UnfollowedReferenceError,
    UnsafeMergeError,
)

__all__ = [
    "BatchReport",
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
    "RowNotFoundError",
    "SelfReferenceError",
    "SessionStateError",
    "SharedColumnError",
    "UnfollowedReferenceError",
    "UniqueKey",
    "UnsafeMergeError",
    "dependents",
    "merge_into",
    "merge_many",
    "merge_rows",
    "referencing_keys",
    "row_dependents",
]

__version__ = "0.1.0"
