"""``ReferencesSession``: merges queued, then applied set-based at flush."""

from __future__ import annotations

import weakref
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Table, event
from sqlalchemy.orm import Mapper, Session, SessionTransaction
from sqlalchemy.orm.attributes import instance_state

from ._compat import pending_deletions
from ._frameworks import session_class_for
from ._keys import AnyColumn
from ._locks import lock_objects
from ._merge import merge_objects
from ._objects import (
    describe,
    expire_holders,
    graph_of,
    identity_values_reader,
    marked_for_deletion,
    referred_columns_to_read,
    values_as_locked,
)
from ._options import USE_SESSION_DEFAULT, MergeOptions, SynchronizeMode, check_options
from ._pairs import Chains
from ._pipeline import Merge, ValuesOf, run
from ._report import BatchReport, MergeReport
from ._sync import relationships, synchronize
from ._transaction import savepoint
from .exc import ReferencesError

Values = tuple[Any, ...]


class ReferencesSession(Session):
    """A :class:`~sqlalchemy.orm.Session` that queues merges and applies them set-based.

    ``obj.merge_into(target)`` on its objects queues the merge and returns a
    :class:`MergeReport` that is filled in (``report.applied``) when the queue
    is applied: at the next flush, whether explicit, an autoflush before a
    query, or the one ``commit()`` runs, even when nothing else is pending.
    For each referencing key, all the queued merges are re-pointed by one
    UPDATE joined to their pairs (a temporary mapping table; on PostgreSQL,
    ``unnest()`` of arrays), inside one SAVEPOINT.  ``rollback()`` drops the
    queue.  When applying the queue fails, nothing of it is kept in the
    database and the queue stays as it was (its deletions included), so that
    no merge and no deletion of a source runs without the other: the next
    flush applies it again, whole; ``rollback()`` or
    :meth:`discard_queued_merges` drops it.

    Chains resolve (``a.merge_into(b); b.merge_into(c)`` ends with everything
    at ``c``); a cycle is refused with :class:`MergeCycleError` when queued.
    Queueing the same merge again returns its report, and the options given
    last are the ones it is applied with.  A queued merge's
    report gives the totals of the whole batch it was applied with
    (``report.batch``).  A dry run (``merge_into(..., dry_run=True)``) is not
    queued: it reports what the merge would do once the queued merges are
    applied, and leaves the queue and the database as they were.

    :param synchronize_session: the default for ``merge_into`` on this
      session: ``"evaluate"`` (default), ``"fetch"``, ``"expire"`` or ``False``.

    Other keyword arguments go to :class:`~sqlalchemy.orm.Session`; works as
    ``sessionmaker(engine, class_=ReferencesSession)`` and as the
    ``sync_session_class`` of an :class:`~sqlalchemy.ext.asyncio.AsyncSession`.

    E.g.::

        with ReferencesSession(engine) as session:
            for dupe, keeper in pairs:
                dupe.merge_into(keeper, on_conflict="delete")
            session.commit()  # one UPDATE per referencing key
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> ReferencesSession:
        # Flask-SQLAlchemy's session_options={"class_": ReferencesSession}: its routing kept
        instance: ReferencesSession = super().__new__(session_class_for(cls, kwargs))
        return instance

    def __init__(
        self,
        bind: Any = None,
        *,
        synchronize_session: SynchronizeMode = "evaluate",
        **kwargs: Any,
    ) -> None:
        check_options("raise", synchronize_session)
        # by keyword: a class combined with another Session subclass (Flask-SQLAlchemy's
        # takes ``db`` first) gets the arguments it expects
        super().__init__(bind=bind, **kwargs)
        self.synchronize_session: SynchronizeMode = synchronize_session
        #: the reports of the queued merges, in order (``report.source`` is the source)
        self._queued: list[MergeReport] = []
        #: by id(source): the report, and the options the merge was queued with
        self._reports: dict[int, MergeReport] = {}
        self._options: dict[int, MergeOptions] = {}
        #: by id(): every source and target queued
        self._objects: dict[int, object] = {}
        self._chains: Chains[int] = Chains(self._describe)
        self._queue_marks: weakref.WeakKeyDictionary[SessionTransaction, int] = (
            weakref.WeakKeyDictionary()
        )
        self._applying = False
        event.listen(self, "before_commit", _apply_before_commit)
        event.listen(self, "after_transaction_create", _mark_queue)
        event.listen(self, "after_soft_rollback", _drop_queue)

    @property
    def queued_merges(self) -> int:
        """How many merges wait for the next flush."""
        return len(self._queued)

    # -- queueing ---------------------------------------------------------
    def _sa_references_queue(
        self, source: object, target: object, options: MergeOptions, asked_mode: Any
    ) -> MergeReport:
        if asked_mode is USE_SESSION_DEFAULT:
            options = options.but(synchronize_session=self.synchronize_session)
        if options.dry_run:
            return self._dry_run(source, target, options)
        source_id = id(source)
        objects = self._objects
        objects.setdefault(source_id, source)
        objects.setdefault(id(target), target)
        if not self._chains.add(source_id, id(target)):  # the same merge, queued again
            self._options[source_id] = options  # with the options asked last
            return self._reports[source_id]
        report = MergeReport(source, target, applied=False, counted=False)
        self._reports[source_id] = report
        self._options[source_id] = options
        self._queued.append(report)
        return report

    def _describe(self, object_id: int) -> str:
        return describe(instance_state(self._objects[object_id]))

    def _clear_queue(self, keep: int = 0) -> None:
        """Drop the queued merges after the first ``keep``."""
        self._restore_queue(self._queued[:keep], self._options)

    def _restore_queue(self, reports: Sequence[MergeReport], options: dict[int, Any]) -> None:
        """Make ``reports`` (with their ``options``, by id of source) the whole queue."""
        self._queued = []
        self._reports = {}
        self._options = {}
        self._objects = {}
        self._chains = Chains(self._describe)
        for report in reports:
            source, target = report.source, report.target
            self._objects[id(source)] = source
            self._objects[id(target)] = target
            self._chains.add(id(source), id(target))
            self._reports[id(source)] = report
            self._options[id(source)] = options[id(source)]
            self._queued.append(report)

    def discard_queued_merges(self) -> None:
        """Drop the queued merges without rolling back, with the deletions of their sources
        (``merge_into(..., delete=True)``, or ``session.delete(source)`` after queueing):
        neither a merge nor its source's deletion runs without the other.  E.g. after a
        flush failed to apply the queue, to go on in the same transaction without it."""
        deleted = self.deleted
        for report in self._queued:
            source = report.source
            if source in deleted:
                _undelete(self, source, deleted)
        self._clear_queue()

    def rollback(self) -> None:
        self._clear_queue()  # also when no transaction had begun yet
        super().rollback()

    def close(self) -> None:
        self._clear_queue()
        super().close()

    # -- applying ---------------------------------------------------------
    def flush(self, objects: Sequence[Any] | None = None) -> None:
        if self._queued and not self._applying:
            self._apply_queue()
        super().flush(objects)

    def _apply_queue(self) -> None:
        queued, options = list(self._queued), dict(self._options)
        groups = self._groups()
        self._check_groups(groups)
        self._clear_queue()
        self._applying = True
        deleted = self.deleted  # one IdentitySet: each call builds a new one
        deferred = [r.source for g in groups for r in g.reports if r.source in deleted]
        try:
            for source in deferred:
                _undelete(self, source, deleted)
            super().flush()  # pending rows that reference a source are written first
            asked = (source for group in groups for source in group.deleting)
            deleting = list({id(s): s for s in (*asked, *deferred)}.values())  # each once
            merges = [_group_merge(self, group, deleting) for group in groups]
            results = run(
                self, merges, orm=True, session=self, finish=lambda _: self._delete(deleting)
            )
        except BaseException:
            # nothing of the queue was kept: it comes back whole, with its deletions
            for source in deferred:
                if source not in self.deleted:
                    self.delete(source)
            self._restore_queue(queued, options)
            raise
        finally:
            self._applying = False
        for group, keys in zip(groups, results):
            _report_group(group, keys)

    def _delete(self, sources: Sequence[object]) -> None:
        for source in sources:
            self.delete(source)

    def _groups(self) -> list[_Group]:
        """The queued merges by class and options, with their final targets."""
        objects, target_of, options = self._objects, self._chains.target_of, self._options
        groups: dict[tuple[Any, ...], _Group] = {}
        #: by id() of a queued merge's options (interned: a few), those without ``delete``
        shared_of: dict[int, MergeOptions] = {}
        for report in self._queued:
            source = report.source
            merge = options[id(source)]
            # ``delete`` is per merge: merges that differ only in it are one batch
            shared = shared_of.get(id(merge))
            if shared is None:
                shared = shared_of[id(merge)] = merge.but(delete=False)
            key = (instance_state(source).mapper, id(shared))  # interned: id() is its identity
            group = groups.get(key)
            if group is None:
                group = groups[key] = _Group(shared)
            group.reports.append(report)
            group.pairs.append((source, objects[target_of[id(source)]]))
            if merge.delete:
                group.deleting.append(source)
        return list(groups.values())

    def _check_groups(self, groups: Sequence[_Group]) -> None:
        """Refuse, before anything is written, merges whose rows are gone or going."""
        pending = pending_deletions(self)
        for group in groups:
            for source, target in group.pairs:
                source_state, target_state = instance_state(source), instance_state(target)
                going = (
                    target_state in pending
                    if pending is not None
                    else marked_for_deletion(self, target_state)
                )
                for role, state in (("source", source_state), ("target", target_state)):
                    gone = going and state is target_state
                    if gone or not state.persistent:
                        what = "marked for deletion" if gone else "no longer persistent"
                        raise ReferencesError(f"queued merge {role} {describe(state)} is {what}")

    def _dry_run(self, source: object, target: object, options: MergeOptions) -> MergeReport:
        """What the merge would do once the queued merges are applied: both run in a
        SAVEPOINT that is rolled back; the queue and loaded objects stay as they were."""
        if not self._queued:
            return merge_objects(self, source, target, options)
        groups = self._groups()
        self._check_groups(groups)
        self._applying = True
        try:
            with savepoint(self, rollback=True, mapper=groups[0].mapper):
                merges = [_group_merge(self, group, (), sync=False) for group in groups]
                run(self, merges, orm=True)
                report = merge_objects(self, source, target, options)
        finally:
            self._applying = False
        report.dry_run = True
        return report


@dataclass(slots=True)
class _Group:
    """Queued merges of one class with the same options: applied together."""

    #: the options of the group's merges (``delete`` aside, which is per merge)
    options: MergeOptions
    reports: list[MergeReport] = field(default_factory=list)
    #: (source, final target), chains resolved
    pairs: list[tuple[object, object]] = field(default_factory=list)
    #: the sources merged with ``delete=True``
    deleting: list[object] = field(default_factory=list)

    @property
    def mapper(self) -> Mapper[Any]:
        mapper: Mapper[Any] = instance_state(self.pairs[0][0]).mapper
        return mapper


def _group_merge(
    session: Session, group: _Group, deleting: Sequence[object], sync: bool = True
) -> Merge:
    """The pipeline's description of a group: objects locked, values read from identities."""
    mapper, pairs, options = group.mapper, group.pairs, group.options
    graph = graph_of(mapper)
    keys = graph.keys_for_mapper(mapper)

    def lock_and_read(connection: Connection) -> tuple[list[tuple[Any, Any]], ValuesOf]:
        objects = [obj for pair in pairs for obj in pair]
        read = lock_objects(connection, objects, referred_columns_to_read(keys))
        changed: dict[AnyColumn, set[Any]] = {}
        values_of = values_as_locked(objects, read, identity_values_reader(), changed)
        if changed and sync:
            expire_holders(session, graph, keys, changed)
        return pairs, values_of

    mode = options.synchronize_session
    deleted = {id(obj) for obj in deleting}
    return Merge(
        keys,
        options,
        lock_and_read,
        mapper=mapper,
        tables=[t for t in mapper.tables if isinstance(t, Table)],
        deletes=any(id(source) in deleted for source, _ in pairs),
        synchronize=(
            (
                lambda backend, moves: synchronize(
                    session,
                    graph,
                    pairs,
                    moves,
                    mode,
                    deleting,
                    inexact_string_comparison=backend.inexact_string_comparison,
                )
            )
            if sync
            else None
        ),
    )


