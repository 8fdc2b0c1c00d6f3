"""Build the shipped recipes: self-contained YAML files generated from ``lighter_configs/_base/``.

sparkwheel 0.0.11 reads ``%file.yaml::key`` relative to the working folder, so a recipe that composes from pieces
runs only from one folder. The shipped recipes are therefore generated: each is a source in ``_base/recipes/``
(which composes from the ``_base`` pieces exactly as sparkwheel would), with overlays folded in (``head_ct_triage``
on ``classification``, the 3D variant of each diffusion task on its 2D source), written out as one file with every
piece inlined and every comment kept. The pieces stay the one source of truth; ``python -m ctfm.recipes build``
rewrites the recipes and a test fails while any is stale.

The YAML handled is the block style the pieces are written in (two-space indents, one key per line); the folding
follows sparkwheel's merge rules (mappings merge, ``=key`` replaces, ``~key`` deletes, a scalar replaces) and
refuses to extend a list, which is almost never what an overlay means.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from ctfm.errors import CTFMError

#: Recipe name -> its source and overlays, in the order they are folded (paths below ``_base/recipes/``).
RECIPES: dict[str, tuple[str, ...]] = {
    "pretrain": ("pretrain.yaml",),
    "released_code": ("pretrain.yaml", "released_code.yaml"),
    "quickstart": ("pretrain.yaml", "quickstart.yaml"),
    "distill": ("distill.yaml",),
    "embed": ("embed.yaml",),
    "classification": ("classification.yaml",),
    "head_ct_triage": ("classification.yaml", "head_ct_triage.yaml"),
    "cq500": ("classification.yaml", "head_ct_triage.yaml", "cq500.yaml"),
    "totalsegmentator": ("totalsegmentator.yaml",),
    "msd_tumor": ("msd_tumor.yaml",),
    **{
        f"diffusion/{task}_{dims}d": (f"diffusion_{task}.yaml",) + ((f"diffusion_{task}_3d.yaml",) if dims == 3 else ())
        for task in ("pretrain", "low_dose", "segment", "classify")
        for dims in (2, 3)
    },
}
SOURCES_DIRNAME = "recipes"
_KEY = re.compile(r"^(?P<indent> *)(?P<key>[=~]?[A-Za-z0-9_.-]+):(?P<value>.*)$")
_ITEM_KEY = re.compile(r"^(?P<lead> *(?:- )?)(?P<key>[A-Za-z0-9_.-]+):(?P<value>.*)$")
_ITEM_REF = re.compile(r"""^(?P<lead> *- )["']%(?P<file>[^"':]+\.ya?ml)::(?P<path>[^"']+)["']\s*$""")
_PIECE_REF = re.compile(r"""^\s*["']%(?P<file>[^"':]+\.ya?ml)::(?P<path>[^"']+)["']\s*$""")


@dataclass
class Node:
    """One ``key:`` of a block mapping: the comment lines above it, its own line, and what is below it."""

    key: str
    indent: int
    comments: list[str]
    value: str
    children: list[Node] | None = None
    body: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        own = [f"{' ' * self.indent}{self.key}:{self.value}"]
        below = [line for child in self.children for line in child.lines()] if self.children is not None else self.body
        return [*self.comments, *own, *below]


def parse(lines: list[str]) -> tuple[list[str], list[Node]]:
    """The lines before the first key (the header) and the top-level keys of a block-style YAML text."""
    nodes, trailing = _parse_block(lines, 0)
    if trailing and not nodes:
        return trailing, []
    header, first = _split_header(nodes[0].comments) if nodes else ([], [])
    if nodes:
        nodes[0].comments = first
    return header, nodes


def _split_header(comments: list[str]) -> tuple[list[str], list[str]]:
    """The file's header comment and the comment lines that belong to the first key (those right above it)."""
    cut = len(comments)
    while cut and comments[cut - 1].strip():
        cut -= 1
    return comments[:cut], comments[cut:]


