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

    def __str__(self) -> str:
        return (
            f"{self.key.name}: {self.repointed} re-pointed, "
            f"{self.deleted} deleted, {self.left} left"
        )


@dataclass(slots=True)
class MergeReport:
    """The result of :func:`merge_into`: one :class:`KeyResult` per referencing key.

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
    batch: MergeReport | None = field(default=None, repr=False)

    def __iter__(self) -> Iterator[KeyResult]:
        return iter(self.keys)

    def __getitem__(self, key: ReferencingKey | str) -> KeyResult:
        for result in self.keys:
            if result.key is key or result.key.name == key:
                return result
        raise KeyError(key)

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
    def conflicts(self) -> list[Conflict]:
        return [c for r in self.keys for c in r.conflicts]

    def __str__(self) -> str:
        verb = "would re-point" if self.dry_run else "re-pointed"
        lines = [f"{self.source!r} -> {self.target!r}: {verb} {self.rowcount} row(s)"]
        lines += [f"  {r}" for r in self.keys if r.repointed or r.deleted or r.left]
        return "\n".join(lines)


@dataclass(slots=True)
class BatchReport(MergeReport):
    """The result of a batch: per referencing key, totals over every merge in it."""

    #: the (source, final target) pairs applied, chains resolved
    pairs: list[tuple[Any, Any]] = field(default_factory=list)

    def __str__(self) -> str:
        verb = "would re-point" if self.dry_run else "re-pointed"
        lines = [f"batch of {len(self.pairs)} merge(s): {verb} {self.rowcount} row(s)"]
        lines += [f"  {r}" for r in self.keys if r.repointed or r.deleted or r.left]
        return "\n".join(lines)
