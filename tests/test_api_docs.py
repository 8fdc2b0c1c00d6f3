"""The public API documents itself: every object has a docstring naming its arguments and what it returns, the entry
points show an example, and every example runs.

The public API is ``__all__`` of ``ctfm``, ``ctfm.nn``, ``ctfm.losses``, ``ctfm.tasks``, ``ctfm.transforms`` and
``ctfm.analysis``, plus every ``ctfm.*`` class or function a recipe source names with ``_target_:``. Each object is
one test case, named by its public name (``-k nn``, ``-k "tasks or data"`` select areas); it is listed from the
sources without importing them, so collecting stays light, and imported in the test.

Rules, Google style (what mkdocstrings renders):

- a docstring of its own (a dataclass's generated signature does not count);
- parameters (without ``self``/``cls``; ``*args``/``**kwargs`` by their names) are each named in ``Args:``; for a
  class, the ``__init__`` parameters in the class docstring (or ``__init__``'s, which the site merges into it;
  dataclass fields may be ``Attributes:``); classes whose ``__init__`` comes from another library are not checked;
- a function annotated to return something other than ``None`` has ``Returns:`` (a generator ``Yields:``);
- an entry point (``ENTRY_POINTS``) has ``Examples:`` with at least one ``>>>`` line that is not skipped;
- the doctests of every module defining a public object pass (ELLIPSIS, NORMALIZE_WHITESPACE). They are small: a
  tiny network, a synthetic scan, a temporary folder, no network.
"""

from __future__ import annotations

import ast
import doctest
import importlib
import inspect
import re
from functools import cache
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
#: Packages whose ``__all__`` is public; subpackages first, so an object exported twice is named by its subpackage.
PUBLIC_PACKAGES = ("ctfm.nn", "ctfm.losses", "ctfm.tasks", "ctfm.transforms", "ctfm.analysis", "ctfm")
RECIPE_SOURCES = ROOT / "lighter_configs" / "_base"
#: What a user calls first: each shows a runnable example.
ENTRY_POINTS = (
    "ctfm.load",
    "ctfm.save_pretrained",
    "ctfm.list_models",
    "ctfm.embed",
    "ctfm.embed_patches",
    "ctfm.embed_regions",
    "ctfm.segment",
    "ctfm.read_ct",
    "ctfm.export_encoder",
    "ctfm.transforms.CTPreprocessing",
    "ctfm.transforms.LoadCT",
    "ctfm.nn.ct_fm_encoder",
    "ctfm.nn.ct_fm_segresnet",
    "ctfm.analysis.lesion_crop",
    "ctfm.analysis.search_table",
    "ctfm.analysis.run_probe",
    "ctfm.analysis.compare_encoders",
)
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
SECTION = re.compile(r"^(\s*)(\w[\w ]*):\s*$")


def module_file(module: str) -> Path | None:
    base = ROOT.joinpath(*module.split("."))
    return next((p for p in (base.with_suffix(".py"), base / "__init__.py") if p.is_file()), None)


@cache
def package_names(package: str) -> tuple[list[str], dict[str, str]]:
    """A package's ``__all__`` and where each name it imports comes from, read from its source."""
    path = module_file(package)
    tree = ast.parse(path.read_text()) if path else ast.Module(body=[], type_ignores=[])
    literals: dict[str, object] = {}
    origin: dict[str, str] = {}
    exported: list[str] = []
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            origin.update({alias.asname or alias.name: node.module for alias in node.names})
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            target = node.targets[0] if isinstance(node, ast.Assign) else node.target
            if not isinstance(target, ast.Name) or node.value is None:
                continue
            value = node.value
            if isinstance(value, ast.Call) and getattr(value.func, "id", "") == "sorted":  # __all__ = sorted(_LAZY)
                value = value.args[0]
            if isinstance(value, ast.Name):
                literal = literals.get(value.id)
            else:
                try:
                    literal = ast.literal_eval(value)
                except ValueError:
                    continue
            literals[target.id] = literal
            if target.id == "__all__":
                exported = list(literal or [])
    lazy = literals.get("_LAZY")
    if isinstance(lazy, dict):
        origin.update(lazy)
    return exported, origin


def defining_module(dotted: str) -> tuple[str, str]:
    """``(module, name)`` where ``dotted`` is defined, following package re-exports (lazy or imported)."""
    module, _, name = dotted.rpartition(".")
    seen = set()
    while (module, name) not in seen:
        seen.add((module, name))
        origin = package_names(module)[1].get(name)
        if origin is None:
            break
        module = origin
    return module, name


def recipe_targets() -> list[str]:
    found: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            target = node.get("_target_")
            if isinstance(target, str) and target.startswith("ctfm."):
                found.append(target)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for path in sorted(RECIPE_SOURCES.rglob("*.yaml")):
        walk(yaml.safe_load(path.read_text()))
    return found