def _is_comment(line: str) -> bool:
    """A blank or comment line."""
    return not line.strip() or line.lstrip().startswith("#")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _parse_block(lines: list[str], indent: int) -> tuple[list[Node], list[str]]:
    nodes: list[Node] = []
    pending: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip() or line.lstrip().startswith("#"):
            pending.append(line)
            i += 1
            continue
        match = _KEY.match(line)
        if match is None or len(match["indent"]) != indent:
            raise CTFMError(f"recipe source line {line!r}: expected a key at indent {indent}")
        j = i + 1
        last_content = i
        while j < len(lines) and (_is_comment(lines[j]) or _indent(lines[j]) > indent):
            if not _is_comment(lines[j]):
                last_content = j
            j += 1
        block = lines[i + 1 : last_content + 1]
        node = Node(match["key"], indent, pending, match["value"])
        content = [b for b in block if b.strip() and not b.lstrip().startswith("#")]
        if content and _KEY.match(content[0]) and not content[0].lstrip().startswith("- "):
            node.children = _parse_block(block, _indent(content[0]))[0]
        else:
            node.body = block
        nodes.append(node)
        pending = []
        i = last_content + 1
    return nodes, pending


def _shift(lines: list[str], by: int) -> list[str]:
    if by >= 0:
        return [(" " * by + line) if line.strip() else line for line in lines]
    return [line[-by:] if line[:-by].strip() == "" else line.lstrip() for line in lines]


def _reindent(node: Node, indent: int) -> Node:
    by = indent - node.indent
    if by == 0:
        return node
    shifted = replace(node, indent=indent, comments=_shift(node.comments, by))
    if node.children is not None:
        shifted.children = [_reindent(child, child.indent + by) for child in node.children]
    else:
        shifted.body = _shift(node.body, by)
    return shifted


def _find(nodes: list[Node], path: list[str], where: str) -> Node:
    for node in nodes:
        if node.key == path[0]:
            if len(path) == 1:
                return node
            if node.children is None:
                break
            return _find(node.children, path[1:], where)
    raise CTFMError(f"{where}: no key {'::'.join(path)}")


class _Pieces:
    """The ``_base`` piece files, parsed once each."""

    def __init__(self, recipes_root: Path) -> None:
        self.root = recipes_root
        self.parsed: dict[Path, list[Node]] = {}

    def node(self, file: str, path: str) -> Node:
        # Sources name pieces as sparkwheel sees them from the repository root: lighter_configs/_base/x.yaml.
        location = self.root / Path(file).relative_to("lighter_configs")
        if location not in self.parsed:
            if not location.is_file():
                raise CTFMError(f"piece {file} does not exist (looked for {location})")
            self.parsed[location] = parse(location.read_text().splitlines())[1]
        return _find(self.parsed[location], path.split("::"), file)


def _inline(nodes: list[Node], pieces: _Pieces) -> list[Node]:
    """Replace every ``key: "%file.yaml::path"`` by the piece it names, recursively."""
    result = []
    for node in nodes:
        ref = _PIECE_REF.match(node.value)
        if ref is not None:
            piece = _reindent(pieces.node(ref["file"], ref["path"]), node.indent)
            node = replace(node, value=piece.value, children=piece.children, body=piece.body)
        if node.children is not None:
            node = replace(node, children=_inline(node.children, pieces))
        else:
            node = replace(node, body=_inline_lines(node.body, pieces))
        result.append(node)
    return result


def _inline_lines(lines: list[str], pieces: _Pieces) -> list[str]:
    """The same inside a block sequence: ``- "%file.yaml::path"`` items, ``- key: "%..."`` or ``  key: "%..."``."""
    result = []
    for line in lines:
        item = _ITEM_REF.match(line)
        if item is not None:  # the item is a whole piece (a mapping): its keys, the first one after the dash
            piece = pieces.node(item["file"], item["path"])
            indent = len(item["lead"])
            below = [c for child in piece.children or [] for c in _reindent(child, indent).lines()]
            first = next(i for i, text in enumerate(below) if not _is_comment(text))
            result += [*below[:first], item["lead"][:-2] + "- " + below[first].lstrip(" "), *below[first + 1 :]]
            continue
        match = _ITEM_KEY.match(line)
        ref = _PIECE_REF.match(match["value"]) if match else None
        if match is None or ref is None:
            result.append(line)
            continue
        indent = len(match["lead"])
        piece = _reindent(pieces.node(ref["file"], ref["path"]), indent)
        own = replace(piece, key=match["key"], comments=[]).lines()
        result += [match["lead"] + own[0].lstrip(" "), *own[1:]]
    return result


