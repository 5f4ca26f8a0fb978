"""``ReferencesSession``: merges queued, then applied set-based at flush."""

from __future__ import annotations

import weakref
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import Mapper, Session, SessionTransaction
from sqlalchemy.orm.attributes import instance_state

from ._batch import BatchReport, Chains, pairs_by_key, run_batch
from ._errors import ReferencesError
from ._merge import describe, graph_of, known_values, lock_objects, marked_for_deletion
from ._repoint import check_options, savepoint
from ._report import MergeReport
from ._sync import SynchronizeMode, SyncResult, relationships, synchronize

Values = tuple[Any, ...]


@dataclass(slots=True)
class _QueuedMerge:
    source: object
    target: object
    on_conflict: str
    delete: bool
    on_self_reference: str
    synchronize_session: SynchronizeMode
    report: MergeReport

    @property
    def group(self) -> tuple[Mapper[Any], str, str, SynchronizeMode]:
        mapper: Mapper[Any] = instance_state(self.source).mapper
        return (mapper, self.on_conflict, self.on_self_reference, self.synchronize_session)


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
        self._queued: list[_QueuedMerge] = []
        self._entries: dict[int, _QueuedMerge] = {}
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
        changed = self._chains.add(source_id, id(target))
        if not changed:  # the same merge, queued again
            return self._entries[source_id].report
        report = MergeReport(source, target, applied=False)
        entry = _QueuedMerge(source, target, on_conflict, delete, on_self_reference, mode, report)
        self._entries[source_id] = entry
        self._queued.append(entry)
        final = objects[self._chains.target_of[source_id]]
        for moved in changed:  # this source, and those already merged into it
            self._entries[moved].target = final
        return report

    def _describe(self, object_id: int) -> str:
        return describe(instance_state(self._objects[object_id]))

    def _clear_queue(self, keep: int = 0) -> None:
        """Drop the queued merges after the first ``keep``."""
        kept = self._queued[:keep]
        self._queued = []
        self._entries = {}
        self._objects = {}
        self._chains = Chains(self._describe)
        for entry in kept:
            self._objects[id(entry.source)] = entry.source
            self._objects[id(entry.target)] = entry.target
            self._chains.add(id(entry.source), id(entry.target))
            self._entries[id(entry.source)] = entry
            self._queued.append(entry)

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
        queued = list(self._queued)
        self._clear_queue()
        self._applying = True
        deleted = self.deleted  # one IdentitySet: each call builds a new one
        deferred = [q.source for q in queued if q.source in deleted]
        touched: list[object] = []
        removed: list[object] = []
        try:
            for source in deferred:
                _undelete(self, source, deleted)
            super().flush()  # pending rows that reference a source are written first
            deferred_ids = {id(source) for source in deferred}
            deleting = [q.source for q in queued if q.delete or id(q.source) in deferred_ids]
            with savepoint(self):
                for group in _groups(queued):
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


def _groups(queued: Sequence[_QueuedMerge]) -> list[list[_QueuedMerge]]:
    groups: dict[Any, list[_QueuedMerge]] = {}
    for entry in queued:
        groups.setdefault(entry.group, []).append(entry)
    return list(groups.values())


def _apply_group(
    session: Session, group: Sequence[_QueuedMerge], deleting: Sequence[object]
) -> SyncResult:
    first = group[0]
    for entry in group:
        for role, obj in (("source", entry.source), ("target", entry.target)):
            state = instance_state(obj)
            if not state.persistent or (
                obj is not entry.source and marked_for_deletion(session, state)
            ):
                raise ReferencesError(f"queued merge {role} {obj!r} is no longer persistent")
    mapper: Mapper[Any] = instance_state(first.source).mapper
    lock_objects(session, [obj for entry in group for obj in (entry.source, entry.target)])
    graph = graph_of(mapper)
    keys = graph.keys_for_mapper(mapper)
    pairs = [(entry.source, entry.target) for entry in group]
    key_pairs = pairs_by_key(session, keys, pairs, known_values)
    results, moves = run_batch(
        session,
        key_pairs,
        on_conflict=first.on_conflict,
        on_self_reference=first.on_self_reference,
        fetch=first.synchronize_session == "fetch",
    )
    batch = BatchReport(None, None, keys=results, pairs=pairs)
    for entry in group:
        entry.report.keys = results
        entry.report.batch = batch
        entry.report.applied = True
    return synchronize(session, graph, pairs, moves, first.synchronize_session, deleting)


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
