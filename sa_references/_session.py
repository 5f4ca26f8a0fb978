"""``ReferencesSession``: merges queued, then applied set-based at flush."""

from __future__ import annotations

import weakref
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from sqlalchemy import event
from sqlalchemy.orm import Mapper, Session, SessionTransaction
from sqlalchemy.orm.attributes import instance_state

from ._batch import BatchReport, Chains, pairs_by_key, run_batch
from ._merge import (
    describe,
    graph_of,
    identity_values_reader,
    lock_objects,
    marked_for_deletion,
)
from ._repoint import check_options, connection_of, savepoint
from ._report import MergeReport
from ._sync import SynchronizeMode, SyncResult, relationships, synchronize
from .exc import ReferencesError

Values = tuple[Any, ...]


class _Options(NamedTuple):
    """How a queued merge is applied; merges with equal options and class go together."""

    on_conflict: str
    delete: bool
    on_self_reference: str
    synchronize_session: SynchronizeMode


#: each distinct options tuple once: a queued merge holds a shared one, not its own
_interned: dict[tuple[Any, ...], _Options] = {}


def _options(*values: Any) -> _Options:
    try:
        return _interned[values]
    except KeyError:
        return _interned.setdefault(values, _Options(*values))


class ReferencesSession(Session):
    """A :class:`~sqlalchemy.orm.Session` that queues merges and applies them set-based.

    ``obj.merge_into(target)`` on its objects queues the merge and returns a
    :class:`MergeReport` that is filled in (``report.applied``) when the queue
    is applied: at the next flush, whether explicit, an autoflush before a
    query, or the one ``commit()`` runs, even when nothing else is pending.
    For each referencing key, all the queued merges are re-pointed by one
    UPDATE joined to a temporary mapping table, inside one SAVEPOINT.
    ``rollback()`` drops the queue.

    Chains resolve (``a.merge_into(b); b.merge_into(c)`` ends with everything
    at ``c``); a cycle is refused with :class:`ReferencesError` when queued.
    A queued merge's report gives the totals of the whole batch it was
    applied with (``report.batch``).

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

    def __init__(
        self,
        bind: Any = None,
        *,
        synchronize_session: SynchronizeMode = "evaluate",
        **kwargs: Any,
    ) -> None:
        check_options("raise", synchronize_session)
        super().__init__(bind, **kwargs)
        self.synchronize_session: SynchronizeMode = synchronize_session
        #: the reports of the queued merges, in order (``report.source`` is the source)
        self._queued: list[MergeReport] = []
        #: by id(source): the report, and the options the merge was queued with
        self._reports: dict[int, MergeReport] = {}
        self._options: dict[int, _Options] = {}
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
        self,
        source: object,
        target: object,
        *,
        on_conflict: str,
        delete: bool,
        synchronize_session: SynchronizeMode | None,
        on_self_reference: str,
    ) -> MergeReport:
        mode = self.synchronize_session if synchronize_session is None else synchronize_session
        source_id = id(source)
        objects = self._objects
        objects.setdefault(source_id, source)
        objects.setdefault(id(target), target)
        if not self._chains.add(source_id, id(target)):  # the same merge, queued again
            return self._reports[source_id]
        report = MergeReport(source, target, applied=False)
        self._reports[source_id] = report
        self._options[source_id] = _options(on_conflict, delete, on_self_reference, mode)
        self._queued.append(report)
        return report

    def _describe(self, object_id: int) -> str:
        return describe(instance_state(self._objects[object_id]))

    def _clear_queue(self, keep: int = 0) -> None:
        """Drop the queued merges after the first ``keep``."""
        kept, options = self._queued[:keep], self._options
        self._queued = []
        self._reports = {}
        self._options = {}
        self._objects = {}
        self._chains = Chains(self._describe)
        for report in kept:
            source, target = report.source, report.target
            self._objects[id(source)] = source
            self._objects[id(target)] = target
            self._chains.add(id(source), id(target))
            self._reports[id(source)] = report
            self._options[id(source)] = options[id(source)]
            self._queued.append(report)

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
        groups = self._take_queue()
        self._applying = True
        deleted = self.deleted  # one IdentitySet: each call builds a new one
        deferred = [r.source for g in groups for r in g.reports if r.source in deleted]
        touched: list[object] = []
        removed: list[object] = []
        try:
            for source in deferred:
                _undelete(self, source, deleted)
            super().flush()  # pending rows that reference a source are written first
            asked = (source for group in groups for source in group.deleting)
            deleting = list({id(s): s for s in (*asked, *deferred)}.values())  # each once
            # on the connection the session binds the (first) merged class to; other binds
            # the groups use get their SAVEPOINT from the Session's nested transaction
            with savepoint(self, mapper=groups[0].mapper):
                for group in groups:
                    synced = _apply_group(self, group, deleting)
                    touched += synced.touched
                    removed += synced.removed
                for source in deleting:
                    self.delete(source)
        except BaseException:
            for obj in touched:
                if instance_state(obj).session is self:
                    self.expire(obj)
            for source in deferred:
                if source not in self.deleted:
                    self.delete(source)
            raise
        finally:
            self._applying = False
        for obj in removed:
            if instance_state(obj).session is self:
                self.expunge(obj)

    def _take_queue(self) -> list[_Group]:
        """The queued merges by class and options, with their final targets; the queue empties."""
        objects, target_of, options = self._objects, self._chains.target_of, self._options
        groups: dict[tuple[Any, ...], _Group] = {}
        for report in self._queued:
            source = report.source
            merge = options[id(source)]
            # ``delete`` is per merge: merges that differ only in it are one batch
            key = (instance_state(source).mapper, *merge[:1], *merge[2:])
            group = groups.get(key)
            if group is None:
                group = groups[key] = _Group(merge)
            group.reports.append(report)
            group.pairs.append((source, objects[target_of[id(source)]]))
            if merge.delete:
                group.deleting.append(source)
        self._clear_queue()
        return list(groups.values())


@dataclass(slots=True)
class _Group:
    """Queued merges of one class with the same options: applied together."""

    #: the first merge's options (``delete`` aside, all of the group's)
    options: _Options
    reports: list[MergeReport] = field(default_factory=list)
    #: (source, final target), chains resolved
    pairs: list[tuple[object, object]] = field(default_factory=list)
    #: the sources merged with ``delete=True``
    deleting: list[object] = field(default_factory=list)

    @property
    def mapper(self) -> Mapper[Any]:
        mapper: Mapper[Any] = instance_state(self.pairs[0][0]).mapper
        return mapper


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


def _apply_group(session: Session, group: _Group, deleting: Sequence[object]) -> SyncResult:
    for source, target in group.pairs:
        for role, obj in (("source", source), ("target", target)):
            state = instance_state(obj)
            if not state.persistent or (obj is target and marked_for_deletion(session, state)):
                raise ReferencesError(f"queued merge {role} {obj!r} is no longer persistent")
    pairs, options, mapper = group.pairs, group.options, group.mapper
    # Core statements, on the connection the session binds the class to (a Session would
    # send a statement about an unmapped mapping table to its default bind)
    bind = connection_of(session, mapper)
    lock_objects(bind, [obj for pair in pairs for obj in pair])
    graph = graph_of(mapper)
    keys = graph.keys_for_mapper(mapper)
    key_pairs = pairs_by_key(bind, keys, pairs, identity_values_reader())
    results, moves = run_batch(
        bind,
        key_pairs,
        on_conflict=options.on_conflict,
        on_self_reference=options.on_self_reference,
        fetch=options.synchronize_session == "fetch",
    )
    batch = BatchReport(None, None, keys=results, pairs=pairs)
    for report in group.reports:
        report.keys = results
        report.batch = batch
        report.applied = True
    return synchronize(session, graph, pairs, moves, options.synchronize_session, deleting)


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
