"""The command line's output: each command's result as text or JSON, written to a stream.

The JSON formats are documented in :mod:`sa_references._cli`; :func:`result_json` is the
document of any command's result.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

from sqlalchemy import Table

from ._cli_commands import (
    DependentsResult,
    KeysResult,
    MergeResult,
    PairsResult,
)
from ._cli_input import describe_error
from ._keys import ReferencingKey
from ._report import Conflict, KeyResult

JSONDict = dict[str, Any]

#: how a plan and a result say what happens to rows
PLAN_WORDS = {
    "repoint": "to re-point",
    "delete": "to delete",
    "leave": "to leave on the source",
    "clear": "to clear",
}
RESULT_WORDS = {
    "repoint": "re-pointed",
    "delete": "deleted",
    "leave": "left on the source",
    "clear": "cleared",
}
#: a Cascade's action, as its ON DELETE rule and as a verb
RULES = {
    "delete": ("CASCADE", "delete"),
    "set null": ("SET NULL", "clear"),
    "set default": ("SET DEFAULT", "clear"),
}


# ---------------------------------------------------------------- values


def result_json(result: KeysResult | DependentsResult | MergeResult | PairsResult) -> JSONDict:
    """The JSON document ``--json`` writes for a command's result (values JSON cannot
    represent as strings: ISO 8601 dates, decimal strings, hex for binary data)."""
    if isinstance(result, KeysResult):
        return keys_json(result)
    if isinstance(result, DependentsResult):
        return dependents_json(result)
    return merge_json(result)


def json_value(value: Any) -> Any:
    """A database value as JSON: strings for what JSON has no type for."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, (list, tuple)):  # a PostgreSQL array
        return [json_value(v) for v in value]
    if isinstance(value, (set, frozenset)):  # a MySQL SET: in a stable order
        return sorted((json_value(v) for v in value), key=lambda v: (str(type(v)), str(v)))
    if isinstance(value, dict):  # JSON columns
        return {str(k): json_value(v) for k, v in value.items()}
    return str(value)


def key_dict(table: Table, values: Sequence[Any]) -> JSONDict:
    return {c.name: json_value(v) for c, v in zip(table.primary_key.columns, values)}


def format_key(table: Table, values: Sequence[Any]) -> str:
    return ", ".join(f"{name}={json.dumps(v)}" for name, v in key_dict(table, values).items())


def write_json(document: Mapping[str, Any], out: TextIO) -> None:
    out.write(json.dumps(document, indent=2, ensure_ascii=False) + "\n")


def plural(count: int, noun: str, nouns: str = "") -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {nouns or noun + 's'}"


def names(columns: Sequence[Any]) -> list[str]:
    return [c.name for c in columns]


def format_row(row: Mapping[str, Any]) -> str:
    return " ".join(f"{name}={json.dumps(json_value(v))}" for name, v in row.items())


def rule(value: str | None) -> str:
    return value.upper() if value else "NO ACTION"


# ---------------------------------------------------------------- keys


def keys_json(result: KeysResult) -> JSONDict:
    return {"table": result.table.fullname, "keys": [key_json(k) for k in result.keys]}


def key_json(key: ReferencingKey) -> JSONDict:
    return {
        "name": key.name,
        "table": key.table.fullname,
        "columns": names(key.columns),
        "referred_table": key.referred_table.fullname,
        "referred_columns": names(key.referred_columns),
        "on_delete": rule(key.constraint.ondelete),
        "on_update": rule(key.constraint.onupdate),
        "unique_keys": [{"name": u.name, "columns": names(u.columns)} for u in key.unique_keys],
    }


def write_keys(result: KeysResult, out: TextIO, as_json: bool = False) -> None:
    if as_json:
        write_json(keys_json(result), out)
        return
    print(
        f"{result.table.fullname} is referenced by {plural(len(result.keys), 'foreign key')}",
        file=out,
    )
    for key in result.keys:
        unique = ", ".join(u.name for u in key.unique_keys) or "none"
        print(
            f"  {key.name} -> {key.referred_table.fullname}"
            f"({', '.join(names(key.referred_columns))})",
            file=out,
        )
        print(
            f"      on delete {rule(key.constraint.ondelete)}, "
            f"on update {rule(key.constraint.onupdate)}; unique keys over it: {unique}",
            file=out,
        )


# ---------------------------------------------------------------- dependents


def dependents_json(result: DependentsResult) -> JSONDict:
    return {
        "table": result.table.fullname,
        "key": key_dict(result.table, result.key),
        "count": result.count,
        "keys": [
            {
                "name": s.key.name,
                "table": s.key.table.fullname,
                "columns": names(s.key.columns),
                "count": s.count,
                "sample": [{k: json_value(v) for k, v in row.items()} for row in s.rows],
            }
            for s in result.samples
        ],
    }


def write_dependents(result: DependentsResult, out: TextIO, as_json: bool = False) -> None:
    if as_json:
        write_json(dependents_json(result), out)
        return
    table, key = result.table, result.key
    print(
        f"{table.fullname} ({format_key(table, key)}) is referenced by "
        f"{plural(result.count, 'row')}",
        file=out,
    )
    for sample in result.samples:
        print(f"  {sample.key.name}: {plural(sample.count, 'row')}", file=out)
        for row in sample.rows:
            print(f"    {format_row(row)}", file=out)
        if sample.count > len(sample.rows) and sample.rows:
            print(f"    ... and {sample.count - len(sample.rows)} more", file=out)


