"""The Lighter recipes: find them, list them, copy them with their ``_base`` pieces, and run them from Python.

Recipes compose from ``lighter_configs/_base/`` through sparkwheel raw references such as
``"%lighter_configs/_base/trainer.yaml::trainer"``. sparkwheel reads such a path relative to the folder ``lighter``
runs in, so a recipe runs from the folder holding its recipes folder; :func:`copy_recipe` rewrites the prefix for
the copy's folder, and :func:`run_recipe` anchors the references at the recipe file itself, so it runs from anywhere.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ctfm.errors import CTFMError

RECIPES_DIRNAME = "lighter_configs"
BASE_DIRNAME = "_base"
#: A raw reference to a piece in a ``_base`` folder: ``%<folder>/_base/<file>.yaml::<key>``.
_QUOTED_REF = re.compile(r'"(%[^"]+)"')
_BASE_REF = re.compile(r"^%(?P<folder>.*?)/?" + BASE_DIRNAME + r"/(?P<file>[\w.-]+\.ya?ml)(?P<key>::.*)$")


def recipes_dir(start: str | Path | None = None) -> Path:
    """``lighter_configs/`` in the current folder (a user's edited copy wins), else the one installed with ctfm."""
    candidates = [
        Path(start) if start else Path.cwd() / RECIPES_DIRNAME,
        Path(__file__).resolve().parent / RECIPES_DIRNAME,
    ]
    for candidate in candidates:
        if (candidate / "pretrain.yaml").is_file():
            return candidate
    raise CTFMError(
        f"no {RECIPES_DIRNAME}/pretrain.yaml found in {', '.join(map(str, candidates))}; pass the folder holding "
        "the recipes, or make a copy with `ctfm recipes copy pretrain DIR`"
    )


def list_recipes(folder: str | Path | None = None) -> dict[str, str]:
    """Recipe name (path below the recipes folder, without ``.yaml``) -> the first line of its header comment."""
    root = recipes_dir(folder)
    recipes = {}
    for path in sorted(root.rglob("*.yaml")):
        relative = path.relative_to(root)
        if relative.parts[0] == BASE_DIRNAME:
            continue
        recipes[relative.with_suffix("").as_posix()] = _summary(path)
    return recipes


def copy_recipe(name: str, destination: str | Path, *, folder: str | Path | None = None) -> list[Path]:
    """Copy recipe ``name`` and the ``_base`` pieces it references into ``destination``; returns the files written.

    References are rewritten to ``%<destination>/_base/...`` as given (relative stays relative), so the copy runs
    with ``lighter fit <destination>/<name>.yaml`` from the current folder. Existing files are not overwritten.
    """
    root = recipes_dir(folder)
    source = root / f"{name}.yaml"
    if not source.is_file():
        known = ", ".join(list_recipes(root))
        raise CTFMError(f"no recipe named {name!r} in {root}; known recipes: {known}")
    destination = Path(destination)
    prefix = destination.as_posix().rstrip("/")
    pieces = _base_pieces(source, root)
    targets = {path: destination / path.relative_to(root) for path in [source, *pieces]}
    existing = [target for target in targets.values() if target.exists()]
    if existing:  # checked before writing anything: a refused copy leaves the folder as it was
        raise CTFMError(
            f"{', '.join(map(str, existing))} exist{'s' if len(existing) == 1 else ''} already; nothing was copied. "
            "Copy into an empty folder or remove them first"
        )
    written = []
    for path, target in targets.items():
        target.parent.mkdir(parents=True, exist_ok=True)
        text = path.read_text()
        target.write_text(_rewrite_base_refs(text, lambda _: f"{prefix}/{BASE_DIRNAME}"))
        written.append(target)
    return written


def load_recipe(path: str | Path) -> dict[str, Any]:
    """A recipe as a dict whose ``_base`` references point at the ``_base`` folder of its recipes folder."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise CTFMError(f"{path}: cannot read the recipe ({err})") from err
    # The recipes folder is the nearest one holding _base/ (recipes may sit in sub-folders such as diffusion/).
    folders = path.resolve().parents
    base = next((f / BASE_DIRNAME for f in folders if (f / BASE_DIRNAME).is_dir()), folders[0] / BASE_DIRNAME)
    anchored = _rewrite_base_refs(text, lambda _: base.as_posix())
    return yaml.safe_load(anchored) or {}


def run_recipe(stage: str, inputs: Sequence[str | Path | dict[str, Any]], **stage_kwargs: Any) -> None:
    """What ``lighter STAGE INPUTS...`` does, in this process and from any folder (``ckpt_path=...`` resumes)."""
    from lighter import Runner

    resolved: list[Any] = []
    for item in inputs:
        if isinstance(item, Path) or (isinstance(item, str) and "=" not in item and not item.startswith("~")):
            resolved.append(load_recipe(item))
        else:
            resolved.append(item)
    Runner().run(stage, resolved, **stage_kwargs)


def _summary(path: Path) -> str:
    """The first sentence of the recipe's header comment, however many lines it spans."""
    words: list[str] = []
    for line in path.read_text().splitlines():
        text = line.lstrip("#").strip()
        if not line.startswith("#") or not text:
            break
        words.append(text)
    paragraph = " ".join(words)
    sentence = re.split(r"(?<=[.!?])\s+(?=[A-Z])", paragraph, maxsplit=1)[0]
    return sentence[:-1] + "." if sentence.endswith(":") else sentence


def _base_pieces(recipe: Path, root: Path) -> list[Path]:
    """The ``_base`` files ``recipe`` references, directly or through other pieces."""
    found: list[Path] = []
    pending = [recipe]
    while pending:
        for match in _QUOTED_REF.finditer(_without_comments(pending.pop().read_text())):
            ref = _BASE_REF.match(match.group(1))
            if ref is None:
                continue
            piece = root / BASE_DIRNAME / ref["file"]
            if not piece.is_file():
                raise CTFMError(f"{recipe} refers to {piece}, which does not exist")
            if piece not in found:
                found.append(piece)
                pending.append(piece)
    return found


def _rewrite_base_refs(text: str, base_for: Any) -> str:
    """Replace the folder of every ``%.../_base/<file>::<key>`` reference in quoted YAML values."""

    def rewrite(match: re.Match[str]) -> str:
        ref = _BASE_REF.match(match.group(1))
        if ref is None:
            return match.group(0)
        return f'"%{base_for(ref["folder"])}/{ref["file"]}{ref["key"]}"'

    return "".join(
        line if line.lstrip().startswith("#") else _QUOTED_REF.sub(rewrite, line) for line in text.splitlines(True)
    )


def _without_comments(text: str) -> str:
    return "".join(line for line in text.splitlines(True) if not line.lstrip().startswith("#"))
