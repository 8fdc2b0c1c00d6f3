"""Rebuild a network from the lighter config stored in a checkpoint, reading that config as data only.

A checkpoint is data: whoever wrote it chooses every string in ``hyper_parameters["config"]``. Resolving it with
sparkwheel would import any ``_target_`` and evaluate any ``$`` expression it holds (``os.system``,
``$__import__('os')...``). :func:`rebuild` walks the stored node instead and calls only the callables of
:data:`NETWORK_TARGETS` (plus any ``extra_targets`` a caller names), with keyword arguments that are JSON data,
``@`` references to other such nodes, and arithmetic ``$`` expressions over numbers, references and ``len()``
(``"$@vars::init_filters * 16"``, ``"$len(@model::class_names)"``: what the recipes store), which are parsed with
:mod:`ast` and computed here, never evaluated. Anything else (another target, a call, a name, an attribute, a
``%`` raw reference, ``_mode_``, ``_requires_``) is refused in one line naming the file and the key path.
"""

from __future__ import annotations

import ast
import operator
import re
from collections.abc import Callable, Mapping
from typing import Any

from ctfm.errors import ModelLoadError

#: Where a segmentation checkpoint keeps its output channels' names (background first).
CLASS_NAMES_CHECKPOINT_KEY = "class_names"

#: The networks a stored config may build: those ctfm's recipes put under ``model::network``, by the dotted
#: names a config may spell them with.
NETWORK_TARGETS: tuple[str, ...] = (
    "ctfm.nn.ct_fm_encoder",
    "ctfm.nn.encoder.ct_fm_encoder",
    "ctfm.nn.ct_fm_segresnet",
    "ctfm.nn.encoder.ct_fm_segresnet",
    "ctfm.nn.ScanClassifier",
    "ctfm.nn.classifier.ScanClassifier",
    "ctfm.nn.ContrastiveNetwork",
    "ctfm.nn.contrastive.ContrastiveNetwork",
    "ctfm.nn.ProjectionHead",
    "ctfm.nn.heads.ProjectionHead",
    "ctfm.nn.ClassificationHead",
    "ctfm.nn.heads.ClassificationHead",
    "ctfm.nn.DistillationStudent",
    "ctfm.nn.distillation.DistillationStudent",
    "ctfm.nn.diffusion.diffusion_unet",
    "ctfm.nn.diffusion.network.diffusion_unet",
    "ctfm.nn.diffusion.WindowConditionedUNet",
    "ctfm.nn.diffusion.network.WindowConditionedUNet",
    "monai.networks.nets.SegResNetDS",
    "monai.networks.nets.segresnet_ds.SegResNetDS",
    "monai.networks.nets.SegResEncoder",
    "monai.networks.nets.segresnet_ds.SegResEncoder",
)

#: Functions the segmentation recipes store as ``model::class_names`` (they compute names from data, nothing
#: else); callers that need the names pass them as ``extra_targets``.
CLASS_NAME_TARGETS: tuple[str, ...] = (
    "ctfm.data.totalsegmentator.selected_class_names",
    "ctfm.data.msd.msd_class_names",
)

