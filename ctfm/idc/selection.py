"""The selection table that links the three IDC steps: its columns, its checks and the on-disk layout it implies.

``ctfm idc query`` writes it, ``ctfm idc download`` reads it and keeps a copy in the download folder, and
``ctfm idc convert`` reads that copy to know each series' collection, patient and study. Values that become folder
names or bucket keys are checked here, so a hand-edited CSV cannot write outside the download folder.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from ctfm.atomic import write_atomically
from ctfm.idc.errors import IDCError

#: Columns every selection must carry (the idc-index ``index`` table has all of them).
REQUIRED_COLUMNS = (
    "SeriesInstanceUID",
    "crdc_series_uuid",
    "aws_bucket",
    "instanceCount",
    "series_size_MB",
    "collection_id",
    "PatientID",
    "StudyInstanceUID",
)
#: The copy of the selection kept in a download folder.
SELECTION_FILE = "selection.csv"

_VALID = {
    "SeriesInstanceUID": re.compile(r"^[0-9]+(\.[0-9]+)*$"),
    "crdc_series_uuid": re.compile(r"^[0-9A-Za-z][0-9A-Za-z-]*$"),
    "aws_bucket": re.compile(r"^[a-z0-9][a-z0-9.-]*$"),
    "collection_id": re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"),
}


def read_selection(selection: pd.DataFrame | str | Path) -> pd.DataFrame:
    """Load a selection (DataFrame or CSV) with identifiers kept as text; one row per series.

    PatientIDs such as NLST's ``100012`` must stay text, so every column is read as a string and only
    ``instanceCount`` and ``series_size_MB`` become numbers (unparsable values become missing, caught by
    :func:`split_valid`).
    """
    label = "selection" if isinstance(selection, pd.DataFrame) else str(selection)
    if isinstance(selection, pd.DataFrame):
        frame = selection.copy()
    else:
        path = Path(selection)
        if not path.is_file():
            raise IDCError(f"{path}: no such selection file")
        try:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
            raise IDCError(f"{path}: not a readable selection CSV: {err}") from err
    missing = [column for column in REQUIRED_COLUMNS if column not in frame.columns]
    if missing:
        raise IDCError(
            f"{label}: missing column(s) {', '.join(missing)}; a selection needs {', '.join(REQUIRED_COLUMNS)}"
        )
    frame["instanceCount"] = pd.to_numeric(frame["instanceCount"], errors="coerce").astype("Int64")
    frame["series_size_MB"] = pd.to_numeric(frame["series_size_MB"], errors="coerce")
    return frame.drop_duplicates("SeriesInstanceUID", keep="last").reset_index(drop=True)


def split_valid(frame: pd.DataFrame) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """Rows that can be downloaded, and (SeriesInstanceUID, reason) for every row that cannot."""
    problems: dict[int, str] = {}
    for column, pattern in _VALID.items():
        values = frame[column].astype("string")
        bad = ~values.fillna("").str.fullmatch(pattern.pattern)
        for row in frame.index[bad]:
            problems.setdefault(row, f"invalid {column} {frame.at[row, column]!r}")
    counts = frame["instanceCount"]
    for row in frame.index[counts.isna() | (counts.fillna(0) < 1)]:
        problems.setdefault(row, f"invalid instanceCount {frame.at[row, 'instanceCount']!r}")
    invalid = [(str(frame.at[row, "SeriesInstanceUID"]), reason) for row, reason in sorted(problems.items())]
    return frame.drop(index=list(problems)).reset_index(drop=True), invalid


def series_dir(root: Path, collection_id: str, series_uid: str) -> Path:
    """Final folder of a downloaded series: ``<root>/<collection_id>/<SeriesInstanceUID>``."""
    return root / collection_id / series_uid


def partial_dir(final: Path) -> Path:
    """Where a series is downloaded until its file count is complete; never mistaken for a finished series."""
    return final.with_name(final.name + ".partial")


def write_csv_atomically(frame: pd.DataFrame, path: Path) -> None:
    """Write a CSV under a temporary name and rename it, so a killed run never leaves half a table."""
    write_atomically(path, lambda tmp: frame.to_csv(tmp, index=False))


def merge_into(path: Path, frame: pd.DataFrame) -> pd.DataFrame:
    """Add ``frame``'s series to the selection CSV at ``path`` (newer rows win) and write it back atomically."""
    if path.is_file():
        frame = pd.concat([read_selection(path), frame], ignore_index=True)
        frame = frame.drop_duplicates("SeriesInstanceUID", keep="last").reset_index(drop=True)
    write_csv_atomically(frame, path)
    return frame
