"""The Lighter recipes: find them, list them, copy one to edit, and run them from Python.

Every shipped recipe is one self-contained file generated from ``lighter_configs/_base/`` (see
:mod:`ctfm.recipe_build`; ``python -m ctfm.recipes build`` regenerates them), because sparkwheel reads a
``%file.yaml::key`` piece relative to the working folder. So ``lighter fit /any/path/recipe.yaml`` runs from any
folder, and a recipe copied alone into an empty folder runs there.
"""

from __future__ import annotations

import re
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ctfm.errors import CTFMError

RECIPES_DIRNAME = "lighter_configs"
BASE_DIRNAME = "_base"
#: The first command of a recipe's header: ``#   lighter fit lighter_configs/NAME.yaml vars::...``.
_COMMAND = re.compile(r"^#\s+lighter (?P<stage>fit|validate|test|predict) lighter_configs/\S+\.yaml(?P<rest>.*)$")


def recipes_dir(start: str | Path | None = None) -> Path:
    """``lighter_configs/`` in the current folder (a user's edited copy wins), else the one installed with ctfm.

    Args:
        start: a folder to use instead of ``./lighter_configs``; it must hold ``pretrain.yaml``.

    Returns:
        The recipes folder: the first of ``start`` (or ``./lighter_configs``) and the installed copy that holds
        ``pretrain.yaml``.

    Raises:
        CTFMError: neither folder holds the recipes; the message says how to copy them.
    """
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
    """Copy recipe ``name`` (one self-contained file) into folder ``destination``; returns the files written.

    Nothing is written when any target exists already: a copy never overwrites an edited recipe.
    """
    root = recipes_dir(folder)
    source = root / f"{name}.yaml"
    if not source.is_file() or BASE_DIRNAME in Path(name).parts:
        known = ", ".join(list_recipes(root))
        raise CTFMError(f"no recipe named {name!r} in {root}; known recipes: {known}")
    targets = {source: Path(destination) / source.name}
    existing = [str(target) for target in targets.values() if target.exists()]
    if existing:
        raise CTFMError(
            f"{', '.join(existing)} exists already; nothing was copied: copy into another folder or remove it"
        )
    for path, target in targets.items():
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(path.read_text())
    return list(targets.values())


def recipe_command(recipe: str | Path) -> str:
    """The first command in ``recipe``'s header, naming the recipe file by ``recipe`` as given (runs as printed)."""
    lines = Path(recipe).read_text().splitlines()
    for i, line in enumerate(lines):
        match = _COMMAND.match(line)
        if match:
            rest = match["rest"]
            for more in lines[i + 1 :]:  # continuation lines ending in a backslash
                if not rest.endswith("\\"):
                    break
                rest = rest[:-1].rstrip() + " " + more.lstrip("# ")
            return f"lighter {match['stage']} {shlex.quote(str(recipe))}{rest}"
    return f"lighter fit {shlex.quote(str(recipe))}"


def load_recipe(path: str | Path) -> dict[str, Any]:
    """A recipe file as a dict (a one-line error when it cannot be read)."""
    import yaml

    path = Path(path)
    try:
        return yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise CTFMError(f"{path}: cannot read the recipe ({err})") from err


def run_recipe(stage: str, inputs: Sequence[str | Path | dict[str, Any]], **stage_kwargs: Any) -> None:
    """What ``lighter STAGE INPUTS...`` does, in this process (``ckpt_path=...`` resumes)."""
    from lighter import Runner

    resolved: list[Any] = []
    for item in inputs:
        if isinstance(item, Path) or (isinstance(item, str) and "=" not in item and not item.startswith("~")):
            resolved.append(load_recipe(item))
        else:
            resolved.append(item)
    Runner().run(stage, resolved, **stage_kwargs)


class RecipeVarsError(SystemExit):
    """A recipe var that does not fit its recipe: the run stops before it starts, with this one line.

    A ``SystemExit`` (exit code 1) rather than a ``CTFMError``: sparkwheel wraps every ``Exception`` a component
    raises, and lighter prints that as a page of traceback, where this message would be one line of forty.
    """

    def __init__(self, message: str) -> None:
        super().__init__(f"ctfm: {message}")


