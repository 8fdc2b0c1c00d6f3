"""Label maps on disk with the names of their values: NIfTI written atomically, and the JSON sidecar beside it.

The sidecar ``<name>.json`` (``{"labels": {"0": "background", "1": "liver", ...}}``) is how ``ctfm segment``,
``ctfm pseudo-label`` and the segmentation predict step name their classes, and how readers of a label map
(:func:`ctfm.io.regions.read_region_labels`, the prototypes) learn them back: one format, written and read here.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from ctfm.atomic import write_atomically
from ctfm.errors import CTFMError

#: The file suffixes of label maps and masks, double suffixes first.
LABEL_MAP_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")


def label_names_path(label_map: str | Path) -> Path:
    """``x.nii.gz`` -> ``x.json``: where the names of a label map's values live.

    Args:
        label_map: the label map's path.

    Returns:
        The sidecar's path, beside the label map.
    """
    path = Path(label_map)
    name = path.name
    stem = next((name[: -len(s)] for s in LABEL_MAP_SUFFIXES if name.endswith(s)), path.stem)
    return path.with_name(f"{stem}.json")


def read_label_names(label_map: str | Path) -> dict[int, str]:
    """``{value: name}`` from the sidecar beside a label map; empty when there is none.

    Args:
        label_map: the label map's path.

    Returns:
        The names of its values; a sidecar of another form is a one-line :class:`~ctfm.errors.CTFMError`.
    """
    path = label_names_path(label_map)
    if not path.is_file():
        return {}
    try:
        return {int(value): str(name) for value, name in json.loads(path.read_text())["labels"].items()}
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise CTFMError(f"{path}: not a label sidecar ({{'labels': {{value: name}}}}): {err}") from err


def write_label_map(labels: np.ndarray, affine: np.ndarray, path: str | Path, class_names: Sequence[str]) -> Path:
    """Write an integer ``(I, J, K)`` label map as NIfTI (atomically) with ``<name>.json`` naming its values.

    Args:
        labels: integer label map, value ``i`` standing for ``class_names[i]``.
        affine: the 4 x 4 voxel-to-world (RAS, mm) matrix.
        path: the ``.nii.gz`` to write; its folder is made.
        class_names: names of the values 0, 1, ..., background first.

    Returns:
        ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dtype = np.uint8 if len(class_names) <= 256 else np.int16
    image = nib.Nifti1Image(np.asarray(labels).astype(dtype), np.asarray(affine, dtype=np.float64))
    image.header.set_xyzt_units("mm")
    write_atomically(path, lambda tmp: nib.save(image, str(tmp)))
    sidecar = {"labels": {str(value): name for value, name in enumerate(class_names)}}
    document = json.dumps(sidecar, indent=2) + "\n"
    write_atomically(label_names_path(path), lambda tmp: tmp.write_text(document))
    return path
