"""Datalists: the CSV of scans every recipe reads, shared by pretraining, ``ctfm prepare`` and fine-tuning.

Reading the CSV, its splits (a ``split`` column or a seeded 8:1:1 draw) and its labels (class indices, the blank
label) live here. Only pandas and numpy are imported, so reading a CSV never pulls in Lightning or torch.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ctfm.errors import CTFMError

SPLITS = ("train", "val", "test")
_SPLIT_ALIASES = {"training": "train", "validation": "val", "valid": "val", "testing": "test"}
#: The default 8:1:1 split of SinoCT.
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)

#: The label of a scan whose label is unknown (``lighter predict`` on unlabelled scans).
UNKNOWN_LABEL = -1


class DatalistError(CTFMError, ValueError):
    """A datalist whose structure is wrong (a missing column, an unknown split value): the run cannot start."""


def csv_line(index: int) -> int:
    """The CSV line of table row ``index`` (0-based, as ``pd.read_csv`` numbers it): the header is line 1."""
    return int(index) + 2


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


def assign_splits(table: pd.DataFrame, csv: str | Path, seed: int = 0) -> pd.Series:
    """The ``split`` column (aliases accepted), or a seeded 8:1:1 draw with at least one val and test scan.

    A split value other than train / val / test (or an alias) is a :class:`DatalistError` naming its line.

    Args:
        table: the datalist, as :func:`read_datalist` returns it.
        csv: the datalist's path, for the error.
        seed: seeds the draw when there is no ``split`` column.

    Returns:
        One of ``SPLITS`` per row, on ``table``'s index.
    """
    if "split" in table.columns:
        splits = table["split"].astype(str).str.strip().str.lower().replace(_SPLIT_ALIASES)
        bad = splits.index[~splits.isin(SPLITS)]
        if len(bad):
            raise DatalistError(
                f"{csv}: line {csv_line(bad[0])}: split {table['split'][bad[0]]!r} is not one of {', '.join(SPLITS)}"
            )
        return splits
    n = len(table)
    order = np.random.default_rng(seed).permutation(n)
    n_val = max(1, round(SPLIT_FRACTIONS[1] * n)) if n >= 3 else 0
    n_test = max(1, round(SPLIT_FRACTIONS[2] * n)) if n >= 3 else 0
    names = np.array(["train"] * n, dtype=object)
    names[order[:n_val]] = "val"
    names[order[n_val : n_val + n_test]] = "test"
    return pd.Series(names, index=table.index, name="split")


class LabelEncoding:
    """Labels of a datalist as class indices: 0/1 (or two distinct values) is binary, more values are classes.

    Numbers keep their order; other values (``"haemorrhage"``, ``"normal"``) are sorted by name. Calling the
    encoding on a label gives its index (``UNKNOWN_LABEL`` for a blank one).

    Args:
        values: the label column's values (blanks ignored).
        source: the datalist, named in the error when there are fewer than two classes.
    """

    def __init__(self, values: Sequence[Any], source: str):
        known = sorted({v for v in values if not pd.isna(v)}, key=lambda v: (not _is_number(v), str(v)))
        if any(_is_number(v) for v in known):
            known = sorted(known, key=lambda v: float(v) if _is_number(v) else float("inf"))
        if len(known) < 2:
            raise CTFMError(f"{source}: the label column has a single class ({known}); a classifier needs two or more")
        self.classes = [_plain(v) for v in known]
        self._index = {str(_plain(v)): i for i, v in enumerate(known)}

    @property
    def num_outputs(self) -> int:
        """1 (one logit) for two classes, else the number of classes."""
        return 1 if len(self.classes) == 2 else len(self.classes)

    def __call__(self, value: Any) -> int:
        return UNKNOWN_LABEL if pd.isna(value) else self._index[str(_plain(value))]


def label_key(value: Any) -> float | str:
    """A label as it compares: ``1``, ``1.0`` and ``"1"`` alike; names stripped.

    Args:
        value: a label as a datalist holds it.

    Returns:
        The number, or the stripped name.
    """
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value).strip()


def _is_number(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def _plain(value: Any) -> Any:
    """1.0 -> 1 so a float-typed label column and an int one encode alike."""
    if _is_number(value) and float(value).is_integer():
        return int(float(value))
    return value