def _is_list(node: Node) -> bool:
    content = [line for line in node.body if line.strip() and not line.lstrip().startswith("#")]
    return node.value.strip().startswith("[") or (bool(content) and content[0].lstrip().startswith("- "))


def fold(base: list[Node], overlay: list[Node], where: str) -> list[Node]:
    """``overlay`` merged into ``base`` as sparkwheel merges a file applied after another."""
    result = list(base)
    for node in overlay:
        key = node.key.lstrip("=~")
        index = next((i for i, b in enumerate(result) if b.key == key), None)
        if node.key.startswith("~"):
            if index is not None:
                del result[index]
            continue
        indent = result[index].indent if index is not None else (result[0].indent if result else node.indent)
        renamed = _reindent(replace(node, key=key), indent)
        if index is None:
            result.append(renamed)
            continue
        old = result[index]
        if node.key.startswith("="):
            result[index] = renamed
        elif old.children is not None and node.children is not None:
            result[index] = replace(old, children=fold(old.children, node.children, f"{where}::{key}"))
        elif _is_list(old) and _is_list(node):
            raise CTFMError(f"{where}::{key}: an overlay list would extend the base's; write ={key} to replace it")
        else:
            result[index] = renamed if renamed.comments else replace(renamed, comments=old.comments)
    return result


def build(name: str, recipes_root: Path) -> str:
    """The text of the shipped recipe ``name`` (a key of :data:`RECIPES`)."""
    sources = recipes_root / "_base" / SOURCES_DIRNAME
    pieces = _Pieces(recipes_root)
    header: list[str] = []
    nodes: list[Node] = []
    for file in RECIPES[name]:
        file_header, file_nodes = parse((sources / file).read_text().splitlines())
        file_nodes = _inline(file_nodes, pieces)
        nodes = fold(nodes, file_nodes, file) if nodes else file_nodes
        header = file_header if any(line.strip() for line in file_header) else header
    nodes = _with_schema(nodes, pieces, name)
    while header and not header[-1].strip():
        header.pop()
    made_from = " + ".join(f"_base/{SOURCES_DIRNAME}/{file}" for file in RECIPES[name])
    note = [
        "#",
        "# GENERATED from these sources and the _base pieces they name; edit those, then run",
        "# `python -m ctfm.recipes build` (a test fails while this file is stale):",
        f"#   {made_from}",
        "# This one file is the whole recipe: it runs by its path from any folder, and a copy of it runs alone.",
        "",
    ]
    text = "\n".join([*header, *note, *[line for node in nodes for line in node.lines()]]) + "\n"
    dims = name.rsplit("_", 1)[-1] if name.endswith(("_2d", "_3d")) else ""
    return text.replace("{recipe}", f"lighter_configs/{name}.yaml").replace("{dims}", dims)


def _with_schema(nodes: list[Node], pieces: _Pieces, name: str) -> list[Node]:
    """``nodes`` with a ``vars_schema`` after ``vars``: the ``_base/vars.yaml`` entry of each of the recipe's vars."""
    index = next((i for i, node in enumerate(nodes) if node.key == "vars"), None)
    if index is None or nodes[index].children is None:
        return nodes
    specs = {spec.key: spec for spec in pieces.node("lighter_configs/_base/vars.yaml", "schema").children or []}
    entries = []
    for var in nodes[index].children or []:
        if var.key not in specs:
            raise CTFMError(f"recipe {name}: var {var.key} has no entry in _base/vars.yaml::schema")
        entries.append(_reindent(replace(specs[var.key], comments=[]), 2))
    comment = "# What each var may hold (from _base/vars.yaml): a run whose vars do not fit stops before it starts."
    schema = Node("vars_schema", 0, ["", comment], "", children=entries)
    return [*nodes[: index + 1], schema, *nodes[index + 1 :]]


def build_all(recipes_root: Path, *, check: bool = False) -> list[Path]:
    """Write every shipped recipe below ``recipes_root``; with ``check``, write nothing and return the stale ones."""
    stale = []
    for name in RECIPES:
        target = recipes_root / f"{name}.yaml"
        text = build(name, recipes_root)
        if not target.is_file() or target.read_text() != text:
            stale.append(target)
            if not check:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(text)
    return stale