def check_vars(vars: dict[str, Any], schema: dict[str, str]) -> bool:
    """Stop a run whose vars do not fit ``schema`` (var -> spec, see ``_base/vars.yaml``), in one line naming the var.

    Recipes call it as their model's ``_disabled_`` item, which sparkwheel resolves before anything else of the
    model: so it returns False (the model is built) when every var fits.

    Args:
        vars: the recipe's ``vars`` after command-line overrides.
        schema: var name -> its spec, such as ``"int >= 1"``, ``"float in [0, 1]"`` or ``"str | null"``.

    Returns:
        False, so the ``_disabled_`` item leaves the model enabled.

    Raises:
        RecipeVarsError: a var is unknown to ``schema`` (with the closest known name) or does not fit its spec.
    """
    import difflib

    for name, value in vars.items():
        if name not in schema:
            close = difflib.get_close_matches(name, list(schema), n=1)
            hint = f"did you mean vars::{close[0]}?" if close else f"known: {', '.join(sorted(schema))}"
            raise RecipeVarsError(
                f"vars::{name} is not a var of this recipe ({hint}); a var of your own needs a vars_schema entry"
            )
        spec = schema[name]
        if not _fits(value, spec):
            raise RecipeVarsError(f"vars::{name}={value!r}: expected {spec}{_hint(name, value, spec)}")
    return False


_BOUND = re.compile(r"^(?P<type>int|float|bool|str|null|any)\s*(?:(?P<op>>=|<=|>|<)\s*(?P<bound>-?[\d.e+-]+))?$")
_RANGE = re.compile(r"^(?P<type>int|float)\s+in\s+\[(?P<low>-?[\d.e+-]+),\s*(?P<high>-?[\d.e+-]+)\]$")


def _alternatives(spec: str) -> list[str]:
    """``spec`` split at the top-level `` | `` (not inside ``list[...]`` or ``choice(...)``)."""
    parts, depth, current = [], 0, ""
    for char in spec:
        depth += char in "[(" and 1 or 0
        depth -= char in "])" and 1 or 0
        if char == "|" and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += char
    return [*parts, current.strip()]


def _fits(value: Any, spec: str) -> bool:
    """Whether ``value`` is one of the alternatives of ``spec``."""
    import yaml

    for alternative in _alternatives(spec):
        if alternative.startswith("list[") and alternative.endswith("]"):
            if isinstance(value, list) and all(_fits(item, alternative[5:-1]) for item in value):
                return True
            continue
        if alternative.startswith("choice(") and alternative.endswith(")"):
            if any(value == yaml.safe_load(c.strip()) for c in alternative[7:-1].split(",")):
                return True
            continue
        match = _BOUND.match(alternative) or _RANGE.match(alternative)
        if match is None:
            raise CTFMError(f"vars_schema: cannot read the spec {spec!r}")
        kind = match["type"]
        if kind == "any":
            return True
        types: dict[str, tuple[type, ...]] = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,)}
        if kind == "null":
            if value is None:
                return True
            continue
        if not isinstance(value, types[kind]) or (kind != "bool" and isinstance(value, bool)):
            continue
        groups = match.groupdict()
        number = float(value) if isinstance(value, (int, float)) else 0.0
        if groups.get("low") is not None and not float(groups["low"]) <= number <= float(groups["high"]):
            continue
        if groups.get("op") and not _compare(number, groups["op"], float(groups["bound"])):
            continue
        return True
    return False


def _compare(value: float, op: str, bound: float) -> bool:
    return {">": value > bound, ">=": value >= bound, "<": value < bound, "<=": value <= bound}[op]


def _hint(name: str, value: Any, spec: str) -> str:
    """The usual cause of a mismatch, said once."""
    if isinstance(value, str) and re.fullmatch(r"-?\d+(\.\d*)?[eE][-+]?\d+|-?\d+", value):
        return f" (YAML reads {value} as text: write it with a decimal point, e.g. 1.0e-4)"
    if "list[" in spec and not isinstance(value, list):
        return f" (a list: replace it with a leading '=', e.g. '=vars::{name}=[...]')"
    if "list[" in spec and isinstance(value, list):
        return f" (a plain vars::{name}=[...] override appends to the list; '=vars::{name}=[...]' replaces it)"
    return ""


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


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m ctfm.recipes build [--check]``: rewrite the shipped recipes from ``_base/`` (or list stale ones)."""
    from ctfm.recipe_build import build_all

    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] != "build":
        print("usage: python -m ctfm.recipes build [--check]", file=sys.stderr)
        return 2
    root = Path(__file__).resolve().parent / RECIPES_DIRNAME  # a checkout's links to its lighter_configs/
    stale = build_all(root, check="--check" in args)
    for path in stale:
        print(f"{'stale' if '--check' in args else 'wrote'} {path}")
    return 1 if stale and "--check" in args else 0


if __name__ == "__main__":
    raise SystemExit(main())
