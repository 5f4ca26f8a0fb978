"""``python -m sa_references``: the ``sa-references`` command line."""

from ._cli import main

raise SystemExit(main())
