"""``python -m sa_references``: the ``sa-references`` command line."""

from .cli import main

raise SystemExit(main())
