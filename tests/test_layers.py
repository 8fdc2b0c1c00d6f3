"""Imports run one way: io below transforms below data below the hub, embedding, tasks and the command line.

Every ``import`` of a ctfm module counts, including the lazy ones inside functions: a lower layer never reaches up.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ctfm"

#: Bottom to top. A module may import its own package and anything in a lower layer.
LAYERS = [
    ("ctfm.errors", "ctfm.lazy"),
    ("ctfm.atomic",),
    ("ctfm.reports", "ctfm.plotting", "ctfm.outputs", "ctfm.recipe_build"),
    ("ctfm.io",),
    ("ctfm.transforms",),
    ("ctfm.data", "ctfm.nn", "ctfm.losses", "ctfm.image_quality"),
    ("ctfm.hub",),
    ("ctfm.embedding",),
    ("ctfm.embedding_table", "ctfm.export", "ctfm.idc", "ctfm.segmentation"),
    ("ctfm.provenance",),  # names the model by its weights' fingerprint, which the table module computes
    # Side by side, so neither imports the other: training tasks, and analyses of trained models (which read
    # checkpoints through ctfm.hub and write label maps through ctfm.io, never through a task).
    ("ctfm.tasks", "ctfm.recipes", "ctfm.analysis", "ctfm.segmentation_files"),
    ("ctfm.ssl",),  # kept so configs naming ctfm.ssl.IntraSampleSimCLR resolve; re-exports ctfm.tasks
    ("ctfm",),  # the package root: lazy attributes for the public API of the layers below
    ("ctfm.quickstart",),
    ("ctfm.cli",),
    ("ctfm.__main__",),
]


def unit_of(module: str) -> tuple[int, str]:
    """(layer, unit) of a dotted ctfm module name."""
    for layer, units in reversed(list(enumerate(LAYERS))):  # the longest prefix wins, "ctfm" itself last
        for unit in units:
            if module == unit or (unit != "ctfm" and module.startswith(unit + ".")):
                return layer, unit
    raise AssertionError(f"{module} is in no layer of tests/test_layers.py: add it")


def modules() -> list[tuple[str, Path]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if "lighter_configs" in path.parts:
            continue
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        if name != "ctfm":  # the root only maps lazy attributes to their modules
            found.append((name, path))
    return found


def imported(path: Path, name: str) -> set[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.module == "ctfm" and {alias.name for alias in node.names} == {"__version__"}:
                continue  # the version string is a constant of the root, which every module's import has loaded
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names.add(base)
    return {n for n in names if n == "ctfm" or n.startswith("ctfm.")}


@pytest.mark.parametrize("name, path", modules(), ids=[name for name, _ in modules()])
def test_imports_only_reach_down(name, path):
    layer, unit = unit_of(name)
    upward = []
    for target in imported(path, name):
        target_layer, target_unit = unit_of(target)
        if target_unit != unit and target_layer >= layer:
            upward.append(target)
    assert not upward, f"{name} (layer {layer}) imports {sorted(upward)} from its own layer or above"


def test_analysis_does_not_import_tasks():
    """The rule the shared layer above encodes, said plainly: an analysis needs no training code."""
    reaching = {
        name: sorted(t for t in imported(path, name) if unit_of(t)[1] == "ctfm.tasks")
        for name, path in modules()
        if unit_of(name)[1] in ("ctfm.analysis", "ctfm.segmentation_files")
    }
    assert not {name: found for name, found in reaching.items() if found}
