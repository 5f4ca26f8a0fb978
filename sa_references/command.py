"""The command line's commands, callable from Python.

Each command of ``sa-references`` is a function here, as Alembic's commands are
in ``alembic.command``: it takes a database URL (``"-"`` reads
``$SA_REFERENCES_URL``) and a table name, reflects the table together with the
tables of any schema that reference it, does its work and returns a frozen
result; nothing is printed.  :func:`result_json` gives the document
``--json`` writes.

.. code-block:: python

    from sa_references import command

    plan = command.merge("sqlite:///shop.db", "customer", "3", "1",
                         command.MergeOptions(on_conflict="delete", dry_run=True))
    print(plan.rowcount, "rows would move")
    done = command.merge("sqlite:///shop.db", "customer", "3", "1",
                         command.MergeOptions(on_conflict="delete", delete=True),
                         confirm=lambda plan: plan.deleted < 10)
    print(done.committed, command.result_json(done)["keys"])

Keys are strings as on the command line (``"TEA,M"``, converted with the
columns' types) or values.  A merge given ``confirm`` shows it the plan first
and runs only when it returns True (else :class:`Declined`), and only if it
does what the plan showed.  Failures of the command itself (a table not found,
a malformed key, a missing file) raise :class:`CommandError`; the library's
refusals raise :mod:`sa_references.exc` errors, the database's SQLAlchemy's.
"""

from __future__ import annotations

from ._cli_commands import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_LIMIT,
    DependentsResult,
    KeySample,
    KeysResult,
    MergeResult,
    PairsResult,
    dependents,
    keys,
    merge,
    merge_pairs,
)
from ._cli_input import CommandError, Declined
from ._cli_render import result_json
from ._options import MergeOptions

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_LIMIT",
    "CommandError",
    "Declined",
    "DependentsResult",
    "KeySample",
    "KeysResult",
    "MergeOptions",
    "MergeResult",
    "PairsResult",
    "dependents",
    "keys",
    "merge",
    "merge_pairs",
    "result_json",
]