# ---------------------------------------------------------------- merge


def merge_json(result: MergeResult | PairsResult) -> JSONDict:
    if isinstance(result, PairsResult):
        head: JSONDict = {"table": result.table.fullname, "pairs": result.pairs}
    else:
        head = {
            "table": result.table.fullname,
            "source": key_dict(result.table, result.source),
            "target": key_dict(result.table, result.target),
        }
    return {
        **head,
        "dry_run": result.dry_run,
        "on_conflict": result.options.on_conflict,
        "delete": result.options.delete,
        "rowcount": result.rowcount,
        "deleted": result.deleted,
        "left": result.left,
        "cleared": 0 if result.refused else result.cleared,
        "would_fail": None if result.refusal is None else describe_error(result.refusal),
        "keys": [key_result_json(r, refused=result.refused is not None) for r in result.keys],
    }


def key_result_json(result: KeyResult, refused: bool = False) -> JSONDict:
    """One key's counts; in a plan refused for a self-reference (``refused``), the rows
    that would reference themselves are ``self_references``, nothing is ``cleared``."""
    rows = [[json_value(v) for v in row] for row in result.cleared_rows]
    return {
        "name": result.key.name,
        "table": result.key.table.fullname,
        "columns": names(result.key.columns),
        "repointed": result.repointed,
        "deleted": result.deleted,
        "left": result.left,
        "cleared": 0 if refused else result.cleared,
        "cleared_rows": [] if refused else rows,
        "self_references": rows if refused else [],
        "cascaded": [
            {"table": c.table, "action": c.action, "count": c.count} for c in result.cascaded
        ],
        "conflicts": [conflict_json(c) for c in result.conflicts],
    }


def conflict_json(conflict: Conflict) -> JSONDict:
    return {
        "constraint": conflict.constraint,
        "rows": [[json_value(v) for v in row] for row in conflict.rows],
    }


def write_merge(result: MergeResult | PairsResult, out: TextIO, as_json: bool = False) -> None:
    """The plan or the result of ``merge`` (one pair or ``--pairs``)."""
    if as_json:
        write_json(merge_json(result), out)
        return
    if isinstance(result, PairsResult):
        pairs = plural(result.pairs, "pair")
        if result.dry_run:
            head = f"Plan: {pairs} of {result.table.fullname} from {result.origin}"
        else:
            batches = plural(result.batches, "batch", "batches")
            head = f"Merged {pairs} of {result.table.fullname} in {batches}"
        sources = "the source rows"
    else:
        source = format_key(result.table, result.source)
        target = format_key(result.table, result.target)
        verb = "Plan" if result.dry_run else "Merged"
        head = f"{verb}: {result.table.fullname} ({source}) into ({target})"
        sources = "the source row"
    print(head, file=out)
    write_key_results(result, out)
    write_totals(result, sources, out)


def write_key_results(result: MergeResult | PairsResult, out: TextIO) -> None:
    idle = 0
    for key_result in result.keys:
        if not (
            key_result.repointed
            or key_result.cleared
            or key_result.deleted
            or key_result.left
            or key_result.conflicts
        ):
            idle += 1
            continue
        print(f"  {key_result.key.name}: {describe_key_result(result, key_result)}", file=out)
    if idle:
        print(f"  ({plural(idle, 'other referencing key')} with nothing to re-point)", file=out)


def describe_key_result(result: MergeResult | PairsResult, key_result: KeyResult) -> str:
    words = PLAN_WORDS if result.dry_run else RESULT_WORDS
    parts = [f"{key_result.repointed} {words['repoint']}"]
    if key_result.cleared and result.refused is not None:
        parts.append(f"{plural(key_result.cleared, 'row')} would reference itself")
    elif key_result.cleared:
        parts.append(f"{key_result.cleared} {words['clear']} (the target's own reference)")
    if key_result.deleted:
        parts.append(f"{key_result.deleted} conflicting {words['delete']}")
    for cascade in key_result.cascaded:
        rule, verb = RULES[cascade.action]
        parts.append(f"{cascade.count} of {cascade.table} {words[verb]} by ON DELETE {rule}")
    if key_result.left:
        parts.append(f"{key_result.left} conflicting {words['leave']}")
    if result.options.on_conflict == "raise":
        parts += [
            f"{plural(len(c.rows), 'row')} clash on {c.constraint} (see --on-conflict)"
            for c in key_result.conflicts
        ]
    return ", ".join(parts)


def write_totals(result: MergeResult | PairsResult, sources: str, out: TextIO) -> None:
    repointed = plural(result.rowcount, "row")
    deleted = plural(result.deleted, "conflicting row")
    delete = result.options.delete
    if result.dry_run:
        clear = f", clear {result.cleared}" if result.cleared and not result.refused else ""
        line = f"Would re-point {repointed}{clear}, delete {deleted}, leave {result.left}"
        line += f" and delete {sources}." if delete else "."
    else:
        clear = f", cleared {result.cleared}" if result.cleared else ""
        line = f"Re-pointed {repointed}{clear}, deleted {deleted}, left {result.left}"
        line += f"; deleted {sources}." if delete else "."
    print(line, file=out)
    if result.options.dry_run:
        print("Dry run: nothing changed.", file=out)
    if result.dry_run and result.refusal is not None:
        print(f"The merge would fail: {describe_error(result.refusal)}", file=out)
