"""Datalists: the CSV of scans every recipe reads, shared by pretraining, ``ctfm prepare`` and fine-tuning.

Only pandas is imported, so reading a CSV never pulls in Lightning or torch.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pandas as pd

from ctfm.errors import CTFMError


def read_csv_table(csv: str | Path, what: str, **read_csv: Any) -> pd.DataFrame:
    """``pandas.read_csv`` with a missing or unreadable file turned into one ``CTFMError`` naming it as ``what``."""
    try:
        return pd.read_csv(csv, **read_csv)
    except FileNotFoundError as err:
        raise CTFMError(f"{csv}: {what} not found") from err
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise CTFMError(f"{csv}: cannot be read as a CSV {what}: {err}") from err


def read_datalist(csv: str | Path, *, keep_blank: bool = False) -> pd.DataFrame:
    """Read a datalist CSV with an ``image`` column; relative paths become absolute, resolved against the CSV's folder.

    Other columns (IDs, labels, collection) are kept. A missing file, a missing column or no rows is a
    :class:`~ctfm.errors.CTFMError` naming the CSV. Rows with a blank ``image`` are dropped, unless ``keep_blank``
    (their ``image`` is then None), which keeps row ``i`` of the table on line ``i + 2`` of the CSV for a caller
    that reports bad rows by line (:class:`~ctfm.data.base.DatalistDataModule`).
    """
    csv = Path(csv)
    table = read_csv_table(csv, "datalist", dtype={"image": str})
    if "image" not in table.columns:
        raise CTFMError(f"{csv}: a datalist needs an 'image' column of scan paths; found columns {list(table.columns)}")
    blank = table["image"].isna() | (table["image"].str.strip() == "")
    if blank.all():
        raise CTFMError(f"{csv}: the datalist has no scans (the 'image' column is empty)")
    if not keep_blank:
        table = table[~blank].reset_index(drop=True)
        blank = blank[~blank].reset_index(drop=True)
    base = csv.resolve().parent
    table["image"] = [
        None if empty else os.path.normpath(base / Path(p.strip()).expanduser())
        for p, empty in zip(table["image"], blank, strict=True)
    ]
    return table
