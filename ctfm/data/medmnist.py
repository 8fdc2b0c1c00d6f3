"""MedMNIST 3D ``.npz`` files (OrganMNIST3D and its siblings): images and labels of the train, val and test splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ctfm.data.datalist import SPLITS
from ctfm.errors import CTFMError


def read_medmnist3d(path: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{split: (images, labels)}``: images ``(n, z, y, x)`` float32 in [0, 1] (28^3 or 64^3), labels ``(n,)`` ints.

    The files store uint8 volumes as ``{split}_images`` and ``(n, 1)`` labels as ``{split}_labels``; a missing split
    or a malformed array is one error naming the file.
    """
    path = Path(path)
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise CTFMError(f"{path}: cannot read as a MedMNIST .npz ({err})") from None
    out = {}
    with archive:
        for split in SPLITS:
            images, labels = f"{split}_images", f"{split}_labels"
            if images not in archive or labels not in archive:
                raise CTFMError(f"{path}: no {images} / {labels} arrays (found {sorted(archive.files)})")
            volume, label = archive[images], np.asarray(archive[labels]).reshape(-1)
            if volume.ndim != 4 or len(volume) != len(label):
                raise CTFMError(
                    f"{path}: {images} has shape {volume.shape} for {len(label)} labels; expected (n, z, y, x)"
                )
            scale = 255.0 if volume.dtype == np.uint8 else 1.0
            out[split] = (volume.astype(np.float32) / scale, label.astype(np.int64))
    return out
