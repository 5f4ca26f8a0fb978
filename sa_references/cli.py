"""The ``sa-references`` command line (also ``python -m sa_references``).

``main(argv)`` parses the arguments, runs the command (:mod:`sa_references.command`),
writes its result as text or JSON and returns the exit status; every error
becomes one line on stderr.  The statuses are the ``EXIT_*`` constants.
"""

from __future__ import annotations

from ._cli import main
from ._cli_input import (
    EXIT_COMMITTED_OUTPUT_FAILED,
    EXIT_DECLINED,
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    URL_ENV_VAR,
)

__all__ = [
    "EXIT_COMMITTED_OUTPUT_FAILED",
    "EXIT_DECLINED",
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "URL_ENV_VAR",
    "main",
]
