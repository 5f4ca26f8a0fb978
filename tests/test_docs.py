"""The documentation and the package metadata agree with the code."""

from __future__ import annotations

import inspect
import re
from importlib import metadata
from pathlib import Path

import sa_references
from sa_references import exc

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def test_version_is_single_sourced() -> None:
    # pyproject.toml reads the version from sa_references/__init__.py (hatch dynamic version)
    assert sa_references.__version__ == metadata.version("sa_references")
    assert 'dynamic = ["version"]' in (ROOT / "pyproject.toml").read_text()


def test_metadata_names_the_license() -> None:
    meta = metadata.metadata("sa_references")
    assert meta["License-Expression"] == "MIT"
    assert "License :: OSI Approved :: MIT License" in meta.get_all("Classifier", [])
    assert "Copyright (c) 2026 the sa_references authors" in (ROOT / "LICENSE").read_text()


def api_directives(module: str = "sa_references") -> dict[str, str]:
    """``{name: directive}`` for each ``.. autoX:: MODULE.NAME`` of docs/api.rst (names of
    ``module`` itself: ``sa_references.asyncio.X`` is not a name of ``sa_references``, nor
    is the ``automodule`` of ``sa_references.asyncio``)."""
    text = (DOCS / "api.rst").read_text()
    pattern = rf"^\.\. (auto(?!module)\w+):: {re.escape(module)}\.(\w+)(?![\w.])"
    found = re.findall(pattern, text, re.M)
    return {name: directive for directive, name in found}


def test_every_public_name_is_in_the_api_reference() -> None:
    documented = api_directives()
    missing = [name for name in sa_references.__all__ if name not in documented]
    assert not missing, f"add a directive to docs/api.rst for: {', '.join(missing)}"
    assert not set(documented) - set(sa_references.__all__), "api.rst documents a private name"


def test_exceptions_are_documented_as_exceptions() -> None:
    documented = api_directives()
    for name in exc.__all__:
        is_exception = issubclass(getattr(exc, name), Exception)  # else Remedy, an attribute's
        assert documented[name] == ("autoexception" if is_exception else "autoclass"), name
    for name in set(sa_references.__all__) - set(exc.__all__):
        value = getattr(sa_references, name)
        if inspect.isfunction(value):
            kind = "autofunction"
        elif inspect.isclass(value):
            kind = "autoclass"
        else:  # a constant (USE_SESSION_DEFAULT)
            kind = "autodata"
        assert documented[name] == kind, name


def test_every_asyncio_name_is_in_the_api_reference() -> None:
    from sa_references import asyncio

    documented = api_directives("sa_references.asyncio")
    assert set(documented) == set(asyncio.__all__)
    for name in asyncio.__all__:
        value = getattr(asyncio, name)
        kind = "autoclass" if inspect.isclass(value) else "autofunction"
        assert inspect.isclass(value) or inspect.isfunction(value), name
        assert documented[name] == kind, name
    assert re.search(
        r"^\.\. automodule:: sa_references\.asyncio$", (DOCS / "api.rst").read_text(), re.M
    )


def test_every_page_is_in_the_toctree() -> None:
    index = (DOCS / "index.rst").read_text()
    for page in DOCS.glob("*.rst"):
        if page.stem != "index":
            assert re.search(rf"^   {re.escape(page.stem)}$", index, re.M), page.name


def test_package_docstring_points_to_the_docs() -> None:
    doc = sa_references.__doc__ or ""
    assert "docs/" in doc
    assert len(doc.splitlines()) <= 30
