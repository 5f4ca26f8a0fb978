"""What a merge did (or, in a dry run, would do), per referencing key."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from ._keys import ReferencingKey

Values = tuple[Any, ...]


@dataclass(frozen=True)
class Conflict:
    """Rows of a referencing table that would clash on a unique key once re-pointed."""

    key: ReferencingKey
    constraint: str
    #: identities (primary key values, or the table's identifying columns) of the clashing rows
    rows: tuple[Values, ...]
    #: in a batch, the referred values of each clashing row's source, row by row
    sources: tuple[Values, ...] = ()

    @property
    def table(self) -> str:
        return self.key.table.fullname


def clashing_rows(conflicts: Sequence[Conflict]) -> list[Values]:
    """The identities of the rows in ``conflicts``, each once, in order."""
    seen: dict[Values, None] = {}
    for conflict in conflicts:
        seen.update(dict.fromkeys(conflict.rows))
    return list(seen)


@dataclass(frozen=True)
class Cascade:
    """Rows of a table that the database's ON DELETE rules delete or clear because the
    merge deleted rows they reference (``on_conflict="delete"``)."""

    #: the table's full name
    table: str
    #: ``"delete"`` (CASCADE), ``"set null"`` or ``"set default"``
    action: str
    count: int


def total_cascades(cascades: Sequence[Cascade]) -> tuple[Cascade, ...]:
    """One entry per table and action, counts added, in the order first seen."""
    totals: dict[tuple[str, str], int] = {}
    for cascade in cascades:
        slot = (cascade.table, cascade.action)
        totals[slot] = totals.get(slot, 0) + cascade.count
    return tuple(Cascade(table, action, count) for (table, action), count in totals.items())


@dataclass
class KeyResult:
    """The outcome of one referencing key."""

    key: ReferencingKey
    #: rows re-pointed to the target (or that would be, in a dry run)
    repointed: int = 0
    #: the source's rows deleted because they clashed (``on_conflict="delete"``)
    deleted: int = 0
    #: rows left pointing at the source (``on_conflict="ignore"``)
    left: int = 0
    conflicts: list[Conflict] = field(default_factory=list)
    #: what ON DELETE rules deleted or cleared beyond the ``deleted`` rows
    cascaded: list[Cascade] = field(default_factory=list)
    #: identities of the targets' own rows whose reference to their source was set to
    #: NULL rather than made to reference the target itself (``on_self_reference="null"``)
    cleared_rows: tuple[Values, ...] = ()

    @property
    def cleared(self) -> int:
        """Rows whose reference was set to NULL (``on_self_reference="null"``)."""
        return len(self.cleared_rows)

    def __str__(self) -> str:
        text = f"{self.key.name}: {self.repointed} re-pointed"
        if self.cleared:
            text += f", {self.cleared} cleared"
        text += f", {self.deleted} deleted"
        text += "".join(f", {c.count} of {c.table} {c.action}d" for c in self.cascaded)
        return f"{text}, {self.left} left"


class _PerKey:
    """What reports of one merge and of a batch share: one :class:`KeyResult` per key."""

    __slots__ = ()
    keys: list[KeyResult]

    def __iter__(self) -> Iterator[KeyResult]:
        return iter(self.keys)

    def __getitem__(self, key: ReferencingKey | str) -> KeyResult:
        for result in self.keys:
            if result.key is key or result.key.name == key:
                return result
        raise KeyError(key)

    @property
    def conflicts(self) -> list[Conflict]:
        return [c for r in self.keys for c in r.conflicts]

    @property
    def cascaded(self) -> tuple[Cascade, ...]:
        """What the database's ON DELETE rules deleted or cleared beyond the deleted
        clashing rows, one entry per table and action (empty when no rule applied)."""
        return total_cascades([c for r in self.keys for c in r.cascaded])

    def _lines(self) -> list[str]:
        return [f"  {r}" for r in self.keys if r.repointed or r.cleared or r.deleted or r.left]


@dataclass(slots=True)
class MergeReport(_PerKey):
    """The result of :func:`merge_into` or :func:`merge_rows`: one :class:`KeyResult` per
    referencing key.

    A merge queued on a :class:`ReferencesSession` has no counts until it is applied
    (``applied`` is False); it is then applied set-based with the other merges of its
    batch, whose totals are in :attr:`batch`.  It has counts of its own only when it
    was alone in its batch: otherwise :attr:`rowcount`, :attr:`deleted` and
    :attr:`left` are None and :attr:`keys` is empty (a batch's one UPDATE per key does
    not count per merge).

    E.g.::

        report = dupe.merge_into(keeper, dry_run=True)
        print(report.rowcount, "rows would move")
        for result in report:
            print(result)
    """

    source: object
    target: object
    dry_run: bool = False
    keys: list[KeyResult] = field(default_factory=list)
    #: False while a merge queued on a ReferencesSession waits for the next flush
    applied: bool = True
    #: for a queued merge, the report of the whole batch it was applied with
    batch: BatchReport | None = field(default=None, repr=False)
    #: whether :attr:`keys` are this merge's own counts (see above)
    counted: bool = True

    @property
    def rowcount(self) -> int | None:
        """Rows re-pointed, counted per referencing key (None: no counts of its own)."""
        return sum(r.repointed for r in self.keys) if self.counted else None

    @property
    def deleted(self) -> int | None:
        """The source's clashing rows deleted (None: no counts of its own)."""
        return sum(r.deleted for r in self.keys) if self.counted else None

    @property
    def left(self) -> int | None:
        """Clashing rows left on the source (None: no counts of its own)."""
        return sum(r.left for r in self.keys) if self.counted else None

    @property
    def cleared(self) -> int | None:
        """The target's references to the source set to NULL (None: no counts of its
        own)."""
        return sum(r.cleared for r in self.keys) if self.counted else None

    def __str__(self) -> str:
        merge = f"{self.source!r} -> {self.target!r}"
        if not self.applied:
            return f"{merge}: queued, not applied yet (applied at the next flush)"
        if not self.counted:
            batch = self.batch
            total = f": {batch.rowcount} row(s) re-pointed in all" if batch is not None else ""
            size = len(batch.pairs) if batch is not None else 0
            return f"{merge}: applied in a batch of {size} merge(s){total} (report.batch)"
        verb = "would re-point" if self.dry_run else "re-pointed"
        return "\n".join([f"{merge}: {verb} {self.rowcount} row(s)", *self._lines()])


@dataclass(slots=True)
class BatchReport(_PerKey):
    """The result of a batch (:func:`merge_many`, a ReferencesSession's flush): per
    referencing key, totals over every merge in it."""

    #: the (source, final target) pairs applied, chains resolved
    pairs: list[tuple[Any, Any]] = field(default_factory=list)
    dry_run: bool = False
    keys: list[KeyResult] = field(default_factory=list)

    @property
    def rowcount(self) -> int:
        """Rows re-pointed, counted per referencing key."""
        return sum(r.repointed for r in self.keys)

    @property
    def deleted(self) -> int:
        return sum(r.deleted for r in self.keys)

    @property
    def left(self) -> int:
        return sum(r.left for r in self.keys)

    @property
    def cleared(self) -> int:
        """Targets' references to their own source set to NULL
        (``on_self_reference="null"``)."""
        return sum(r.cleared for r in self.keys)

    def __str__(self) -> str:
        verb = "would re-point" if self.dry_run else "re-pointed"
        head = f"batch of {len(self.pairs)} merge(s): {verb} {self.rowcount} row(s)"
        return "\n".join([head, *self._lines()])
