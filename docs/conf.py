"""Sphinx configuration: ``sphinx-build -W --keep-going -n -b html docs docs/_build/html``.

The code examples are doctests: ``sphinx-build -W --keep-going -n -b doctest docs
docs/_build/doctest`` runs them against SQLite (in memory).  No intersphinx: the
build runs offline, so references into SQLAlchemy's documentation cannot be
resolved and are ignored by name (``nitpick_ignore_regex`` below) rather than
silenced wholesale.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import sa_references  # noqa: E402

project = "sa_references"
author = "the sa_references authors"
copyright = "2026, the sa_references authors"
release = version = sa_references.__version__

extensions = ["sphinx.ext.autodoc", "sphinx.ext.doctest"]

exclude_patterns = ["_build"]
html_theme = "furo"
html_title = f"sa_references {release}"
html_static_path: list[str] = []

default_role = "code"
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
autodoc_inherit_docstrings = False  # overrides of Session methods would show SQLAlchemy's text

# the examples share one schema, docs/shop.py, imported before each group
doctest_global_setup = """
from shop import *
engine = new_engine()
"""
doctest_default_flags = 0  # exact output; NORMALIZE_WHITESPACE where a page asks for it
doctest_test_doctest_blocks = "default"

# Without intersphinx (offline), SQLAlchemy's and the standard library's names
# cannot be linked; these are the only targets allowed to stay unresolved.
nitpicky = True
nitpick_ignore_regex = [
    (r"py:(class|meth|exc)", r"sqlalchemy\.[A-Za-z_.]+"),  # SQLAlchemy's API
    (r"py:class", r"collections\.abc\.[A-Za-z]+"),  # signatures' standard types
    (r"py:class", r"pathlib\.Path"),
    (r"py:class", r"sa_references\.asyncio\._T"),  # AsyncDependents' type parameter
]
