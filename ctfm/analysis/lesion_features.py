"""Lesion features for a CSV of seed points: each scan read and resampled once, crops embedded in batches.

Input: ``image_path,coordX,coordY,coordZ`` (seed in LPS mm, as FMCIB; relative paths against the CSV's folder);
other columns are carried through. Output: those columns plus ``embedding`` (a list of floats), one row per usable
input row, as Parquet. A missing coordinate, an unreadable scan or a seed outside its scan skips the row, which is
reported with its CSV row number; nothing of that is fatal.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from ctfm.analysis.lesions import LesionCrop, SeedOutsideScanError, named_crop, prepare_grid, to_ras
from ctfm.atomic import write_atomically
from ctfm.data.datalist import read_csv_table
from ctfm.errors import CTFMError, InvalidScanError
from ctfm.reports import ReportRow, RunReport

logger = logging.getLogger(__name__)

LESION_COLUMNS = ("image_path", "coordX", "coordY", "coordZ")
EMBEDDING_COLUMN = "embedding"


@dataclass
class LesionReport(RunReport):
    """Rows extracted and rows skipped (``row N``: the CSV line, header = 1) with the reason."""

    STATUSES = {"extracted": "extracted", "skipped": "skipped"}
    PROBLEMS = frozenset({"skipped"})
    ITEM_COLUMN = "row"

    out: Path
    extracted: list[int] = field(default_factory=list)
    skipped: list[tuple[int, str]] = field(default_factory=list)
    csv: Path | None = None

    def rows(self) -> list[ReportRow]:
        return [
            *(ReportRow(self.row_name(n), "extracted") for n in self.extracted),
            *(ReportRow(self.row_name(n), "skipped", reason) for n, reason in sorted(self.skipped)),
        ]

    def row_name(self, n: int) -> str:
        """``lesions.csv row 3``: the CSV line, so a skipped row can be found and fixed."""
        return f"{self.csv} row {n}" if self.csv else f"row {n}"

    def headline(self) -> str:
        return super().headline() + (f"; table: {self.out}" if self.extracted else "; no table written")


def read_lesions(csv: str | Path) -> pd.DataFrame:
    """The lesion CSV with absolute ``image_path``; a missing column or an unreadable file names the CSV.

    Args:
        csv: ``image_path,coordX,coordY,coordZ`` (seeds in LPS mm) and any other columns; relative paths are
            read against the CSV's folder.

    Returns:
        The CSV's rows, ``image_path`` made absolute.
    """
    csv = Path(csv)
    table = read_csv_table(csv, "lesion table", dtype={"image_path": str})
    missing = [c for c in LESION_COLUMNS if c not in table.columns]
    if missing:
        raise CTFMError(f"{csv}: missing column(s) {', '.join(missing)}; a lesion CSV has {', '.join(LESION_COLUMNS)}")
    if EMBEDDING_COLUMN in table.columns:
        raise CTFMError(f"{csv}: already has an {EMBEDDING_COLUMN!r} column, which the output would overwrite")
    base = csv.resolve().parent
    table["image_path"] = [
        p if pd.isna(p) else os.path.normpath(base / Path(str(p).strip()).expanduser()) for p in table["image_path"]
    ]
    return table


def seed_point(row: pd.Series) -> np.ndarray:
    """The row's seed in RAS mm; a coordinate that is missing or not a number is an error naming its column."""
    values = []
    for column in LESION_COLUMNS[1:]:
        value = row[column]
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise CTFMError(f"{column} {value!r} is not a number") from None
        if not np.isfinite(number):
            raise CTFMError(f"{column} is missing" if pd.isna(value) else f"{column} {value!r} is not finite")
        values.append(number)
    return to_ras(values, "LPS")


