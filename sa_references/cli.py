"""The ``sa-references`` command line (also ``python -m sa_references``).

``main(argv)`` parses the arguments, runs the command (:mod:`sa_references.command`),
writes its result as text or JSON and returns the exit status; every error
becomes one line on stderr.  The statuses are the ``EXIT_*`` constants.

Commands
========

``sa-references demo [--db PATH]``
    Create a small SQLite shop database (a temporary file unless ``--db``
    names a new one), then run the commands below on it.
``sa-references keys URL TABLE [--json]``
    The foreign keys that reference TABLE: referencing table and columns,
    referred columns, ON DELETE / ON UPDATE rules and the unique keys of the
    referencing table that include them (where a merge can conflict).
``sa-references dependents URL TABLE KEY [--limit N] [--json]``
    Per referencing key, how many rows reference the row and the first N
    (default 5) of them.
``sa-references merge URL TABLE SOURCE_KEY TARGET_KEY [options]``
    Re-point every reference to SOURCE_KEY to TARGET_KEY.  Shows the plan
    (a dry run) and asks for confirmation on stdin unless ``--yes``;
    ``--dry-run`` only shows the plan.  When stdin is not a terminal,
    ``--yes`` (or ``--dry-run``) is required.  Options: ``--on-conflict
    raise|delete|ignore`` (default raise), ``--delete`` (delete the source row
    afterwards), ``--on-self-reference raise|null``, ``--json``.
``sa-references merge URL TABLE --pairs FILE.csv [options]``
    Bulk deduplication: every (source, target) pair of the CSV file, chains
    (a -> b -> c) resolved, applied with ``merge_many`` in batches of
    ``--batch-size`` pairs (default 1000), all in one transaction.  The plan
    shown (``--dry-run``, or before the prompt) is the batched run itself,
    rehearsed in a transaction rolled back afterwards: the clashing rows it
    lists are the ones the run deletes or leaves.  A progress line is written
    to stderr when stderr is a terminal, a summary at the end.

Every command takes ``--schema NAME`` (the schema TABLE lives in, e.g. a
PostgreSQL schema or a MariaDB database).  Referencing keys are looked for in
every schema (MariaDB: every database) but the system ones.  A merge that
would still miss one fails naming it (``UnfollowedReferenceError``), and a
confirmed merge runs only if it does what the plan showed (else it fails,
changing nothing: the database changed in between).

Arguments
=========

URL
    A SQLAlchemy database URL (``postgresql+psycopg://user@host/db``,
    ``mysql+pymysql://...``, ``sqlite:///file.db``).  Give ``-`` to read it
    from the environment variable ``SA_REFERENCES_URL`` so that passwords
    stay out of the shell history and the process list.  A ``sqlite:///``
    file must exist; foreign keys are enforced on SQLite connections
    (``PRAGMA foreign_keys=ON``).
KEY
    A primary key: one value per primary key column, in the primary key's
    column order, separated by commas (``17``; ``TEA,M`` for a two-column
    key).  A value that contains a comma or a double quote is quoted
    CSV-style: ``'"Smith, Ada",3'``.  Each value is converted with its
    column's Python type (``int``, ``Decimal``, ``date``, ``UUID``...; other
    types are passed as strings).
FILE.csv
    UTF-8 CSV with a header line naming the columns ``source`` and ``target``
    (other columns are ignored, blank lines skipped); each cell is a KEY as
    above, so a composite key is one quoted cell: ``"TEA,MED","TEA,M"``.

Exit status
===========

0 success (a dry run included); 1 the command failed -- unknown table, key not
found, wrong number of key values, a conflict under ``--on-conflict raise``, a
cycle or malformed line in the CSV file, a bad URL, an unreachable server, any
database error; 2 usage error -- the command line is invalid, ``-`` was given
without ``SA_REFERENCES_URL``, or a merge needs ``--yes`` because stdin is not
a terminal; 3 the merge was not confirmed at the prompt; 4 the merge was
committed, but writing its result then failed (a closed pipe as in ``| head
-1``, a full disk): the database has changed; 5 a dry run (``--dry-run``) of a
merge that would fail -- a conflict under ``--on-conflict raise``, a
self-reference under ``--on-self-reference raise``: the whole plan is shown,
then why the merge would fail; 130 interrupted; 141 stdout was closed before
all was written (``keys ... | head -2``) by a command that changed nothing:
silent, as Unix tools are.  Errors are one line on stderr.  A failed or
declined merge changes nothing: each merge runs in one transaction.

JSON output (``--json``)
========================

One JSON document on stdout (the plan shown before a confirmation prompt then
goes to stderr, as text).  Key order is fixed; tables are named as
``schema.table`` when ``--schema`` is given; values JSON cannot represent are
strings (ISO 8601 dates and times, decimal strings, hex for binary data).

``keys``::

    {"table": "customer",
     "keys": [{"name": "orders(customer_id)", "table": "orders",
               "columns": ["customer_id"], "referred_table": "customer",
               "referred_columns": ["id"], "on_delete": "CASCADE",
               "on_update": "NO ACTION",
               "unique_keys": [{"name": "...", "columns": ["..."]}]}]}

``dependents``::

    {"table": "customer", "key": {"id": 3}, "count": 4,
     "keys": [{"name": "orders(customer_id)", "table": "orders",
               "columns": ["customer_id"], "count": 2,
               "sample": [{"id": 7, "customer_id": 3}]}]}

``merge``::

    {"table": "customer", "source": {"id": 3}, "target": {"id": 1},
     "dry_run": false, "on_conflict": "delete", "delete": true,
     "rowcount": 4, "deleted": 1, "left": 0, "cleared": 0, "would_fail": null,
     "keys": [{"name": "customer_tag(customer_id)", "table": "customer_tag",
               "columns": ["customer_id"], "repointed": 1, "deleted": 1,
               "left": 0, "cleared": 0, "cleared_rows": [], "self_references": [],
               "cascaded": [{"table": "tag_note", "action": "delete", "count": 2}],
               "conflicts": [{"constraint": "customer_tag primary key",
                              "rows": [[3, 1]]}]}]}

``merge --pairs``: as ``merge`` with ``"pairs": N`` (the number of pairs read)
in place of ``source`` and ``target``.  ``keys`` lists every referencing key,
in a fixed order, zero counts included.  ``rowcount`` is the number of rows
re-pointed, ``deleted`` the conflicting rows deleted, ``left`` those left on
the source, ``cleared`` the target's own references to the source set to NULL
(``--on-self-reference null``; ``cleared_rows`` are their identities; in a
plan refused for a self-reference, the rows that would reference themselves
are ``self_references`` and nothing is ``cleared``);
``cascaded`` is what the database's ON DELETE rules delete (``"delete"``) or
clear (``"set null"``, ``"set default"``) beyond the deleted conflicting rows;
conflict ``rows`` are the identities (primary key values) of the clashing
rows; ``would_fail`` is, in a plan, why the merge would fail (else null).
Clashing rows are never counted in ``repointed``; in a dry run under
``--on-conflict raise`` they are listed in ``conflicts`` (the merge itself
would fail).
"""

from __future__ import annotations

from ._cli import main
from ._cli_input import (
    EXIT_BROKEN_PIPE,
    EXIT_COMMITTED_OUTPUT_FAILED,
    EXIT_DECLINED,
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    EXIT_WOULD_FAIL,
    URL_ENV_VAR,
)

__all__ = [
    "EXIT_BROKEN_PIPE",
    "EXIT_COMMITTED_OUTPUT_FAILED",
    "EXIT_DECLINED",
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "EXIT_WOULD_FAIL",
    "URL_ENV_VAR",
    "main",
]
