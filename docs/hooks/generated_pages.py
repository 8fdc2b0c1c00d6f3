"""mkdocs hook: fill the Recipes and Models pages from the recipe YAML files and the model registry.

A page holding ``<!-- ctfm:recipes -->`` or ``<!-- ctfm:models -->`` gets that marker replaced at build time, so
the site can never disagree with what ``ctfm recipes`` lists or ``ctfm.load`` knows; the home page takes the README
the same way. ``tests/test_docs.py`` calls the same functions.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

RECIPES_MARKER = "<!-- ctfm:recipes -->"
MODELS_MARKER = "<!-- ctfm:models -->"
README_MARKER = "<!-- ctfm:readme -->"
_VAR_LINE = re.compile(r"^  (?P<name>[A-Za-z_]\w*):")


def recipe_vars(path: Path) -> list[tuple[str, Any, str]]:
    """``(name, default, comment)`` of each top-level var of a recipe, in file order; the comment is the block of
    ``#`` lines right above the var (or the end-of-line comment)."""
    text = path.read_text()
    data = yaml.safe_load(text) or {}
    defaults = data.get("vars") or {}
    comments: dict[str, str] = {}
    inside, pending = False, []
    for line in text.splitlines():
        if not line.startswith(" "):
            inside = line.startswith("vars:")
            pending = []
            continue
        if not inside:
            continue
        stripped = line.strip()
        if stripped.startswith("#"):
            pending.append(stripped.lstrip("#").strip())
            continue
        match = _VAR_LINE.match(line)
        if match:
            trailing = line.split(" # ", 1)[1].strip() if " # " in line else ""
            comments[match["name"]] = " ".join([*pending, trailing]).strip()
        pending = []
    return [(name, value, comments.get(name, "")) for name, value in defaults.items()]


def _cell(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    text = text.removesuffix("...").strip()
    return f"`{text}`".replace("|", "\\|")


def recipes_markdown() -> str:
    """One section per recipe: its summary, how to copy and run it, and its vars with defaults."""
    from ctfm.recipes import list_recipes, recipes_dir

    root = recipes_dir(Path(__file__).resolve().parents[2] / "lighter_configs")
    parts = ["| recipe | what it does |", "|---|---|"]
    parts += [f"| [`{name}`](#{name.replace('/', '')}) | {summary} |" for name, summary in list_recipes(root).items()]
    for name, summary in list_recipes(root).items():
        parts += ["", f"## `{name}` {{#{name.replace('/', '')}}}", "", summary, ""]
        parts += ["```bash", f"ctfm recipes copy {name} my_experiment", "```", ""]
        rows = recipe_vars(root / f"{name}.yaml")
        if rows:
            parts += ["| var | default | meaning |", "|---|---|---|"]
            parts += [f"| `{var}` | {_cell(value)} | {comment.replace('|', '/')} |" for var, value, comment in rows]
    return "\n".join(parts)


def models_markdown() -> str:
    """A table of the registry: name, Hub repo, architecture, input preprocessing, outputs."""
    from ctfm.hub.registry import MODELS

    lines = [
        "| name | Hub repo | architecture | preprocessing | input | lesion crop | weights | outputs | what it is |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for spec in MODELS.values():
        pre, crop = spec.preprocessing, spec.lesion_crop
        spacing = "native spacing" if pre.spacing is None else " x ".join(f"{s:g}" for s in pre.spacing) + " mm"
        patch = "x".join(map(str, spec.patch_size))
        crop_mm = " x ".join(f"{s:g}" for s in crop.spacing)
        lesion = f"{'x'.join(map(str, crop.size))} at {crop_mm} mm, {crop.orientation}"
        outputs = f"{len(spec.classes)} classes" if spec.classes else f"{spec.embedding_dim}-d embedding"
        lines.append(
            f"| `{spec.name}` | `{spec.repo_id}` | `{spec.architecture}` | {spacing} | {patch} | {lesion} "
            f"| {spec.weight_format} | {outputs} | {spec.description} |"
        )
    return "\n".join(lines)


def readme_markdown() -> str:
    """The README as the site's home page: its ``docs/`` links made relative to the docs folder."""
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    return text.replace("](docs/", "](").replace("`docs/api/`", "API reference")


def on_page_markdown(markdown: str, **_: Any) -> str:
    if README_MARKER in markdown:
        markdown = markdown.replace(README_MARKER, readme_markdown())
    if RECIPES_MARKER in markdown:
        markdown = markdown.replace(RECIPES_MARKER, recipes_markdown())
    if MODELS_MARKER in markdown:
        markdown = markdown.replace(MODELS_MARKER, models_markdown())
    return markdown
