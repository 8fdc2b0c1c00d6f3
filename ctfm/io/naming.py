"""The names a run's outputs take per input, unique within the run.

Datasets such as TotalSegmentator (``s0001/ct.nii.gz``) and LIDC give every scan the same file name in its own
folder, so naming outputs after the file alone would make the second scan overwrite the first. The rule, used by
every command that writes files per input:

* an input's name is its file name without the image suffix (``.nii.gz``, ``.nii``, ``.nrrd``, ``.nhdr``, ``.mha``,
  ``.mhd``; any case), or a DICOM series folder's own name;
* inputs of one run that share that name (compared case-insensitively, as macOS and Windows file systems do) are
  prefixed with the shortest run of their nearest parent folders that tells them apart, joined by ``_``:
  ``s0001/ct.nii.gz`` and ``s0002/ct.nii.gz`` become ``s0001_ct`` and ``s0002_ct``;
* a name still taken after that (the same file given twice, or ``a/ct`` beside an input called ``a_ct``) gets
  ``_2``, ``_3``, ... in input order.

Names keep their characters (spaces, accents); they depend only on the inputs as given (relative ones taken from
the current folder), never on what is on disk.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

#: File endings of images, longest first (".nii.gz" before ".nii").
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")

#: What the ``--help`` of a command writing per-input files says about the names.
NAMING_HELP = (
    "Outputs are named after each input without its image suffix (a DICOM folder: its name); inputs sharing a name "
    "(s0001/ct.nii.gz, s0002/ct.nii.gz) are prefixed with their nearest distinguishing parent folders (s0001_ct, "
    "s0002_ct)."
)


def image_stem(path: str | os.PathLike) -> str:
    """``scan.nii.gz`` -> ``scan``; a DICOM folder (or any other name) -> the name itself."""
    name = Path(path).name
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def output_names(paths: Sequence[str | os.PathLike]) -> list[str]:
    """One output name per input, in input order, unique within ``paths`` (see the module docstring)."""
    stems = [image_stem(path) for path in paths]
    groups: dict[str, list[int]] = defaultdict(list)
    for index, stem in enumerate(stems):
        groups[stem.casefold()].append(index)
    names = list(stems)
    for members in groups.values():
        if len(members) > 1:
            for index, name in zip(members, _prefixed([Path(os.path.abspath(paths[i])) for i in members])):
                names[index] = name
    return _numbered(names)


def _prefixed(paths: list[Path]) -> list[str]:
    """Stems of same-named inputs prefixed with the fewest nearest parent folders that tell the most of them apart
    (all of them unless the same file is given twice)."""
    parents = [[part for part in path.parent.parts[::-1] if part.strip(os.sep)] for path in paths]  # nearest first
    candidates = [
        ["_".join(reversed(p[:depth])) for p in parents] for depth in range(1, max(map(len, parents), default=0) + 1)
    ]
    if not candidates:
        return [image_stem(path) for path in paths]
    best = max(candidates, key=lambda prefixes: len({prefix.casefold() for prefix in prefixes}))  # first of the most
    return [f"{prefix}_{image_stem(path)}" if prefix else image_stem(path) for prefix, path in zip(best, paths)]


def _numbered(names: list[str]) -> list[str]:
    """Names still shared after prefixing get ``_2``, ``_3``, ... in input order (the first keeps its name)."""
    taken = {name.casefold() for name in names}
    seen: set[str] = set()
    result = []
    for name in names:
        candidate, number = name, 1
        while candidate.casefold() in seen or (number > 1 and candidate.casefold() in taken):
            number += 1
            candidate = f"{name}_{number}"
        seen.add(candidate.casefold())
        result.append(candidate)
    return result