@cache
def public_objects() -> dict[tuple[str, str], str]:
    """(defining module, name) -> the public name a test case carries, one per object."""
    names = [f"{package}.{name}" for package in PUBLIC_PACKAGES for name in package_names(package)[0]]
    objects: dict[tuple[str, str], str] = {}
    for public in names + recipe_targets():
        objects.setdefault(defining_module(public), public)
    return objects


def resolve(public: str) -> object:
    module, name = defining_module(public)
    return getattr(importlib.import_module(module), name)


def own_docstring(obj: object) -> str:
    doc = obj.__dict__.get("__doc__") if inspect.isclass(obj) else getattr(obj, "__doc__", None)
    if not doc or (inspect.isclass(obj) and doc.startswith(f"{obj.__name__}(")):  # dataclass' generated text
        return ""
    return inspect.cleandoc(doc)


def sections(doc: str) -> dict[str, list[str]]:
    """Google-style sections: title -> the lines indented under it."""
    found: dict[str, list[str]] = {}
    current, indent = None, 0
    for line in doc.splitlines():
        header = SECTION.match(line)
        if header and header.group(2) in {"Args", "Arguments", "Attributes", "Returns", "Yields", "Raises",
                                          "Examples", "Example", "Note", "Notes", "Warns"}:  # fmt: skip
            current, indent = header.group(2), len(header.group(1))
            found[current] = []
        elif current is not None and line.strip() and len(line) - len(line.lstrip()) <= indent:
            current = None
        elif current is not None:
            found[current].append(line)
    return found


def documented_names(lines: list[str]) -> set[str]:
    """Argument names of an ``Args:`` block: the first-level lines ``name (type): text`` or ``name: text``."""
    body = [line for line in lines if line.strip()]
    if not body:
        return set()
    first = min(len(line) - len(line.lstrip()) for line in body)
    names = set()
    for line in body:
        if len(line) - len(line.lstrip()) == first:
            match = re.match(r"\s*(\*{0,2}\w+)\s*(\(.*?\))?\s*:", line)
            if match:
                names.add(match.group(1).lstrip("*"))
    return names


def own_init(cls: type) -> bool:
    """Whether ctfm defines the ``__init__`` (or the dataclass fields) that the class's signature shows."""
    for klass in cls.__mro__:
        if "__init__" in klass.__dict__:
            return klass.__module__.startswith("ctfm")
    return False


def problems(obj: object) -> list[str]:
    doc = own_docstring(obj)
    if not doc:
        return ["no docstring"]
    found = sections(doc)
    out = []
    if inspect.isclass(obj):
        if not own_init(obj):
            return out
        init_doc = own_docstring(obj.__init__) if "__init__" in obj.__dict__ else ""
        init_sections = sections(init_doc)
        documented = documented_names(
            found.get("Args", []) + found.get("Attributes", []) + init_sections.get("Args", [])
        )
        signature = inspect.signature(obj)
        returns = None
    else:
        documented = documented_names(found.get("Args", []))
        signature = inspect.signature(obj)
        returns = signature.return_annotation
    parameters = [name for name in signature.parameters if name not in ("self", "cls")]
    missing = [name for name in parameters if name not in documented]
    if missing:
        out.append(f"Args: does not name {', '.join(missing)}")
    if returns not in (None, "None", inspect.Signature.empty):
        wanted = "Yields" if inspect.isgeneratorfunction(inspect.unwrap(obj)) else "Returns"
        if wanted not in found:
            out.append(f"no {wanted}: section (returns {returns})")
    return out


CASES = sorted(public_objects().values())


@pytest.mark.parametrize("public", CASES)
def test_public_object_is_documented(public):
    obj = resolve(public)
    if not (inspect.isclass(obj) or callable(obj)):
        pytest.skip(f"{public} is a constant: documented where it is defined")
    found = problems(obj)
    assert not found, f"{public}: " + "; ".join(found)


@pytest.mark.parametrize("public", [p for p in ENTRY_POINTS if defining_module(p) in public_objects()])
def test_entry_point_shows_a_runnable_example(public):
    doc = own_docstring(resolve(public))
    examples = sections(doc).get("Examples", []) + sections(doc).get("Example", [])
    runnable = [line for line in examples if line.strip().startswith(">>>") and "doctest: +SKIP" not in line]
    assert runnable, f"{public}: no Examples: section with a runnable >>> line"


def test_entry_points_are_public():
    missing = [p for p in ENTRY_POINTS if defining_module(p) not in public_objects() and p != "ctfm.embed_regions"]
    assert not missing, f"ENTRY_POINTS names objects that are not public: {missing}"


@pytest.mark.parametrize("module", sorted({module for module, _ in public_objects()}))
def test_doctests_pass(module):
    imported = importlib.import_module(module)
    report: list[str] = []
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    for test in doctest.DocTestFinder(exclude_empty=True).find(imported, module):
        runner.run(test, out=report.append)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, "".join(report)