def features_of(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """Pooled features: the deepest SegResEncoder map averaged (CT-FM), or what the model returns (FMCIB)."""
    from ctfm.nn.encoder import encoder_of, pooled_features

    try:
        encoder_of(model)
    except TypeError:
        return model(batch).flatten(1)
    return pooled_features(model, batch)


def _crops(
    table: pd.DataFrame, crop: LesionCrop, report: LesionReport, progress: bool
) -> Iterator[tuple[int, torch.Tensor]]:
    """(table index, normalised crop) for each usable row, reading each scan once, in the CSV's order of scans.

    Only each crop's own box of the resampled grid is resampled (:class:`~ctfm.analysis.lesions.ScanGrid`).
    """
    bar = tqdm(total=len(table), desc="lesion crops", unit="lesion", disable=not progress)
    for path, rows in table.groupby("image_path", sort=False, dropna=False):
        try:
            if pd.isna(path):
                raise InvalidScanError("(empty)", "no image_path")
            scan = prepare_grid(path, crop.orientation, crop.spacing)
        except Exception as err:  # noqa: BLE001 -- an unusable scan (or a failure reading it) skips its rows only
            reason = str(err) if isinstance(err, CTFMError) else f"{path}: {type(err).__name__}: {err}"
            for index in rows.index:
                report.skipped.append((index + 2, " ".join(reason.split())))
            bar.update(len(rows))
            continue
        for index, row in rows.iterrows():
            bar.update()
            try:
                hu = scan.crop(seed_point(row), crop.size, name=str(path))
            except (SeedOutsideScanError, CTFMError) as err:
                report.skipped.append((index + 2, str(err)))
                continue
            yield index, crop.normalise(hu.as_tensor())
    bar.close()


@torch.no_grad()
def extract_lesion_features(
    csv: str | Path,
    out: str | Path,
    *,
    model: str | nn.Module = "ct-fm",
    crop: str | LesionCrop | None = None,
    batch_size: int = 8,
    device: str = "cpu",
    progress: bool = True,
) -> LesionReport:
    """Write the features of every usable row of ``csv`` to ``out`` (Parquet, atomically); return the report.

    Args:
        csv: the lesion CSV (see :func:`read_lesions`).
        out: the Parquet file to write: the CSV's columns plus ``embedding``, one row per usable CSV row.
        model: a model name or path for ``ctfm.load`` (``"fmcib"`` for FMCIB's ResNet50), or a network.
        crop: a registry model's name (``"fmcib"``, ``"ct-fm"``: that model's crop) or a
            :class:`~ctfm.transforms.lesion_crop.LesionCrop`; default the model's own (``spec_of(model).lesion_crop``:
            FMCIB's 50^3 at 1 mm for ``fmcib``), CT-FM's patch for a network without a spec.
        batch_size: crops per forward pass.
        device: where the model runs, e.g. ``"cuda"``.
        progress: show a progress bar over the scans.

    Returns:
        The report: rows extracted and rows skipped (by CSV line) with the reason.
    """
    from ctfm.hub.registry import spec_of
    from ctfm.transforms.lesion_crop import CT_FM_CROP

    table = read_lesions(csv)
    if isinstance(model, str):
        from ctfm.hub.loading import load

        model = load(model, device=device)
    if isinstance(crop, str):
        crop = named_crop(crop)
    elif crop is None:
        spec = spec_of(model)
        crop = spec.lesion_crop if spec is not None else CT_FM_CROP
    model = model.to(device).eval()
    out = Path(out)
    report = LesionReport(out=out, csv=Path(csv))
    indices: list[int] = []
    vectors: list[np.ndarray] = []
    batch: list[tuple[int, torch.Tensor]] = []

    def flush() -> None:
        stacked = torch.stack([tensor for _, tensor in batch]).to(device)
        features = features_of(model, stacked).float().cpu().numpy()
        indices.extend(index for index, _ in batch)
        vectors.extend(features)
        batch.clear()

    for item in _crops(table, crop, report, progress):
        batch.append(item)
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    if indices:
        order = np.argsort(indices)  # rows in the CSV's order
        rows = table.loc[[indices[i] for i in order]].copy()
        rows[EMBEDDING_COLUMN] = [vectors[i].tolist() for i in order]
        write_atomically(out, lambda tmp: rows.to_parquet(tmp, index=False))
        report.extracted.extend(int(indices[i]) + 2 for i in order)
    for row, reason in report.skipped:
        logger.warning("%s: skipped row %d: %s", csv, row, reason)
    return report
