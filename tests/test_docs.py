"""The documentation and the package metadata agree with the code."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import sa_references

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