_SEPARATOR = "::"
_REFERENCE = re.compile(r"@([A-Za-z0-9_#]+(?:::[A-Za-z0-9_#]+)*)")
_JSON_SCALARS = (str, int, float, bool, type(None))
_OPERATORS: dict[type, Callable[..., Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
}


def stored_config(checkpoint: Mapping[str, Any], source: str) -> dict[str, Any]:
    """The lighter config of a loaded checkpoint (``hyper_parameters::config``), or one line saying it has none."""
    config = (checkpoint.get("hyper_parameters") or {}).get("config") if isinstance(checkpoint, Mapping) else None
    if not isinstance(config, dict):
        raise ModelLoadError(f"{source}: has no lighter config in hyper_parameters; was it written by `lighter fit`?")
    return config


def has_key(config: Mapping[str, Any], key: str) -> bool:
    """Whether the ``::``-separated ``key`` names a node of ``config``."""
    node: Any = config
    for part in key.split(_SEPARATOR):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return False
    return True


def rebuild(
    config: Mapping[str, Any],
    key: str,
    *,
    source: str,
    known: Mapping[str, Any] | None = None,
    extra_targets: tuple[str, ...] = (),
) -> Any:
    """The value of the stored ``config`` node at ``key``, building allowed targets, refusing everything else.

    ``known`` gives values for key paths that are taken as they are instead of being built (e.g. class names the
    checkpoint stores beside its config). Raises :class:`ModelLoadError` (``<source>: <key path> ...``).
    """
    return _Rebuilder(config, source, dict(known or {}), frozenset(NETWORK_TARGETS + extra_targets)).top(key)


def plain(config: Mapping[str, Any], key: str, *, source: str) -> Any:
    """The stored node at ``key`` as data (e.g. ``vars``): references followed, no target built."""
    return _Rebuilder(config, source, {}, frozenset()).top(key)


class _Rebuilder:
    def __init__(self, config: Mapping[str, Any], source: str, known: dict[str, Any], targets: frozenset[str]):
        self.config, self.source, self.known, self.targets = config, source, known, targets
        self.done: dict[str, Any] = {}
        self.active: list[str] = []

    def refuse(self, path: str, problem: str) -> ModelLoadError:
        printable = path.encode("unicode_escape").decode()  # a key with a line break stays on the one line
        return ModelLoadError(f"{self.source}: {printable} {problem}")

    def top(self, key: str) -> Any:
        """:meth:`node`, with a config nested beyond Python's recursion limit refused like any other."""
        try:
            return self.node(key)
        except RecursionError:
            raise self.refuse(key, "is nested too deeply to be a network config") from None

    def node(self, key: str) -> Any:
        """The node at ``key``, built once (a network referenced twice is one module, as in sparkwheel)."""
        if key in self.known:
            return self.known[key]
        if key in self.done:
            return self.done[key]
        if key in self.active:
            raise self.refuse(key, f"refers to itself ({' -> '.join([*self.active, key])})")
        if not has_key(self.config, key):
            raise self.refuse(key, "is referenced but not in the stored config")
        value: Any = self.config
        for part in key.split(_SEPARATOR):
            value = value[int(part)] if isinstance(value, list) else value[part]
        self.active.append(key)
        try:
            self.done[key] = self.value(value, key)
        finally:
            self.active.pop()
        return self.done[key]

    def value(self, value: Any, path: str) -> Any:
        if isinstance(value, Mapping):
            return self.mapping(value, path)
        if isinstance(value, (list, tuple)):
            return [self.value(item, f"{path}{_SEPARATOR}{index}") for index, item in enumerate(value)]
        if not isinstance(value, _JSON_SCALARS):
            raise self.refuse(path, f"holds a {type(value).__name__}, not JSON data")
        if isinstance(value, str) and value.startswith("@"):
            return self.node(value[1:])
        if isinstance(value, str) and value.startswith("$"):
            return self.expression(value, path)
        if isinstance(value, str) and value.startswith("%"):
            raise self.refuse(path, f"{value!r} is a raw reference; a stored config is read as data only")
        return value

    def mapping(self, node: Mapping[str, Any], path: str) -> Any:
        special = sorted(k for k in node if isinstance(k, str) and k.startswith("_") and k.endswith("_"))
        for key in special:
            if key != "_target_":
                raise self.refuse(f"{path}{_SEPARATOR}{key}", "is not allowed in a stored config (data only)")
        if any(not isinstance(k, str) for k in node):
            raise self.refuse(path, "has a key that is not a string")
        kwargs = {k: self.value(v, f"{path}{_SEPARATOR}{k}") for k, v in node.items() if k != "_target_"}
        if "_target_" not in node:
            return kwargs
        target = node["_target_"]
        if not isinstance(target, str) or target not in self.targets:
            raise self.refuse(f"{path}{_SEPARATOR}_target_", f"{target!r} is not an allowed network class")
        try:
            return _callable(target)(**kwargs)
        except (TypeError, ValueError, LookupError) as err:
            raise self.refuse(path, f"does not build a {target}: {err}") from err

    def expression(self, text: str, path: str) -> Any:
        """An arithmetic ``$`` expression over numbers, ``@`` references and ``len()``, computed without eval."""
        names: dict[str, str] = {}

        def placeholder(match: re.Match[str]) -> str:
            name = f"_ref{len(names)}"
            names[name] = match[1]
            return name

        refused = self.refuse(
            path,
            f"{text!r} is an expression beyond arithmetic on @-references; a stored config is read as data only",
        )
        try:
            tree = ast.parse(_REFERENCE.sub(placeholder, text[1:]).strip(), mode="eval")
        except SyntaxError:
            raise refused from None

        def compute(node: ast.AST) -> Any:
            if isinstance(node, ast.Constant) and type(node.value) in (int, float):
                return node.value
            if isinstance(node, ast.Name) and node.id in names:
                return self.node(names[node.id])
            if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
                return _OPERATORS[type(node.op)](_number(compute(node.left)), _number(compute(node.right)))
            if isinstance(node, ast.UnaryOp) and type(node.op) in _OPERATORS:
                return _OPERATORS[type(node.op)](_number(compute(node.operand)))
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "len"
                and len(node.args) == 1
                and not node.keywords
            ):
                argument = compute(node.args[0])
                if not isinstance(argument, (list, tuple, dict, str)):
                    raise refused
                return len(argument)
            raise refused

        try:
            return compute(tree.body)
        except (TypeError, ZeroDivisionError, OverflowError):
            raise refused from None


def _number(value: Any) -> int | float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"not a number: {value!r}")
    return value


def _callable(target: str) -> Callable[..., Any]:
    """The allowed callable named ``target``: looked up in ctfm's own table, never imported by the stored name."""
    from monai.networks.nets.segresnet_ds import SegResEncoder, SegResNetDS

    from ctfm.nn import (
        ClassificationHead,
        ContrastiveNetwork,
        DistillationStudent,
        ProjectionHead,
        ScanClassifier,
        ct_fm_encoder,
        ct_fm_segresnet,
    )
    from ctfm.nn.diffusion import WindowConditionedUNet, diffusion_unet

    table: dict[str, Callable[..., Any]] = {
        "ct_fm_encoder": ct_fm_encoder,
        "ct_fm_segresnet": ct_fm_segresnet,
        "ScanClassifier": ScanClassifier,
        "ContrastiveNetwork": ContrastiveNetwork,
        "ProjectionHead": ProjectionHead,
        "ClassificationHead": ClassificationHead,
        "DistillationStudent": DistillationStudent,
        "diffusion_unet": diffusion_unet,
        "WindowConditionedUNet": WindowConditionedUNet,
        "SegResNetDS": SegResNetDS,
        "SegResEncoder": SegResEncoder,
    }
    if target in CLASS_NAME_TARGETS:
        from ctfm.data.msd import msd_class_names
        from ctfm.data.totalsegmentator import selected_class_names

        table.update(selected_class_names=selected_class_names, msd_class_names=msd_class_names)
    return table[target.rsplit(".", 1)[1]]
