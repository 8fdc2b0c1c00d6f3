"""The documentation site's generated pages agree with the recipes and the registry, and every page is in the nav."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pages():
    spec = importlib.util.spec_from_file_location("generated_pages", ROOT / "docs/hooks/generated_pages.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_recipes_page_lists_every_recipe_with_every_var(pages):
    from ctfm.recipes import list_recipes, recipes_dir

    root = recipes_dir(ROOT / "lighter_configs")
    text = pages.recipes_markdown()
    for name in list_recipes(root):
        assert f"## `{name}`" in text
        own_vars = (yaml.safe_load((root / f"{name}.yaml").read_text()) or {}).get("vars") or {}
        for var in own_vars:
            assert f"| `{var}` |" in text, f"{name}: var {var} missing from the Recipes page"


def test_recipe_vars_reads_defaults_and_comments(pages, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("vars:\n  # Patch in voxels.\n  # Second line.\n  patch: [1, 2]\n  lr: 1.0e-4  # step size\n")
    assert pages.recipe_vars(recipe) == [("patch", [1, 2], "Patch in voxels. Second line."), ("lr", 1e-4, "step size")]


def test_models_page_lists_every_registered_model(pages):
    from ctfm.hub.registry import MODELS

    text = pages.models_markdown()
    for spec in MODELS.values():
        assert f"| `{spec.name}` | `{spec.repo_id}` |" in text


def test_every_docs_page_is_in_the_nav_and_every_nav_entry_exists():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text().replace("!!", ""))

    def entries(nav):
        for item in nav:
            value = next(iter(item.values())) if isinstance(item, dict) else item
            yield from entries(value) if isinstance(value, list) else [value]

    in_nav = set(entries(config["nav"]))
    on_disk = {p.relative_to(ROOT / "docs").as_posix() for p in (ROOT / "docs").rglob("*.md")}
    assert in_nav == on_disk


def test_readme_is_a_landing_page():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    assert "python3 -m pytest" in readme and "ctfm quickstart" in readme