def _report_group(group: _Group, keys: list[Any]) -> None:
    """Fill the group's reports in: the batch's totals on the batch; a merge's own counts
    only when it was alone in its batch (they are then the batch's)."""
    batch = BatchReport(pairs=group.pairs, keys=keys)
    alone = len(group.reports) == 1
    for report in group.reports:
        report.batch = batch
        report.applied = True
        if alone:
            report.keys = list(keys)
            report.counted = True


def _undelete(session: Session, source: object, deleted: Collection[object]) -> None:
    """Hold back a queued source's deletion (and what it cascaded to) until its merge ran."""
    session.add(source)
    mapper = instance_state(source).mapper
    graph = graph_of(mapper)
    state = instance_state(source)
    for key in graph.keys_for_mapper(mapper):
        for rel in relationships(mapper, key).one_to_many:
            if rel.cascade.delete and rel.key in state.dict:
                value = state.dict[rel.key]
                members = value if rel.uselist else [value]
                for member in list(members or ()):
                    if member is not None and member in deleted:
                        session.add(member)


def _apply_before_commit(session: ReferencesSession) -> None:
    if session._queued and not session._applying:
        session.flush()


def _mark_queue(session: ReferencesSession, transaction: SessionTransaction) -> None:
    session._queue_marks[transaction] = len(session._queued)


def _drop_queue(session: ReferencesSession, previous_transaction: SessionTransaction) -> None:
    if session._applying:
        return
    mark = session._queue_marks.pop(previous_transaction, 0)
    session._clear_queue(mark if previous_transaction.nested else 0)
