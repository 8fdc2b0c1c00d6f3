"""Every third-party package the code imports is declared in pyproject.toml, so a fresh install can import it.

An import at module or function level needs a main dependency; one inside ``try: ... except ImportError`` is
optional and may come from a user-facing extra instead (``dev`` is for working on ctfm, not for using it).
"""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
IMPORT_ERRORS = {"ImportError", "ModuleNotFoundError"}


def _load_toml(path: Path) -> dict:
    if sys.version_info >= (3, 11):
        import tomllib
    else:
        tomllib = pytest.importorskip("tomli")  # mypy brings it to a Python 3.10 dev install
    return tomllib.loads(path.read_text())


def normalise(name: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_names(requirements: list[str]) -> set[str]:
    return {normalise(re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", r.strip()).group()) for r in requirements}


def declared(pyproject: Path) -> tuple[set[str], set[str]]:
    """(main dependencies, dependencies of the user-facing extras) of a pyproject.toml, normalised."""
    project = _load_toml(pyproject)["project"]
    extras = project.get("optional-dependencies", {})
    optional = {name for extra, reqs in extras.items() if extra != "dev" for name in requirement_names(reqs)}
    return requirement_names(project["dependencies"]), optional


def _catches_import_error(handler: ast.ExceptHandler) -> bool:
    caught = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return any(isinstance(c, ast.Name) and c.id in IMPORT_ERRORS for c in caught)


def third_party_imports(source: str, own: str = "ctfm") -> dict[str, bool]:
    """Top-level third-party module -> whether every import of it is guarded by ``except ImportError``."""
    tree = ast.parse(source)
    guarded = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.Try) and any(_catches_import_error(h) for h in block.handlers)
        for statement in block.body
        for node in ast.walk(statement)
    }
    found: dict[str, bool] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            top = name.partition(".")[0]
            if top in sys.stdlib_module_names or top in (own, "__future__"):
                continue
            found[top] = found.get(top, True) and id(node) in guarded
    return found


def undeclared(imports: dict[str, bool], required: set[str], optional: set[str]) -> list[str]:
    """The imported modules no declared distribution provides, each with why."""
    providers = packages_distributions()
    problems = []
    for module, is_guarded in sorted(imports.items()):
        distributions = {normalise(d) for d in providers.get(module, [])}
        if not distributions:
            problems.append(f"{module}: no installed distribution provides it")
        elif not distributions & (required | optional if is_guarded else required):
            where = "dependencies or a user-facing extra" if is_guarded else "dependencies (the import is unguarded)"
            problems.append(f"{module}: from {'/'.join(sorted(distributions))}, not in pyproject.toml's {where}")
    return problems


def test_every_third_party_import_of_the_package_is_declared():
    required, optional = declared(ROOT / "pyproject.toml")
    imports: dict[str, bool] = {}
    for path in sorted((ROOT / "ctfm").rglob("*.py")):
        for module, is_guarded in third_party_imports(path.read_text()).items():
            imports[module] = imports.get(module, True) and is_guarded
    assert {"torch", "monai", "nibabel", "sklearn"} <= imports.keys()  # the walk found the package's imports
    assert undeclared(imports, required, optional) == []


def test_an_undeclared_or_unguarded_optional_import_is_reported():
    required, optional = {"numpy"}, {"transformers"}
    source = """
import numpy as np
from pytest import approx

def caption():
    try:
        from transformers import AutoModel
    except (ImportError, OSError):
        AutoModel = None
"""
    imports = third_party_imports(source)
    assert imports == {"numpy": False, "pytest": False, "transformers": True}
    assert undeclared(imports, required, optional) == [
        "pytest: from pytest, not in pyproject.toml's dependencies (the import is unguarded)"
    ]
    unguarded = third_party_imports("import transformers\nimport ctfm.nn\nimport os.path\n")
    assert unguarded == {"transformers": False}
    assert undeclared(unguarded, required, optional) == [
        "transformers: from transformers, not in pyproject.toml's dependencies (the import is unguarded)"
    ]
