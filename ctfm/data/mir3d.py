"""3D-MIR retrieval splits (Abacha et al. 2023): CSVs listing Medical Segmentation Decathlon images and their labels.

3D-MIR asks, for each query scan, whether its nearest scans share a label such as lesion presence, the lesion's
organ or its stage. Neither the project's sources nor the paper fix the files' columns, so the reader takes the
simplest layout that holds them: one row per image, an ``image`` column with the image's path relative to the MSD
root (``Task03_Liver/imagesTr/liver_3.nii.gz``; absolute paths are kept), a label column named on the command
line, and either a ``split`` column (``train`` / ``val`` / ``test``) or one CSV per split, the split named in the
file name (``liver_train.csv``, ``liver_test.csv``). Every problem is one error naming the file and the row.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ctfm.data.datalist import SPLITS
from ctfm.errors import CTFMError

_SPLIT_IN_NAME = re.compile(r"(?<![a-z])(train|val|test)(?![a-z])", re.IGNORECASE)


def split_of_file(path: Path) -> str:
    """The split a CSV's name declares (``lesion_train.csv`` -> ``train``)."""
    found = {match.lower() for match in _SPLIT_IN_NAME.findall(path.stem)}
    if len(found) != 1:
        raise CTFMError(f"{path}: no split column, and the file name names no single split (train, val or test)")
    return found.pop()


def read_3dmir(
    csvs: Sequence[str | Path],
    msd_root: str | Path | None = None,
    *,
    label_column: str = "label",
    image_column: str = "image",
) -> dict[str, tuple[list[Path], np.ndarray]]:
    """``{split: (image paths, labels)}`` from one CSV with a ``split`` column or one CSV per split.

    Image paths are resolved against ``msd_root`` (default: each CSV's folder) and must exist; labels are kept as
    strings (``"1"``, ``"liver"``, ``"T2"``), so equal labels compare equal whatever their spelling in the file.
    A ``train`` split (the database) and at least one of ``val`` / ``test`` (the queries) are required.
    """
    out: dict[str, tuple[list[Path], list[str]]] = {}
    for csv in map(Path, csvs):
        try:
            table = pd.read_csv(csv, dtype=str, keep_default_na=False)
        except (OSError, ValueError) as err:
            raise CTFMError(f"{csv}: cannot be read as a CSV: {err}") from err
        missing = [c for c in (image_column, label_column) if c not in table.columns]
        if missing:
            raise CTFMError(f"{csv}: no column {missing} (columns: {list(table.columns)})")
        root = Path(msd_root) if msd_root is not None else csv.parent
        default_split = None if "split" in table.columns else split_of_file(csv)
        for number, record in enumerate(table.to_dict("records"), start=2):  # row 1 is the header
            split = (record.get("split") or default_split or "").strip().lower()
            if split not in SPLITS:
                raise CTFMError(f"{csv}, row {number}: split {split!r} is not one of {', '.join(SPLITS)}")
            name, label = str(record[image_column]).strip(), str(record[label_column]).strip()
            if not name or not label:
                raise CTFMError(f"{csv}, row {number}: empty {image_column if not name else label_column}")
            image = Path(name) if Path(name).is_absolute() else root / name
            if not image.exists():
                raise CTFMError(f"{csv}, row {number}: image {name!r} not found at {image}")
            paths, labels = out.setdefault(split, ([], []))
            paths.append(image)
            labels.append(label)
    if "train" not in out or not ({"val", "test"} & out.keys()):
        where = ", ".join(map(str, csvs))
        raise CTFMError(f"{where}: need a train split and a val or test split, found {sorted(out) or 'none'}")
    return {split: (paths, np.array(labels)) for split, (paths, labels) in out.items()}
