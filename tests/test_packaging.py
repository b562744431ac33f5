"""The package's declared dependencies cover what its code imports on every Python it allows."""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parents[1]


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_tomli_is_required_where_tomllib_is_missing():
    """Suite files are TOML (studies/suitefile.py): tomllib from 3.11, the tomli package before it."""
    project = _project()
    allowed = SpecifierSet(project["requires-python"])
    assert "3.10" in allowed  # the oldest Python the package allows has no tomllib
    reqs = [Requirement(r) for r in project["dependencies"]]
    tomli = [r for r in reqs if r.name == "tomli"]
    assert len(tomli) == 1 and tomli[0].marker is not None
    for version, needed in (("3.10", True), ("3.11", False), ("3.12", False)):
        assert tomli[0].marker.evaluate({"python_version": version}) is needed, version
    assert "tomli" in (ROOT / "studies" / "suitefile.py").read_text()  # the fallback import it serves
