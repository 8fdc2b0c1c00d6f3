"""CQ500 (qure.ai's external head-CT test set) as a labelled datalist.

Its ``reads.csv`` has one row per scan (``name`` such as ``CQ500-CT-0``) and, for each of three readers, one 0/1
column per finding (``R1:ICH``, ``R2:Fracture``, ...). A scan is positive when any reader marked any finding. Scans
are found in an image folder by name: ``CQ500-CT-0.nii.gz``, or the download's ``CQ500CT0 CQ500CT0`` folder (names
compare without case, dashes or what follows a space or a dot).
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from ctfm.atomic import write_atomically
from ctfm.data.datalist import read_csv_table
from ctfm.errors import CTFMError

_READER_COLUMN = re.compile(r"^R\d+:")


def scan_key(name: str) -> str:
    """``CQ500-CT-12``, ``CQ500CT12 CQ500CT12`` and ``cq500ct12.nii.gz`` all give ``cq500ct12``."""
    first = re.split(r"[ .]", name.strip(), maxsplit=1)[0]
    return re.sub(r"[^0-9a-z]", "", first.lower())


def cq500_labels(reads_csv: str | Path) -> pd.DataFrame:
    """``name, label`` from ``reads.csv``: 1 when any ``R<k>:<finding>`` column is 1 for the scan."""
    reads_csv = Path(reads_csv)
    reads = read_csv_table(reads_csv, "CQ500 reads table")
    findings = [c for c in reads.columns if _READER_COLUMN.match(str(c))]
    if "name" not in reads.columns or not findings:
        raise CTFMError(
            f"{reads_csv}: not a CQ500 reads.csv (needs a 'name' column and reader columns such as 'R1:ICH'); "
            f"found {list(reads.columns)[:8]}"
        )
    marked = reads[findings].apply(pd.to_numeric, errors="coerce").fillna(0)
    return pd.DataFrame({"name": reads["name"].astype(str), "label": (marked > 0).any(axis=1).astype(int)})


def cq500_datalist(reads_csv: str | Path, image_dir: str | Path, out_csv: str | Path) -> Path:
    """Write ``image,label,split`` (every scan ``test``) for the CQ500 scans found in ``image_dir``.

    Scans in ``reads.csv`` with no file are left out and counted in the error only when none is found at all.
    """
    image_dir = Path(image_dir)
    if not image_dir.is_dir():
        raise CTFMError(f"{image_dir}: CQ500 image folder not found")
    found = {scan_key(p.name): p for p in sorted(image_dir.iterdir()) if not p.name.startswith(".")}
    labels = cq500_labels(reads_csv)
    labels["image"] = [found.get(scan_key(name)) for name in labels["name"]]
    missing = labels["image"].isna()
    if missing.all():
        raise CTFMError(
            f"{image_dir}: none of the {len(labels)} scans of {reads_csv} is there (e.g. {labels['name'][0]})"
        )
    table = labels[~missing].assign(image=lambda t: t["image"].map(lambda p: str(Path(p).resolve())), split="test")
    frame = table[["image", "label", "split", "name"]]
    return write_atomically(Path(out_csv), lambda tmp: frame.to_csv(tmp, index=False))


def external_test_datalist(
    datalist: str | Path | None = None,
    reads_csv: str | Path | None = None,
    image_dir: str | Path | None = None,
    out_dir: str | Path = ".",
) -> Path:
    """The recipe's datalist: CQ500's ``reads.csv`` + image folder, else an ``image,label`` CSV as it is.

    Args:
        datalist: an ``image,label`` CSV, used as it is when no CQ500 reads are given.
        reads_csv: CQ500's ``reads.csv`` (three radiologists' reads per scan).
        image_dir: the folder of CQ500 scans ``reads_csv`` names.
        out_dir: where ``cq500_labels.csv`` is written from the reads.

    Returns:
        The datalist the recipe reads.
    """
    if reads_csv is not None:
        if image_dir is None:
            raise CTFMError("CQ500 reads given without their scans: set vars::cq500_images=path/to/scans")
        return cq500_datalist(reads_csv, image_dir, Path(out_dir) / "cq500_labels.csv")
    if datalist is None:
        raise CTFMError("set vars::cq500_reads=reads.csv and vars::cq500_images=DIR, or vars::datalist=labels.csv")
    return Path(datalist)
